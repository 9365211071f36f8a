"""What every part of one workspace shares: its in-memory state, its lock, its store and
operation log, the lookups every request starts with, and the one path every write takes.

The write path: resolve the request against what is stored (validation, lookups) into an
operation record; append the record to the log and apply it to the in-memory state; store the
rows it changes and the membership changes in the same LMDB transaction; commit; only then
answer. A failure before the commit leaves nothing on disk, and the in-memory state is
reloaded from disk, so memory never runs ahead of what was acknowledged. That reload costs as
much as a start, so storage without room is refused before anything is resolved or applied:
a refused write costs a look at the free space, not a reload.

The request handlers (segsvc.engine.people_writes, event_writes, segment_defs, members,
change_feed, audiences) each hold this core; segsvc.engine.workspace puts them behind one
façade.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from segsvc.config import Config
from segsvc.engine import conditions
from segsvc.engine.clock import Clock
from segsvc.engine.errors import (
    ConcurrentWrite,
    DataLoss,
    InvalidArgument,
    NotFound,
    data_loss,
    from_storage,
)
from segsvc.engine.model import ItemResult, PersonKey
from segsvc.engine.observer import NO_WORKSPACE_OBSERVER, WorkspaceObserver
from segsvc.engine.oplog import (
    LmdbOperationLog,
    OperationLog,
    load_state,
    replay_weight,
    stage_checkpoint,
)
from segsvc.engine.ops import CreateSegmentOp, Op, TickOp, UpdateSegmentOp
from segsvc.engine.people import PersonRecord
from segsvc.engine.record_rows import LOOKUP_CHAR, store_rows
from segsvc.engine.requests import rejected
from segsvc.engine.state import ChangeBatch, WorkspaceState
from segsvc.engine.state_snapshot import StateSnapshot
from segsvc.engine.values import check_key, normalize_email, normalize_phone
from segsvc.storage.errors import CorruptRecordError, StorageError, StorageFullError
from segsvc.storage.records import reason
from segsvc.storage.store import (
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

# What `resolve` of a write returns: the operation (None when nothing changes), the answer,
# and the extra rows to store in the same transaction.
Persist = Callable[[Txn], None]
Resolve = Callable[[Txn], tuple[Op | None, R, Persist | None]]

# meta key (+ workspace prefix): the clock time of the workspace's last checkpoint.
CHECKPOINTED_AT = b"checkpointed:"
# Where a shared log's materialisation stands: meta key + workspace prefix -> the last
# record whose rows this node stored.
MATERIALISED = b"materialised:"
# A write refused because other nodes appended first is validated again after catching up,
# this many times in all.
WRITE_ATTEMPTS = 5


@dataclass(frozen=True)
class PendingCheckpoint:
    """A checkpoint between its snapshot and its commit."""

    snapshot: StateSnapshot
    # The replay weight logged before the snapshot: what the checkpoint takes off the tail.
    weight: int
    # How long the snapshot held the workspace lock.
    snapshot_seconds: float


class WorkspaceCore:
    def __init__(
        self,
        name: str,
        store: Store,
        clock: Clock,
        config: Config,
        oplog: OperationLog | None = None,
        observer: WorkspaceObserver = NO_WORKSPACE_OBSERVER,
    ) -> None:
        self.name = name
        self.observer = observer
        self.store = store
        self.clock = clock
        self.config = config
        self.limits = config.limits
        self.prefix = prefix(name)
        self.oplog: OperationLog = oplog or LmdbOperationLog(self.prefix)
        self.lock = threading.RLock()
        # Watchers wait on this; it is notified after every commit that wrote changes.
        self.changed = threading.Condition()
        self.items_since_checkpoint = 0
        # After a checkpoint failed, the next one waits for another checkpoint's worth of
        # writes (each attempt serialises the whole state).
        self.checkpoint_retry_at = 0
        # Writes refused for want of room (logged when refusals start and stop), and
        # reloads after a write failed once applied (the rare fallback).
        self.refused_full = 0
        self.reloads = 0
        self.last_history: dict[int, int] = {}
        # People deleted since their events were last dropped from memory (unknown after a
        # restart: assume some, so the first tick looks).
        self.deaths = 1
        # When the last checkpoint was stored (clock seconds; None: never), for status.
        self.checkpointed_at: int | None = None
        # The thread storing a checkpoint in the background (None: none started yet).
        self._checkpointer: threading.Thread | None = None
        self.state = self.load()
        self.committed_head = self.state.change_seq - 1

    # -- recovery and checkpoints -----------------------------------------------------------

    def load(self) -> WorkspaceState:
        """The state as of the last committed operation: checkpoint plus the log after it.
        A damaged checkpoint or log record raises CorruptRecordError: the state cannot be
        rebuilt without it. From a shared log, the records this node has not stored the
        rows of (another node's, or its own whose commit was lost) are materialised on the
        way."""
        started = time.perf_counter()
        if self.oplog.shared:
            state, replayed, weight = self._load_shared()
        else:
            with self.store.read() as txn:
                state, replayed, weight = load_state(self.oplog, txn)
        with self.store.read() as txn:
            raw_time = txn.get("meta", CHECKPOINTED_AT + self.prefix)
        self.checkpointed_at = read_u64(raw_time) if raw_time else None
        self.observer.replayed(replayed, time.perf_counter() - started)
        self._loaded(replayed, weight)
        return state

    def _load_shared(self) -> tuple[WorkspaceState, int, int]:
        replayed = weight = 0
        with self.store.write() as txn:
            self.state = self.oplog.latest_checkpoint(txn)
            done = self._materialised(txn)
            for seq, op in self.oplog.read_from(txn, self.state.op_seq):
                if seq <= done:
                    self.state.apply(seq, op)
                else:
                    self.materialise(txn, seq, op)
                replayed += 1
                weight += replay_weight(op)
        return self.state, replayed, weight

    def _materialised(self, txn: Txn) -> int:
        """The last record of a shared log whose rows this node stored."""
        raw = txn.get("meta", MATERIALISED + self.prefix)
        return 0 if raw is None else read_u64(raw)

    def _loaded(self, replayed: int, weight: int) -> None:
        # What is still only in the log counts toward the next checkpoint.
        self.items_since_checkpoint = weight
        if replayed:
            log.info(
                "workspace %s: replayed %d operations after the checkpoint", self.name, replayed
            )

    def checkpoint(self) -> bool:
        """Stores the whole in-memory state and drops the log records it covers, now, on
        this thread (after any checkpoint under way in the background); says whether it
        did. Without room for it, or when storage fails it, one line is logged and
        nothing changes: the log still holds all the checkpoint would have covered, so
        nothing is lost and the next start replays more."""
        self.finish_checkpoint()
        with self.lock:
            pending = self._take_snapshot()
        return self._write_checkpoint(pending)

    def start_checkpoint(self) -> bool:
        """Takes a snapshot now (under the lock, which the caller holds) and stores it on a
        background thread while writes go on; False when one is under way already."""
        if self._checkpointer is not None and self._checkpointer.is_alive():
            return False
        pending = self._take_snapshot()
        self._checkpointer = threading.Thread(
            target=self._write_checkpoint,
            args=(pending, True),
            name=f"segsvc-checkpoint-{self.name}",
            daemon=True,
        )
        self._checkpointer.start()
        return True

    def finish_checkpoint(self) -> None:
        """Waits for the checkpoints under way in the background, if any, including one
        that follows on (before closing storage, or before a checkpoint of its own)."""
        while (checkpointer := self._checkpointer) is not None and checkpointer.is_alive():
            checkpointer.join()

    def _take_snapshot(self) -> PendingCheckpoint:
        started = time.perf_counter()
        snapshot = self.state.snapshot()
        took = time.perf_counter() - started
        return PendingCheckpoint(snapshot, self.items_since_checkpoint, took)

    def _write_checkpoint(self, pending: PendingCheckpoint, background: bool = False) -> bool:
        """Packs and stages the snapshot (no lock held), then makes it the checkpoint in
        one short transaction under the lock. The records it covers are dropped in that
        transaction, so a crash at any point leaves the old checkpoint or the new one, and
        the log after it."""
        started = time.perf_counter()
        covered = pending.snapshot.op_seq
        size = 0
        try:
            pieces = pending.snapshot.pieces()
            size = sum(len(piece) for piece in pieces)
            room = self.store.room()
            if size > room.left - room.reserve:
                raise StorageFullError(
                    room.where,
                    f"{room.left // MiB} MiB left, {room.reserve // MiB} MiB of it kept in reserve",
                )
            manifest = stage_checkpoint(self.store, self.prefix, pieces)
            # What a shared log publishes for nodes that join later: the state's bytes whole
            # (joined here, off the lock; the embedded log publishes nothing).
            published = b"".join(pieces) if self.oplog.shared else b""
            now = self.clock.now()
            with self.lock:
                with self.store.write() as txn:
                    self.oplog.checkpoint(txn, manifest, covered)
                    txn.put("meta", CHECKPOINTED_AT + self.prefix, u64(now))
                # Under the lock: a shared log takes an LMDB snapshot of the rows now and
                # uploads it with the state off the lock. The rows may be a few records past
                # the state; a joining node replays those records over them, which stores
                # the same rows again.
                self.oplog.checkpoint_stored(self.store, published)
                # What was logged while this one was written still counts toward the next.
                self.items_since_checkpoint = max(0, self.items_since_checkpoint - pending.weight)
                self.checkpoint_retry_at = 0
                self.checkpointed_at = now
                if background and self.items_since_checkpoint >= self.checkpoint_due():
                    # Enough was written meanwhile for the next one: it follows on now (a
                    # write that found this one under way did not start it).
                    self._checkpointer = None
                    self.start_checkpoint()
        except Exception as exc:
            with self.lock:
                self.checkpoint_retry_at = self.items_since_checkpoint + self.checkpoint_due()
            if isinstance(exc, StorageError):
                log.warning(
                    "workspace %s: checkpoint at op %d (%d MiB) skipped, the log keeps it: %s",
                    self.name,
                    covered,
                    size // MiB,
                    exc,
                )
            else:
                # The writes are committed whatever becomes of the checkpoint: logged, not
                # answered.
                log.exception("workspace %s: checkpoint at op %d failed", self.name, covered)
            return False
        self.observer.checkpointed(time.perf_counter() - started + pending.snapshot_seconds)
        log.info(
            "workspace %s: checkpoint at op %d (snapshot under the lock %.1f ms; %d bytes)",
            self.name,
            covered,
            pending.snapshot_seconds * 1000,
            size,
        )
        return True

    def checkpoint_due(self) -> int:
        # Replay after a crash costs time in proportion to the log tail. Writers no longer
        # wait for a checkpoint (it is stored in the background), but it still costs a core
        # for about a second per million people: one after every 2% of the workspace has
        # changed keeps the tail at a second or so of replay without checkpointing all
        # the time.
        return max(self.config.checkpoint_every_ops, len(self.state.index.live) // 50)

    # -- the write path -----------------------------------------------------------------------

    def commit(self, resolve: Resolve[R], frees: bool = False) -> R:
        """Runs one write: `resolve` validates against storage and returns the operation (or
        None when nothing changes), the answer, and the extra rows to store. Writes that
        free space (`frees`: deletions, ticks) may use part of the storage reserve.

        On a shared log another node may have appended first: the log refuses the record,
        this node catches up and validates the write again, a few times at most."""
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                return self._commit_once(resolve, frees)
            except ConcurrentWrite as exc:
                if attempt == WRITE_ATTEMPTS:
                    raise ConcurrentWrite(
                        f"other nodes wrote to workspace {self.name!r} first {attempt} times "
                        "in a row; nothing was applied: retry"
                    ) from exc
                self.catch_up()
        raise AssertionError("unreachable")

    def catch_up(self, through: int = 0) -> int:
        """Applies and stores the records of a shared log this node has not applied yet
        (other nodes' writes); returns how many. The embedded log has none. With `through`,
        nothing is read when record `through` is applied by the time the lock is free (the
        notice of this node's own write, which its commit applied meanwhile)."""
        with self.lock:
            if through and self.state.op_seq >= through:
                return 0
            count = weight = 0
            wrote_changes = False
            with self._moving_write() as (txn, moved):
                for seq, op in self.oplog.read_from(txn, self.state.op_seq):
                    moved.append(seq)
                    wrote_changes |= bool(self.materialise(txn, seq, op))
                    count += 1
                    weight += replay_weight(op)
            self.items_since_checkpoint += weight
        if wrote_changes:
            self._notify_changes()
        return count

    def materialise(
        self, txn: Txn, seq: int, op: Op, persist: Persist | None = None
    ) -> list[ChangeBatch]:
        """Applies record `seq` to the in-memory state and stores what it changes: its rows
        (`persist`, else those the record carries), the membership changes and the size
        history. The one path of every record, written here or read from a shared log."""
        batches = self.state.apply(seq, op)
        if persist is not None:
            persist(txn)
        else:
            store_rows(txn, self.prefix, op)
        for batch in batches:
            txn.put("changes", self.prefix + u64(batch.first_seq), batch.encode())
        self.record_history(txn, op)
        if self.oplog.shared:
            txn.put("meta", MATERIALISED + self.prefix, u64(seq))
        return batches

    def _notify_changes(self) -> None:
        with self.changed:
            self.committed_head = self.state.change_seq - 1
            self.changed.notify_all()

    def _commit_once(self, resolve: Resolve[R], frees: bool) -> R:
        with self.lock:
            self.check_room(frees)
            started = time.perf_counter()
            with self._moving_write() as (txn, moved):
                op, answer, persist = resolve(txn)
                if op is None:
                    return answer
                seq = self.state.op_seq + 1
                # Appended before it is applied: a log that can refuse the record (a
                # replicated one) then refuses it before memory moved, and no reload
                # follows.
                self.oplog.append(txn, seq, op)
                moved.append(seq)
                batches = self.materialise(txn, seq, op, persist)
            self.observer.committed(time.perf_counter() - started)
            self.items_since_checkpoint += replay_weight(op)
            if self.items_since_checkpoint >= max(self.checkpoint_due(), self.checkpoint_retry_at):
                self.start_checkpoint()
        if batches:
            self._notify_changes()
        return answer

    def check_room(self, frees: bool) -> None:
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

    @contextmanager
    def _moving_write(self) -> Iterator[tuple[Txn, list[int]]]:
        """One LMDB write transaction in which records are applied to the in-memory state
        (the caller lists their sequence numbers in the second item once it applies them):
        if it fails after one was, the state is reloaded from what was committed; a storage
        failure becomes the domain error it stands for."""
        moved: list[int] = []
        try:
            with self.store.write() as txn:
                yield txn, moved
        except StorageError as exc:
            self._reload_after_failure(bool(moved), exc)
            raise from_storage(exc, self.store.path) from exc
        except BaseException as exc:
            self._reload_after_failure(bool(moved), exc)
            raise

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
            self.state = self.load()

    def record_history(self, txn: Txn, op: Op) -> None:
        """Size history: a point whenever a tick or a definition change moved a count."""
        if not isinstance(op, TickOp | CreateSegmentOp | UpdateSegmentOp):
            return
        for seg in self.state.segments.values():
            count = len(seg.members)
            if self.last_history.get(seg.id) != count:
                self.last_history[seg.id] = count
                txn.put("history", self.prefix + u64(seg.id) + u64(op.at), u64(count))

    # -- lookups every request starts with ----------------------------------------------------

    def lookup(self, txn: Txn, kind: str, value: str) -> int | None:
        raw = txn.get("lookup", self.prefix + LOOKUP_CHAR[kind] + value.encode())
        return None if raw is None else read_u32(raw)

    def record(self, txn: Txn, ordinal: int) -> PersonRecord:
        """A person's stored record; DataLoss naming them when it is damaged or missing."""
        return self.person_of(ordinal, txn.get("people", self.prefix + u32(ordinal)))

    def person_of(self, ordinal: int, raw: bytes | None) -> PersonRecord:
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
        where = describe_key("people", self.prefix + u32(ordinal))
        if known is not None:
            where += f" (person {known!r})"
        return data_loss(CorruptRecordError("people", where, why), self.store.path)

    def normalize_key(self, key: PersonKey, field: str) -> PersonKey:
        if key.kind == "email":
            return PersonKey("email", normalize_email(key.value, field))
        if key.kind == "phone":
            return PersonKey("phone", normalize_phone(key.value, field, self.config.default_region))
        check_key(key.value, "the person id", field)
        return key

    def find(self, txn: Txn, key: PersonKey, field: str) -> int:
        key = self.normalize_key(key, field)
        ordinal = self.lookup(txn, key.kind, key.value)
        if ordinal is None:
            raise NotFound(f"no person with {key.kind} {key.value!r}")
        return ordinal

    def find_each(
        self, txn: Txn, keys: Sequence[PersonKey], path: str, results: list[ItemResult]
    ) -> Iterator[tuple[int, PersonKey, int]]:
        """(item index, key, ordinal) for each key of a batch that names a person; the others
        are reported in `results` (invalid or not found) and skipped."""
        for i, key in enumerate(keys):
            try:
                ordinal = self.find(txn, key, f"{path}[{i}]")
            except (NotFound, InvalidArgument) as exc:
                results.append(rejected(i, str(key), exc))
                continue
            yield i, key, ordinal

    def segment(self, segment_id: int, field: str = "segment_id") -> conditions.Node | None:
        """The definition of a segment (None: manual); NotFound naming `field` when none."""
        seg = self.state.segments.get(segment_id)
        if seg is None:
            raise NotFound(f"segment {segment_id} does not exist ({field})")
        return seg.definition

    def check_batch(self, size: int, path: str, limit: int = 0) -> None:
        limit = limit or self.limits.max_batch_items
        if size > limit:
            raise InvalidArgument(f"{size} items: at most {limit} per call (split the batch)", path)
