"""The operation log of a workspace: where operation records are appended, read back for a
replay, and dropped once a checkpoint covers them. `OperationLog` is what the commit path
(segsvc.engine.core) asks of a log; `LmdbOperationLog` is the embedded one, the `ops` and
`checkpoints` tables of the store; segsvc.engine.jetstream_log is the other, on NATS
JetStream (`serve --nats`).

The state is a deterministic function of the log, so the log can live elsewhere without
the commit path changing:
- `append` of the embedded log is durable when the LMDB transaction commits; the JetStream
  log publishes the record (expecting the last record this node saw on the workspace's
  subject) and returns once JetStream acknowledged it, or refuses it (ConcurrentWrite) when
  another node wrote first. That is why the commit path appends *before* it applies the
  record in memory: a refused publish has changed nothing.
- `read_from` reads the records after a sequence (a replay after a checkpoint, catching up
  with other nodes, or a new node);
- `checkpoint` stores the state blob locally as of a record; the embedded log drops the
  records it covers, a stream keeps them (its retention decides what it drops).

A checkpoint of a large workspace is too big for one LMDB transaction: LMDB has one writer,
and the fsync of 150 MB (1M people) keeps every write waiting about a second. So the state's
bytes are first staged in parts (`stage_checkpoint`), each part in a transaction of its own
off the workspace lock; then `checkpoint` stores only the small manifest naming them, and
drops the parts of the previous checkpoint, in the transaction that makes it the current
one. A crash while parts are staged leaves the previous manifest and its parts untouched
(the orphaned parts go with the next checkpoint).
Every method takes the local LMDB transaction of the unit of work: LMDB stays each node's
materialisation either way. Nothing here knows of the in-memory indexes beyond decoding a
checkpoint, nor of clocks.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Protocol

import msgpack

from segsvc.engine.ops import EventsOp, MembersOp, Op, PeopleOp, decode, encode
from segsvc.engine.state import WorkspaceState
from segsvc.storage.records import DamagedRecord, reading, seal, unseal
from segsvc.storage.store import MiB, Store, Txn, describe_key, prefix_end, read_u64, u64

# A staged part of a checkpoint: a write waits for at most one such transaction. Small
# values matter more than few transactions: LMDB looks for a run of free pages as long as
# the value, and after the previous checkpoint's parts are freed that search took 50-190 ms
# per 1 MiB part at 1M people; 256 KiB parts commit in a few ms, and the whole checkpoint
# twice as fast.
CHECKPOINT_PART_BYTES = MiB // 4
# The stored checkpoint is either the state's bytes (a sealed msgpack frame: 0xC1, or a
# bare msgpack array from the first schema) or, after this mark, the manifest of its parts.
# A state blob never starts with 0x00.
_MANIFEST_MARK = b"\x00checkpoint-parts\x00"
# Parts live beside the checkpoint in the `checkpoints` table, under the workspace prefix,
# this mark, their checkpoint's stamp and their number.
_PART_MARK = b"part\x00"


class OperationLog(Protocol):
    """One workspace's ordered operation records, numbered from 1."""

    # Whether others read this log too (other nodes, or this node after a commit it lost):
    # its records then carry every row they store, and this node materialises records it
    # did not commit itself.
    shared: bool

    def append(self, txn: Txn, seq: int, op: Op) -> None:
        """Adds `op` as record `seq` (one more than the last): durable once `txn` commits
        (embedded), or once this returns (shared)."""

    def read_from(self, txn: Txn, after_seq: int) -> Iterator[tuple[int, Op]]:
        """The records after `after_seq`, in order, with their sequence numbers. A damaged
        record raises CorruptRecordError."""

    def latest_checkpoint(self, txn: Txn) -> WorkspaceState:
        """The state the last checkpoint stored (an empty state before the first one); its
        `op_seq` is the last record it covers. A damaged one raises CorruptRecordError."""

    def checkpoint(self, txn: Txn, blob: bytes, covered_seq: int) -> None:
        """Stores `blob` (a WorkspaceState's bytes, or the manifest `stage_checkpoint`
        returned for them) as the state after record `covered_seq` and lets go of the
        records it covers."""

    def checkpoint_stored(self, store: Store, blob: bytes) -> None:
        """Called once the checkpoint `checkpoint` stored has committed, under the workspace
        lock: a shared log publishes it (with the rows `store` holds now) for nodes that
        join later; the embedded log has nobody to tell."""


class LmdbOperationLog:
    """The embedded log: records in the `ops` table under the workspace prefix and the
    sequence number, the checkpoint in `checkpoints` under the workspace prefix."""

    # The record and its rows commit in one LMDB transaction: nobody else reads it.
    shared = False

    def __init__(self, workspace_prefix: bytes) -> None:
        self.prefix = workspace_prefix

    def append(self, txn: Txn, seq: int, op: Op) -> None:
        txn.put("ops", self.prefix + u64(seq), encode(op))

    def read_from(self, txn: Txn, after_seq: int) -> Iterator[tuple[int, Op]]:
        p = self.prefix
        for key, value in txn.scan("ops", p, p + u64(after_seq + 1)):
            with reading("ops", describe_key("ops", key)):
                op = decode(value)
            yield read_u64(key, len(p)), op

    def latest_checkpoint(self, txn: Txn) -> WorkspaceState:
        return read_checkpoint(txn, self.prefix)

    def checkpoint(self, txn: Txn, blob: bytes, covered_seq: int) -> None:
        store_checkpoint(txn, self.prefix, blob)
        txn.delete_range("ops", self.prefix + u64(0), self.prefix + u64(covered_seq + 1))

    def checkpoint_stored(self, store: Store, blob: bytes) -> None:
        pass


def load_state(log: OperationLog, txn: Txn) -> tuple[WorkspaceState, int, int]:
    """A workspace's state from its checkpoint and the log after it; also how many
    operations were replayed and their weight. A damaged record raises CorruptRecordError."""
    state = log.latest_checkpoint(txn)
    replayed = weight = 0
    for seq, op in log.read_from(txn, state.op_seq):
        state.apply(seq, op)
        replayed += 1
        weight += replay_weight(op)
    return state, replayed, weight


def replay_weight(op: Op) -> int:
    """What an operation adds to the replay after a crash, in people-updates: checkpoints
    are scheduled by it. An event replays about three times faster than a person."""
    if isinstance(op, PeopleOp):
        # A bulk load's delta replays about 10 times faster per person than records (on the
        # benchmark machine 1M simple profiles in 1.6 s, 100k by records in 1.7 s); a simple
        # profile moves about 10 values.
        return len(op.people) + (op.delta.size() // 100 if op.delta else 0)
    if isinstance(op, EventsOp):
        return len(op.people) + op.count() // 3
    if isinstance(op, MembersOp):
        return 1 + len(op.ordinals) // 100
    return 1


# -- checkpoints in parts ----------------------------------------------------------------------


def stage_checkpoint(store: Store, workspace_prefix: bytes, pieces: Iterable[bytes]) -> bytes:
    """Stores a state's bytes, given in pieces, as checkpoint parts of at most
    CHECKPOINT_PART_BYTES, each in a transaction of its own, and returns the manifest to
    hand to `OperationLog.checkpoint`. Nothing reads the parts until a manifest naming them
    is stored, so the workspace lock is not needed, and a failure leaves only parts that
    the next checkpoint drops."""
    # The stamp keeps these parts apart from the current checkpoint's, whatever they cover.
    stamp = time.time_ns()
    count = size = 0
    pending = bytearray()

    def write(chunk: bytes) -> None:
        nonlocal count, size
        with store.write() as txn:
            txn.put("checkpoints", _part_key(workspace_prefix, stamp, count), chunk)
        count += 1
        size += len(chunk)

    for piece in pieces:
        pending += piece
        while len(pending) >= CHECKPOINT_PART_BYTES:
            write(bytes(pending[:CHECKPOINT_PART_BYTES]))
            del pending[:CHECKPOINT_PART_BYTES]
    if pending or not count:
        write(bytes(pending))
    return _MANIFEST_MARK + seal(msgpack.packb([stamp, count, size]))


def store_checkpoint(txn: Txn, workspace_prefix: bytes, blob: bytes) -> None:
    """Makes `blob` (a state's bytes or a manifest) the workspace's checkpoint and drops the
    parts no longer named (the previous checkpoint's, and any a failure left)."""
    txn.put("checkpoints", workspace_prefix, blob)
    keep = _manifest(blob)[0] if blob.startswith(_MANIFEST_MARK) else None
    parts = workspace_prefix + _PART_MARK
    stop = prefix_end(parts)
    assert stop is not None
    if keep is None:
        txn.delete_range("checkpoints", parts, stop)
        return
    txn.delete_range("checkpoints", parts, _part_key(workspace_prefix, keep, 0))
    txn.delete_range("checkpoints", _part_key(workspace_prefix, keep + 1, 0), stop)


def read_checkpoint(txn: Txn, workspace_prefix: bytes) -> WorkspaceState:
    """The state the workspace's checkpoint stored (an empty state before the first one). A
    damaged or incomplete one raises CorruptRecordError."""
    stored = txn.get("checkpoints", workspace_prefix)
    with reading("checkpoints", describe_key("checkpoints", workspace_prefix)):
        blob = checkpoint_bytes(txn, workspace_prefix, stored) if stored else None
        return WorkspaceState.from_bytes(blob) if blob else WorkspaceState()


def checkpoint_bytes(txn: Txn, workspace_prefix: bytes, stored: bytes) -> bytes:
    """The state's bytes of a stored checkpoint: `stored` itself, or its parts put
    together (DamagedRecord when one is missing)."""
    if not stored.startswith(_MANIFEST_MARK):
        return stored
    stamp, count, size = _manifest(stored)
    first = _part_key(workspace_prefix, stamp, 0)
    chunks = [value for _key, value in txn.scan("checkpoints", first[:-4], first)]
    blob = b"".join(chunks)
    if len(chunks) != count or len(blob) != size:
        raise DamagedRecord(
            f"{len(chunks)} of its {count} parts stored ({len(blob)} of {size} bytes)"
        )
    return blob


def is_checkpoint_part(key: bytes) -> bool:
    """Whether a key of the `checkpoints` table is a staged part (not a checkpoint)."""
    return key.partition(b"\x00")[2].startswith(_PART_MARK)


def _manifest(stored: bytes) -> tuple[int, int, int]:
    stamp, count, size = msgpack.unpackb(unseal(stored[len(_MANIFEST_MARK) :]))
    return int(stamp), int(count), int(size)


def _part_key(workspace_prefix: bytes, stamp: int, number: int) -> bytes:
    return workspace_prefix + _PART_MARK + u64(stamp) + number.to_bytes(4, "big")
