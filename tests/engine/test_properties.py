"""The engine against the brute-force model, on random histories.

A state machine drives one workspace (FakeClock, temporary directory) through random upserts,
deletions, manual membership changes, segment creations, definition edits and deletions, clock
advances with ticks and restarts, and after every step checks that:
- every segment's members (list_members, paged) are exactly the brute-force evaluation of the
  definitions over the model's people at the clock's now;
- member counts and each person's segments (get_person) agree;
- replaying the whole change feed from seq 0 gives the same memberships, seqs run 1, 2, 3...
  without gaps, and the changes a step wrote carry that step's cause and time;
- a restart, with a checkpoint or by replaying the log alone, changes no membership.
Writes happen at the fixed clock time and every clock advance is followed by a tick, so the
engine's "now" (the time of the last write or tick) and the model's agree.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bruteforce import Evaluator, SegmentModel, World
from engine_harness import (
    Harness,
    all_members,
    ids_of,
    key,
    make_config,
    replay_feed,
)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from strategies import (
    ADVANCES,
    ID_POOL,
    PLATFORMS,
    STARTS,
    event_inputs,
    person_keys,
    trees,
    upserts,
)

from segsvc.engine.clock import FakeClock
from segsvc.engine.conditions import Group, Node
from segsvc.engine.errors import InvalidArgument, NotFound
from segsvc.engine.events import EventInput
from segsvc.engine.model import AudienceSpec
from segsvc.engine.people import PersonUpsert
from segsvc.engine.state import (
    CAUSE_DATA,
    CAUSE_DEFINITION,
    CAUSE_DELETED,
    CAUSE_MANUAL,
    CAUSE_TIME,
)
from segsvc.engine.values import Timestamp

# Keep every change: the replay checks read the feed from the start.
RETAIN_ALL = 10**10

# Event, page view and message conditions in the generated trees, and events tracked.
EVENTS = True

NODE_FIELD = {
    "EventCondition": "event",
    "PageViewCondition": "page_view",
    "MessageCondition": "message",
    "Group": "group",
    "AttributeCondition": "attribute",
    "TagCondition": "tag",
    "DeviceCondition": "device",
    "SegmentCondition": "segment",
}


class EngineMachine(RuleBasedStateMachine):
    # Seconds events are kept; RETAIN_ALL keeps every one.
    event_retention = RETAIN_ALL

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="segsvc-prop-")
        self.h: Harness | None = None
        retained = None if self.event_retention == RETAIN_ALL else self.event_retention
        self.world = World(event_retention=retained)
        self.names = 0
        self.seen_seq = 0
        # The causes the changes written by the last step may carry (empty: no changes).
        self.causes: set[int] = set()
        self.exits_only = False

    # -- plumbing --------------------------------------------------------------------------

    @property
    def now(self) -> int:
        assert self.h is not None
        return self.h.clock.now()

    @property
    def ws(self) -> Any:
        assert self.h is not None
        return self.h.ws

    def teardown(self) -> None:
        if self.h is not None:
            self.h.close()
        self.tmp.cleanup()

    def expect(self, *causes: int, exits_only: bool = False) -> None:
        self.causes = set(causes)
        self.exits_only = exits_only

    def do_upsert(self, batch: list[PersonUpsert]) -> None:
        results = self.ws.upsert_people(batch)
        expected = self.world.upsert(batch, self.now)
        got = [r.outcome if r.outcome in ("invalid", "conflict") else "ok" for r in results]
        assert got == expected, (batch, results)

    def new_name(self) -> str:
        self.names += 1
        return f"segment {self.names}"

    def create(self, dynamic: bool, definition: Node | None) -> int:
        info = self.ws.create_segment(self.new_name(), "", dynamic, definition)
        self.world.segments[info.id] = SegmentModel(info.id, info.name, dynamic, definition)
        return int(info.id)

    def manual_ids(self) -> list[int]:
        return sorted(s.id for s in self.world.segments.values() if not s.dynamic)

    def dynamic_ids(self) -> list[int]:
        return sorted(s.id for s in self.world.segments.values() if s.dynamic)

    # -- rules -----------------------------------------------------------------------------

    @initialize(start=st.sampled_from(STARTS), data=st.data())
    def setup(self, start: int, data: st.DataObject) -> None:
        data_dir = Path(self.tmp.name) / "data"
        self.h = Harness(
            data_dir,
            FakeClock(start),
            make_config(
                data_dir,
                change_retention_seconds=RETAIN_ALL,
                event_retention_seconds=self.event_retention,
            ),
        )
        batch = data.draw(st.lists(upserts(start, allow_invalid=False), min_size=1, max_size=8))
        # Sometimes a lone person (test_checkpoint_with_one_person_without_email was found
        # that way), usually at least two.
        if data.draw(st.integers(0, 4)):
            batch += [PersonUpsert("p0"), PersonUpsert("p1")]
        self.do_upsert(batch)
        for _ in range(data.draw(st.integers(1, 2))):
            sid = self.create(False, None)
            keys = data.draw(st.lists(person_keys(include_bad=False), max_size=5))
            self.ws.change_members(sid, [key(k, v) for k, v in keys], True)
            self.world.change_members(sid, keys, True)
        for _ in range(data.draw(st.integers(1, 3))):
            tree = data.draw(trees(start, tuple(self.world.segments), events=EVENTS))
            self.create(True, tree)
        self.expect(CAUSE_DATA, CAUSE_MANUAL, CAUSE_DEFINITION)

    @rule(data=st.data())
    def upsert(self, data: st.DataObject) -> None:
        self.do_upsert(data.draw(st.lists(upserts(self.now), min_size=1, max_size=4)))
        self.expect(CAUSE_DATA)

    @precondition(lambda self: EVENTS)
    @rule(data=st.data(), create=st.booleans())
    def track(self, data: st.DataObject, create: bool) -> None:
        events = data.draw(st.lists(event_inputs(self.now), min_size=1, max_size=4))
        results = self.ws.track_events(
            [
                EventInput(key(k, v), name, None if at is None else Timestamp(at), props)
                for (k, v), name, at, props in events
            ],
            create_missing_people=create,
        )
        expected = self.world.track(events, self.now, create, self.event_retention)
        assert [r.outcome for r in results] == expected, (events, results)
        self.expect(CAUSE_DATA)

    @rule(keys=st.lists(person_keys(), min_size=1, max_size=3))
    def delete_people(self, keys: list[tuple[str, str]]) -> None:
        results = self.ws.delete_people([key(k, v) for k, v in keys])
        assert [r.outcome for r in results] == self.world.delete(keys), (keys, results)
        self.expect(CAUSE_DELETED, exits_only=True)

    @precondition(lambda self: self.manual_ids())
    @rule(data=st.data(), add=st.booleans(), keys=st.lists(person_keys(), min_size=1, max_size=4))
    def change_members(self, data: st.DataObject, add: bool, keys: list[tuple[str, str]]) -> None:
        sid = data.draw(st.sampled_from(self.manual_ids()))
        results = self.ws.change_members(sid, [key(k, v) for k, v in keys], add)
        assert [r.outcome for r in results] == self.world.change_members(sid, keys, add), (
            keys,
            results,
        )
        self.expect(CAUSE_MANUAL, CAUSE_DATA)

    @precondition(lambda self: self.manual_ids())
    @rule(data=st.data())
    def clear(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(self.manual_ids()))
        seg = self.world.segments[sid]
        expected = len(seg.members & set(self.world.people))
        assert self.ws.clear_segment(sid) == expected
        seg.members.clear()
        self.expect(CAUSE_MANUAL, CAUSE_DATA)

    @precondition(lambda self: len(self.world.segments) < 8)
    @rule(data=st.data(), dynamic=st.booleans())
    def create_segment(self, data: st.DataObject, dynamic: bool) -> None:
        tree = (
            data.draw(trees(self.now, tuple(self.world.segments), events=EVENTS))
            if dynamic
            else None
        )
        self.create(dynamic, tree)
        self.expect(CAUSE_DEFINITION)

    @precondition(lambda self: self.dynamic_ids())
    @rule(data=st.data())
    def update_definition(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(self.dynamic_ids()))
        tree = data.draw(trees(self.now, tuple(self.world.segments), events=EVENTS))
        if self.world.would_cycle(sid, tree):
            try:
                self.ws.update_segment(sid, None, None, tree)
            except InvalidArgument as exc:
                assert any("segment" in v.field for v in exc.violations), exc.violations
            else:
                raise AssertionError(f"a cycle through segment {sid} was saved: {tree}")
            self.expect()
            return
        self.ws.update_segment(sid, None, None, tree)
        self.world.segments[sid].definition = tree
        self.expect(CAUSE_DEFINITION)

    @precondition(lambda self: self.world.segments)
    @rule(data=st.data())
    def delete_segment(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(sorted(self.world.segments)))
        [result] = self.ws.delete_segments([sid])
        users = self.world.referencing(sid)
        if users:
            assert result.outcome == "failed_precondition", result
            for user in users:
                assert self.world.segments[user].name in result.error, result
            self.expect()
            return
        assert result.outcome == "deleted", result
        del self.world.segments[sid]
        self.expect(CAUSE_DELETED, exits_only=True)

    @rule(seconds=st.sampled_from(ADVANCES))
    def advance_and_tick(self, seconds: int) -> None:
        assert self.h is not None
        self.h.clock.advance(seconds)
        self.ws.tick()
        self.expect(CAUSE_TIME)

    @precondition(lambda self: EVENTS)
    @rule()
    def drop_stale_events(self) -> None:
        """Events past retention or of deleted people leave memory; no answer changes."""
        self.ws.compact_events(force=True)
        logs = self.ws.state.events.logs
        floor = self.ws.state.event_leaves.floor
        live = self.ws.state.index.live
        for log in logs.values():
            assert (log.times[: log.size] >= floor).all()
            assert all(int(o) in live for o in log.ordinals[: log.size])
        self.expect()

    @rule(checkpoint=st.booleans())
    def restart(self, checkpoint: bool) -> None:
        assert self.h is not None
        before = all_members(self.ws)
        self.h.reopen(checkpoint=checkpoint)
        assert all_members(self.ws) == before
        self.expect()

    @rule(data=st.data())
    def preview(self, data: st.DataObject) -> None:
        tree = data.draw(trees(self.now, tuple(self.world.segments), events=EVENTS))
        count, sample = self.ws.preview(tree, sample_size=3)
        expected = Evaluator(self.world, self.now).matching(tree)
        assert count == len(expected), (tree, count, expected)
        assert set(sample) <= expected and len(sample) == min(3, len(expected))
        self.expect()

    @precondition(lambda self: self.dynamic_ids() and self.world.people)
    @rule(data=st.data())
    def explain(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(self.dynamic_ids()))
        pid = data.draw(st.sampled_from(sorted(self.world.people)))
        member, root = self.ws.explain(key("id", pid), sid)
        ev = Evaluator(self.world, self.now)
        assert member == (pid in ev.members(sid))
        check_explain(root, self.world.segments[sid].definition, "conditions", ev, pid)
        self.expect()

    @precondition(lambda self: self.world.segments)
    @rule(data=st.data())
    def audience(self, data: st.DataObject) -> None:
        ids = sorted(self.world.segments)
        spec = AudienceSpec(
            include=tuple(data.draw(st.lists(st.sampled_from(ids), min_size=1, max_size=2))),
            require=tuple(data.draw(st.lists(st.sampled_from(ids), max_size=1))),
            exclude=tuple(data.draw(st.lists(st.sampled_from(ids), max_size=1))),
            include_unsubscribed=data.draw(st.booleans()),
            channel=data.draw(st.sampled_from(("", "email", "phone", "device"))),
            device_platform=data.draw(st.sampled_from(("", *PLATFORMS))),
        )
        got = ids_of(self.ws, self.ws.audience(spec))
        assert got == expected_audience(self.world, self.now, spec), spec
        self.expect()

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def memberships_match_brute_force(self) -> None:
        if self.h is None:
            return
        expected = self.world.memberships(self.now)
        got = all_members(self.ws)
        assert set(got) == set(expected)
        for sid in expected:
            assert got[sid] == expected[sid], (
                f"segment {sid} ({describe(self.world.segments[sid])}) at {self.now}: "
                f"engine has {sorted(got[sid])}, brute force {sorted(expected[sid])}; "
                f"extra {sorted(got[sid] - expected[sid])}, "
                f"missing {sorted(expected[sid] - got[sid])}"
            )
            assert self.ws.get_segment(sid).member_count == len(expected[sid])
            size = len(expected[sid])
            event(
                "segment: empty"
                if not size
                else "segment: everyone"
                if size == len(self.world.people)
                else "segment: some"
            )
        for pid in ID_POOL:
            if pid in self.world.people:
                view = self.ws.get_person(key("id", pid))
                assert set(view.segment_ids) == {s for s in expected if pid in expected[s]}
            else:
                try:
                    self.ws.get_person(key("id", pid))
                except NotFound:
                    pass
                else:
                    raise AssertionError(f"deleted person {pid} is still found")

    @invariant()
    def change_feed_replays_to_memberships(self) -> None:
        if self.h is None:
            return
        rebuilt, changes = replay_feed(self.ws)
        assert [c.seq for c in changes] == list(range(1, len(changes) + 1))
        expected = self.world.memberships(self.now)
        for sid in set(rebuilt) | set(expected):
            assert rebuilt.get(sid, set()) == expected.get(sid, set()), sid
        fresh = [c for c in changes if c.seq > self.seen_seq]
        for c in fresh:
            assert c.cause in self.causes, (c, self.causes)
            assert c.at == self.now, c
            assert not (self.exits_only and c.entered), c
        self.seen_seq = len(changes)


def describe(seg: SegmentModel) -> str:
    return f"dynamic {seg.definition}" if seg.dynamic else f"manual {sorted(seg.members)}"


def check_explain(node: Any, definition: Node, path: str, ev: Evaluator, pid: str) -> None:
    """Every node of the explanation has the definition's path and the brute-force truth."""
    here = f"{path}.{NODE_FIELD[type(definition).__name__]}"
    assert node.path == here, (node.path, here)
    assert node.matched == ev.holds(definition, ev.world.people[pid]), (here, definition)
    if isinstance(definition, Group):
        assert len(node.children) == len(definition.children)
        for i, (child, child_def) in enumerate(
            zip(node.children, definition.children, strict=True)
        ):
            check_explain(child, child_def, f"{here}.children[{i}]", ev, pid)
    else:
        assert not node.children


def expected_audience(world: World, now: int, spec: AudienceSpec) -> frozenset[str]:
    m = world.memberships(now)
    result = set().union(*(m[s] for s in spec.include))
    for s in spec.require:
        result &= m[s]
    for s in spec.exclude:
        result -= m[s]
    people = world.people
    if not spec.include_unsubscribed:
        result = {p for p in result if not people[p]["unsubscribed"]}
    if spec.channel == "email":
        result = {p for p in result if people[p]["email"]}
    elif spec.channel == "phone":
        result = {p for p in result if people[p]["phone"]}
    elif spec.channel == "device":
        result = {
            p
            for p in result
            if (spec.device_platform in people[p]["devices"].values())
            or (not spec.device_platform and people[p]["devices"])
        }
    return frozenset(result)


# SEGSVC_EXAMPLES=2000 pytest ... hunts longer.
EXAMPLES = int(os.environ.get("SEGSVC_EXAMPLES", "0"))

EngineMachine.TestCase.settings = settings(
    max_examples=EXAMPLES or 60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestEngineAgainstBruteForce = EngineMachine.TestCase


class RetentionMachine(EngineMachine):
    """The same histories with events kept 45 days: every tick moves the retention floor,
    "ever" and long windows lose what falls past it, and old events are refused."""

    event_retention = 45 * 86_400


RetentionMachine.TestCase.settings = settings(
    EngineMachine.TestCase.settings, max_examples=EXAMPLES or 30
)
TestRetentionAgainstBruteForce = RetentionMachine.TestCase


# ---------------------------------------------------------------------------------------------
# Restart equivalence on one history: log replay alone and checkpoint give the same state.


@settings(max_examples=EXAMPLES or 40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=st.sampled_from(STARTS),
    data=st.data(),
)
def test_restart_by_log_replay_and_by_checkpoint_agree(start: int, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory(prefix="segsvc-restart-") as tmp:
        first, second = Path(tmp) / "a", Path(tmp) / "b"
        clock = FakeClock(start)
        h = Harness(
            first,
            clock,
            make_config(
                first, change_retention_seconds=RETAIN_ALL, event_retention_seconds=RETAIN_ALL
            ),
        )
        world = World()
        h.ws.upsert_people([PersonUpsert("p0"), PersonUpsert("p1")])
        world.upsert([PersonUpsert("p0"), PersonUpsert("p1")], clock.now())
        for step in range(data.draw(st.integers(1, 12))):
            choice = data.draw(st.integers(0, 3))
            if choice == 0 or step == 0:
                tree = data.draw(trees(clock.now(), tuple(world.segments), events=EVENTS))
                info = h.ws.create_segment(f"s{step}", "", True, tree)
                world.segments[info.id] = SegmentModel(info.id, info.name, True, tree)
            elif choice == 1:
                batch = data.draw(st.lists(upserts(clock.now()), min_size=1, max_size=3))
                h.ws.upsert_people(batch)
                world.upsert(batch, clock.now())
            elif choice == 2:
                keys = data.draw(st.lists(person_keys(), min_size=1, max_size=2))
                h.ws.delete_people([key(k, v) for k, v in keys])
                world.delete(keys)
            else:
                clock.advance(data.draw(st.sampled_from(ADVANCES)))
                h.ws.tick()
        before = all_members(h.ws)
        assert before == world.memberships(clock.now())
        h.engine.close(checkpoint=False)
        shutil.copytree(first, second)
        # One copy restarts by replaying the whole log ...
        replayed = Harness(
            first,
            clock,
            make_config(
                first, change_retention_seconds=RETAIN_ALL, event_retention_seconds=RETAIN_ALL
            ),
        )
        # ... the other writes a checkpoint first and restarts from it.
        checkpointed = Harness(
            second,
            clock,
            make_config(
                second, change_retention_seconds=RETAIN_ALL, event_retention_seconds=RETAIN_ALL
            ),
        )
        checkpointed.reopen(checkpoint=True)
        try:
            assert all_members(replayed.ws) == before
            assert all_members(checkpointed.ws) == before
            # Both keep working the same way after the restart.
            batch = [PersonUpsert(pid, add_tags=("vip",)) for pid in ID_POOL[:4]]
            replayed.ws.upsert_people(batch)
            checkpointed.ws.upsert_people(batch)
            world.upsert(batch, clock.now())
            expected = world.memberships(clock.now())
            assert all_members(replayed.ws) == expected
            assert all_members(checkpointed.ws) == expected
        finally:
            replayed.close()
            checkpointed.close()
