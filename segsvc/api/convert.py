"""Protobuf messages <-> engine values, both ways. Nothing protobuf leaves segsvc/api.

Decoding is a faithful translation, not a second validator: an enum left UNSPECIFIED becomes
the empty word (`operator=""`) and the engine, which owns the rules, rejects it with the field
path the client sent. The converter itself rejects only what a domain value cannot express at
all (a Condition or a Value whose oneof is unset), with the same path syntax the engine uses:
`conditions.group.children[2].attribute.values[0]`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

# The scalar and condition-tree halves live in scalars.py and condition_convert.py; callers
# keep reaching every conversion through this module.
from segsvc.api.condition_convert import condition_from_proto as condition_from_proto
from segsvc.api.condition_convert import condition_to_proto as condition_to_proto
from segsvc.api.condition_convert import optional_condition as optional_condition
from segsvc.api.csv_import import CsvRow, CsvSettings
from segsvc.api.scalars import ACTION_WORDS as ACTION_WORDS
from segsvc.api.scalars import BUILTIN_WORDS as BUILTIN_WORDS
from segsvc.api.scalars import CHANNEL_WORDS as CHANNEL_WORDS
from segsvc.api.scalars import COMBINATOR_WORDS as COMBINATOR_WORDS
from segsvc.api.scalars import COUNT_WORDS as COUNT_WORDS
from segsvc.api.scalars import LOOKUP_WORDS as LOOKUP_WORDS
from segsvc.api.scalars import OPERATOR_WORDS as OPERATOR_WORDS
from segsvc.api.scalars import OUTCOME_WORDS as OUTCOME_WORDS
from segsvc.api.scalars import URL_MATCH_WORDS as URL_MATCH_WORDS
from segsvc.api.scalars import enum_number, raise_if, values_map
from segsvc.api.scalars import optional_timestamp as optional_timestamp
from segsvc.api.scalars import timestamp_from_proto as timestamp_from_proto
from segsvc.api.scalars import timestamp_to_proto as timestamp_to_proto
from segsvc.api.scalars import value_from_proto as value_from_proto
from segsvc.api.scalars import value_to_proto as value_to_proto
from segsvc.engine.bulk import ATTRIBUTE_VALUES, AttributeColumn, Column, PeopleColumns
from segsvc.engine.errors import InvalidArgument, Violation
from segsvc.engine.event_columns import EventColumns
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
from segsvc.engine.values import Kind
from segsvc.v1 import (
    audiences_pb2,
    changes_pb2,
    people_pb2,
    segments_pb2,
    types_pb2,
)

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
    attributes = values_map(msg.attributes, f"{path}.attributes", violations)
    raise_if(violations)
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
        emails=_column(msg, "emails", "string", f"{path}.emails", n),
        phones=_column(msg, "phones", "string", f"{path}.phones", n),
        unsubscribed=_column(msg, "unsubscribed", "bool", f"{path}.unsubscribed", n),
        created_at=_column(msg, "created_at", "timestamp", f"{path}.created_at", n),
        attributes=_named_columns(msg.attributes, n, f"{path}.attributes"),
        tags=list(msg.tags),
        tag_counts=counts,
    )


def event_columns(msg: people_pb2.EventColumns, path: str = "columns") -> EventColumns:
    """The columns of a bulk event load, decoded whole as `people_columns` decodes people,
    with the same rules; `names` must have one entry per person id."""
    person_ids = list(msg.person_ids)
    n = len(person_ids)
    if len(msg.names) != n:
        raise InvalidArgument(
            f"{len(msg.names)} names for {n} rows (one per person id)", f"{path}.names"
        )
    return EventColumns(
        person_ids=person_ids,
        names=list(msg.names),
        timestamps=_column(msg, "timestamps", "timestamp", f"{path}.timestamps", n),
        properties=_named_columns(msg.properties, n, f"{path}.properties"),
        path=path,
    )


def _column(owner: Any, field: str, kind: Kind, here: str, n: int) -> Column | None:
    """The typed column `owner.field` of `n` rows (None when unset); INVALID_ARGUMENT
    naming it when its length is not `n`."""
    if not owner.HasField(field):
        return None
    sub = getattr(owner, field)
    name = "seconds" if kind == "timestamp" else "values"
    raw = getattr(sub, name)
    if len(raw) != n:
        raise InvalidArgument(
            f"{len(raw)} values for {n} rows (one per row, placeholders where not valid)",
            f"{here}.{name}",
        )
    values: Any = list(raw) if kind == "string" else np.array(raw, dtype=KIND_DTYPES[kind])
    return Column(kind, values, _validity(sub.valid, n, f"{here}.valid"), f"{here}.{name}")


def _named_columns(
    messages: Iterable[people_pb2.AttributeColumn], n: int, path: str
) -> tuple[AttributeColumn, ...]:
    """AttributeColumn messages (attributes, event properties) of `n` rows."""
    out = []
    for k, message in enumerate(messages):
        here = f"{path}[{k}]"
        which = message.WhichOneof("values")
        if which is None:
            raise InvalidArgument(
                "set one of strings, numbers, bools or timestamps", f"{here}.values"
            )
        kind = _COLUMN_KINDS[which]
        made = _column(message, which, kind, f"{here}.{which}", n)
        assert made is not None and ATTRIBUTE_VALUES[kind].startswith(which)
        out.append(AttributeColumn(message.name, made, f"{here}.name"))
    return tuple(out)


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
    _fill_named(msg.attributes, cols.attributes)
    return msg


def event_columns_to_proto(cols: EventColumns) -> people_pb2.EventColumns:
    """The wire form of event columns (the inverse of `event_columns`)."""
    msg = people_pb2.EventColumns(person_ids=cols.person_ids, names=cols.names)
    if cols.timestamps is not None:
        _fill(msg.timestamps, cols.timestamps)
    _fill_named(msg.properties, cols.properties)
    return msg


def _fill_named(target: Any, columns: Iterable[AttributeColumn]) -> None:
    for typed in columns:
        kind = typed.column.kind
        which = next(w for w, k in _COLUMN_KINDS.items() if k == kind)
        _fill(getattr(target.add(name=typed.name), which), typed.column)


def _fill(target: Any, column: Column) -> None:
    values = column.values if column.kind == "string" else column.values.tolist()
    getattr(target, "seconds" if column.kind == "timestamp" else "values").extend(values)
    if column.present is not None:
        target.valid = np.packbits(column.present, bitorder="little").tobytes()


def event_input(msg: people_pb2.Event, path: str) -> EventInput:
    violations: list[Violation] = []
    properties = values_map(msg.properties, f"{path}.properties", violations)
    person = person_key(msg.person, f"{path}.person")
    raise_if(violations)
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
        outcome=enum_number(types_pb2.Outcome, "OUTCOME_", result.outcome),
        error=result.error,
        field=result.field,
    )


def item_results_to_proto(results: Iterable[ItemResult]) -> list[types_pb2.ItemResult]:
    return [item_result_to_proto(r) for r in results]


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
            enum_number(audiences_pb2.Channel, "CHANNEL_", spec.channel)
            if spec.channel
            else audiences_pb2.CHANNEL_UNSPECIFIED
        ),
        device_platform=spec.device_platform,
    )


def person_ref_label(msg: types_pb2.PersonRef) -> str:
    """The key a PersonRef names, for ItemResult.key when the ref cannot be used."""
    kind = msg.WhichOneof("key")
    return str(getattr(msg, kind)) if kind else ""
