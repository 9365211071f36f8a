"""Behaviour segments: events, page views, message activity and time windows."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from segsvc.config import Config
from segsvc.engine.clock import FakeClock
from segsvc.engine.conditions import (
    AttributeCondition,
    EventCondition,
    Group,
    MessageCondition,
    PageViewCondition,
    Window,
)
from segsvc.engine.engine import Engine
from segsvc.engine.events import EventInput
from segsvc.engine.model import PersonKey
from segsvc.engine.people import PersonUpsert
from segsvc.engine.state import CAUSE_DATA, CAUSE_TIME
from segsvc.engine.values import Timestamp
from segsvc.engine.workspace import Workspace

DAY = 86_400
WEEK = 7 * DAY


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ws(tmp_path: Path, clock: FakeClock) -> Iterator[Workspace]:
    engine = Engine(Config(data_dir=tmp_path, map_size=1 << 28), clock)
    yield engine.workspace("default")
    engine.close(checkpoint=False)


def track(ws: Workspace, person: str, name: str, at: int | None = None, **props: object) -> None:
    event = EventInput(
        PersonKey("id", person), name, None if at is None else Timestamp(at), dict(props)
    )  # type: ignore[arg-type]
    [result] = ws.track_events([event])
    assert result.outcome == "tracked", result


def members(ws: Workspace, segment_id: int) -> set[str]:
    return {m.id for m in ws.list_members(segment_id)[0]}


def test_the_seeds_example_enters_on_views_exits_on_purchase_and_on_time(
    ws: Workspace, clock: FakeClock
) -> None:
    """Five views of the offer page within a week and no purchase: enters. A purchase: exits
    (DATA). A week later without views: exits by itself (TIME)."""
    ws.upsert_people([PersonUpsert("ann"), PersonUpsert("bob")])
    hot = ws.create_segment(
        "hot offer",
        "",
        True,
        Group(
            "all",
            (
                PageViewCondition("/offer/42", "contains", "at_least", 5, Window(WEEK)),
                EventCondition("purchase", count_operator="exactly", count=0, window=Window(WEEK)),
            ),
        ),
    ).id
    for person in ("ann", "bob"):
        for _ in range(4):
            clock.advance(3600)
            track(ws, person, "page", url="https://shop.example/offer/42?utm=x")
    assert members(ws, hot) == set()
    clock.advance(3600)
    track(ws, "ann", "page", url="https://shop.example/offer/42")
    track(ws, "bob", "page", url="https://shop.example/offer/42")
    assert members(ws, hot) == {"ann", "bob"}
    head = ws.head_seq()

    track(ws, "ann", "purchase", plan="pro")
    assert members(ws, hot) == {"bob"}
    changes, _ = ws.read_changes(head, frozenset([hot]))
    assert [(c.person_id, c.entered, c.cause) for c in changes] == [("ann", False, CAUSE_DATA)]
    head = ws.head_seq()

    clock.advance(WEEK)
    ws.tick()
    assert members(ws, hot) == set()
    changes, _ = ws.read_changes(head, frozenset([hot]))
    assert [(c.person_id, c.entered, c.cause) for c in changes] == [("bob", False, CAUSE_TIME)]


def test_window_edges_are_exact_to_the_second(ws: Workspace, clock: FakeClock) -> None:
    ws.upsert_people([PersonUpsert("p")])
    seen = ws.create_segment("seen", "", True, EventCondition("login", window=Window(WEEK))).id
    track(ws, "p", "login")
    clock.advance(WEEK)  # now - 7 days <= t: still inside, inclusive
    ws.tick()
    assert members(ws, seen) == {"p"}
    clock.advance(1)  # seven days and one second ago: outside
    ws.tick()
    assert members(ws, seen) == set()


def test_has_not_done_includes_people_who_never_did(ws: Workspace, clock: FakeClock) -> None:
    ws.upsert_people([PersonUpsert("active"), PersonUpsert("never")])
    track(ws, "active", "login")
    idle = ws.create_segment(
        "idle",
        "",
        True,
        Group("all", (EventCondition("login", window=Window(WEEK)),), negate=True),
    ).id
    assert members(ws, idle) == {"never"}
    ws.upsert_people([PersonUpsert("newcomer")])
    assert members(ws, idle) == {"never", "newcomer"}


def test_counts_filters_and_between_windows(ws: Workspace, clock: FakeClock) -> None:
    now = clock.now()
    ws.upsert_people([PersonUpsert("a"), PersonUpsert("b")])
    for amount in (5.0, 50.0, 500.0):
        track(ws, "a", "purchase", at=now - 10 * DAY, amount=amount)
    track(ws, "b", "purchase", at=now - DAY, amount=500.0)
    big = ws.create_segment(
        "two big purchases",
        "",
        True,
        EventCondition(
            "purchase",
            filters=(AttributeCondition("greater_or_equal", attribute="amount", value=50.0),),
            count_operator="at_least",
            count=2,
        ),
    ).id
    assert members(ws, big) == {"a"}
    last_fortnight = ws.create_segment(
        "exactly one in a fixed window",
        "",
        True,
        EventCondition(
            "purchase",
            count_operator="exactly",
            count=1,
            window=Window(None, Timestamp(now - 2 * DAY), Timestamp(now)),
        ),
    ).id
    assert members(ws, last_fortnight) == {"b"}


def test_message_activity_is_sugar_for_message_events(ws: Workspace) -> None:
    ws.upsert_people([PersonUpsert("reader"), PersonUpsert("other")])
    track(ws, "reader", "message_opened", campaign_id="spring", message_id="m1")
    track(ws, "other", "message_opened", campaign_id="autumn", message_id="m9")
    opened = ws.create_segment(
        "opened spring", "", True, MessageCondition("opened", campaign_id="spring")
    ).id
    assert members(ws, opened) == {"reader"}


def test_unknown_people_are_rejected_or_created_on_request(ws: Workspace) -> None:
    [rejected] = ws.track_events([EventInput(PersonKey("id", "ghost"), "login")])
    assert rejected.outcome == "not_found"
    [tracked] = ws.track_events(
        [EventInput(PersonKey("id", "ghost"), "login")], create_missing_people=True
    )
    assert tracked.outcome == "tracked"
    assert ws.get_person(PersonKey("id", "ghost")).record.id == "ghost"


def test_timestamps_too_far_ahead_or_past_retention_are_refused(
    ws: Workspace, clock: FakeClock
) -> None:
    ws.upsert_people([PersonUpsert("p")])
    future, ancient = ws.track_events(
        [
            EventInput(PersonKey("id", "p"), "x", Timestamp(clock.now() + 2 * 3600)),
            EventInput(PersonKey("id", "p"), "x", Timestamp(clock.now() - 400 * DAY)),
        ]
    )
    assert (future.outcome, future.field) == ("invalid", "events[0].timestamp")
    assert (ancient.outcome, ancient.field) == ("invalid", "events[1].timestamp")


def test_events_survive_restart_and_deletion_forgets_them(tmp_path: Path, clock: FakeClock) -> None:
    engine = Engine(Config(data_dir=tmp_path, map_size=1 << 28), clock)
    ws = engine.workspace("default")
    ws.upsert_people([PersonUpsert("p"), PersonUpsert("q")])
    track(ws, "p", "login")
    track(ws, "q", "login")
    seen = ws.create_segment("seen", "", True, EventCondition("login")).id
    engine.close(checkpoint=True)
    engine = Engine(Config(data_dir=tmp_path, map_size=1 << 28), clock)
    ws = engine.workspace("default")
    assert members(ws, seen) == {"p", "q"}
    ws.delete_people([PersonKey("id", "q")])
    ws.tick()  # drops the deleted person's events from the logs
    assert ws.state.events.total() == 1
    engine.close(checkpoint=False)
    engine = Engine(Config(data_dir=tmp_path, map_size=1 << 28), clock)
    assert members(engine.workspace("default"), seen) == {"p"}
    engine.close()


def test_events_count_toward_checkpoints(tmp_path: Path, clock: FakeClock) -> None:
    """A crash replays the log since the last checkpoint; events must bring the next
    checkpoint closer, or a stream of events would never be checkpointed."""
    engine = Engine(Config(data_dir=tmp_path, map_size=1 << 28, checkpoint_every_ops=300), clock)
    ws = engine.workspace("default")
    ws.upsert_people([PersonUpsert("p")])
    ws.track_events([EventInput(PersonKey("id", "p"), "view") for _ in range(1200)])
    ws.core.finish_checkpoint()  # stored in the background
    with ws.store.read() as txn:
        logged = list(txn.scan("ops", b"default\x00"))
    assert logged == []  # the checkpoint covered and dropped every logged operation
    engine.close(checkpoint=False)
    engine = Engine(Config(data_dir=tmp_path, map_size=1 << 28), clock)
    assert engine.workspace("default").state.events.total() == 1200
    engine.close()
