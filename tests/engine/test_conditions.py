"""Condition trees: validation with exact field paths, and the exact semantics of every
operator on hand-picked people, checked on the engine and on the brute force alike (so the
brute force itself is checked against answers worked out by hand from DESIGN.md)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from bruteforce import Evaluator, SegmentModel, World
from engine_harness import Harness, key, make_config, members
from strategies import ts

from segsvc.config import Limits
from segsvc.engine.clock import FakeClock
from segsvc.engine.conditions import (
    AttributeCondition,
    DeviceCondition,
    EventCondition,
    Group,
    MessageCondition,
    Node,
    PageViewCondition,
    SegmentCondition,
    TagCondition,
    Window,
)
from segsvc.engine.errors import InvalidArgument
from segsvc.engine.events import EventInput
from segsvc.engine.model import SegmentRef
from segsvc.engine.people import PersonUpsert
from segsvc.engine.values import Timestamp
from segsvc.engine.workspace import Workspace

A = "a"


def attr(op: str, **kw: Any) -> AttributeCondition:
    kw.setdefault("attribute", A)
    return AttributeCondition(op, **kw)


def fields_of(exc: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [v.field for v in exc.value.violations]


def refused(ws: Workspace, tree: Node | None) -> list[str]:
    """The field paths a dynamic segment with this tree is refused for; checks nothing was
    saved."""
    before = sorted(ws.state.segments)
    with pytest.raises(InvalidArgument) as exc:
        ws.create_segment("refused", "", True, tree)
    assert sorted(ws.state.segments) == before
    return fields_of(exc)


# ---------------------------------------------------------------------------------------------
# Validation: every refusal names the exact field path


def test_empty_group_names_its_children(ws: Workspace) -> None:
    assert refused(ws, Group("all", ())) == ["conditions.group.children"]


def test_nested_empty_group_names_the_full_path(ws: Workspace) -> None:
    tree = Group("all", (TagCondition("x"), Group("any", (TagCondition("y"), Group("all", ())))))
    assert refused(ws, tree) == ["conditions.group.children[1].group.children[1].group.children"]


def test_missing_tree_for_dynamic_segment(ws: Workspace) -> None:
    assert refused(ws, None) == ["conditions"]


@pytest.mark.parametrize(
    ("condition", "path"),
    [
        (attr("greater_than", value="x"), "conditions.attribute.value"),
        (attr("contains", value=5.0), "conditions.attribute.value"),
        (attr("contains", value=""), "conditions.attribute.value"),
        (attr("before", value=5.0), "conditions.attribute.value"),
        (attr("after", value="2026-01-01"), "conditions.attribute.value"),
        (attr("between", value=1.0, upper=Timestamp(5)), "conditions.attribute.upper"),
        (attr("between", value=1.0), "conditions.attribute.upper"),
        (attr("between", value=5.0, upper=1.0), "conditions.attribute.upper"),
        (attr("less_than", value=True), "conditions.attribute.value"),
        (attr("equals"), "conditions.attribute.value"),
        (attr("one_of"), "conditions.attribute.values"),
        (attr("within_last", seconds=0), "conditions.attribute.duration"),
        (attr("more_than_ago", seconds=-5), "conditions.attribute.duration"),
        (attr("no_such_operator", value=1.0), "conditions.attribute.operator"),
        (attr("equals", attribute="", value=1.0), "conditions.attribute.attribute"),
        (AttributeCondition("exists"), "conditions.attribute"),
        (AttributeCondition("exists", field="birthday"), "conditions.attribute.field"),
        (AttributeCondition("equals", field="email", value=5.0), "conditions.attribute.value"),
        (AttributeCondition("is_true", field="email"), "conditions.attribute.operator"),
        (
            AttributeCondition("contains", field="created_at", value="x"),
            "conditions.attribute.operator",
        ),
        (AttributeCondition("equals", field="created_at", value="x"), "conditions.attribute.value"),
        (
            AttributeCondition("greater_than", field="unsubscribed", value=1.0),
            "conditions.attribute.operator",
        ),
        (
            AttributeCondition("one_of", field="id", values=("a", 1.0)),
            "conditions.attribute.values[1]",
        ),
        (TagCondition(""), "conditions.tag.tag"),
        (SegmentCondition(0), "conditions.segment.segment_id"),
        (SegmentCondition(999), "conditions.segment.segment_id"),
    ],
)
def test_bad_leaf_names_its_field(ws: Workspace, condition: Node, path: str) -> None:
    assert refused(ws, condition) == [path]


def test_every_violation_is_reported_at_once(ws: Workspace) -> None:
    tree = Group(
        "any",
        (attr("greater_than", value="x"), Group("all", ()), SegmentCondition(42)),
    )
    assert refused(ws, tree) == [
        "conditions.group.children[0].attribute.value",
        "conditions.group.children[1].group.children",
        "conditions.group.children[2].segment.segment_id",
    ]


def test_a_string_longer_than_the_limit_is_refused(tmp_path: Path) -> None:
    config = make_config(tmp_path, limits=Limits(max_string_length=8))
    h = Harness(tmp_path, FakeClock(), config)
    try:
        assert refused(h.ws, attr("equals", value="x" * 9)) == ["conditions.attribute.value"]
        assert refused(h.ws, TagCondition("t" * 9)) == ["conditions.tag.tag"]
    finally:
        h.close()


def chain(depth: int) -> Node:
    """`depth` levels: depth - 1 nested groups around one tag leaf."""
    node: Node = TagCondition("x")
    for _ in range(depth - 1):
        node = Group("all", (node,))
    return node


def test_depth_limit(tmp_path: Path) -> None:
    h = Harness(tmp_path, FakeClock(), make_config(tmp_path, limits=Limits(max_tree_depth=3)))
    try:
        h.ws.create_segment("deep enough", "", True, chain(3))
        assert refused(h.ws, chain(4)) == ["conditions" + ".group.children[0]" * 3 + ".tag"]
    finally:
        h.close()


def test_node_limit(tmp_path: Path) -> None:
    h = Harness(tmp_path, FakeClock(), make_config(tmp_path, limits=Limits(max_tree_nodes=5)))
    try:
        four = Group("any", tuple(TagCondition(f"t{i}") for i in range(4)))
        h.ws.create_segment("five nodes", "", True, four)
        five = Group("any", tuple(TagCondition(f"t{i}") for i in range(5)))
        assert refused(h.ws, five) == ["conditions"]
    finally:
        h.close()


def test_default_limits_refuse_a_huge_tree(ws: Workspace) -> None:
    wide = Group("any", tuple(TagCondition(f"t{i}") for i in range(300)))
    assert refused(ws, wide) == ["conditions"]
    assert refused(ws, chain(50))[0].startswith("conditions.group.children[0]")


def test_manual_segment_with_conditions_is_refused(ws: Workspace) -> None:
    with pytest.raises(InvalidArgument) as exc:
        ws.create_segment("manual", "", False, TagCondition("x"))
    assert fields_of(exc) == ["conditions"]
    assert not ws.state.segments


def test_self_reference_and_cycles_are_refused_on_update(ws: Workspace) -> None:
    a = ws.create_segment("a", "", True, TagCondition("x")).id
    b = ws.create_segment("b", "", True, SegmentCondition(a)).id
    c = ws.create_segment("c", "", True, Group("all", (TagCondition("y"), SegmentCondition(b))))
    with pytest.raises(InvalidArgument) as exc:
        ws.update_segment(a, None, None, SegmentCondition(a))
    assert fields_of(exc) == ["conditions.segment.segment_id"]
    # a -> c -> b -> a
    cycle = Group("any", (TagCondition("z"), SegmentCondition(c.id, negate=True)))
    with pytest.raises(InvalidArgument) as exc:
        ws.update_segment(a, None, None, cycle)
    assert fields_of(exc) == ["conditions.group.children[1].segment.segment_id"]
    assert "cycle" in str(exc.value)
    # Nothing was saved.
    assert ws.get_segment(a).definition == TagCondition("x")
    assert ws.get_segment(a).referenced_by == (SegmentRef(b, "b"),)


# ---------------------------------------------------------------------------------------------
# Known gaps: condition operands the engine cannot evaluate consistently must be refused (or
# evaluated per DESIGN.md). These fail until the engine is fixed.


def test_nan_operand_is_refused(ws: Workspace) -> None:
    # Person values refuse NaN ("numbers must be finite"); a condition operand must too:
    # comparisons with NaN have no answer, and the engine's two evaluation paths (bit-sliced
    # index and per-record check) disagree on it.
    assert refused(ws, attr("greater_than", value=float("nan"))) == ["conditions.attribute.value"]


def accepted_or_refused(ws: Workspace, tree: Node, field: str, expected: set[str]) -> None:
    """Either the engine refuses the operand at `field`, or it answers as DESIGN.md says."""
    try:
        sid = ws.create_segment("edge", "", True, tree).id
    except InvalidArgument as exc:
        assert [v.field for v in exc.violations] == [field]
        return
    assert members(ws, sid) == expected


def test_timestamp_operand_after_year_9999(ws: Workspace) -> None:
    ws.upsert_people([PersonUpsert("p", attributes={A: Timestamp(ts("2026-01-01T00:00:00"))})])
    # before X is t < X: everyone with a timestamp is before a time after year 9999.
    accepted_or_refused(
        ws, attr("before", value=Timestamp(2**40)), "conditions.attribute.value", {"p"}
    )


def test_timestamp_operand_before_year_1(ws: Workspace) -> None:
    ws.upsert_people([PersonUpsert("p", attributes={A: Timestamp(ts("2026-01-01T00:00:00"))})])
    accepted_or_refused(
        ws, attr("after", value=Timestamp(-(2**39))), "conditions.attribute.value", {"p"}
    )


def test_within_last_longer_than_the_calendar(ws: Workspace) -> None:
    now = ws.clock.now()
    ws.upsert_people([PersonUpsert("p", attributes={A: Timestamp(now - 10)})])
    # now - D <= t <= now holds for any D >= 10.
    accepted_or_refused(
        ws, attr("within_last", seconds=10**12), "conditions.attribute.duration", {"p"}
    )


# ---------------------------------------------------------------------------------------------
# Semantics, on hand-picked people: engine == brute force == the answer worked out by hand


NOW = ts("2027-02-28T12:00:00")  # 2027 has no 29 February


class Case:
    """People loaded into a fresh engine and into the brute force, at one clock time."""

    def __init__(self, tmp: Path, people: list[PersonUpsert], now: int = NOW) -> None:
        self.h = Harness(tmp / "data", FakeClock(now), make_config(tmp / "data"))
        self.world = World()
        self.segments = 0
        assert not [r for r in self.h.ws.upsert_people(people) if r.rejected]
        self.world.upsert(people, now)

    def members(self, tree: Node) -> frozenset[str]:
        """The segment's members in the engine, asserted equal to the brute force."""
        self.segments += 1
        ws = self.h.ws
        sid = ws.create_segment(f"case {self.segments}", "", True, tree).id
        self.world.segments[sid] = SegmentModel(sid, "", True, tree)
        self.last = sid
        got = members(ws, sid)
        assert got == Evaluator(self.world, ws.clock.now()).members(sid), tree
        count, _ = ws.preview(tree)
        assert count == len(got)
        return got

    def close(self) -> None:
        self.h.close()


@pytest.fixture
def case(tmp_path: Path) -> Any:
    made: list[Case] = []

    def make(people: list[PersonUpsert], now: int = NOW) -> Case:
        c = Case(tmp_path / str(len(made)), people, now)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def with_a(pid: str, value: Any) -> PersonUpsert:
    return PersonUpsert(pid, attributes={A: value})


COLLIDING = [
    with_a("num", 1.0),
    with_a("bool", True),
    with_a("str", "1"),
    with_a("ts", Timestamp(1)),
    PersonUpsert("none"),
]


def test_equality_is_typed(case: Any) -> None:
    c = case(COLLIDING)
    assert c.members(attr("equals", value=1.0)) == {"num"}
    assert c.members(attr("equals", value=True)) == {"bool"}
    assert c.members(attr("equals", value="1")) == {"str"}
    assert c.members(attr("equals", value=Timestamp(1))) == {"ts"}
    assert c.members(attr("not_equals", value=1.0)) == {"bool", "str", "ts", "none"}
    assert c.members(attr("one_of", values=(1.0, "1"))) == {"num", "str"}
    assert c.members(attr("one_of", values=(True, Timestamp(1)))) == {"bool", "ts"}


def test_ranges_see_only_their_own_type(case: Any) -> None:
    c = case(COLLIDING)
    assert c.members(attr("greater_than", value=0.0)) == {"num"}
    assert c.members(attr("less_or_equal", value=1.0)) == {"num"}
    assert c.members(attr("after", value=Timestamp(0))) == {"ts"}
    assert c.members(attr("between", value=Timestamp(1), upper=Timestamp(1))) == {"ts"}
    assert c.members(attr("is_true")) == {"bool"}
    assert c.members(attr("is_false")) == set()
    assert c.members(attr("exists")) == {"num", "bool", "str", "ts"}
    assert c.members(attr("not_exists")) == {"none"}


def test_between_is_inclusive_and_numbers_are_floats(case: Any) -> None:
    c = case([with_a(f"n{i}", float(i)) for i in range(5)] + [with_a("neg0", -0.0)])
    assert c.members(attr("between", value=1.0, upper=3.0)) == {"n1", "n2", "n3"}
    assert c.members(attr("greater_or_equal", value=3.0)) == {"n3", "n4"}
    assert c.members(attr("greater_than", value=3.0)) == {"n4"}
    assert c.members(attr("less_than", value=1.0)) == {"n0", "neg0"}
    assert c.members(attr("equals", value=0.0)) == {"n0", "neg0"}
    assert c.members(attr("equals", value=-0.0)) == {"n0", "neg0"}


def test_text_operators_casefold_both_sides(case: Any) -> None:
    c = case(
        [
            with_a("sharp", "Straße"),
            with_a("upper", "STRASSE"),
            with_a("lower", "strasse"),
            with_a("other", "abc"),
            with_a("number", 5.0),
            PersonUpsert("none"),
        ]
    )
    three = {"sharp", "upper", "lower"}
    assert c.members(attr("contains", value="ß")) == three
    assert c.members(attr("contains", value="SS")) == three
    assert c.members(attr("starts_with", value="sTR")) == three
    assert c.members(attr("ends_with", value="SSE")) == three
    assert c.members(attr("ends_with", value="ße")) == three
    assert c.members(attr("not_contains", value="ss")) == {"other", "number", "none"}
    # equals stays exact
    assert c.members(attr("equals", value="Straße")) == {"sharp"}
    assert c.members(attr("equals", value="strasse")) == {"lower"}


def test_time_windows_are_exact_to_the_second(case: Any) -> None:
    d = 7 * 86_400
    c = case(
        [
            with_a("edge", Timestamp(NOW - d)),
            with_a("past_edge", Timestamp(NOW - d - 1)),
            with_a("now", Timestamp(NOW)),
            with_a("future", Timestamp(NOW + 1)),
            with_a("number", float(NOW)),
        ]
    )
    assert c.members(attr("within_last", seconds=d)) == {"edge", "now"}
    assert c.members(attr("more_than_ago", seconds=d)) == {"past_edge"}
    assert c.members(attr("before", value=Timestamp(NOW))) == {"edge", "past_edge"}
    assert c.members(attr("after", value=Timestamp(NOW))) == {"future"}


def test_within_last_expires_people_as_time_passes(case: Any) -> None:
    c = case([with_a("p", Timestamp(NOW - 30))])
    ws = c.h.ws
    sid = ws.create_segment("recent", "", True, attr("within_last", seconds=60)).id
    assert members(ws, sid) == {"p"}
    c.h.clock.advance(30)
    ws.tick()
    assert members(ws, sid) == {"p"}  # exactly 60 s ago: still within the last 60 s
    head = ws.head_seq()
    c.h.clock.advance(1)
    ws.tick()
    assert members(ws, sid) == set()
    changes, _ = ws.read_changes(head, frozenset([sid]))
    assert [(ch.person_id, ch.entered, ch.at) for ch in changes] == [("p", False, NOW + 31)]


LEAP_BORN = Timestamp(ts("2024-02-29T08:00:00"))


def birthdays() -> list[PersonUpsert]:
    return [
        with_a("leap", LEAP_BORN),
        with_a("feb28", Timestamp(ts("2001-02-28T23:59:59"))),
        with_a("mar1", Timestamp(ts("1999-03-01T00:00:00"))),
        with_a("feb3", Timestamp(ts("1980-02-03T10:00:00"))),
        with_a("old", Timestamp(ts("1955-02-28T00:00:00"))),
        with_a("number", 229.0),
    ]


def test_anniversary_on_28_february_of_a_common_year(case: Any) -> None:
    c = case(birthdays(), now=ts("2027-02-28T00:00:00"))
    assert c.members(attr("anniversary_today")) == {"leap", "feb28", "old"}
    assert c.members(attr("anniversary_this_month")) == {"leap", "feb28", "feb3", "old"}


def test_anniversary_in_a_leap_year(case: Any) -> None:
    c = case(birthdays(), now=ts("2028-02-28T23:59:59"))
    assert c.members(attr("anniversary_today")) == {"feb28", "old"}
    c.h.clock.advance(1)
    c.h.ws.tick()
    assert c.members(attr("anniversary_today")) == {"leap"}


def test_anniversary_moves_with_ticks(case: Any) -> None:
    c = case(birthdays(), now=ts("2027-02-27T23:59:59"))
    ws = c.h.ws
    today = ws.create_segment("birthday", "", True, attr("anniversary_today")).id
    assert members(ws, today) == set()
    c.h.clock.advance(1)
    ws.tick()
    assert members(ws, today) == {"leap", "feb28", "old"}
    c.h.clock.advance(86_400)
    ws.tick()
    assert members(ws, today) == {"mar1"}


def test_builtin_fields(case: Any) -> None:
    c = case(
        [
            PersonUpsert("Ann", email=" Ann@Example.COM ", phone="+1 (555) 010-0001"),
            PersonUpsert("bob", email="bob@example.com", unsubscribed=True),
            PersonUpsert("cy", phone="0044 20 7946 0958", created_at=Timestamp(NOW - 86_400)),
        ]
    )
    assert c.members(AttributeCondition("equals", field="email", value="ann@example.com")) == {
        "Ann"
    }
    # stored trimmed and case-folded, and the operand is compared in the same form
    assert c.members(AttributeCondition("equals", field="email", value=" Ann@Example.COM")) == {
        "Ann"
    }
    assert c.members(AttributeCondition("equals", field="phone", value="+1 555 010 0001")) == {
        "Ann"
    }
    assert c.members(
        AttributeCondition("one_of", field="phone", values=("+44 20 7946 0958", "+15550100009"))
    ) == {"cy"}
    assert c.members(AttributeCondition("contains", field="email", value="EXAMPLE")) == {
        "Ann",
        "bob",
    }
    assert c.members(AttributeCondition("not_exists", field="email")) == {"cy"}
    assert c.members(AttributeCondition("equals", field="phone", value="+15550100001")) == {"Ann"}
    assert c.members(AttributeCondition("starts_with", field="phone", value="+44")) == {"cy"}
    assert c.members(AttributeCondition("equals", field="id", value="ann")) == set()
    assert c.members(AttributeCondition("starts_with", field="id", value="a")) == {"Ann"}
    assert c.members(AttributeCondition("is_true", field="unsubscribed")) == {"bob"}
    assert c.members(AttributeCondition("is_false", field="unsubscribed")) == {"Ann", "cy"}
    assert c.members(AttributeCondition("within_last", field="created_at", seconds=3600)) == {
        "Ann",
        "bob",
    }
    assert c.members(AttributeCondition("before", field="created_at", value=Timestamp(NOW))) == {
        "cy"
    }


def test_tags_and_devices_are_case_sensitive(case: Any) -> None:
    c = case(
        [
            PersonUpsert("vip", add_tags=("vip",), devices=(("d1", "ios"),)),
            PersonUpsert("VIP", add_tags=("VIP",), devices=(("d1", "IOS"), ("d2", "web"))),
            PersonUpsert("none"),
        ]
    )
    assert c.members(TagCondition("vip")) == {"vip"}
    assert c.members(TagCondition("vip", negate=True)) == {"VIP", "none"}
    assert c.members(DeviceCondition("ios")) == {"vip"}
    assert c.members(DeviceCondition("")) == {"vip", "VIP"}
    assert c.members(DeviceCondition("", negate=True)) == {"none"}
    assert c.members(DeviceCondition("ios", negate=True)) == {"VIP", "none"}


def test_groups_and_negation(case: Any) -> None:
    c = case(
        [
            PersonUpsert("both", add_tags=("x", "y")),
            PersonUpsert("x", add_tags=("x",)),
            PersonUpsert("y", add_tags=("y",)),
            PersonUpsert("none"),
        ]
    )
    xy = (TagCondition("x"), TagCondition("y"))
    assert c.members(Group("all", xy)) == {"both"}
    assert c.members(Group("any", xy)) == {"both", "x", "y"}
    assert c.members(Group("all", xy, negate=True)) == {"x", "y", "none"}
    assert c.members(Group("any", xy, negate=True)) == {"none"}


def test_segment_conditions_follow_the_referenced_segment(case: Any) -> None:
    c = case([PersonUpsert(p) for p in ("a", "b", "c")])
    ws = c.h.ws
    manual = ws.create_segment("manual", "", False, None).id
    c.world.segments[manual] = SegmentModel(manual, "manual", False)
    ws.change_members(manual, [key("id", "a")], True)
    c.world.change_members(manual, [("id", "a")], True)
    assert c.members(SegmentCondition(manual)) == {"a"}
    inside = c.last
    assert c.members(SegmentCondition(manual, negate=True)) == {"b", "c"}
    outside = c.last
    ws.change_members(manual, [key("id", "b")], True)
    assert members(ws, inside) == {"a", "b"}
    assert members(ws, outside) == {"c"}
    ws.delete_people([key("id", "a")])
    assert members(ws, inside) == {"b"}
    assert members(ws, outside) == {"c"}


def test_definition_round_trips_through_storage(tmp_path: Path) -> None:
    tree = Group(
        "any",
        (
            attr("between", value=Timestamp(5), upper=Timestamp(9)),
            attr("one_of", values=(1.0, True, "1", Timestamp(1))),
            Group("all", (TagCondition("t", negate=True), DeviceCondition("ios")), negate=True),
            AttributeCondition("within_last", field="created_at", seconds=60),
        ),
    )
    h = Harness(tmp_path, FakeClock(), make_config(tmp_path))
    try:
        sid = h.ws.create_segment("s", "", True, tree).id
        h.reopen(checkpoint=False)
        assert h.ws.get_segment(sid).definition == tree
        h.reopen(checkpoint=True)
        got = h.ws.get_segment(sid).definition
        assert got == tree
        # Typed all the way through: 1.0, True and Timestamp(1) stay apart.
        assert isinstance(got, Group)
        one_of = got.children[1]
        assert isinstance(one_of, AttributeCondition)
        assert [type(v) for v in one_of.values] == [float, bool, str, Timestamp]
    finally:
        h.close()


def test_update_recomputes_membership(case: Any) -> None:
    c = case([with_a("one", 1.0), with_a("two", 2.0)])
    ws = c.h.ws
    sid = ws.create_segment("s", "", True, attr("equals", value=1.0)).id
    dependent = ws.create_segment("d", "", True, SegmentCondition(sid, negate=True)).id
    ws.update_segment(sid, None, None, attr("equals", value=2.0))
    assert members(ws, sid) == {"two"}
    assert members(ws, dependent) == {"one"}
    renamed = ws.update_segment(sid, "renamed", None, None)
    assert renamed.name == "renamed" and renamed.definition == attr("equals", value=2.0)
    assert replace(renamed, name="s").member_count == 1


# ---------------------------------------------------------------------------------------------
# Events, page views and messages


def track(c: Case, events: list[tuple[str, str, int, dict[str, Any]]]) -> None:
    """(person id, name, seconds ago, properties) for each event, in the engine and the model."""
    now = c.h.clock.now()
    inputs = [
        EventInput(key("id", pid), name, Timestamp(now - ago), props)
        for pid, name, ago, props in events
    ]
    assert [r.outcome for r in c.h.ws.track_events(inputs)] == ["tracked"] * len(events)
    c.world.track([(("id", p), n, now - ago, props) for p, n, ago, props in events], now)


def test_event_counts_windows_and_negatives(case: Any) -> None:
    c = case([PersonUpsert(p) for p in ("never", "once", "twice", "old")])
    day = 86_400
    track(
        c,
        [
            ("once", "purchase", 0, {"plan": "pro", "amount": 10.0}),
            ("twice", "purchase", 7 * day, {"plan": "Pro"}),
            ("twice", "purchase", 10, {"plan": "basic", "amount": 5.0}),
            ("old", "purchase", 7 * day + 1, {}),
        ],
    )
    assert c.members(EventCondition("purchase")) == {"once", "twice", "old"}
    recent = Window(within_last_seconds=7 * day)
    assert c.members(EventCondition("purchase", window=recent)) == {"once", "twice"}
    assert c.members(
        EventCondition("purchase", count_operator="at_least", count=2, window=recent)
    ) == {"twice"}
    # "at most" and "exactly 0" include people who never did it
    assert c.members(EventCondition("purchase", count_operator="at_most", count=1)) == {
        "never",
        "once",
        "old",
    }
    assert c.members(EventCondition("purchase", count_operator="exactly", count=0)) == {"never"}
    assert c.members(
        EventCondition("purchase", count_operator="exactly", count=0, window=recent)
    ) == {"never", "old"}
    # property filters use the attribute operators
    pro = AttributeCondition("equals", attribute="plan", value="pro")
    assert c.members(EventCondition("purchase", (pro,))) == {"once"}
    pro_any_case = AttributeCondition("contains", attribute="plan", value="PRO")
    assert c.members(EventCondition("purchase", (pro_any_case,))) == {"once", "twice"}
    cheap = AttributeCondition("less_than", attribute="amount", value=8.0)
    assert c.members(EventCondition("purchase", (cheap,))) == {"twice"}
    between = Window(start=Timestamp(NOW - 7 * day - 1), end=Timestamp(NOW - 7 * day))
    assert c.members(EventCondition("purchase", window=between)) == {"twice", "old"}


def test_page_views_and_messages(case: Any) -> None:
    c = case([PersonUpsert(p) for p in ("a", "b", "c")])
    track(
        c,
        [
            ("a", "page", 5, {"url": "/Pricing/team"}),
            ("b", "page", 5, {"url": "/blog/pricing"}),
            ("a", "message_opened", 5, {"campaign_id": "c1"}),
            ("b", "message_opened", 5, {"campaign_id": "c2", "message_id": "m1"}),
            ("c", "message_clicked", 5, {"campaign_id": "c1"}),
        ],
    )
    assert c.members(PageViewCondition("/Pricing/team")) == {"a"}
    assert c.members(PageViewCondition("/pricing/team")) == set()
    assert c.members(PageViewCondition("/pricing", "starts_with")) == {"a"}
    assert c.members(PageViewCondition("PRICING", "contains")) == {"a", "b"}
    assert c.members(MessageCondition("opened")) == {"a", "b"}
    assert c.members(MessageCondition("opened", campaign_id="c1")) == {"a"}
    assert c.members(MessageCondition("opened", message_id="m1")) == {"b"}
    assert c.members(MessageCondition("clicked", count_operator="at_most", count=0)) == {"a", "b"}


def test_event_window_slides_with_ticks(case: Any) -> None:
    c = case([PersonUpsert("p")])
    track(c, [("p", "signup", 50, {})])
    ws = c.h.ws
    sid = ws.create_segment("new", "", True, EventCondition("signup", window=Window(60))).id
    c.h.clock.advance(10)
    ws.tick()
    assert members(ws, sid) == {"p"}
    head = ws.head_seq()
    c.h.clock.advance(1)
    ws.tick()
    assert members(ws, sid) == set()
    changes, _ = ws.read_changes(head, frozenset())
    assert [(ch.person_id, ch.entered) for ch in changes] == [("p", False)]


def test_malformed_email_or_phone_operands_are_refused(ws: Workspace) -> None:
    # Equality on a built-in email or phone can only ever match a well-formed one.
    assert refused(ws, AttributeCondition("equals", field="email", value="not-an-email")) == [
        "conditions.attribute.value"
    ]
    assert refused(
        ws, AttributeCondition("one_of", field="phone", values=("+15550100001", "call me"))
    ) == ["conditions.attribute.values[1]"]
