"""Events and time: tracking events (and creating bare people for unknown ids when asked),
the tick that re-checks time-dependent segments and prunes what is past its retention, and
dropping from memory the events no condition counts any more.

A tick is an operation like any write (TickOp carries its time), so replaying the log moves
people at the same point; the pruning of stored changes and snapshots rides in the tick's
transaction."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from segsvc.engine.audiences import Audiences
from segsvc.engine.bulk_columns import REJECTED, TRACKED, BulkResult
from segsvc.engine.change_feed import ChangeFeed
from segsvc.engine.core import Persist, WorkspaceCore
from segsvc.engine.errors import InvalidArgument, NotFound
from segsvc.engine.event_columns import EventColumns, check_event_columns, event_rows, take
from segsvc.engine.events import EventInput, validate_event
from segsvc.engine.model import ItemResult, PersonKey
from segsvc.engine.ops import EventsOp, Op, TickOp
from segsvc.engine.people import PersonRecord
from segsvc.engine.people_rows import BulkReader, persist_people
from segsvc.engine.people_writes import BULK_BATCH_FACTOR
from segsvc.engine.requests import rejected
from segsvc.engine.values import Timestamp, Value
from segsvc.storage.store import Txn

log = logging.getLogger(__name__)

# Events may be stamped a little ahead of the server's clock, not more.
MAX_FUTURE_SKEW_SECONDS = 3600


class EventWrites:
    def __init__(self, core: WorkspaceCore, feed: ChangeFeed, audiences: Audiences) -> None:
        self.core = core
        self.feed = feed
        self.audiences = audiences
        self._compacting = threading.Lock()

    def track_events(
        self, events: Sequence[EventInput], create_missing_people: bool, path: str
    ) -> list[ItemResult]:
        core = self.core
        core.check_batch(len(events), path)

        def resolve(txn: Txn) -> tuple[Op | None, list[ItemResult], Persist]:
            now = core.clock.now()
            retention = core.config.event_retention_seconds
            # Past retention, or before what an earlier tick already let go of (retention
            # shortened and then lengthened again).
            oldest = max(now - retention, core.state.event_leaves.floor)
            results: list[ItemResult] = []
            rows: list[tuple[int, str, int, dict[str, Value]]] = []
            born: dict[str, tuple[int, None, PersonRecord]] = {}
            for i, event in enumerate(events):
                item = f"{path}[{i}]"
                try:
                    props = validate_event(event, item, core.limits)
                    ts = now if event.timestamp is None else int(event.timestamp)
                    if ts > now + MAX_FUTURE_SKEW_SECONDS:
                        raise InvalidArgument(
                            f"more than {MAX_FUTURE_SKEW_SECONDS} s in the future "
                            "(check the sender's clock)",
                            f"{item}.timestamp",
                        )
                    if ts < oldest:
                        raise InvalidArgument(
                            f"older than the event retention ({retention // 86400} days)",
                            f"{item}.timestamp",
                        )
                    ordinal = self._event_person(
                        txn, event.person, f"{item}.person", born, create_missing_people, now
                    )
                except (InvalidArgument, NotFound) as exc:
                    results.append(rejected(i, str(event.person), exc))
                    continue
                rows.append((ordinal, event.name, ts, props))
                results.append(ItemResult(i, str(event.person), "tracked"))
            if not rows:
                return None, results, persist_people(core, ())
            people = tuple(born.values())
            return EventsOp(now, people, tuple(rows)), results, persist_people(core, people)

        return core.commit(resolve)

    def track_columns(
        self, columns: EventColumns, create_missing_people: bool, first_index: int
    ) -> BulkResult:
        """Events as columns (`first_index`: the position of row 0 in the client's stream),
        ending as the same events through `track_events` would: the same people created,
        events stored, outcomes and errors, but checked column by column, the people looked
        up once per distinct id in one batched read, and logged as columns."""
        core = self.core
        n = len(columns)
        core.check_batch(n, columns.path, core.limits.max_batch_items * BULK_BATCH_FACTOR)
        checked = check_event_columns(columns, core.limits, first_index)
        reader = BulkReader(core)

        def resolve(txn: Txn) -> tuple[Op | None, BulkResult, Persist | None]:
            now = core.clock.now()
            retention = core.config.event_retention_seconds
            oldest = max(now - retention, core.state.event_leaves.floor)
            errors: dict[int, tuple[str, str, str]] = {
                row: ("invalid", *error) for row, error in checked.errors.items()
            }
            times = np.full(n, now, dtype=np.int64)
            stamps = columns.timestamps
            if stamps is not None:
                given = stamps.rows(n)
                times[given] = stamps.values[given]
                for rows, why in (
                    (times > now + MAX_FUTURE_SKEW_SECONDS, _TOO_NEW),
                    (times < oldest, f"older than the event retention ({retention // 86400} days)"),
                ):
                    for row in np.flatnonzero(rows).tolist():
                        where = f"{stamps.path}[{first_index + row}]"
                        errors.setdefault(row, ("invalid", why, where))
            for row, (why, where) in checked.person_errors.items():
                errors.setdefault(row, ("invalid", why, where))
            accepted = _rows_without(errors, n)
            ids = take(columns.person_ids, accepted)
            distinct = list(dict.fromkeys(ids))
            reader.txn = txn
            ordinal_of = dict(zip(distinct, reader.ordinals("id", distinct), strict=True))
            missing = [pid for pid in distinct if ordinal_of[pid] is None]
            born: list[tuple[int, None, PersonRecord]] = []
            if create_missing_people:
                stamp = Timestamp(now)
                for pid in missing:
                    ordinal = ordinal_of[pid] = core.state.next_ordinal + len(born)
                    born.append(
                        (ordinal, None, PersonRecord(pid, created_at=stamp, updated_at=stamp))
                    )
            elif missing:
                path = f"{columns.path}.person_ids"
                for row, pid in zip(accepted.tolist(), ids, strict=True):
                    if ordinal_of[pid] is None:
                        where = f"{path}[{first_index + row}]"
                        errors[row] = ("not_found", f"no person with id {pid!r}", where)
                accepted = _rows_without(errors, n)
                ids = take(columns.person_ids, accepted)
            ordinals = np.fromiter(map(ordinal_of.__getitem__, ids), np.uint32, len(ids))
            outcomes = np.full(n, REJECTED, dtype=np.uint8)
            outcomes[accepted] = TRACKED
            result = BulkResult(
                outcomes,
                [
                    ItemResult(first_index + row, columns.person_ids[row], *errors[row])
                    for row in sorted(errors)
                ],
                (TRACKED,),
            )
            if not len(accepted):
                return None, result, None
            batches = event_rows(columns, checked.properties, accepted, ordinals, times[accepted])
            people = tuple(born)
            op = EventsOp(now, people, batches=tuple(batches))
            return op, result, persist_people(core, people)

        return core.commit(resolve)

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
            return self.core.find(txn, key, field)
        except NotFound:
            if not create or key.kind != "id":
                if create:
                    raise NotFound(
                        f"no person with {key.kind} {key.value!r}: only unknown ids can be "
                        "created from events"
                    ) from None
                raise
        if key.value not in born:
            ordinal = self.core.state.next_ordinal + len(born)
            record = PersonRecord(
                id=key.value, created_at=Timestamp(now), updated_at=Timestamp(now)
            )
            born[key.value] = (ordinal, None, record)
        return born[key.value][0]

    def tick(self) -> None:
        core = self.core
        started = time.perf_counter()
        # The change sequence before and after the tick's record is applied: both read under
        # the write lock (resolve, then the rows step after apply), so only the tick's
        # changes lie between them.
        seqs: list[int] = []

        def count_changes(txn: Txn) -> None:
            seqs.append(core.state.change_seq)

        def resolve(txn: Txn) -> tuple[Op | None, None, Persist | None]:
            now = core.clock.now()
            if now < core.state.now:
                # Another node's tick (a shared log) already moved time past this node's
                # clock: time never runs backwards, and that tick did this one's work.
                return None, None, None
            self.feed.prune(txn, now)
            self.audiences.prune(txn, now)
            cutoff = now - core.config.event_retention_seconds
            if not core.state.has_time_dependent() and core.state.events.oldest() >= cutoff:
                core.record_history(txn, TickOp(now))
                return None, None, None
            seqs.append(core.state.change_seq)
            return TickOp(now, cutoff), None, count_changes

        core.commit(resolve, frees=True)
        self.compact_events(force=False)
        moved = seqs[1] - seqs[0] if len(seqs) == 2 else 0
        core.observer.ticked(time.perf_counter() - started, moved)

    def compact_events(self, force: bool) -> int:
        core = self.core
        with self._compacting:
            with core.lock:
                state = core.state
                events = state.events
                floor = state.event_leaves.floor
                stale = events.stale_rows(floor)
                if not force and not core.deaths and stale * 16 < events.total():
                    return 0
                core.deaths = 0
                logs = {name: (source, source.size) for name, source in events.logs.items()}
                alive = np.zeros(state.next_ordinal, dtype=np.bool_)
                alive[np.frombuffer(state.index.live.to_array(), dtype=np.uint32)] = True
            compacted = {}
            for name, (source, size) in logs.items():
                keep = source.keep_mask(size, floor, alive)
                dropped = size - int(np.count_nonzero(keep))
                if dropped and (force or dropped * 16 >= size):
                    compacted[name] = (source.compacted(size, keep), dropped)
            with core.lock:
                if core.state is not state:
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
                log.info("workspace %s: dropped %d past or orphaned events", core.name, total)
            return total


_TOO_NEW = f"more than {MAX_FUTURE_SKEW_SECONDS} s in the future (check the sender's clock)"


def _rows_without(errors: dict[int, Any], n: int) -> np.ndarray:
    """The rows of `n` that have no error, ascending."""
    keep = np.ones(n, dtype=bool)
    keep[list(errors)] = False
    return np.flatnonzero(keep)
