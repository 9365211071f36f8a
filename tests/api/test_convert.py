"""Conversion proto <-> domain without a server."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from segsvc.api import convert
from segsvc.api.batches import decode_batch
from segsvc.engine import conditions as c
from segsvc.engine import state
from segsvc.engine.errors import InvalidArgument
from segsvc.engine.model import Change, ItemResult, PersonKey
from segsvc.engine.values import Timestamp
from segsvc.v1 import changes_pb2, types_pb2
from segsvc.v1 import conditions_pb2 as C


def test_both_sides_know_the_same_words():
    assert sorted(convert.OPERATOR_WORDS.values()) == sorted(c.OPERATORS)
    assert sorted(convert.BUILTIN_WORDS.values()) == sorted(c.BUILTINS)
    assert sorted(convert.COUNT_WORDS.values()) == sorted(c.COUNT_OPERATORS)
    assert sorted(convert.URL_MATCH_WORDS.values()) == sorted(c.URL_MATCHES)
    assert sorted(convert.ACTION_WORDS.values()) == sorted(c.MESSAGE_ACTIONS)
    assert sorted(convert.COMBINATOR_WORDS.values()) == ["all", "any"]
    engine_outcomes = {
        "created", "updated", "unchanged", "deleted", "added", "already_member", "removed",
        "not_a_member", "archived", "unarchived", "tracked", "not_found", "invalid",
        "conflict", "failed_precondition",
    }  # fmt: skip
    assert set(convert.OUTCOME_WORDS.values()) == engine_outcomes
    assert (state.CAUSE_DATA, state.CAUSE_DELETED) == (
        changes_pb2.CHANGE_CAUSE_DATA,
        changes_pb2.CHANGE_CAUSE_DELETED,
    )


def _ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


def _value(**kind) -> types_pb2.Value:
    return types_pb2.Value(**kind)


EVERY_KIND = C.Condition(
    group=C.Group(
        combinator=C.COMBINATOR_ANY,
        negate=True,
        children=[
            C.Condition(
                attribute=C.AttributeCondition(
                    attribute="plan",
                    operator=C.OPERATOR_ONE_OF,
                    values=[_value(string_value="a"), _value(number_value=2.5)],
                )
            ),
            C.Condition(
                attribute=C.AttributeCondition(
                    field=C.BUILTIN_FIELD_CREATED_AT,
                    operator=C.OPERATOR_BETWEEN,
                    value=_value(timestamp_value=_ts(10)),
                    upper=_value(timestamp_value=_ts(20)),
                )
            ),
            C.Condition(
                attribute=C.AttributeCondition(
                    attribute="seen",
                    operator=C.OPERATOR_WITHIN_LAST,
                    duration=duration_pb2.Duration(seconds=3600),
                )
            ),
            C.Condition(tag=C.TagCondition(tag="vip", negate=True)),
            C.Condition(device=C.DeviceCondition(platform="ios")),
            C.Condition(segment=C.SegmentCondition(segment_id=7, negate=True)),
            C.Condition(
                event=C.EventCondition(
                    name="purchase",
                    filters=[
                        C.AttributeCondition(
                            attribute="amount",
                            operator=C.OPERATOR_GREATER_THAN,
                            value=_value(number_value=10),
                        )
                    ],
                    count_operator=C.COUNT_OPERATOR_AT_MOST,
                    count=0,
                    window=C.TimeWindow(within_last=duration_pb2.Duration(seconds=86400)),
                )
            ),
            C.Condition(
                page_view=C.PageViewCondition(
                    url="/pricing",
                    match=C.URL_MATCH_STARTS_WITH,
                    count_operator=C.COUNT_OPERATOR_EXACTLY,
                    count=2,
                    window=C.TimeWindow(between=C.TimeRange(start=_ts(1), end=_ts(2))),
                )
            ),
            C.Condition(
                message=C.MessageCondition(
                    action=C.MESSAGE_ACTION_CLICKED,
                    campaign_id="spring",
                    count_operator=C.COUNT_OPERATOR_AT_LEAST,
                )
            ),
            C.Condition(
                attribute=C.AttributeCondition(
                    attribute="ok", operator=C.OPERATOR_IS_TRUE, value=_value(bool_value=True)
                )
            ),
        ],
    )
)


def test_condition_round_trip_of_every_kind():
    node = convert.condition_from_proto(EVERY_KIND)
    assert isinstance(node, c.Group)
    assert (node.combinator, node.negate) == ("any", True)
    one_of, between, within, tag, device, segment, event, page, message, flag = node.children
    assert one_of == c.AttributeCondition("one_of", attribute="plan", values=("a", 2.5))
    assert between == c.AttributeCondition(
        "between", field="created_at", value=Timestamp(10), upper=Timestamp(20)
    )
    assert isinstance(between.value, Timestamp)
    assert within.seconds == 3600
    assert (tag, device, segment) == (
        c.TagCondition("vip", True),
        c.DeviceCondition("ios", False),
        c.SegmentCondition(7, True),
    )
    assert event == c.EventCondition(
        "purchase",
        (c.AttributeCondition("greater_than", attribute="amount", value=10.0),),
        "at_most",
        0,
        c.Window(within_last_seconds=86400),
    )
    assert page == c.PageViewCondition(
        "/pricing", "starts_with", "exactly", 2, c.Window(start=Timestamp(1), end=Timestamp(2))
    )
    assert message == c.MessageCondition("clicked", "spring", "", "at_least", None, c.Window())
    assert flag.value is True
    assert convert.condition_to_proto(node) == EVERY_KIND


def test_unspecified_enums_take_the_documented_defaults_or_are_left_to_the_engine():
    node = convert.condition_from_proto(
        C.Condition(
            group=C.Group(
                children=[
                    C.Condition(page_view=C.PageViewCondition(url="/")),
                    C.Condition(event=C.EventCondition(name="x")),
                    C.Condition(attribute=C.AttributeCondition(attribute="a", operator=99)),
                    C.Condition(message=C.MessageCondition()),
                ]
            )
        )
    )
    assert isinstance(node, c.Group)
    assert node.combinator == ""  # the engine says "choose ALL or ANY" at .combinator
    page, event, attribute, message = node.children
    assert (page.match, page.count_operator, page.count) == ("equals", "at_least", None)
    assert (event.count_operator, event.count, event.window) == ("at_least", None, c.Window())
    assert attribute.operator == ""
    assert message.action == ""


def test_undecodable_nodes_are_all_reported_with_their_paths():
    tree = C.Condition(
        group=C.Group(
            combinator=C.COMBINATOR_ALL,
            children=[
                C.Condition(),
                C.Condition(
                    group=C.Group(
                        combinator=C.COMBINATOR_ANY,
                        children=[
                            C.Condition(tag=C.TagCondition(tag="t")),
                            C.Condition(
                                attribute=C.AttributeCondition(
                                    attribute="a",
                                    operator=C.OPERATOR_ONE_OF,
                                    values=[types_pb2.Value()],
                                )
                            ),
                        ],
                    )
                ),
                C.Condition(),
            ],
        )
    )
    with pytest.raises(InvalidArgument) as caught:
        convert.condition_from_proto(tree)
    assert [v.field for v in caught.value.violations] == [
        "conditions.group.children[0]",
        "conditions.group.children[1].group.children[1].attribute.values[0]",
        "conditions.group.children[2]",
    ]


def test_values_and_keys():
    assert convert.value_from_proto(_value(timestamp_value=_ts(5))) == Timestamp(5)
    ts = timestamp_pb2.Timestamp(seconds=5, nanos=900_000_000)
    assert convert.value_from_proto(_value(timestamp_value=ts)) == Timestamp(5)
    assert type(convert.value_from_proto(_value(number_value=3))) is float
    assert convert.value_from_proto(types_pb2.Value()) is None
    for v in ("s", 1.5, True, False, Timestamp(-62_135_596_800)):
        back = convert.value_from_proto(convert.value_to_proto(v))
        assert (back, type(back)) == (v, type(v))
    assert convert.person_key(types_pb2.PersonRef(email="a@b.c"), "x") == PersonKey(
        "email", "a@b.c"
    )
    with pytest.raises(InvalidArgument) as caught:
        convert.person_key(types_pb2.PersonRef(), "people[3]")
    assert caught.value.violations[0].field == "people[3]"


def test_change_and_item_result():
    change = convert.change_to_proto(Change(9, 2, "u1", False, 4, 100))
    assert (change.kind, change.cause, change.at.seconds) == (
        changes_pb2.CHANGE_KIND_EXITED,
        changes_pb2.CHANGE_CAUSE_TIME,
        100,
    )
    result = convert.item_result_to_proto(ItemResult(1, "k", "already_member"))
    assert result.outcome == types_pb2.OUTCOME_ALREADY_MEMBER


def test_batch_merge_puts_back_the_clients_positions():
    refs = [
        types_pb2.PersonRef(id="a"),
        types_pb2.PersonRef(),
        types_pb2.PersonRef(email="bad"),
        types_pb2.PersonRef(id="b"),
    ]
    batch = decode_batch(refs, convert.person_key, convert.person_ref_label, "people", 100)
    assert batch.positions == [100, 102, 103]
    # What the engine would answer for the three items it got, in its own numbering.
    engine = [
        ItemResult(0, "a", "added"),
        ItemResult(1, "email bad", "invalid", "not an email", "people[1]"),
        ItemResult(2, "b", "invalid", "nope", "people[2].email"),
    ]
    merged = batch.merge(engine)
    assert [(r.index, r.outcome, r.field) for r in merged] == [
        (100, "added", ""),
        (101, "invalid", "people[101]"),
        (102, "invalid", "people[102]"),
        (103, "invalid", "people[103].email"),
    ]
