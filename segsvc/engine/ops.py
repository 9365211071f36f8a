"""Operation records: every write becomes one, with a sequence number, committed to the log
before it is acknowledged. The in-memory state is a deterministic function of the log, so the
same records give crash recovery (replay) and, later, replication."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from segsvc.engine import conditions
from segsvc.engine.conditions import Node
from segsvc.engine.events import EventRows
from segsvc.engine.index import IndexDelta
from segsvc.engine.people import PersonRecord, pack_value, unpack_value
from segsvc.engine.values import Value
from segsvc.storage.records import seal, unseal


@dataclass(frozen=True)
class BulkRows:
    """The rows a bulk load stores: lookup keys it frees ((kind, value)), the people records
    (stored bytes) by ordinal, and the keys it claims (kind, values, their ordinals)."""

    frees: tuple[tuple[str, str], ...]
    ordinals: tuple[int, ...]
    records: tuple[bytes, ...]
    claims: tuple[tuple[str, tuple[str, ...], tuple[int, ...]], ...]

    def to_plain(self) -> list[Any]:
        return [
            [list(f) for f in self.frees],
            list(self.ordinals),
            list(self.records),
            [[kind, list(values), list(ordinals)] for kind, values, ordinals in self.claims],
        ]

    @classmethod
    def from_plain(cls, d: list[Any]) -> BulkRows:
        return cls(
            tuple((kind, value) for kind, value in d[0]),
            tuple(d[1]),
            tuple(d[2]),
            tuple((kind, tuple(values), tuple(ordinals)) for kind, values, ordinals in d[3]),
        )


@dataclass(frozen=True)
class PeopleOp:
    """Upserts and deletions: for each person the record before (None: new) and after
    (None: deleted), so applying it needs nothing but the record itself.

    A bulk load logs the index changes instead (`delta`, with `people` empty): applying the
    delta costs a few bitmap operations per distinct value where records would cost a loop
    per person. Its rows go to the people and lookup tables in the same commit; a log that
    other nodes (or a restart after a lost commit) read from also carries them (`rows`),
    since nothing else could rebuild them. The embedded log does without: its record and
    the rows commit together."""

    at: int
    people: tuple[tuple[int, PersonRecord | None, PersonRecord | None], ...]
    delta: IndexDelta | None = None
    rows: BulkRows | None = None


@dataclass(frozen=True)
class CreateSegmentOp:
    at: int
    segment_id: int
    name: str
    description: str
    dynamic: bool
    definition: Node | None


@dataclass(frozen=True)
class UpdateSegmentOp:
    at: int
    segment_id: int
    name: str | None
    description: str | None
    definition: Node | None  # None: conditions unchanged


@dataclass(frozen=True)
class DeleteSegmentsOp:
    at: int
    segment_ids: tuple[int, ...]


@dataclass(frozen=True)
class ArchiveSegmentsOp:
    at: int
    segment_ids: tuple[int, ...]
    archived: bool


@dataclass(frozen=True)
class MembersOp:
    """Manual membership: add or remove these people; `clear` removes everyone."""

    at: int
    segment_id: int
    add: bool
    ordinals: tuple[int, ...]
    clear: bool = False


@dataclass(frozen=True)
class EventsOp:
    """Events, and the bare people created for them (`create_missing_people`).

    The events come one by one (`events`) or as columns, one EventRows per name
    (`batches`, what a bulk load logs: encoded as a few byte strings per column, where
    one by one costs a msgpack map per event)."""

    at: int
    people: tuple[tuple[int, PersonRecord | None, PersonRecord | None], ...]
    # (ordinal, name, timestamp, properties)
    events: tuple[tuple[int, str, int, dict[str, Value]], ...] = ()
    batches: tuple[EventRows, ...] = ()

    def rows(self) -> list[EventRows]:
        """Every event of the operation as columns, one EventRows per name."""
        return [*EventRows.group(self.events), *self.batches] if self.events else list(self.batches)

    def count(self) -> int:
        return len(self.events) + sum(len(batch) for batch in self.batches)


@dataclass(frozen=True)
class TickOp:
    """Time passed: re-evaluate the conditions that depend on the clock as of `at`, and drop
    events older than `event_cutoff` (0: keep all)."""

    at: int
    event_cutoff: int = 0


Op = (
    PeopleOp
    | EventsOp
    | CreateSegmentOp
    | UpdateSegmentOp
    | DeleteSegmentsOp
    | ArchiveSegmentsOp
    | MembersOp
    | TickOp
)


def _node(n: Node | None) -> Any:
    return None if n is None else conditions.to_plain(n)


def _from_node(d: Any) -> Node | None:
    return None if d is None else conditions.from_plain(d)


def _rec(r: PersonRecord | None) -> Any:
    # The record's own stored bytes, nested: encoded once for the log and the people table.
    return None if r is None else r.encode()


def _from_rec(d: Any) -> PersonRecord | None:
    return None if d is None else PersonRecord.decode(d)


def encode(op: Op) -> bytes:
    body: list[Any]
    if isinstance(op, PeopleOp):
        body = ["people", op.at, [[o, _rec(a), _rec(b)] for o, a, b in op.people]]
        if op.delta is not None or op.rows is not None:
            body.append(None if op.delta is None else op.delta.to_plain())
        if op.rows is not None:
            body.append(op.rows.to_plain())
    elif isinstance(op, CreateSegmentOp):
        body = [
            "create",
            op.at,
            op.segment_id,
            op.name,
            op.description,
            op.dynamic,
            _node(op.definition),
        ]
    elif isinstance(op, UpdateSegmentOp):
        body = ["update", op.at, op.segment_id, op.name, op.description, _node(op.definition)]
    elif isinstance(op, DeleteSegmentsOp):
        body = ["delete", op.at, list(op.segment_ids)]
    elif isinstance(op, ArchiveSegmentsOp):
        body = ["archive", op.at, list(op.segment_ids), op.archived]
    elif isinstance(op, MembersOp):
        body = ["members", op.at, op.segment_id, op.add, list(op.ordinals), op.clear]
    elif isinstance(op, EventsOp):
        events = [[o, n, t, {k: pack_value(v) for k, v in p.items()}] for o, n, t, p in op.events]
        body = ["events", op.at, [[o, _rec(a), _rec(b)] for o, a, b in op.people], events]
        if op.batches:
            body.append([batch.to_plain() for batch in op.batches])
    else:
        body = ["tick", op.at, op.event_cutoff]
    return seal(msgpack.packb(body, use_bin_type=True))


def decode(data: bytes) -> Op:
    """The operation of a stored record (DamagedRecord when its checksum fails)."""
    d = msgpack.unpackb(unseal(data), raw=False, strict_map_key=False)
    kind, at = d[0], d[1]
    if kind == "people":
        people = tuple((o, _from_rec(a), _from_rec(b)) for o, a, b in d[2])
        delta = IndexDelta.from_plain(d[3]) if len(d) > 3 and d[3] is not None else None
        return PeopleOp(at, people, delta, BulkRows.from_plain(d[4]) if len(d) > 4 else None)
    if kind == "create":
        return CreateSegmentOp(at, d[2], d[3], d[4], d[5], _from_node(d[6]))
    if kind == "update":
        return UpdateSegmentOp(at, d[2], d[3], d[4], _from_node(d[5]))
    if kind == "delete":
        return DeleteSegmentsOp(at, tuple(d[2]))
    if kind == "archive":
        return ArchiveSegmentsOp(at, tuple(d[2]), d[3])
    if kind == "members":
        return MembersOp(at, d[2], d[3], tuple(d[4]), d[5])
    if kind == "events":
        people = tuple((o, _from_rec(a), _from_rec(b)) for o, a, b in d[2])
        events = tuple((o, n, t, {k: unpack_value(v) for k, v in p.items()}) for o, n, t, p in d[3])
        batches = tuple(EventRows.from_plain(b) for b in d[4]) if len(d) > 4 else ()
        return EventsOp(at, people, events, batches)
    if kind == "tick":
        return TickOp(at, d[2])
    raise ValueError(f"unknown operation {kind!r}")
