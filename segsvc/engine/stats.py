"""The numbers an operator asks about a running engine, read when asked: the one source of
both the Prometheus collector (segsvc.api.metrics) and the status RPC (`segsvc status`).

Nothing here is counted on the write path: sizes are read from the in-memory state under the
workspace lock (a short wait behind a write in progress), the rest from LMDB and /proc.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segsvc.engine.audiences import Audiences
from segsvc.engine.change_feed import ChangeFeed
from segsvc.engine.core import WorkspaceCore
from segsvc.engine.jetstream_log import JetStreamOperationLog
from segsvc.storage.nats import NatsError

PROC_STATUS = Path("/proc/self/status")


@dataclass(frozen=True)
class ReplicaPosition:
    """Where this node stands in a workspace's shared log (`serve --nats`)."""

    # The last record this node applied.
    applied_op_seq: int
    # The stream sequence of the last message on the workspace's subject, and the record it
    # belongs to (0 and 0: none; both 0 too when NATS did not answer, see `stream_error`).
    stream_last_seq: int
    stream_last_op_seq: int
    # Records in the stream this node has not applied yet.
    lag_ops: int
    # Why the stream's position is unknown ("" when it is known).
    stream_error: str = ""


@dataclass(frozen=True)
class WorkspaceStats:
    """One workspace now."""

    name: str
    people: int
    segments: int
    # Events held in memory (what event conditions count), past retention not yet dropped.
    events: int
    # The seq of the newest change of the change feed (0: none) and of the newest logged
    # operation (0: none).
    last_change_seq: int
    last_op_seq: int
    # Replay weight (about people-updates) logged since the last checkpoint: what a restart
    # would replay.
    records_since_checkpoint: int
    # Clock seconds since the last checkpoint; None when there has been none.
    checkpoint_age_seconds: int | None
    # Change-feed followers following now, and how many changes the furthest behind has
    # not been handed yet.
    followers: int
    max_follower_lag: int
    # Audience snapshots stored, that senders can page through or resume.
    audience_snapshots: int
    # With a shared log: this node's position in it (None with the embedded log).
    replica: ReplicaPosition | None = None


@dataclass(frozen=True)
class ProcessMemory:
    """Resident memory of this process, from /proc/self/status (0 where it is not there)."""

    rss_bytes: int
    # RssAnon: the process's own memory, without mapped files (LMDB's pages are file pages).
    rss_anon_bytes: int


@dataclass(frozen=True)
class EngineStats:
    workspaces: list[WorkspaceStats]
    map_used_bytes: int
    map_size_bytes: int
    memory: ProcessMemory
    # With a shared log (`serve --nats`): the name this node goes by ("" without one).
    node_name: str = ""


def process_memory(status: Path = PROC_STATUS) -> ProcessMemory:
    """VmRSS and RssAnon of this process (kB lines of /proc/self/status)."""
    values: dict[str, int] = {}
    try:
        text = status.read_text()
    except OSError:  # not Linux: nothing to say
        return ProcessMemory(0, 0)
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            values[key] = int(rest.split()[0]) * 1024
    return ProcessMemory(values.get("VmRSS", 0), values.get("RssAnon", 0))


def workspace_stats(core: WorkspaceCore, feed: ChangeFeed, audiences: Audiences) -> WorkspaceStats:
    """The stats of the workspace these parts belong to."""
    with core.lock:
        state = core.state
        people, segments, events = len(state.index.live), len(state.segments), state.events.total()
        last_op_seq = state.op_seq
        weight = core.items_since_checkpoint
        checkpointed_at = core.checkpointed_at
    head = core.committed_head
    cursors = feed.follower_cursors()
    return WorkspaceStats(
        name=core.name,
        people=people,
        segments=segments,
        events=events,
        last_change_seq=head,
        last_op_seq=last_op_seq,
        records_since_checkpoint=weight,
        checkpoint_age_seconds=(
            None if checkpointed_at is None else max(0, core.clock.now() - checkpointed_at)
        ),
        followers=len(cursors),
        max_follower_lag=max((max(0, head - cursor) for cursor in cursors), default=0),
        audience_snapshots=audiences.stored_snapshots(),
        replica=replica_position(core, last_op_seq),
    )


def replica_position(core: WorkspaceCore, applied_op_seq: int) -> ReplicaPosition | None:
    """Where the node stands in the workspace's shared log (None: the embedded log). Asks
    NATS for the subject's last message, outside the workspace lock: a NATS that does not
    answer makes the position unknown, said in `stream_error`, not the stats fail."""
    oplog = core.oplog
    if not isinstance(oplog, JetStreamOperationLog):
        return None
    try:
        stream_seq, op_seq = oplog.stream_head()
    except NatsError as exc:
        return ReplicaPosition(applied_op_seq, 0, 0, 0, str(exc))
    return ReplicaPosition(applied_op_seq, stream_seq, op_seq, max(0, op_seq - applied_op_seq))
