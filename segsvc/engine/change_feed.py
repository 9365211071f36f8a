"""The change feed of a workspace: membership changes as stored by the commit path (batches
in the `changes` table, keyed by their first sequence number), read back from a sequence
number, followed live, and pruned past their retention.

Watchers read the live part back from storage too, so the switch from replay to live needs
no hand-over: the commit path only moves `committed_head` and wakes them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from segsvc.engine.core import WorkspaceCore
from segsvc.engine.errors import InvalidArgument, OutOfRange, data_loss
from segsvc.engine.model import Change
from segsvc.engine.requests import MAX_U64
from segsvc.engine.state import ENTERED, ChangeBatch
from segsvc.storage.errors import CorruptRecordError
from segsvc.storage.records import reason
from segsvc.storage.store import Txn, describe_key, read_u64, u64

# Batches a tick prunes at most, so one tick's transaction stays small.
PRUNE_BATCHES = 10_000


class ChangeFeed:
    def __init__(self, core: WorkspaceCore) -> None:
        self.core = core
        # Each live follower's cursor (the last seq it was given), by follower: how far
        # behind they are is read from here when asked, at no cost to the writes.
        self._cursors: dict[object, int] = {}

    def follower_cursors(self) -> list[int]:
        """The cursor of every follower following now."""
        return list(self._cursors.values())

    def _batch(self, key: bytes, value: bytes) -> ChangeBatch:
        """A stored batch of changes; DataLoss naming it when it is damaged."""
        try:
            return ChangeBatch.decode(read_u64(key, len(self.core.prefix)), value)
        except Exception as exc:
            error = CorruptRecordError("changes", describe_key("changes", key), reason(exc))
            raise data_loss(error, self.core.store.path) from exc

    def read_changes(
        self, after_seq: int, segment_ids: frozenset[int], limit: int
    ) -> tuple[list[Change], int]:
        if not 0 <= after_seq <= MAX_U64 - 2:  # the keys below are after_seq + 2
            raise InvalidArgument("beyond any sequence number a change can have", "after_seq")
        p = self.core.prefix
        out: list[Change] = []
        last = after_seq
        with self.core.store.read() as txn:
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
            ids = self.core.state.index.ids
            for key, value in txn.scan("changes", p, start):
                batch = self._batch(key, value)
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
        follow: bool,
    ) -> Iterator[list[Change]]:
        core = self.core
        cursor = after_seq
        follower = object()
        self._cursors[follower] = cursor
        try:
            while not stop():
                changes, cursor = self.read_changes(cursor, segment_ids, 1000)
                self._cursors[follower] = cursor
                if changes:
                    yield changes
                    continue
                if not follow:
                    return
                with core.changed:
                    if cursor >= core.committed_head:
                        core.changed.wait(timeout=0.5)
        finally:
            del self._cursors[follower]

    def prune(self, txn: Txn, now: int) -> None:
        """Drops the oldest batches past the change retention and notes where the kept
        range starts (a read from before it is OUT_OF_RANGE)."""
        p = self.core.prefix
        cutoff = now - self.core.config.change_retention_seconds
        pruned_to = None
        doomed: list[bytes] = []
        for key, value in txn.scan("changes", p):
            batch = self._batch(key, value)
            if batch.at >= cutoff:
                break
            doomed.append(key)
            pruned_to = batch.first_seq + len(batch.ordinals)
            if len(doomed) >= PRUNE_BATCHES:
                break
        for key in doomed:
            txn.delete("changes", key)
        if pruned_to is not None:
            txn.put("meta", b"pruned:" + p, u64(pruned_to))
