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
Every method takes the local LMDB transaction of the unit of work: LMDB stays each node's
materialisation either way. Nothing here knows of the in-memory indexes beyond decoding a
checkpoint, nor of clocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from segsvc.engine.ops import EventsOp, MembersOp, Op, PeopleOp, decode, encode
from segsvc.engine.state import WorkspaceState
from segsvc.storage.records import reading
from segsvc.storage.store import Store, Txn, describe_key, read_u64, u64


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
        """Stores `blob` (a WorkspaceState's bytes) as the state after record `covered_seq`
        and lets go of the records it covers."""

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
        blob = txn.get("checkpoints", self.prefix)
        with reading("checkpoints", describe_key("checkpoints", self.prefix)):
            return WorkspaceState.from_bytes(blob) if blob else WorkspaceState()

    def checkpoint(self, txn: Txn, blob: bytes, covered_seq: int) -> None:
        txn.put("checkpoints", self.prefix, blob)
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
