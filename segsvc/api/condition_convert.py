"""Condition trees, protobuf <-> engine, both ways: a faithful translation that rejects only what
a domain node cannot express (a Condition whose oneof is unset, a Value without a kind, a
fractional duration), with the field path the client sent; the engine owns every other rule."""

from __future__ import annotations

from typing import Any

from segsvc.api.scalars import (
    ACTION_WORDS,
    BUILTIN_WORDS,
    COMBINATOR_WORDS,
    COUNT_WORDS,
    OPERATOR_WORDS,
    URL_MATCH_WORDS,
    duration_seconds,
    enum_number,
    raise_if,
    required_value,
    timestamp_from_proto,
    timestamp_to_proto,
    value_from_proto,
    value_to_proto,
)
from segsvc.engine import conditions as c
from segsvc.engine.errors import Violation
from segsvc.v1 import conditions_pb2

# -- condition trees: proto -> domain ----------------------------------------------------------


def condition_from_proto(msg: conditions_pb2.Condition, path: str = "conditions") -> c.Node:
    """The definition a client sent; INVALID_ARGUMENT listing every node that has no kind."""
    violations: list[Violation] = []
    node = _node(msg, path, violations)
    raise_if(violations)
    assert node is not None, "a node fails to decode only with a violation"
    return node


def optional_condition(owner: Any, field: str = "conditions") -> c.Node | None:
    """`owner.conditions` decoded, or None when the message field is not set."""
    return condition_from_proto(getattr(owner, field), field) if owner.HasField(field) else None


def _node(msg: conditions_pb2.Condition, path: str, out: list[Violation]) -> c.Node | None:
    kind = msg.WhichOneof("node")
    here = f"{path}.{kind}"
    if kind == "group":
        group = msg.group
        children = [
            _node(child, f"{here}.children[{i}]", out) for i, child in enumerate(group.children)
        ]
        if any(child is None for child in children):
            return None
        combinator: Any = COMBINATOR_WORDS.get(group.combinator, "")
        return c.Group(combinator, tuple(ch for ch in children if ch is not None), group.negate)
    if kind == "attribute":
        return _attribute(msg.attribute, here, out)
    if kind == "tag":
        return c.TagCondition(msg.tag.tag, msg.tag.negate)
    if kind == "device":
        return c.DeviceCondition(msg.device.platform, msg.device.negate)
    if kind == "segment":
        return c.SegmentCondition(msg.segment.segment_id, msg.segment.negate)
    if kind == "event":
        event = msg.event
        filters = [_attribute(f, f"{here}.filters[{i}]", out) for i, f in enumerate(event.filters)]
        if any(f is None for f in filters):
            return None
        return c.EventCondition(
            name=event.name,
            filters=tuple(f for f in filters if f is not None),
            count_operator=_count_operator(event.count_operator),
            count=event.count if event.HasField("count") else None,
            window=_window(event, f"{here}.window", out),
        )
    if kind == "page_view":
        view = msg.page_view
        return c.PageViewCondition(
            url=view.url,
            # UNSPECIFIED is the documented default, EQUALS; an unknown number is left for
            # the engine to reject.
            match=URL_MATCH_WORDS.get(view.match, "equals" if view.match == 0 else ""),
            count_operator=_count_operator(view.count_operator),
            count=view.count if view.HasField("count") else None,
            window=_window(view, f"{here}.window", out),
        )
    if kind == "message":
        message = msg.message
        return c.MessageCondition(
            action=ACTION_WORDS.get(message.action, ""),
            campaign_id=message.campaign_id,
            message_id=message.message_id,
            count_operator=_count_operator(message.count_operator),
            count=message.count if message.HasField("count") else None,
            window=_window(message, f"{here}.window", out),
        )
    out.append(
        Violation(
            path,
            "the condition is empty: set one of group, attribute, tag, device, segment, "
            "event, page_view or message",
        )
    )
    return None


def _attribute(
    msg: conditions_pb2.AttributeCondition, here: str, out: list[Violation]
) -> c.AttributeCondition | None:
    target = msg.WhichOneof("target")
    before = len(out)
    values = [required_value(v, f"{here}.values[{i}]", out) for i, v in enumerate(msg.values)]
    if len(out) > before:
        return None
    return c.AttributeCondition(
        operator=OPERATOR_WORDS.get(msg.operator, ""),
        attribute=msg.attribute if target == "attribute" else None,
        field=BUILTIN_WORDS.get(msg.field, "") if target == "field" else None,
        value=value_from_proto(msg.value) if msg.HasField("value") else None,
        upper=value_from_proto(msg.upper) if msg.HasField("upper") else None,
        values=tuple(v for v in values if v is not None),
        seconds=duration_seconds(msg.duration, f"{here}.duration", out),
    )


def _count_operator(number: int) -> str:
    # UNSPECIFIED means "at least", as the proto documents.
    return COUNT_WORDS.get(number, "at_least" if number == 0 else "")


def _window(owner: Any, path: str, out: list[Violation]) -> c.Window:
    if not owner.HasField("window"):
        return c.Window()
    window = owner.window
    kind = window.WhichOneof("window")
    if kind == "within_last":
        return c.Window(
            within_last_seconds=duration_seconds(window.within_last, f"{path}.within_last", out)
        )
    if kind == "between":
        span = window.between
        return c.Window(
            start=timestamp_from_proto(span.start) if span.HasField("start") else None,
            end=timestamp_from_proto(span.end) if span.HasField("end") else None,
        )
    return c.Window()


# -- condition trees: domain -> proto ----------------------------------------------------------


def condition_to_proto(node: c.Node) -> conditions_pb2.Condition:
    if isinstance(node, c.Group):
        return conditions_pb2.Condition(
            group=conditions_pb2.Group(
                combinator=enum_number(conditions_pb2.Combinator, "COMBINATOR_", node.combinator),
                children=[condition_to_proto(child) for child in node.children],
                negate=node.negate,
            )
        )
    if isinstance(node, c.AttributeCondition):
        return conditions_pb2.Condition(attribute=_attribute_to_proto(node))
    if isinstance(node, c.TagCondition):
        return conditions_pb2.Condition(
            tag=conditions_pb2.TagCondition(tag=node.tag, negate=node.negate)
        )
    if isinstance(node, c.DeviceCondition):
        return conditions_pb2.Condition(
            device=conditions_pb2.DeviceCondition(platform=node.platform, negate=node.negate)
        )
    if isinstance(node, c.SegmentCondition):
        return conditions_pb2.Condition(
            segment=conditions_pb2.SegmentCondition(segment_id=node.segment_id, negate=node.negate)
        )
    if isinstance(node, c.EventCondition):
        event = conditions_pb2.EventCondition(
            name=node.name,
            filters=[_attribute_to_proto(f) for f in node.filters],
            count_operator=enum_number(
                conditions_pb2.CountOperator, "COUNT_OPERATOR_", node.count_operator
            ),
            count=node.count,
        )
        _window_to_proto(node.window, event.window)
        return conditions_pb2.Condition(event=event)
    if isinstance(node, c.PageViewCondition):
        view = conditions_pb2.PageViewCondition(
            url=node.url,
            match=enum_number(conditions_pb2.UrlMatch, "URL_MATCH_", node.match),
            count_operator=enum_number(
                conditions_pb2.CountOperator, "COUNT_OPERATOR_", node.count_operator
            ),
            count=node.count,
        )
        _window_to_proto(node.window, view.window)
        return conditions_pb2.Condition(page_view=view)
    message = conditions_pb2.MessageCondition(
        action=enum_number(conditions_pb2.MessageAction, "MESSAGE_ACTION_", node.action),
        campaign_id=node.campaign_id,
        message_id=node.message_id,
        count_operator=enum_number(
            conditions_pb2.CountOperator, "COUNT_OPERATOR_", node.count_operator
        ),
        count=node.count,
    )
    _window_to_proto(node.window, message.window)
    return conditions_pb2.Condition(message=message)


def _attribute_to_proto(node: c.AttributeCondition) -> conditions_pb2.AttributeCondition:
    msg = conditions_pb2.AttributeCondition(
        operator=enum_number(conditions_pb2.Operator, "OPERATOR_", node.operator),
        values=[value_to_proto(v) for v in node.values],
    )
    if node.seconds:
        msg.duration.seconds = node.seconds
    if node.field is not None:
        msg.field = enum_number(conditions_pb2.BuiltinField, "BUILTIN_FIELD_", node.field)
    elif node.attribute is not None:
        msg.attribute = node.attribute
    if node.value is not None:
        msg.value.CopyFrom(value_to_proto(node.value))
    if node.upper is not None:
        msg.upper.CopyFrom(value_to_proto(node.upper))
    return msg


def _window_to_proto(window: c.Window, into: conditions_pb2.TimeWindow) -> None:
    # An "ever" window stays unset, as the client would have sent it.
    if window.within_last_seconds is not None:
        into.within_last.seconds = window.within_last_seconds
    elif window.start is not None or window.end is not None:
        if window.start is not None:
            into.between.start.CopyFrom(timestamp_to_proto(window.start))
        if window.end is not None:
            into.between.end.CopyFrom(timestamp_to_proto(window.end))
