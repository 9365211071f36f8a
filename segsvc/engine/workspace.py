"""One workspace: its people, segments and change feed, and every call the API makes on them.

Writes follow one path: resolve the request against what is stored (validation, lookups) into
an operation record; apply the record to the in-memory state; store the record, the rows it
changes and the membership changes in the same LMDB transaction; commit; only then answer.
A failure before the commit leaves nothing on disk, and the in-memory state is reloaded from
disk, so memory never runs ahead of what was acknowledged. That reload costs as much as a
start, so storage without room is refused before anything is resolved or applied: a refused
write costs a look at the free space, not a reload.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from itertools import chain
from typing import Any, TypeVar

import msgpack
import numpy as np
from pyroaring import BitMap

from segsvc.config import Config
from segsvc.engine import conditions
from segsvc.engine.bulk import (
    OUTCOME_CODES,
    BulkResult,
    Checked,
    PeopleColumns,
    Plan,
    Reader,
    check_columns,
    plan_columns,
    upserts_for_rows,
)
from segsvc.engine.clock import Clock
from segsvc.engine.conditions import (
    Node,
    ValidationContext,
    children_paths,
    compile_node,
    describe_node,
    referenced_segments,
)
from segsvc.engine.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    SegsvcError,
    data_loss,
    from_storage,
)
from segsvc.engine.events import EventInput, validate_event
from segsvc.engine.leaves import Leaf, SegmentLeaf
from segsvc.engine.model import (
    AudienceSpec,
    Change,
    ExplainNode,
    ItemResult,
    Member,
    PersonKey,
    PersonView,
    SegmentInfo,
    SegmentRef,
)
from segsvc.engine.ops import (
    ArchiveSegmentsOp,
    CreateSegmentOp,
    DeleteSegmentsOp,
    EventsOp,
    MembersOp,
    Op,
    PeopleOp,
    TickOp,
    UpdateSegmentOp,
    decode,
    encode,
)
from segsvc.engine.people import (
    PersonRecord,
    PersonUpsert,
    apply_upsert,
    unpack_record,
    validate_upsert,
)
from segsvc.engine.state import ENTERED, ChangeBatch, WorkspaceState
from segsvc.engine.values import Timestamp, Value, check_key, normalize_email, normalize_phone
from segsvc.storage.errors import CorruptRecordError, StorageError, StorageFullError
from segsvc.storage.records import reading, reason, seal, unseal
from segsvc.storage.store import (
    U32,
    MiB,
    Store,
    Txn,
    describe_key,
    prefix,
    read_u32,
    read_u64,
    u32,
    u64,
)

log = logging.getLogger(__name__)
R = TypeVar("R")

_LOOKUP_CHAR = {"id": b"i", "email": b"e", "phone": b"p"}
# The largest numbers storage keys hold: ordinals are u32, segment ids and sequences u64.
MAX_U32 = 2**32 - 1
MAX_U64 = 2**64 - 1
# Events may be stamped a little ahead of the server's clock, not more.
MAX_FUTURE_SKEW_SECONDS = 3600


class Workspace:
    def __init__(self, name: str, store: Store, clock: Clock, config: Config) -> None:
        self.name = name
        self.store = store
        self.clock = clock
        self.config = config
        self.limits = config.limits
        self._prefix = prefix(name)
        self._lock = threading.RLock()
        # Watchers wait on this; it is notified after every commit that wrote changes.
        self.changed = threading.Condition()
        self._items_since_checkpoint = 0
        # After a checkpoint failed, the next one waits for another checkpoint's worth of
        # writes (each attempt serialises the whole state).
        self._checkpoint_retry_at = 0
        # Writes refused for want of room (logged when refusals start and stop), and
        # reloads after a write failed once applied (the rare fallback).
        self.refused_full = 0
        self.reloads = 0
        self._last_history: dict[int, int] = {}
        # Recently used audience snapshots, so paging does not decode one per chunk.
        self._snapshots: dict[str, BitMap] = {}
        # People deleted since their events were last dropped from memory (unknown after a
        # restart: assume some, so the first tick looks).
        self._deaths = 1
        self._compacting = threading.Lock()
        self.state = self._load()
        self._committed_head = self.state.change_seq - 1

    # -- recovery and checkpoints -----------------------------------------------------------

    def _load(self) -> WorkspaceState:
        """The state as of the last committed operation: checkpoint plus the log after it.
        A damaged checkpoint or log record raises CorruptRecordError: the state cannot be
        rebuilt without it."""
        with self.store.read() as txn:
            state, replayed, weight = load_state(txn, self._prefix)
        # What is still only in the log counts toward the next checkpoint.
        self._items_since_checkpoint = weight
        if replayed:
            log.info(
                "workspace %s: replayed %d operations after the checkpoint", self.name, replayed
            )
        return state

    def checkpoint(self) -> bool:
        """Stores the whole in-memory state and drops the log records it covers; says
        whether it did. Without room for it, or when storage fails it, one line is logged
        and nothing changes: the log still holds all the checkpoint would have covered, so
        nothing is lost and the next start replays more."""
        with self._lock:
            blob = self.state.to_bytes()
            room = self.store.room()
            try:
                if len(blob) > room.left - room.reserve:
                    raise StorageFullError(
                        room.where,
                        f"{room.left // MiB} MiB left, {room.reserve // MiB} MiB of it kept "
                        "in reserve",
                    )
                with self.store.write() as txn:
                    txn.put("checkpoints", self._prefix, blob)
                    txn.delete_range(
                        "ops", self._prefix + u64(0), self._prefix + u64(self.state.op_seq + 1)
                    )
            except StorageError as exc:
                self._checkpoint_retry_at = self._items_since_checkpoint + self._checkpoint_due()
                log.warning(
                    "workspace %s: checkpoint at op %d (%d MiB) skipped, the log keeps it: %s",
                    self.name,
                    self.state.op_seq,
                    len(blob) // MiB,
                    exc,
                )
                return False
            self._items_since_checkpoint = 0
            self._checkpoint_retry_at = 0
            log.info(
                "workspace %s: checkpoint at op %d (%d bytes)",
                self.name,
                self.state.op_seq,
                len(blob),
            )
            return True

    def _checkpoint_due(self) -> int:
        # A checkpoint costs time in proportion to the workspace, replay in proportion to
        # the log tail: checkpointing after a tenth of the workspace has changed keeps
        # both bounded (restart replays at most that tenth).
        return max(self.config.checkpoint_every_ops, len(self.state.index.live) // 10)

    def _commit(
        self,
        resolve: Callable[[Txn], tuple[Op | None, R, Callable[[Txn], None] | None]],
        frees: bool = False,
    ) -> R:
        """Runs one write: `resolve` validates against storage and returns the operation (or
        None when nothing changes), the answer, and the extra rows to store. Writes that
        free space (`frees`: deletions, ticks) may use part of the storage reserve."""
        with self._lock:
            self._check_room(frees)
            applied = False
            try:
                with self.store.write() as txn:
                    op, answer, persist = resolve(txn)
                    if op is None:
                        return answer
                    seq = self.state.op_seq + 1
                    applied = True
                    batches = self.state.apply(seq, op)
                    txn.put("ops", self._prefix + u64(seq), encode(op))
                    if persist is not None:
                        persist(txn)
                    for batch in batches:
                        txn.put("changes", self._prefix + u64(batch.first_seq), batch.encode())
                    self._after_apply(txn, op)
            except StorageError as exc:
                self._reload_after_failure(applied, exc)
                raise from_storage(exc, self.store.path) from exc
            except BaseException as exc:
                self._reload_after_failure(applied, exc)
                raise
            self._items_since_checkpoint += _weight(op)
            if self._items_since_checkpoint >= max(
                self._checkpoint_due(), self._checkpoint_retry_at
            ):
                # The write is committed whatever becomes of the checkpoint: a failure other
                # than storage's (which checkpoint logs itself) is logged, not answered.
                try:
                    self.checkpoint()
                except Exception:
                    self._checkpoint_retry_at = (
                        self._items_since_checkpoint + self._checkpoint_due()
                    )
                    log.exception("workspace %s: checkpoint failed", self.name)
        if batches:
            with self.changed:
                self._committed_head = self.state.change_seq - 1
                self.changed.notify_all()
        return answer

    def _check_room(self, frees: bool) -> None:
        """Refuses a write up front when storage has less room than it keeps in reserve
        (writes that free space: a quarter of it), before anything is applied in memory."""
        room = self.store.room()
        if room.left >= (room.reserve // 4 if frees else room.reserve):
            if self.refused_full:
                log.info(
                    "workspace %s: storage has room again (%d MiB): writes resume after %d refused",
                    self.name,
                    room.left // MiB,
                    self.refused_full,
                )
                self.refused_full = 0
            return
        if not self.refused_full:
            log.warning(
                "workspace %s: storage is full (%d MiB left in the %s, %d MiB reserve): "
                "refusing writes until there is room",
                self.name,
                room.left // MiB,
                "LMDB map" if room.where == "map" else "disk",
                room.reserve // MiB,
            )
        self.refused_full += 1
        where = "the LMDB map" if room.where == "map" else f"the disk holding {self.store.path}"
        raise from_storage(
            StorageFullError(
                room.where,
                f"{room.left // MiB} MiB left in {where}, below the {room.reserve // MiB} MiB "
                "kept in reserve",
            ),
            self.store.path,
        )

    def _reload_after_failure(self, applied: bool, exc: BaseException) -> None:
        if applied:
            # The in-memory state ran ahead of the aborted commit: the rare fallback, since
            # storage without room is refused before apply.
            self.reloads += 1
            log.error(
                "workspace %s: write failed after it was applied in memory (%s); reloading "
                "from disk (reload %d)",
                self.name,
                exc,
                self.reloads,
            )
            self.state = self._load()

    def _after_apply(self, txn: Txn, op: Op) -> None:
        """Size history: a point whenever a tick or a definition change moved a count."""
        if not isinstance(op, TickOp | CreateSegmentOp | UpdateSegmentOp):
            return
        for seg in self.state.segments.values():
            count = len(seg.members)
            if self._last_history.get(seg.id) != count:
                self._last_history[seg.id] = count
                txn.put("history", self._prefix + u64(seg.id) + u64(op.at), u64(count))

    # -- people ---------------------------------------------------------------------------

    def _lookup(self, txn: Txn, kind: str, value: str) -> int | None:
        raw = txn.get("lookup", self._prefix + _LOOKUP_CHAR[kind] + value.encode())
        return None if raw is None else read_u32(raw)

    def _record(self, txn: Txn, ordinal: int) -> PersonRecord:
        """A person's stored record; DataLoss naming them when it is damaged or missing."""
        return self._person_of(ordinal, txn.get("people", self._prefix + u32(ordinal)))

    def _person_of(self, ordinal: int, raw: bytes | None) -> PersonRecord:
        try:
            if raw is not None:
                return PersonRecord.decode(raw)
            why = "missing, though a lookup names the person"
        except Exception as exc:
            why = reason(exc)
        raise self._damaged_person(ordinal, why)

    def _damaged_person(self, ordinal: int, why: str) -> DataLoss:
        ids = self.state.index.ids
        known = ids[ordinal] if ordinal < len(ids) else None
        where = describe_key("people", self._prefix + u32(ordinal))
        if known is not None:
            where += f" (person {known!r})"
        return data_loss(CorruptRecordError("people", where, why), self.store.path)

    def _normalize_key(self, key: PersonKey, field: str) -> PersonKey:
        if key.kind == "email":
            return PersonKey("email", normalize_email(key.value, field))
        if key.kind == "phone":
            return PersonKey("phone", normalize_phone(key.value, field, self.config.default_region))
        check_key(key.value, "the person id", field)
        return key

    def _find(self, txn: Txn, key: PersonKey, field: str) -> int:
        key = self._normalize_key(key, field)
        ordinal = self._lookup(txn, key.kind, key.value)
        if ordinal is None:
            raise NotFound(f"no person with {key.kind} {key.value!r}")
        return ordinal

    def upsert_people(
        self, upserts: Sequence[PersonUpsert], path: str = "people"
    ) -> list[ItemResult]:
        self._check_batch(len(upserts), path)

        def resolve(txn: Txn) -> tuple[Op | None, list[ItemResult], Callable[[Txn], None]]:
            results: list[ItemResult] = []
            valid: list[tuple[int, PersonUpsert]] = []
            region = self.config.default_region
            for i, raw in enumerate(upserts):
                try:
                    valid.append((i, validate_upsert(raw, f"{path}[{i}]", self.limits, region)))
                except InvalidArgument as exc:
                    v = exc.violations[0]
                    results.append(ItemResult(i, raw.id, "invalid", v.description, v.field))
            op, persist = self._resolve_upserts(
                txn, valid, results, lambda i, kind: f"{path}[{i}].{kind}"
            )
            results.sort(key=lambda r: r.index)
            return op, results, persist

        return self._commit(resolve)

    def _resolve_upserts(
        self,
        txn: Txn,
        upserts: Sequence[tuple[int, PersonUpsert]],
        results: list[ItemResult],
        key_path: Callable[[int, str], str],
    ) -> tuple[Op | None, Callable[[Txn], None]]:
        """Validated upserts (with their item index), one after the other: appends their
        results and returns the operation and the rows to store. `key_path(i, "email")`
        names the field a conflict is reported on."""
        now = Timestamp(self.clock.now())
        # person id -> (ordinal, record before the batch, record now)
        pending: dict[str, tuple[int, PersonRecord | None, PersonRecord]] = {}
        owners: dict[bytes, int | None] = {}  # lookup keys claimed or freed in this batch
        next_ordinal = self.state.next_ordinal

        def owner(kind: str, value: str) -> int | None:
            k = _LOOKUP_CHAR[kind] + value.encode()
            return owners[k] if k in owners else self._lookup(txn, kind, value)

        for i, upsert in upserts:
            if upsert.id in pending:
                ordinal, before, current = pending[upsert.id]
                old: PersonRecord | None = current
            else:
                found = self._lookup(txn, "id", upsert.id)
                try:
                    before = None if found is None else self._record(txn, found)
                except DataLoss as exc:
                    results.append(ItemResult(i, upsert.id, "failed_precondition", str(exc)))
                    continue
                ordinal = next_ordinal if found is None else found
                old = before
            new = apply_upsert(old, upsert, now)
            conflict = ""
            for kind, value, old_value in (
                ("email", new.email, old.email if old else None),
                ("phone", new.phone, old.phone if old else None),
            ):
                if value and value != old_value:
                    holder = owner(kind, value)
                    if holder is not None and holder != ordinal:
                        conflict = f"{kind} {value!r} already belongs to another person"
                        results.append(
                            ItemResult(i, upsert.id, "conflict", conflict, key_path(i, kind))
                        )
                        break
            if conflict:
                continue
            if old is not None and new.same_data(old):
                results.append(ItemResult(i, upsert.id, "unchanged"))
                continue
            if old is None and upsert.id not in pending:
                next_ordinal += 1
            for kind, value, old_value in (
                ("email", new.email, old.email if old else None),
                ("phone", new.phone, old.phone if old else None),
            ):
                if value != old_value:
                    if old_value:
                        owners[_LOOKUP_CHAR[kind] + old_value.encode()] = None
                    if value:
                        owners[_LOOKUP_CHAR[kind] + value.encode()] = ordinal
            pending[upsert.id] = (ordinal, before, new)
            # A second item for someone this batch created updates them.
            results.append(ItemResult(i, upsert.id, "created" if old is None else "updated"))
        changed = tuple(
            (o, b, n) for o, b, n in pending.values() if b is None or not n.same_data(b)
        )
        if not changed:
            return None, self._persist_people(())
        return PeopleOp(int(now), changed), self._persist_people(changed)

    def upsert_columns(
        self, columns: PeopleColumns, first_index: int = 0, path: str = "columns"
    ) -> BulkResult:
        """Bulk load: many upserts as columns (see segsvc.engine.bulk), with the meaning and
        the outcome of `upsert_people` on the same rows. Results count rows from
        `first_index` (a row's position in a longer stream)."""
        self._check_batch(len(columns), path, self.limits.max_batch_items * BULK_BATCH_FACTOR)
        checked = check_columns(columns, self.limits, first_index, self.config.default_region)
        reader = _BulkReader(self)

        def resolve(txn: Txn) -> tuple[Op | None, BulkResult, Callable[[Txn], None] | None]:
            now = self.clock.now()
            reader.txn = txn
            try:
                plan = plan_columns(
                    columns, checked, first_index, now, self.state.next_ordinal, reader
                )
            except DataLoss:
                plan = None  # a damaged record: person by person, where it is one row's error
            if plan is None:
                return self._resolve_rows_in_order(txn, columns, checked, first_index)
            if plan.delta is None:
                return None, plan.result, None
            return PeopleOp(now, (), plan.delta), plan.result, self._persist_plan(plan, reader)

        return self._commit(resolve)

    def _resolve_rows_in_order(
        self, txn: Txn, columns: PeopleColumns, checked: Checked, first_index: int
    ) -> tuple[Op | None, BulkResult, Callable[[Txn], None]]:
        """A batch whose rows depend on each other, person by person."""
        ids = columns.ids
        results = [
            ItemResult(row, ids[row], "invalid", description, field)
            for row, (description, field) in checked.errors.items()
        ]
        key_columns = {"email": columns.emails, "phone": columns.phones}

        def key_path(row: int, kind: str) -> str:
            column = key_columns[kind]
            assert column is not None
            return f"{column.path}[{first_index + row}]"

        op, persist = self._resolve_upserts(
            txn, upserts_for_rows(columns, checked), results, key_path
        )
        outcomes = np.zeros(len(columns), dtype=np.uint8)
        errors = []
        for result in sorted(results, key=lambda r: r.index):
            if result.rejected:
                errors.append(replace(result, index=first_index + result.index))
            else:
                outcomes[result.index] = OUTCOME_CODES[result.outcome]
        return op, BulkResult(outcomes, errors), persist

    def _persist_plan(self, plan: Plan, reader: _BulkReader) -> Callable[[Txn], None]:
        def persist(txn: Txn) -> None:
            p = self._prefix
            for kind, value in plan.frees:
                txn.delete("lookup", p + _LOOKUP_CHAR[kind] + value.encode())
            people = map(p.__add__, map(U32.pack, plan.ordinals))
            txn.put_many("people", zip(people, plan.records, strict=True))
            for kind, (values, ordinals) in plan.claims.items():
                keys = reader.keys(kind, values)
                txn.put_many("lookup", zip(keys, map(U32.pack, ordinals), strict=True))

        return persist

    def _persist_people(
        self, people: Sequence[tuple[int, PersonRecord | None, PersonRecord | None]]
    ) -> Callable[[Txn], None]:
        def persist(txn: Txn) -> None:
            p = self._prefix
            # Free every key first, then claim: within a batch one person may take over an
            # email another just gave up.
            for _ordinal, old, new in people:
                if old is None:
                    continue
                for kind, value in (("email", old.email), ("phone", old.phone)):
                    if value and (new is None or getattr(new, kind) != value):
                        txn.delete("lookup", p + _LOOKUP_CHAR[kind] + value.encode())
                if new is None:
                    txn.delete("lookup", p + b"i" + old.id.encode())
                    txn.delete("people", p + u32(_ordinal))
            for ordinal, old, new in people:
                if new is None:
                    continue
                txn.put("people", p + u32(ordinal), new.encode())
                if old is None:
                    txn.put("lookup", p + b"i" + new.id.encode(), u32(ordinal))
                for kind, value in (("email", new.email), ("phone", new.phone)):
                    if value and (old is None or getattr(old, kind) != value):
                        txn.put("lookup", p + _LOOKUP_CHAR[kind] + value.encode(), u32(ordinal))

        return persist

    def delete_people(self, keys: Sequence[PersonKey], path: str = "people") -> list[ItemResult]:
        self._check_batch(len(keys), path)

        def resolve(txn: Txn) -> tuple[Op | None, list[ItemResult], Callable[[Txn], None]]:
            results: list[ItemResult] = []
            gone: dict[int, PersonRecord] = {}
            for i, key in enumerate(keys):
                try:
                    ordinal = self._find(txn, key, f"{path}[{i}]")
                except (NotFound, InvalidArgument) as exc:
                    results.append(_rejected(i, str(key), exc))
                    continue
                if ordinal in gone:
                    results.append(
                        ItemResult(i, str(key), "not_found", "deleted earlier in this batch")
                    )
                    continue
                try:
                    gone[ordinal] = self._record(txn, ordinal)
                except DataLoss as exc:
                    results.append(ItemResult(i, str(key), "failed_precondition", str(exc)))
                    continue
                results.append(ItemResult(i, gone[ordinal].id, "deleted"))
            people = tuple((o, r, None) for o, r in gone.items())
            op = PeopleOp(self.clock.now(), people) if people else None
            self._deaths += len(people)
            return op, results, self._persist_people(people)

        return self._commit(resolve, frees=True)

    def track_events(
        self,
        events: Sequence[EventInput],
        create_missing_people: bool = False,
        path: str = "events",
    ) -> list[ItemResult]:
        """Records events. Unknown people are rejected, or created bare (by id only) when
        `create_missing_people` is set."""
        self._check_batch(len(events), path)

        def resolve(txn: Txn) -> tuple[Op | None, list[ItemResult], Callable[[Txn], None]]:
            now = self.clock.now()
            # Past retention, or before what an earlier tick already let go of (retention
            # shortened and then lengthened again).
            oldest = max(now - self.config.event_retention_seconds, self.state.event_leaves.floor)
            results: list[ItemResult] = []
            rows: list[tuple[int, str, int, dict[str, Value]]] = []
            born: dict[str, tuple[int, None, PersonRecord]] = {}
            for i, event in enumerate(events):
                item = f"{path}[{i}]"
                try:
                    props = validate_event(event, item, self.limits)
                    ts = now if event.timestamp is None else int(event.timestamp)
                    if ts > now + MAX_FUTURE_SKEW_SECONDS:
                        raise InvalidArgument(
                            f"more than {MAX_FUTURE_SKEW_SECONDS} s in the future "
                            "(check the sender's clock)",
                            f"{item}.timestamp",
                        )
                    if ts < oldest:
                        raise InvalidArgument(
                            f"older than the event retention "
                            f"({self.config.event_retention_seconds // 86400} days)",
                            f"{item}.timestamp",
                        )
                    ordinal = self._event_person(
                        txn, event.person, f"{item}.person", born, create_missing_people, now
                    )
                except (InvalidArgument, NotFound) as exc:
                    results.append(_rejected(i, str(event.person), exc))
                    continue
                rows.append((ordinal, event.name, ts, props))
                results.append(ItemResult(i, str(event.person), "tracked"))
            if not rows:
                return None, results, self._persist_people(())
            people = tuple(born.values())
            return EventsOp(now, people, tuple(rows)), results, self._persist_people(people)

        return self._commit(resolve)

    def _event_person(
        self,
        txn: Txn,
        key: PersonKey,
        field: str,
        born: dict[str, tuple[int, None, PersonRecord]],
        create: bool,
        now: int,
    ) -> int:
        try:
            return self._find(txn, key, field)
        except NotFound:
            if not create or key.kind != "id":
                if create:
                    raise NotFound(
                        f"no person with {key.kind} {key.value!r}: only unknown ids can be "
                        "created from events"
                    ) from None
                raise
        if key.value not in born:
            ordinal = self.state.next_ordinal + len(born)
            record = PersonRecord(
                id=key.value, created_at=Timestamp(now), updated_at=Timestamp(now)
            )
            born[key.value] = (ordinal, None, record)
        return born[key.value][0]

    def get_person(self, key: PersonKey) -> PersonView:
        with self._lock, self.store.read() as txn:
            ordinal = self._find(txn, key, "person")
            record = self._record(txn, ordinal)
            segments = tuple(
                sid for sid, s in sorted(self.state.segments.items()) if ordinal in s.members
            )
            return PersonView(record, segments)

    # -- segments -------------------------------------------------------------------------

    def _segment(self, segment_id: int, field: str = "segment_id") -> conditions.Node | None:
        seg = self.state.segments.get(segment_id)
        if seg is None:
            raise NotFound(f"segment {segment_id} does not exist ({field})")
        return seg.definition

    def _validate_definition(self, definition: Node | None, defining: int | None) -> Node:
        segments = self.state.segments

        def references_of(sid: int) -> frozenset[int]:
            seg = segments.get(sid)
            if seg is None or seg.definition is None:
                return frozenset()
            return referenced_segments(seg.definition)

        ctx = ValidationContext(
            limits=self.limits,
            segment_exists=lambda sid: sid in segments,
            references_of=references_of,
            default_region=self.config.default_region,
            defining=defining,
        )
        conditions.validate(definition, ctx)
        assert definition is not None
        # The log holds phone operands as this server's default region placed them, so that
        # replaying it never depends on the region of the server that replays.
        return conditions.with_stored_phones(
            definition, lambda text: normalize_phone(text, "", self.config.default_region)
        )

    def _check_name(self, name: str, own_id: int | None) -> str:
        name = check_key(name, "the segment name", "name", 256).strip()
        folded = name.casefold()
        for seg in self.state.segments.values():
            if seg.id != own_id and seg.name.casefold() == folded:
                raise AlreadyExists(f"a segment named {seg.name!r} already exists (id {seg.id})")
        return name

    def create_segment(
        self, name: str, description: str, dynamic: bool, definition: Node | None
    ) -> SegmentInfo:
        def resolve(txn: Txn) -> tuple[Op | None, int, None]:
            checked_name = self._check_name(name, None)
            if len(description) > self.limits.max_string_length:
                raise InvalidArgument(
                    f"longer than {self.limits.max_string_length} characters", "description"
                )
            tree: Node | None = None
            if dynamic:
                tree = self._validate_definition(definition, None)
            elif definition is not None:
                raise InvalidArgument(
                    "a manual segment has no conditions: remove them or make it dynamic",
                    "conditions",
                )
            sid = self.state.next_segment_id
            return (
                CreateSegmentOp(self.clock.now(), sid, checked_name, description, dynamic, tree),
                sid,
                None,
            )

        return self.get_segment(self._commit(resolve))

    def update_segment(
        self, segment_id: int, name: str | None, description: str | None, definition: Node | None
    ) -> SegmentInfo:
        def resolve(txn: Txn) -> tuple[Op | None, None, None]:
            self._segment(segment_id)
            seg = self.state.segments[segment_id]
            checked_name = None if name is None else self._check_name(name, segment_id)
            if description is not None and len(description) > self.limits.max_string_length:
                raise InvalidArgument(
                    f"longer than {self.limits.max_string_length} characters", "description"
                )
            tree = None
            if definition is not None:
                if not seg.dynamic:
                    raise FailedPrecondition(
                        f"segment {segment_id} is manual: it has no conditions to change"
                    )
                tree = self._validate_definition(definition, segment_id)
            return (
                UpdateSegmentOp(self.clock.now(), segment_id, checked_name, description, tree),
                None,
                None,
            )

        self._commit(resolve)
        return self.get_segment(segment_id)

    def delete_segments(self, segment_ids: Sequence[int]) -> list[ItemResult]:
        self._check_batch(len(segment_ids), "segment_ids")

        def resolve(txn: Txn) -> tuple[Op | None, list[ItemResult], None]:
            segments = self.state.segments
            # Only a set closed under "who references me" can go: refusing one segment keeps
            # alive everything it references, so iterate until nothing more drops out.
            doomed = {sid for sid in segment_ids if sid in segments}
            refused: dict[int, list[int]] = {}
            while True:
                blocked = {
                    sid: sorted(self.state.referenced_by.get(sid, set()) - doomed) for sid in doomed
                }
                blocked = {sid: users for sid, users in blocked.items() if users}
                if not blocked:
                    break
                refused.update(blocked)
                doomed -= blocked.keys()
            results: list[ItemResult] = []
            for i, sid in enumerate(segment_ids):
                path = f"segment_ids[{i}]"
                if sid not in segments:
                    error = f"segment {sid} does not exist"
                    results.append(ItemResult(i, str(sid), "not_found", error, path))
                elif sid in refused:
                    names = ", ".join(f"{u} ({segments[u].name!r})" for u in refused[sid])
                    error = (
                        f"segment {sid} is referenced by segments {names}: "
                        "change or delete those first"
                    )
                    results.append(ItemResult(i, str(sid), "failed_precondition", error, path))
                else:
                    results.append(ItemResult(i, str(sid), "deleted"))
            chosen = tuple(sorted(doomed))
            op = DeleteSegmentsOp(self.clock.now(), chosen) if chosen else None
            return op, results, None

        return self._commit(resolve, frees=True)

    def archive_segments(self, segment_ids: Sequence[int], archived: bool) -> list[ItemResult]:
        self._check_batch(len(segment_ids), "segment_ids")

        def resolve(txn: Txn) -> tuple[Op | None, list[ItemResult], None]:
            results: list[ItemResult] = []
            chosen: list[int] = []
            for i, sid in enumerate(segment_ids):
                seg = self.state.segments.get(sid)
                if seg is None:
                    results.append(
                        ItemResult(
                            i,
                            str(sid),
                            "not_found",
                            f"segment {sid} does not exist",
                            f"segment_ids[{i}]",
                        )
                    )
                    continue
                if seg.archived != archived and sid not in chosen:
                    chosen.append(sid)
                results.append(ItemResult(i, str(sid), "archived" if archived else "unarchived"))
            op = ArchiveSegmentsOp(self.clock.now(), tuple(chosen), archived) if chosen else None
            return op, results, None

        return self._commit(resolve)

    def _info(self, segment_id: int, with_definition: bool = True) -> SegmentInfo:
        seg = self.state.segments[segment_id]
        refs: tuple[SegmentRef, ...] = ()
        if seg.definition is not None:
            refs = tuple(
                SegmentRef(r, self.state.segments[r].name)
                for r in sorted(referenced_segments(seg.definition))
                if r in self.state.segments
            )
        users = tuple(
            SegmentRef(u, self.state.segments[u].name)
            for u in sorted(self.state.referenced_by.get(segment_id, ()))
        )
        return SegmentInfo(
            seg.id,
            seg.name,
            seg.description,
            seg.dynamic,
            seg.created_at,
            seg.updated_at,
            seg.archived,
            len(seg.members),
            seg.definition if with_definition else None,
            refs,
            users,
        )

    def get_segment(self, segment_id: int) -> SegmentInfo:
        with self._lock:
            self._segment(segment_id)
            return self._info(segment_id)

    def list_segments(
        self,
        name_contains: str = "",
        dynamic: bool | None = None,
        archived: bool | None = False,
        page_size: int = 100,
        page_token: str = "",
    ) -> tuple[list[SegmentInfo], str]:
        """Segments in id order after `page_token`; `archived` None lists both."""
        page_size = _page_size(page_size, 100, 1000)
        after = _token(page_token, MAX_U64)
        needle = name_contains.casefold()
        with self._lock:
            rows: list[SegmentInfo] = []
            for sid in sorted(self.state.segments):
                seg = self.state.segments[sid]
                if sid <= after or (needle and needle not in seg.name.casefold()):
                    continue
                if (dynamic is not None and seg.dynamic != dynamic) or (
                    archived is not None and seg.archived != archived
                ):
                    continue
                if len(rows) == page_size:
                    return rows, str(rows[-1].id)
                rows.append(self._info(sid, with_definition=False))
            return rows, ""

    def preview(self, definition: Node | None, sample_size: int = 10) -> tuple[int, list[str]]:
        sample_size = _page_size(sample_size, 10, 1000)
        # A read: the lock is held only to validate and to take each leaf's bitmap (writes
        # change the index and the kept bitmaps in place, so those are copied); the tree is
        # combined after it is released.
        with self._lock:
            tree = self._validate_definition(definition, None)
            expr = compile_node(tree)
            now = self.clock.now()
            state = self.state
            taken: dict[Leaf, BitMap] = {}
            for leaf in conditions.leaves_of(expr):
                # Maintained leaves answer as of the last write or tick; time-dependent ones
                # are answered as of now, like the segment would be on the next tick.
                kept = state.leaves.get(leaf) if not isinstance(leaf, SegmentLeaf) else None
                if kept is None or leaf.time_dependent:
                    kept = state.fresh_leaf(leaf, now)
                taken[leaf] = BitMap(kept)
            universe = BitMap(state.index.live)
        members = state.evaluate(expr, universe, taken.__getitem__)
        with self._lock:
            ids = state.index.ids
            return len(members), [ids[o] or "" for o in members[:sample_size]]

    def explain(self, key: PersonKey, segment_id: int) -> tuple[bool, ExplainNode]:
        with self._lock, self.store.read() as txn:
            definition = self._segment(segment_id)
            if definition is None:
                raise FailedPrecondition(
                    f"segment {segment_id} is manual: membership is who was added, not conditions"
                )
            ordinal = self._find(txn, key, "person")
            state = self.state

            def walk(node: Node, path: str) -> ExplainNode:
                children = tuple(
                    walk(child, child_path) for child_path, child in children_paths(node, path)
                )
                matched = state.holds_for(compile_node(node), ordinal)
                return ExplainNode(
                    f"{path}.{conditions.NODE_FIELD[type(node)]}",
                    describe_node(node),
                    matched,
                    children,
                )

            return ordinal in state.segments[segment_id].members, walk(definition, "conditions")

    def history(self, segment_id: int, start: int | None, end: int | None) -> list[tuple[int, int]]:
        with self._lock:
            self._segment(segment_id)
        if end is not None and end < 0:
            return []  # sizes are recorded at times after 1970
        base = self._prefix + u64(segment_id)
        with self.store.read() as txn:
            lo = base + u64(min(max(start or 0, 0), MAX_U64))
            hi = base + u64(min(end + 1, MAX_U64)) if end is not None else None
            return [
                (read_u64(k, len(base)), read_u64(v)) for k, v in txn.scan("history", base, lo, hi)
            ]

    # -- manual membership ------------------------------------------------------------------

    def _manual(self, segment_id: int) -> None:
        self._segment(segment_id)
        if self.state.segments[segment_id].dynamic:
            raise FailedPrecondition(
                f"segment {segment_id} is dynamic: its members are whoever matches its conditions; "
                "change the conditions instead of adding or removing people"
            )

    def change_members(
        self, segment_id: int, keys: Sequence[PersonKey], add: bool, path: str = "people"
    ) -> list[ItemResult]:
        self._check_batch(len(keys), path)

        def resolve(txn: Txn) -> tuple[Op | None, list[ItemResult], None]:
            self._manual(segment_id)
            members = self.state.segments[segment_id].members
            results: list[ItemResult] = []
            chosen: dict[int, None] = {}
            for i, key in enumerate(keys):
                try:
                    ordinal = self._find(txn, key, f"{path}[{i}]")
                except (NotFound, InvalidArgument) as exc:
                    results.append(_rejected(i, str(key), exc))
                    continue
                is_member = ordinal in members or ordinal in chosen
                if add:
                    outcome = "already_member" if is_member else "added"
                else:
                    outcome = (
                        "removed"
                        if ordinal in members and ordinal not in chosen
                        else "not_a_member"
                    )
                if outcome in ("added", "removed"):
                    chosen[ordinal] = None
                results.append(ItemResult(i, str(key), outcome))
            op = MembersOp(self.clock.now(), segment_id, add, tuple(chosen)) if chosen else None
            return op, results, None

        return self._commit(resolve, frees=not add)

    def add_ordinals(self, segment_id: int, ordinals: Sequence[int]) -> int:
        """Adds people already resolved to ordinals (CSV import); returns how many were new."""

        def resolve(txn: Txn) -> tuple[Op | None, int, None]:
            self._manual(segment_id)
            new = BitMap(ordinals) - self.state.segments[segment_id].members
            op = MembersOp(self.clock.now(), segment_id, True, tuple(new)) if new else None
            return op, len(new), None

        return self._commit(resolve)

    def resolve_keys(self, kind: str, values: Sequence[str]) -> list[int | str | None]:
        """Ordinals for keys (None: unknown; a string: why the key is malformed)."""
        out: list[int | str | None] = []
        with self.store.read() as txn:
            for value in values:
                try:
                    key = self._normalize_key(PersonKey(kind, value), "")  # type: ignore[arg-type]
                except InvalidArgument as exc:
                    out.append(exc.violations[0].description)
                    continue
                out.append(self._lookup(txn, key.kind, key.value))
        return out

    def clear_segment(self, segment_id: int) -> int:
        def resolve(txn: Txn) -> tuple[Op | None, int, None]:
            self._manual(segment_id)
            count = len(self.state.segments[segment_id].members)
            op = MembersOp(self.clock.now(), segment_id, False, (), clear=True) if count else None
            return op, count, None

        return self._commit(resolve, frees=True)

    def list_members(
        self, segment_id: int, page_size: int = 1000, page_token: str = ""
    ) -> tuple[list[Member], str, int]:
        page_size = _page_size(page_size, 1000, self.limits.max_page_size)
        after = _token(page_token, MAX_U32) if page_token else -1
        with self._lock:
            self._segment(segment_id)
            members = self.state.segments[segment_id].members
            start = members.rank(after) if after >= 0 else 0
            page = members[start : start + page_size]
            index = self.state.index
            rows = [Member(index.ids[o] or "", index.emails[o], index.phones[o]) for o in page]
            more = start + page_size < len(members)
            return rows, (str(page[-1]) if more and len(page) else ""), len(members)

    def check_membership(
        self, key: PersonKey, segment_ids: Sequence[int]
    ) -> tuple[str, list[tuple[int, bool]]]:
        with self._lock, self.store.read() as txn:
            ordinal = self._find(txn, key, "person")
            for i, sid in enumerate(segment_ids):
                self._segment(sid, f"segment_ids[{i}]")
            segs = self.state.segments
            return self.state.index.ids[ordinal] or "", [
                (sid, ordinal in segs[sid].members) for sid in segment_ids
            ]

    # -- time -------------------------------------------------------------------------------

    def tick(self) -> None:
        """Re-checks time-dependent conditions as of now (TIME changes), records segment
        sizes and drops changes past their retention."""

        def resolve(txn: Txn) -> tuple[Op | None, None, None]:
            now = self.clock.now()
            self._prune_changes(txn, now)
            self._prune_snapshots(txn, now)
            cutoff = now - self.config.event_retention_seconds
            if not self.state.has_time_dependent() and self.state.events.oldest() >= cutoff:
                self._after_apply(txn, TickOp(now))
                return None, None, None
            return TickOp(now, cutoff), None, None

        self._commit(resolve, frees=True)
        self.compact_events()

    def compact_events(self, force: bool = False) -> int:
        """Drops from memory the events no condition counts any more (before the retention
        floor, or of deleted people) once they are a sixteenth of a log, or whenever
        `force`d. The copying happens off the write lock, so readers and writers go on;
        the lock is held only to take the log sizes and to swap the new logs in (with the
        events written meanwhile). Returns how many events were dropped."""
        with self._compacting:
            with self._lock:
                state = self.state
                events = state.events
                floor = state.event_leaves.floor
                stale = events.stale_rows(floor)
                if not force and not self._deaths and stale * 16 < events.total():
                    return 0
                self._deaths = 0
                logs = {name: (source, source.size) for name, source in events.logs.items()}
                alive = np.zeros(state.next_ordinal, dtype=np.bool_)
                alive[np.frombuffer(state.index.live.to_array(), dtype=np.uint32)] = True
            compacted = {}
            for name, (source, size) in logs.items():
                keep = source.keep_mask(size, floor, alive)
                dropped = size - int(np.count_nonzero(keep))
                if dropped and (force or dropped * 16 >= size):
                    compacted[name] = (source.compacted(size, keep), dropped)
            with self._lock:
                if self.state is not state:
                    return 0  # reloaded meanwhile: these logs are no longer the state's
                for name, (fresh, _) in compacted.items():
                    source, size = logs[name]
                    fresh.absorb_tail(source, size)
                    if fresh.size:
                        events.logs[name] = fresh
                    else:
                        del events.logs[name]
            total = sum(dropped for _, dropped in compacted.values())
            if total:
                log.info("workspace %s: dropped %d past or orphaned events", self.name, total)
            return total

    def _prune_changes(self, txn: Txn, now: int) -> None:
        cutoff = now - self.config.change_retention_seconds
        pruned_to = None
        doomed: list[bytes] = []
        for key, value in txn.scan("changes", self._prefix):
            batch = self._change_batch(key, value)
            if batch.at >= cutoff:
                break
            doomed.append(key)
            pruned_to = batch.first_seq + len(batch.ordinals)
            if len(doomed) >= 10_000:
                break
        for key in doomed:
            txn.delete("changes", key)
        if pruned_to is not None:
            txn.put("meta", b"pruned:" + self._prefix, u64(pruned_to))

    # -- change feed --------------------------------------------------------------------------

    def _change_batch(self, key: bytes, value: bytes) -> ChangeBatch:
        """A stored batch of changes; DataLoss naming it when it is damaged."""
        try:
            return ChangeBatch.decode(read_u64(key, len(self._prefix)), value)
        except Exception as exc:
            error = CorruptRecordError("changes", describe_key("changes", key), reason(exc))
            raise data_loss(error, self.store.path) from exc

    def head_seq(self) -> int:
        """The sequence number of the last change committed."""
        return self._committed_head

    def read_changes(
        self, after_seq: int, segment_ids: frozenset[int], limit: int = 1000
    ) -> tuple[list[Change], int]:
        """Up to `limit` stored changes with seq > after_seq; returns them and the seq to
        continue after. OUT_OF_RANGE when after_seq is older than what is kept."""
        if not 0 <= after_seq <= MAX_U64 - 2:  # the keys below are after_seq + 2
            raise InvalidArgument("beyond any sequence number a change can have", "after_seq")
        p = self._prefix
        out: list[Change] = []
        last = after_seq
        with self.store.read() as txn:
            raw = txn.get("meta", b"pruned:" + p)
            pruned_to = read_u64(raw) if raw else 1
            if after_seq + 1 < pruned_to:
                raise OutOfRange(
                    f"changes up to {pruned_to - 1} are past their retention: "
                    f"resume from after_seq >= {pruned_to - 1}"
                )
            start = p + u64(after_seq + 1)
            first = next(txn.scan("changes", p, stop=p + u64(after_seq + 2), reverse=True), None)
            if first is not None:
                start = first[0]
            ids = self.state.index.ids
            for key, value in txn.scan("changes", p, start):
                batch = self._change_batch(key, value)
                end = batch.first_seq + len(batch.ordinals) - 1
                if end <= after_seq:
                    continue
                if segment_ids and batch.segment_id not in segment_ids:
                    last = end
                    continue
                skip = max(0, after_seq + 1 - batch.first_seq)
                for rank, ordinal in enumerate(batch.ordinals[skip:], start=skip):
                    seq = batch.first_seq + rank
                    out.append(
                        Change(
                            seq,
                            batch.segment_id,
                            ids[ordinal] or "",
                            batch.kind == ENTERED,
                            batch.cause,
                            batch.at,
                        )
                    )
                    last = seq
                    if len(out) >= limit:
                        return out, last
        return out, last

    def watch(
        self,
        after_seq: int,
        segment_ids: frozenset[int],
        stop: Callable[[], bool],
        follow: bool = True,
    ) -> Iterator[list[Change]]:
        """The stored changes after `after_seq`, then live ones as they are committed, in
        order, without gaps or repeats, a run at a time: the live part is read back from
        storage too, so the switch from replay to live needs no hand-over."""
        cursor = after_seq
        while not stop():
            changes, cursor = self.read_changes(cursor, segment_ids)
            if changes:
                yield changes
                continue
            if not follow:
                return
            with self.changed:
                if cursor >= self._committed_head:
                    self.changed.wait(timeout=0.5)

    # -- audiences ------------------------------------------------------------------------------

    def audience(self, spec: AudienceSpec) -> BitMap:
        """The audience as a bitmap of ordinals, computed under the lock: a frozen snapshot."""
        with self._lock:
            segs = self.state.segments
            for group, ids in (
                ("include", spec.include),
                ("require", spec.require),
                ("exclude", spec.exclude),
            ):
                for i, sid in enumerate(ids):
                    seg = segs.get(sid)
                    if seg is None:
                        raise NotFound(f"segment {sid} does not exist (audience.{group}[{i}])")
                    if seg.archived:
                        raise FailedPrecondition(
                            f"segment {sid} ({seg.name!r}) is archived (audience.{group}[{i}]): "
                            "unarchive it to send to it"
                        )
            if not spec.include:
                raise InvalidArgument("name at least one segment to include", "audience.include")
            result = BitMap.union(*(segs[s].members for s in spec.include))
            for sid in spec.require:
                result &= segs[sid].members
            if spec.exclude:
                result -= BitMap.union(*(segs[s].members for s in spec.exclude))
            index = self.state.index
            if not spec.include_unsubscribed:
                unsub = index.field("$unsubscribed")
                if unsub is not None:
                    result -= unsub.bools.get(True, BitMap())
            if spec.channel == "email":
                result &= _exists(index, "$email")
            elif spec.channel == "phone":
                result &= _exists(index, "$phone")
            elif spec.channel == "device":
                result &= (
                    index.platforms.get(spec.device_platform, BitMap())
                    if spec.device_platform
                    else index.any_device
                )
            return result

    def snapshot_audience(self, spec: AudienceSpec) -> tuple[str, int]:
        """Freezes the audience and stores it, so that a sender can page through it, and
        resume after a disconnect or a server restart, while membership moves on. Returns
        the snapshot id and its size."""
        members = self.audience(spec)
        members.run_optimize()
        snapshot_id = secrets.token_hex(12)
        record = seal(msgpack.packb([self.clock.now(), members.serialize()], use_bin_type=True))
        try:
            with self.store.write() as txn:
                txn.put("snapshots", self._prefix + snapshot_id.encode(), record)
        except StorageError as exc:
            # A read still answers when storage takes no writes: the snapshot lives in
            # memory only, and a resume after a restart is told to resolve again.
            log.warning("workspace %s: audience snapshot kept in memory only: %s", self.name, exc)
        self._snapshots[snapshot_id] = members
        return snapshot_id, len(members)

    def snapshot_page(
        self, snapshot_id: str, after: int, limit: int
    ) -> tuple[list[tuple[int, str, str | None, str | None]], int, int, int]:
        """The next `limit` people of a snapshot after ordinal `after` (-1: from the start),
        as (ordinal, id, email, phone), less anyone deleted since the snapshot; returns them,
        the snapshot's size, how many remain after this page, and the `after` of the next
        page."""
        members = self._snapshots.get(snapshot_id)
        if members is None:
            with self.store.read() as txn:
                raw = txn.get("snapshots", self._prefix + snapshot_id.encode())
            if raw is None:
                raise NotFound(
                    f"audience snapshot {snapshot_id} does not exist or has expired "
                    f"(snapshots are kept {self.config.snapshot_retention_seconds} s): "
                    "resolve the audience again"
                )
            try:
                members = BitMap.deserialize(_snapshot_fields(raw)[1])
            except Exception as exc:
                where = describe_key("snapshots", self._prefix + snapshot_id.encode())
                raise from_storage(
                    CorruptRecordError("snapshots", where, reason(exc)), self.store.path
                ) from exc
            if len(self._snapshots) >= 8:
                self._snapshots.pop(next(iter(self._snapshots)))
            self._snapshots[snapshot_id] = members
        start = members.rank(after) if after >= 0 else 0
        page = members[start : start + limit]
        index = self.state.index
        ids, emails, phones = index.ids, index.emails, index.phones
        next_after = page.max() if page else after
        remaining = len(members) - start - len(page)
        # People deleted since the snapshot was taken are not sent to.
        with self._lock:
            page &= index.live
        rows = [(o, ids[o] or "", emails[o], phones[o]) for o in page]
        return rows, len(members), remaining, next_after

    def attributes_of(
        self, ordinals: Sequence[int], names: Sequence[str]
    ) -> list[dict[str, Value]]:
        """The named attributes of each person (empty for people deleted since)."""
        out: list[dict[str, Value]] = []
        with self.store.read() as txn:
            for ordinal in ordinals:
                raw = txn.get("people", self._prefix + u32(ordinal))
                if raw is None:
                    out.append({})
                    continue
                attributes = self._person_of(ordinal, raw).attributes
                out.append({n: attributes[n] for n in names if n in attributes})
        return out

    def _prune_snapshots(self, txn: Txn, now: int) -> None:
        cutoff = now - self.config.snapshot_retention_seconds
        doomed = [
            key
            for key, value in txn.scan("snapshots", self._prefix)
            if _snapshot_time(value) < cutoff
        ]
        for key in doomed:
            txn.delete("snapshots", key)
            self._snapshots.pop(key[len(self._prefix) :].decode(), None)

    # -- helpers ------------------------------------------------------------------------------

    def _check_batch(self, size: int, path: str, limit: int = 0) -> None:
        limit = limit or self.limits.max_batch_items
        if size > limit:
            raise InvalidArgument(f"{size} items: at most {limit} per call (split the batch)", path)


def load_state(txn: Txn, workspace_prefix: bytes) -> tuple[WorkspaceState, int, int]:
    """A workspace's state from its checkpoint and the log after it; also how many
    operations were replayed and their weight. A damaged record raises CorruptRecordError."""
    blob = txn.get("checkpoints", workspace_prefix)
    with reading("checkpoints", describe_key("checkpoints", workspace_prefix)):
        state = WorkspaceState.from_bytes(blob) if blob else WorkspaceState()
    replayed = weight = 0
    after = workspace_prefix + u64(state.op_seq + 1)
    for key, value in txn.scan("ops", workspace_prefix, after):
        with reading("ops", describe_key("ops", key)):
            op = decode(value)
        state.apply(read_u64(key, len(workspace_prefix)), op)
        replayed += 1
        weight += _weight(op)
    return state, replayed, weight


# A bulk load takes this many times the batch limit per call: its cost per batch (bitmap
# operations per distinct value, the commit's fsync) is spread over more people.
BULK_BATCH_FACTOR = 5


# Lookup keys built at a time when they are written once.
KEYS_CHUNK = 4096


def _lookup_keys(head: bytes, values: Sequence[str]) -> list[bytes]:
    """`head + value` as UTF-8 for many values: joined with a separator, encoded once and
    split (keys hold no control characters, so the split gives one key per value; when it
    does not, map over built-in methods)."""
    if not values:
        return []
    text = head.decode()
    keys = (text + ("\x01" + text).join(values)).encode().split(b"\x01")
    if len(keys) == len(values):
        return keys
    return list(map(head.__add__, map(str.encode, values)))


class _BulkReader(Reader):
    """Batched lookups for plan_columns, inside the write transaction."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.txn: Txn | None = None

    def keys(self, kind: str, values: Sequence[str]) -> list[bytes]:
        return _lookup_keys(self.workspace._prefix + _LOOKUP_CHAR[kind], values)

    def ordinals(self, kind: str, values: Sequence[str]) -> list[int | None]:
        assert self.txn is not None
        keys = self.keys(kind, values)
        found = self.txn.get_many("lookup", sorted(keys))
        if not found:  # a load of new people
            return [None] * len(keys)
        return [None if (raw := found.get(k)) is None else read_u32(raw) for k in keys]

    def claim_new(self, claims: Mapping[str, tuple[Sequence[str], Sequence[int]]]) -> bool:
        assert self.txn is not None
        written: list[tuple[str, Sequence[str], Sequence[int]]] = []
        for kind, (values, ordinals) in claims.items():
            head = self.workspace._prefix + _LOOKUP_CHAR[kind]
            # Keys written once: built a chunk at a time, so that one chunk's memory serves
            # the next (as the records, see bulk._records).
            keys = chain.from_iterable(
                _lookup_keys(head, values[start : start + KEYS_CHUNK])
                for start in range(0, len(values), KEYS_CHUNK)
            )
            rows = zip(keys, map(U32.pack, ordinals), strict=True)
            added = self.txn.insert_many("lookup", rows)
            if added:
                written.append((kind, values, ordinals))
            if added != len(values):
                # Take back the rows this wrote: those holding the ordinal they were given
                # (new ordinals, so no earlier row holds one). A re-import of existing
                # people wrote none.
                for kind_written, values_written, ordinals_written in written:
                    keys_written = self.keys(kind_written, values_written)
                    held = self.txn.get_many("lookup", sorted(keys_written))
                    for key, ordinal in zip(keys_written, ordinals_written, strict=True):
                        if held.get(key) == U32.pack(ordinal):
                            self.txn.delete("lookup", key)
                return False
        return True

    def records(self, ordinals: Sequence[int]) -> list[list[Any]]:
        assert self.txn is not None
        p = self.workspace._prefix
        keys = [p + u32(o) for o in ordinals]
        found = self.txn.get_many("people", sorted(keys))
        try:
            return [unpack_record(found[k]) for k in keys]
        except Exception:
            # Someone's record is damaged: the person-by-person path reports them alone.
            for ordinal, k in zip(ordinals, keys, strict=True):
                self.workspace._person_of(ordinal, found.get(k))
            raise


def _snapshot_fields(raw: bytes) -> list[Any]:
    """[time taken, serialized bitmap] of a stored audience snapshot."""
    fields: list[Any] = msgpack.unpackb(unseal(raw))
    return fields


def _snapshot_time(raw: bytes) -> int:
    """When a stored snapshot was taken; a damaged one counts as expired (a sender resolves
    the audience again)."""
    try:
        return int(_snapshot_fields(raw)[0])
    except Exception:
        return -1


def _exists(index: object, key: str) -> BitMap:
    fi = index.field(key)  # type: ignore[attr-defined]
    return BitMap() if fi is None else fi.exists


def _weight(op: Op) -> int:
    """What an operation adds to the replay after a crash, in people-updates: checkpoints
    are scheduled by it. An event replays about three times faster than a person."""
    if isinstance(op, PeopleOp):
        # A bulk load's delta replays about 10 times faster per person than records (on the
        # benchmark machine 1M simple profiles in 1.6 s, 100k by records in 1.7 s); a simple
        # profile moves about 10 values.
        return len(op.people) + (op.delta.size() // 100 if op.delta else 0)
    if isinstance(op, EventsOp):
        return len(op.people) + len(op.events) // 3
    if isinstance(op, MembersOp):
        return 1 + len(op.ordinals) // 100
    return 1


def _rejected(index: int, key: str, exc: SegsvcError) -> ItemResult:
    if isinstance(exc, InvalidArgument):
        v = exc.violations[0]
        return ItemResult(index, key, "invalid", v.description, v.field)
    return ItemResult(index, key, "not_found", str(exc))


def _page_size(requested: int, default: int, maximum: int) -> int:
    if requested <= 0:
        return default
    return min(requested, maximum)


def _token(token: str, maximum: int) -> int:
    """The id or ordinal (at most `maximum`) a page token of a previous response holds.
    ASCII digits only: str.isdigit() also accepts "²" and "①", which int() refuses."""
    if not token:
        return 0
    if not (token.isascii() and token.isdigit()) or len(token) > 20 or int(token) > maximum:
        raise InvalidArgument("not a page token from a previous response", "page_token")
    return int(token)
