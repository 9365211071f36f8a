"""The event index: daily presence bitmaps with exact edges, incremental counts, and dropping
stale events from memory while readers and writers go on."""

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_events import DAY, WEEK, members, track

from segsvc.config import Config
from segsvc.engine.clock import FakeClock
from segsvc.engine.conditions import AttributeCondition, EventCondition, Window
from segsvc.engine.engine import Engine
from segsvc.engine.events import EventLog
from segsvc.engine.leaves import EventLeaf
from segsvc.engine.model import PersonKey
from segsvc.engine.people import PersonUpsert
from segsvc.engine.values import Timestamp
from segsvc.engine.workspace import Workspace

# A Monday at midnight UTC: day buckets start here.
MIDNIGHT = 1_767_571_200


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(MIDNIGHT + 12 * 3600)


@pytest.fixture
def ws(tmp_path: Path, clock: FakeClock) -> Iterator[Workspace]:
    engine = Engine(
        Config(data_dir=tmp_path, map_size=1 << 28, event_retention_seconds=30 * DAY), clock
    )
    yield engine.workspace("default")
    engine.close(checkpoint=False)


def people(ws: Workspace, *ids: str) -> None:
    ws.upsert_people([PersonUpsert(i) for i in ids])


def test_presence_uses_day_bitmaps_and_keeps_edges_exact(ws: Workspace, clock: FakeClock) -> None:
    people(ws, "late", "early", "inside")
    now = clock.now()
    week_ago = now - WEEK
    track(ws, "late", "view", week_ago)  # exactly on the edge: counts
    track(ws, "early", "view", week_ago - 1)  # one second before it: does not
    track(ws, "inside", "view", now - 3 * DAY)  # a whole day inside the window
    seg = ws.create_segment("viewed", "", True, EventCondition("view", window=Window(WEEK))).id
    assert members(ws, seg) == {"late", "inside"}
    [presence] = ws.state.event_leaves.presence.values()
    # One bitmap per UTC day with a matching event: the window is their union plus edges.
    assert sorted(presence) == sorted({(week_ago - 1) // DAY, (now - 3 * DAY) // DAY})
    clock.advance(1)
    ws.tick()  # the window moved one second: "late"'s view is now out
    assert members(ws, seg) == {"inside"}


def test_counts_move_with_the_window(ws: Workspace, clock: FakeClock) -> None:
    people(ws, "p")
    now = clock.now()
    for at in (now - 6 * DAY, now - 2 * DAY, now - DAY):
        track(ws, "p", "buy", at)
    seg = ws.create_segment(
        "thrice", "", True, EventCondition("buy", count=3, window=Window(WEEK))
    ).id
    [leaf] = [leaf for leaf in ws.state.event_leaves.tracked if isinstance(leaf, EventLeaf)]
    assert ws.state.event_leaves.tracked[leaf].counts is not None  # a threshold needs counts
    assert members(ws, seg) == {"p"}
    clock.advance(DAY + 1)  # the first purchase leaves the window
    ws.tick()
    assert members(ws, seg) == set()
    track(ws, "p", "buy")
    assert members(ws, seg) == {"p"}


def test_events_ahead_of_the_clock_count_once_it_gets_there(
    ws: Workspace, clock: FakeClock
) -> None:
    people(ws, "p")
    seg = ws.create_segment("recent", "", True, EventCondition("x", window=Window(3600))).id
    track(ws, "p", "x", clock.now() + 600)
    assert members(ws, seg) == set()
    clock.advance(600)
    ws.tick()
    assert members(ws, seg) == {"p"}


def test_time_filters_on_properties_are_counted_again_on_ticks(
    ws: Workspace, clock: FakeClock
) -> None:
    """A filter comparing a property with now changes which events count as time passes."""
    people(ws, "p")
    trial_ends = clock.now() + DAY
    track(ws, "p", "trial", clock.now(), ends=Timestamp(trial_ends))
    ended = AttributeCondition("more_than_ago", attribute="ends", seconds=1)
    seg = ws.create_segment("trial ended", "", True, EventCondition("trial", (ended,))).id
    assert members(ws, seg) == set()
    clock.advance(DAY + 2)
    ws.tick()
    assert members(ws, seg) == {"p"}


def test_past_retention_no_event_counts_and_memory_is_freed(
    ws: Workspace, clock: FakeClock
) -> None:
    people(ws, "old", "new")
    track(ws, "old", "login", clock.now() - 29 * DAY)
    track(ws, "new", "login", clock.now())
    ever = ws.create_segment("ever", "", True, EventCondition("login")).id
    assert members(ws, ever) == {"old", "new"}
    clock.advance(2 * DAY)
    ws.tick()  # the floor passes the old login: "ever" means within retention
    assert members(ws, ever) == {"new"}
    assert ws.state.events.total() == 1  # half the log was stale: dropped at once


def test_compaction_sorts_by_time_and_keeps_what_was_written_meanwhile() -> None:
    log = EventLog()
    log.append([(1, 300, {"plan": "a"}), (2, 100, {"plan": "b"}), (1, 200, {})])
    size = log.size
    keep = np.array([True, False, True])
    compacted = log.compacted(size, keep)
    # Written while the copy was made: a new property, a new value type, a new word.
    log.append([(3, 50, {"plan": 1.5, "url": "/x"}), (4, 400, {"plan": "c"})])
    compacted.absorb_tail(log, size)
    assert compacted.size == 4
    assert compacted.times[:4].tolist() == [200, 300, 50, 400]
    assert compacted.ordinals[:4].tolist() == [1, 1, 3, 4]
    plan, url = compacted.columns["plan"], compacted.columns["url"]
    assert plan.codes is not None and plan.numbers is not None and url.codes is not None
    words = [plan.vocabulary[c] if c >= 0 else None for c in plan.codes[:4]]
    assert words == [None, "a", None, "c"]
    assert np.isnan(plan.numbers[[0, 1, 3]]).all() and plan.numbers[2] == 1.5
    assert [url.vocabulary[c] if c >= 0 else None for c in url.codes[:4]] == [
        None,
        None,
        "/x",
        None,
    ]
    assert compacted.rows_in(0, 250).tolist() == [0, 2]
    assert compacted.rows_in(250, None).tolist() == [1, 3]


def test_readers_and_writers_go_on_while_stale_events_are_dropped(
    ws: Workspace, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    people(ws, "gone", "stays")
    track(ws, "gone", "view")
    track(ws, "stays", "view")
    seg = ws.create_segment("viewers", "", True, EventCondition("view")).id
    ws.delete_people([PersonKey("id", "gone")])

    copying, release = threading.Event(), threading.Event()
    original = EventLog.compacted

    def slow_compacted(self: EventLog, size: int, keep: np.ndarray) -> EventLog:
        copying.set()
        assert release.wait(10)
        return original(self, size, keep)

    monkeypatch.setattr(EventLog, "compacted", slow_compacted)
    dropped: list[int] = []
    worker = threading.Thread(target=lambda: dropped.append(ws.compact_events()))
    worker.start()
    assert copying.wait(10)
    # The copy is under way: a read and a write both complete meanwhile.
    assert ws.get_segment(seg).member_count == 1
    people(ws, "late")
    track(ws, "late", "view")
    assert members(ws, seg) == {"stays", "late"}
    release.set()
    worker.join(10)
    assert dropped == [1]
    assert ws.state.events.total() == 2  # the event written during the copy was kept
    clock.advance(60)
    ws.tick()
    assert members(ws, seg) == {"stays", "late"}
