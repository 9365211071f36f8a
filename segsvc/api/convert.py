"""Protobuf messages <-> engine values, both ways. Nothing protobuf leaves segsvc/api.

Decoding is a faithful translation, not a second validator: an enum left UNSPECIFIED becomes
the empty word (`operator=""`) and the engine, which owns the rules, rejects it with the field
path the client sent. The converter itself rejects only what a domain value cannot express at
all (a Condition or a Value whose oneof is unset), with the same path syntax the engine uses:
`conditions.group.children[2].attribute.values[0]`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from google.protobuf import duration_pb2, timestamp_pb2

from segsvc.api.csv_import import CsvRow, CsvSettings
from segsvc.engine import conditions as c
from segsvc.engine.bulk import ATTRIBUTE_VALUES, AttributeColumn, Column, PeopleColumns
from segsvc.engine.errors import InvalidArgument, Violation
from segsvc.engine.events import EventInput
from segsvc.engine.index import KIND_DTYPES
from segsvc.engine.model import (
    AudienceSpec,
    Change,
    ExplainNode,
    ItemResult,
    Member,
    PersonKey,
    PersonView,
    SegmentInfo,
)
from segsvc.engine.people import PersonUpsert
from segsvc.engine.values import Kind, Timestamp, Value, check_value
from segsvc.v1 import (
    audiences_pb2,
    changes_pb2,
    conditions_pb2,
    people_pb2,
    segments_pb2,
    types_pb2,
)

if TYPE_CHECKING:
    # Only the stubs name the generic wrapper; at run time it is EnumTypeWrapper.
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

# -- enums -------------------------------------------------------------------------------------
#
# Every proto enum maps to the engine's word by its name: OPERATOR_NOT_EQUALS <-> "not_equals".
# The tables are built from the descriptors so a value added to the proto cannot be forgotten
# here (tests/api/test_convert.py checks that both sides know the same words).


def _words(enum: Any, prefix: str) -> dict[int, str]:
    return {
        number: name.removeprefix(prefix).lower()
        for name, number in enum.items()
        if not name.endswith("_UNSPECIFIED")
    }


OPERATOR_WORDS = _words(conditions_pb2.Operator, "OPERATOR_")
BUILTIN_WORDS = _words(conditions_pb2.BuiltinField, "BUILTIN_FIELD_")
COMBINATOR_WORDS = _words(conditions_pb2.Combinator, "COMBINATOR_")
COUNT_WORDS = _words(conditions_pb2.CountOperator, "COUNT_OPERATOR_")
URL_MATCH_WORDS = _words(conditions_pb2.UrlMatch, "URL_MATCH_")
ACTION_WORDS = _words(conditions_pb2.MessageAction, "MESSAGE_ACTION_")
OUTCOME_WORDS = _words(types_pb2.Outcome, "OUTCOME_")
CHANNEL_WORDS = _words(audiences_pb2.Channel, "CHANNEL_")
LOOKUP_WORDS = _words(segments_pb2.LookupKey, "LOOKUP_KEY_")


_V = TypeVar("_V", bound=int)


def _number(enum: _EnumTypeWrapper[_V], prefix: str, word: str) -> _V:
    """The enum value named PREFIX + WORD (the inverse of `_words`)."""
    return enum.Value(prefix + word.upper())


_VALUE_KINDS = "set one of string_value, number_value, bool_value or timestamp_value"


# -- scalars -----------------------------------------------------------------------------------


def timestamp_from_proto(msg: timestamp_pb2.Timestamp) -> Timestamp:
    # segsvc works in whole seconds: nanos are dropped, as the API documents.
    return Timestamp(msg.seconds)


def optional_timestamp(owner: Any, field: str) -> Timestamp | None:
    """`owner.field` in seconds, None when unset; INVALID_ARGUMENT at `field` outside the
    years 1 to 9999 (the range google.protobuf.Timestamp documents)."""
    if not owner.HasField(field):
        return None
    seconds = timestamp_from_proto(getattr(owner, field))
    check_value(seconds, field, 0)
    return seconds


def timestamp_to_proto(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(seconds))


def _duration_seconds(msg: duration_pb2.Duration, path: str, out: list[Violation]) -> int:
    """Whole seconds of a Duration; windows are exact to the second, so a fraction is an
    error rather than something to round silently."""
    if msg.nanos:
        out.append(Violation(path, "give whole seconds (nanos must be 0)"))
    return int(msg.seconds)


def value_from_proto(msg: types_pb2.Value) -> Value | None:
    """The typed value, or None when the oneof is unset."""
    kind = msg.WhichOneof("kind")
    if kind == "string_value":
        return str(msg.string_value)
    if kind == "number_value":
        return float(msg.number_value)
    if kind == "bool_value":
        return bool(msg.bool_value)
    if kind == "timestamp_value":
        return timestamp_from_proto(msg.timestamp_value)
    return None


def value_to_proto(value: Value) -> types_pb2.Value:
    # bool and Timestamp before float/str: bool and Timestamp are ints in Python.
    if isinstance(value, bool):
        return types_pb2.Value(bool_value=value)
    if isinstance(value, Timestamp):
        return types_pb2.Value(timestamp_value=timestamp_to_proto(value))
    if isinstance(value, float):
        return types_pb2.Value(number_value=value)
    return types_pb2.Value(string_value=value)


def _required_value(msg: types_pb2.Value, path: str, violations: list[Violation]) -> Value | None:
    value = value_from_proto(msg)
    if value is None:
        violations.append(Violation(path, _VALUE_KINDS))
    return value


def _values_map(
    msgs: Mapping[str, types_pb2.Value], path: str, violations: list[Violation]
) -> dict[str, Value]:
    # The bulk-load hot path (once per attribute per person): no path string is formatted
    # unless a value is missing.
    out: dict[str, Value] = {}
    for key, msg in msgs.items():
        kind = msg.WhichOneof("kind")
        if kind == "string_value":
            out[key] = msg.string_value
        elif kind == "number_value":
            out[key] = msg.number_value
        elif kind == "bool_value":
            out[key] = msg.bool_value
        elif kind == "timestamp_value":
            out[key] = timestamp_from_proto(msg.timestamp_value)
        else:
            # The same `attributes['plan']` step the engine writes for attribute errors.
            violations.append(Violation(f"{path}[{key!r}]", _VALUE_KINDS))
    return out


def _raise_if(violations: list[Violation]) -> None:
    if violations:
        raise InvalidArgument(violations)


# -- people ------------------------------------------------------------------------------------


def person_key(msg: types_pb2.PersonRef, path: str) -> PersonKey:
    """The one conversion of a PersonRef; an unset oneof is INVALID_ARGUMENT at `path`."""
    kind = msg.WhichOneof("key")
    if kind == "id":
        return PersonKey("id", msg.id)
    if kind == "email":
        return PersonKey("email", msg.email)
    if kind == "phone":
        return PersonKey("phone", msg.phone)
    raise InvalidArgument("name the person by one of id, email or phone", path)


def person_upsert(msg: people_pb2.PersonUpsert, path: str) -> PersonUpsert:
    violations: list[Violation] = []
    attributes = _values_map(msg.attributes, f"{path}.attributes", violations)
    _raise_if(violations)
    return PersonUpsert(
        id=msg.id,
        # proto3 `optional`: unset keeps the stored value, "" removes it.
        email=msg.email if msg.HasField("email") else None,
        phone=msg.phone if msg.HasField("phone") else None,
        unsubscribed=msg.unsubscribed if msg.HasField("unsubscribed") else None,
        attributes=attributes,
        remove_attributes=tuple(msg.remove_attributes),
        add_tags=tuple(msg.add_tags),
        remove_tags=tuple(msg.remove_tags),
        devices=tuple((d.id, d.platform) for d in msg.devices),
        remove_device_ids=tuple(msg.remove_device_ids),
        created_at=timestamp_from_proto(msg.created_at) if msg.HasField("created_at") else None,
        replace=msg.replace,
    )


# -- people as columns (bulk loads) -------------------------------------------------------------

# The AttributeColumn oneof field of each kind: "strings", "numbers", ...
_COLUMN_KINDS: dict[str, Kind] = {
    path.split(".")[0]: kind for kind, path in ATTRIBUTE_VALUES.items()
}


def people_columns(msg: people_pb2.PeopleColumns, path: str = "columns") -> PeopleColumns:
    """The columns of a bulk load, decoded whole (no loop per person: repeated fields go
    straight to lists and numpy arrays). A column of the wrong length is INVALID_ARGUMENT
    naming it: the rows cannot be told apart then."""
    ids = list(msg.ids)
    n = len(ids)

    def column(owner: Any, field: str, kind: Kind, here: str) -> Column | None:
        if not owner.HasField(field):
            return None
        sub = getattr(owner, field)
        name = "seconds" if kind == "timestamp" else "values"
        raw = getattr(sub, name)
        if len(raw) != n:
            raise InvalidArgument(
                f"{len(raw)} values for {n} rows (one per id, placeholders where not valid)",
                f"{here}.{name}",
            )
        values: Any = list(raw) if kind == "string" else np.array(raw, dtype=KIND_DTYPES[kind])
        return Column(kind, values, _validity(sub.valid, n, f"{here}.valid"), f"{here}.{name}")

    attributes = []
    for k, attribute in enumerate(msg.attributes):
        here = f"{path}.attributes[{k}]"
        which = attribute.WhichOneof("values")
        if which is None:
            raise InvalidArgument(
                "set one of strings, numbers, bools or timestamps", f"{here}.values"
            )
        kind = _COLUMN_KINDS[which]
        made = column(attribute, which, kind, f"{here}.{which}")
        assert made is not None and ATTRIBUTE_VALUES[kind].startswith(which)
        attributes.append(AttributeColumn(attribute.name, made, f"{here}.name"))
    counts = None
    if len(msg.tag_counts) or len(msg.tags):
        counts = np.array(msg.tag_counts, dtype=np.int64)
        if len(counts) != n:
            raise InvalidArgument(f"{len(counts)} tag counts for {n} rows", f"{path}.tag_counts")
        if int(counts.sum()) != len(msg.tags):
            raise InvalidArgument(
                f"the tag counts add up to {int(counts.sum())}, but there are {len(msg.tags)} tags",
                f"{path}.tags",
            )
    return PeopleColumns(
        ids=ids,
        path=path,
        emails=column(msg, "emails", "string", f"{path}.emails"),
        phones=column(msg, "phones", "string", f"{path}.phones"),
        unsubscribed=column(msg, "unsubscribed", "bool", f"{path}.unsubscribed"),
        created_at=column(msg, "created_at", "timestamp", f"{path}.created_at"),
        attributes=tuple(attributes),
        tags=list(msg.tags),
        tag_counts=counts,
    )


def _validity(valid: bytes, n: int, path: str) -> np.ndarray | None:
    if not valid:
        return None
    if len(valid) != (n + 7) // 8:
        raise InvalidArgument(
            f"{len(valid)} bytes of validity bits for {n} rows (expected {(n + 7) // 8})", path
        )
    bits = np.unpackbits(np.frombuffer(valid, dtype=np.uint8), bitorder="little")
    return bits[:n].astype(bool)


def people_columns_to_proto(cols: PeopleColumns) -> people_pb2.PeopleColumns:
    """The wire form of columns (what a client sends; the inverse of `people_columns`)."""
    msg = people_pb2.PeopleColumns(ids=cols.ids, tags=cols.tags)
    if cols.tag_counts is not None:
        msg.tag_counts.extend(cols.tag_counts.tolist())
    for field, column in (
        ("emails", cols.emails),
        ("phones", cols.phones),
        ("unsubscribed", cols.unsubscribed),
        ("created_at", cols.created_at),
    ):
        if column is not None:
            _fill(getattr(msg, field), column)
    for attribute in cols.attributes:
        kind = attribute.column.kind
        which = next(w for w, k in _COLUMN_KINDS.items() if k == kind)
        _fill(getattr(msg.attributes.add(name=attribute.name), which), attribute.column)
    return msg


def _fill(target: Any, column: Column) -> None:
    values = column.values if column.kind == "string" else column.values.tolist()
    getattr(target, "seconds" if column.kind == "timestamp" else "values").extend(values)
    if column.present is not None:
        target.valid = np.packbits(column.present, bitorder="little").tobytes()


def event_input(msg: people_pb2.Event, path: str) -> EventInput:
    violations: list[Violation] = []
    properties = _values_map(msg.properties, f"{path}.properties", violations)
    person = person_key(msg.person, f"{path}.person")
    _raise_if(violations)
    return EventInput(
        person=person,
        name=msg.name,
        timestamp=timestamp_from_proto(msg.timestamp) if msg.HasField("timestamp") else None,
        properties=properties,
    )


def person_to_proto(view: PersonView) -> people_pb2.Person:
    record = view.record
    person = people_pb2.Person(
        id=record.id,
        email=record.email or "",
        phone=record.phone or "",
        created_at=timestamp_to_proto(record.created_at),
        updated_at=timestamp_to_proto(record.updated_at),
        unsubscribed=record.unsubscribed,
        tags=sorted(record.tags),
        devices=[
            people_pb2.Device(id=device_id, platform=platform)
            for device_id, platform in sorted(record.devices.items())
        ],
        segment_ids=view.segment_ids,
    )
    for key, value in record.attributes.items():
        person.attributes[key].CopyFrom(value_to_proto(value))
    return person


def member_to_proto(member: Member) -> segments_pb2.Member:
    return segments_pb2.Member(id=member.id, email=member.email or "", phone=member.phone or "")


# -- batch results -----------------------------------------------------------------------------


def item_result_to_proto(result: ItemResult) -> types_pb2.ItemResult:
    return types_pb2.ItemResult(
        index=result.index,
        key=result.key,
        outcome=_number(types_pb2.Outcome, "OUTCOME_", result.outcome),
        error=result.error,
        field=result.field,
    )


def item_results_to_proto(results: Iterable[ItemResult]) -> list[types_pb2.ItemResult]:
    return [item_result_to_proto(r) for r in results]


# -- condition trees: proto -> domain ----------------------------------------------------------


def condition_from_proto(msg: conditions_pb2.Condition, path: str = "conditions") -> c.Node:
    """The definition a client sent; INVALID_ARGUMENT listing every node that has no kind."""
    violations: list[Violation] = []
    node = _node(msg, path, violations)
    _raise_if(violations)
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
    values = [_required_value(v, f"{here}.values[{i}]", out) for i, v in enumerate(msg.values)]
    if len(out) > before:
        return None
    return c.AttributeCondition(
        operator=OPERATOR_WORDS.get(msg.operator, ""),
        attribute=msg.attribute if target == "attribute" else None,
        field=BUILTIN_WORDS.get(msg.field, "") if target == "field" else None,
        value=value_from_proto(msg.value) if msg.HasField("value") else None,
        upper=value_from_proto(msg.upper) if msg.HasField("upper") else None,
        values=tuple(v for v in values if v is not None),
        seconds=_duration_seconds(msg.duration, f"{here}.duration", out),
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
            within_last_seconds=_duration_seconds(window.within_last, f"{path}.within_last", out)
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
                combinator=_number(conditions_pb2.Combinator, "COMBINATOR_", node.combinator),
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
            count_operator=_number(
                conditions_pb2.CountOperator, "COUNT_OPERATOR_", node.count_operator
            ),
            count=node.count,
        )
        _window_to_proto(node.window, event.window)
        return conditions_pb2.Condition(event=event)
    if isinstance(node, c.PageViewCondition):
        view = conditions_pb2.PageViewCondition(
            url=node.url,
            match=_number(conditions_pb2.UrlMatch, "URL_MATCH_", node.match),
            count_operator=_number(
                conditions_pb2.CountOperator, "COUNT_OPERATOR_", node.count_operator
            ),
            count=node.count,
        )
        _window_to_proto(node.window, view.window)
        return conditions_pb2.Condition(page_view=view)
    message = conditions_pb2.MessageCondition(
        action=_number(conditions_pb2.MessageAction, "MESSAGE_ACTION_", node.action),
        campaign_id=node.campaign_id,
        message_id=node.message_id,
        count_operator=_number(
            conditions_pb2.CountOperator, "COUNT_OPERATOR_", node.count_operator
        ),
        count=node.count,
    )
    _window_to_proto(node.window, message.window)
    return conditions_pb2.Condition(message=message)


def _attribute_to_proto(node: c.AttributeCondition) -> conditions_pb2.AttributeCondition:
    msg = conditions_pb2.AttributeCondition(
        operator=_number(conditions_pb2.Operator, "OPERATOR_", node.operator),
        values=[value_to_proto(v) for v in node.values],
    )
    if node.seconds:
        msg.duration.seconds = node.seconds
    if node.field is not None:
        msg.field = _number(conditions_pb2.BuiltinField, "BUILTIN_FIELD_", node.field)
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


# -- segments ----------------------------------------------------------------------------------


def segment_to_proto(info: SegmentInfo) -> segments_pb2.Segment:
    segment = segments_pb2.Segment(
        id=info.id,
        name=info.name,
        description=info.description,
        type=segments_pb2.SEGMENT_TYPE_DYNAMIC
        if info.dynamic
        else segments_pb2.SEGMENT_TYPE_MANUAL,
        created_at=timestamp_to_proto(info.created_at),
        updated_at=timestamp_to_proto(info.updated_at),
        archived=info.archived,
        member_count=info.member_count,
        references=[segments_pb2.SegmentSummary(id=r.id, name=r.name) for r in info.references],
        referenced_by=[
            segments_pb2.SegmentSummary(id=r.id, name=r.name) for r in info.referenced_by
        ],
    )
    if info.definition is not None:
        segment.conditions.CopyFrom(condition_to_proto(info.definition))
    return segment


def explain_to_proto(node: ExplainNode) -> segments_pb2.ExplainNode:
    return segments_pb2.ExplainNode(
        path=node.path,
        description=node.description,
        matched=node.matched,
        children=[explain_to_proto(child) for child in node.children],
    )


def lookup_kind(number: int) -> str:
    # UNSPECIFIED is the documented default, id.
    if number == 0:
        return "id"
    if number not in LOOKUP_WORDS:
        raise InvalidArgument(
            f"unknown lookup key {number}: choose ID, EMAIL or PHONE", "options.by"
        )
    return LOOKUP_WORDS[number]


def segment_type(number: int, has_conditions: bool) -> bool:
    """Whether a new segment is dynamic. UNSPECIFIED follows the request: conditions make a
    dynamic segment, none a manual one."""
    if number == segments_pb2.SEGMENT_TYPE_DYNAMIC:
        return True
    if number == segments_pb2.SEGMENT_TYPE_MANUAL:
        return False
    if number == segments_pb2.SEGMENT_TYPE_UNSPECIFIED:
        return has_conditions
    raise InvalidArgument(f"unknown segment type {number}: choose MANUAL or DYNAMIC", "type")


def type_filter(number: int) -> bool | None:
    """ListSegments' type filter as the engine's `dynamic` (None: both)."""
    if number == segments_pb2.SEGMENT_TYPE_UNSPECIFIED:
        return None
    return segment_type(number, False)


def archived_filter(number: int) -> bool | None:
    """ListSegments' archived filter as the engine's `archived` (None: both)."""
    choices: dict[int, bool | None] = {
        segments_pb2.ARCHIVED_FILTER_UNSPECIFIED: False,
        segments_pb2.ARCHIVED_FILTER_ACTIVE: False,
        segments_pb2.ARCHIVED_FILTER_ARCHIVED: True,
        segments_pb2.ARCHIVED_FILTER_ALL: None,
    }
    if number not in choices:
        raise InvalidArgument(
            f"unknown archived filter {number}: choose ACTIVE, ARCHIVED or ALL", "archived"
        )
    return choices[number]


def csv_settings(options: segments_pb2.ImportOptions) -> CsvSettings:
    settings = CsvSettings(
        header=options.header,
        column=options.column,
        delimiter=options.delimiter,
        encoding=options.encoding,
    )
    settings.check("options")
    return settings


def rejected_row_to_proto(row: CsvRow) -> segments_pb2.RejectedRow:
    return segments_pb2.RejectedRow(line=row.line, value=row.value, reason=row.problem)


# -- changes and audiences ---------------------------------------------------------------------


def change_to_proto(change: Change) -> changes_pb2.Change:
    return changes_pb2.Change(
        seq=change.seq,
        segment_id=change.segment_id,
        person_id=change.person_id,
        kind=changes_pb2.CHANGE_KIND_ENTERED if change.entered else changes_pb2.CHANGE_KIND_EXITED,
        # The engine's causes are numbered like ChangeCause (DATA=1 ... DELETED=5).
        cause=changes_pb2.ChangeCause.ValueType(change.cause),
        at=timestamp_to_proto(change.at),
    )


def audience_spec(msg: audiences_pb2.AudienceSpec, path: str = "audience") -> AudienceSpec:
    if msg.channel and msg.channel not in CHANNEL_WORDS:
        raise InvalidArgument(
            f"unknown channel {msg.channel}: choose EMAIL, PHONE or DEVICE", f"{path}.channel"
        )
    return AudienceSpec(
        include=tuple(msg.include),
        require=tuple(msg.require),
        exclude=tuple(msg.exclude),
        include_unsubscribed=msg.include_unsubscribed,
        channel=CHANNEL_WORDS.get(msg.channel, ""),
        device_platform=msg.device_platform,
    )


def audience_spec_to_proto(spec: AudienceSpec) -> audiences_pb2.AudienceSpec:
    return audiences_pb2.AudienceSpec(
        include=spec.include,
        require=spec.require,
        exclude=spec.exclude,
        include_unsubscribed=spec.include_unsubscribed,
        channel=(
            _number(audiences_pb2.Channel, "CHANNEL_", spec.channel)
            if spec.channel
            else audiences_pb2.CHANNEL_UNSPECIFIED
        ),
        device_platform=spec.device_platform,
    )


def person_ref_label(msg: types_pb2.PersonRef) -> str:
    """The key a PersonRef names, for ItemResult.key when the ref cannot be used."""
    kind = msg.WhichOneof("key")
    return str(getattr(msg, kind)) if kind else ""
