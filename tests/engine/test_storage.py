"""Persistence of a workspace: restart by log replay, by checkpoint, by checkpoint plus the log
after it; a full map refused cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_harness import Harness, all_members, key, make_config, replay_feed

from segsvc.engine.clock import FakeClock
from segsvc.engine.conditions import AttributeCondition, Group, SegmentCondition, TagCondition
from segsvc.engine.errors import ResourceExhausted
from segsvc.engine.people import PersonUpsert
from segsvc.engine.values import Timestamp


def history(h: Harness) -> None:
    """A bit of everything: people, manual and dynamic segments (one time-dependent, one
    referencing another), member changes, deletions, a definition edit and a tick."""
    ws = h.ws
    now = h.clock.now()
    ws.upsert_people(
        [
            PersonUpsert(
                f"p{i}",
                email=f"p{i}@x.io" if i % 2 else None,
                attributes={"n": float(i), "seen": Timestamp(now - 30 * i)},
                add_tags=("even",) if i % 2 == 0 else (),
            )
            for i in range(8)
        ]
    )
    manual = ws.create_segment("manual", "", False, None).id
    ws.change_members(manual, [key("id", f"p{i}") for i in range(0, 8, 3)], True)
    recent = AttributeCondition("within_last", attribute="seen", seconds=100)
    ws.create_segment("recent", "", True, recent)
    tree = Group("any", (TagCondition("even"), SegmentCondition(manual)))
    combined = ws.create_segment("combined", "", True, tree).id
    ws.delete_people([key("id", "p3")])
    ws.update_segment(
        combined, None, None, Group("all", (TagCondition("even"), SegmentCondition(manual, True)))
    )
    h.clock.advance(45)
    ws.tick()
    ws.upsert_people(
        [PersonUpsert("p9", add_tags=("even",)), PersonUpsert("p0", remove_tags=("even",))]
    )


def snapshot(h: Harness) -> tuple[object, ...]:
    ws = h.ws
    people = {}
    for pid in [f"p{i}" for i in range(10)]:
        try:
            people[pid] = ws.get_person(key("id", pid)).record
        except Exception:
            people[pid] = None
    return all_members(ws), people, ws.head_seq(), ws.read_changes(0, frozenset(), 10**6)[0]


@pytest.mark.parametrize("checkpoint", [False, True])
def test_restart_gives_the_same_state(tmp_path: Path, checkpoint: bool) -> None:
    h = Harness(tmp_path, FakeClock(), make_config(tmp_path))
    try:
        history(h)
        before = snapshot(h)
        h.reopen(checkpoint=checkpoint)
        assert snapshot(h) == before
        # The next write continues the feed where it stopped.
        head = h.ws.head_seq()
        h.ws.upsert_people([PersonUpsert("p1", add_tags=("even",))])
        changes, _ = h.ws.read_changes(head, frozenset())
        assert changes and changes[0].seq == head + 1
    finally:
        h.close()


def test_checkpoint_then_log_tail(tmp_path: Path) -> None:
    h = Harness(tmp_path, FakeClock(), make_config(tmp_path))
    reference = Harness(tmp_path / "ref", FakeClock(), make_config(tmp_path / "ref"))
    try:
        history(h)
        h.ws.checkpoint()
        history(reference)
        for harness in (h, reference):
            harness.ws.upsert_people([PersonUpsert("p2", add_tags=("x",))])
            harness.clock.advance(60)
            harness.ws.tick()
        h.reopen(checkpoint=False)  # the checkpoint, then the operations after it
        assert snapshot(h) == snapshot(reference)
        rebuilt, _ = replay_feed(h.ws)
        assert {s: frozenset(m) for s, m in rebuilt.items() if m} == {
            s: m for s, m in all_members(h.ws).items() if m
        }
    finally:
        h.close()
        reference.close()


def test_checkpoint_every_n_operations(tmp_path: Path) -> None:
    h = Harness(tmp_path, FakeClock(), make_config(tmp_path, checkpoint_every_ops=3))
    try:
        history(h)
        before = snapshot(h)
        h.reopen(checkpoint=False)
        assert snapshot(h) == before
    finally:
        h.close()


def test_checkpoint_with_one_person_without_email(tmp_path: Path) -> None:
    """A checkpoint of a workspace whose only person has no email (or no phone) cannot be
    used: the ordinal -> email list is stored joined with NUL, and [None] joins to "", which
    loads back as an empty list. After the restart list_members raises IndexError and the
    next new person cannot be written."""
    h = Harness(tmp_path, FakeClock(), make_config(tmp_path))
    try:
        h.ws.upsert_people([PersonUpsert("only")])
        sid = h.ws.create_segment("m", "", False, None).id
        h.ws.change_members(sid, [key("id", "only")], True)
        h.reopen(checkpoint=True)
        rows, _, _ = h.ws.list_members(sid)
        assert [(r.id, r.email, r.phone) for r in rows] == [("only", None, None)]
        assert [r.outcome for r in h.ws.upsert_people([PersonUpsert("second")])] == ["created"]
    finally:
        h.close()


def test_checkpoint_with_equal_leaves_spelled_differently(tmp_path: Path) -> None:
    """0.0 and -0.0 are the same number, so "n equals 0.0" and "n equals -0.0" share one
    maintained leaf. The checkpoint names leaves by repr, which differs; once the segment
    that created the leaf is gone, the checkpoint stores it as "...0.0" while the surviving
    segment looks for "...-0.0": the workspace no longer loads (KeyError)."""
    h = Harness(tmp_path, FakeClock(), make_config(tmp_path))
    try:
        h.ws.upsert_people([PersonUpsert("zero", attributes={"n": 0.0}), PersonUpsert("one")])
        first = h.ws.create_segment(
            "zero", "", True, AttributeCondition("equals", attribute="n", value=0.0)
        ).id
        second = h.ws.create_segment(
            "minus zero", "", True, AttributeCondition("equals", attribute="n", value=-0.0)
        ).id
        h.ws.delete_segments([first])
        h.reopen(checkpoint=True)
        assert all_members(h.ws) == {second: {"zero"}}
    finally:
        h.close()


def test_a_full_map_is_refused_and_nothing_is_half_written(tmp_path: Path) -> None:
    h = Harness(tmp_path, FakeClock(), make_config(tmp_path, map_size=2 * 1024 * 1024))
    try:
        sid = h.ws.create_segment("big", "", True, AttributeCondition("exists", attribute="x0"))
        big = "x" * 4000
        written = 0
        with pytest.raises(ResourceExhausted) as exc:
            for batch in range(100):
                people = [
                    PersonUpsert(f"p{batch}-{i}", attributes={f"x{j}": big for j in range(10)})
                    for i in range(5)
                ]
                h.ws.upsert_people(people)
                written += 5
        assert "full" in str(exc.value)
        assert 0 < written < 500
        members = all_members(h.ws)
        assert len(members[sid.id]) == written
        # Still usable: reads, small writes, restart.
        h.ws.delete_people([key("id", "p0-0")])
        assert len(all_members(h.ws)[sid.id]) == written - 1
        before = all_members(h.ws)
        h.reopen(checkpoint=False)
        assert all_members(h.ws) == before
    finally:
        h.close()
