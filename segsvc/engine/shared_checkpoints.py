"""Checkpoints nodes share through JetStream's object store, for a node that joins after the
stream's retention (or a purge) dropped the first records of a workspace's log.

A node's own checkpoint (the in-memory state as of a record) is not enough for another node:
the people rows, lookups and change feed that records stored are in the writer's LMDB, and the
records that stored them are gone from the stream. So the object carries both, as of the same
record: the state, and every row of the workspace's tables, copied from an LMDB snapshot taken
while the writer held the workspace lock right after its checkpoint committed.

One object per workspace (named by its subject token) in the bucket `<stream>_CHECKPOINTS`
without the stream's `_OPS` (SEGSVC_CHECKPOINTS for the default stream), with as many replicas
as the stream. Its description says which record and stream sequence it covers, so a node does
not replace a newer checkpoint with an older one. The object is gzip-compressed frames:

    header: MAGIC, stream seq (u64), record seq (u64)
    frames: kind (u8), key length (u32), key without the workspace prefix, value length (u64),
            value; kind 0 is the state, 1.. the tables of ROW_TABLES, END closes the object.

Publishing runs on a thread of its own (one per workspace at a time: a checkpoint that comes
while the last one is still uploading is left to the next), so writers wait only for the
snapshot to be opened, not for the copy or the upload.
"""

from __future__ import annotations

import gzip
import logging
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter
from typing import BinaryIO

from segsvc.storage.nats import JetStream, NatsError
from segsvc.storage.store import Store, Txn

log = logging.getLogger(__name__)

MAGIC = b"segsvc-checkpoint-1\n"
# The workspace's rows every record may store, all keyed by the workspace prefix. Not the
# audience snapshots: a snapshot is a node's own, made for one sender's paging.
ROW_TABLES = ("people", "lookup", "segments", "changes", "history", "events")
STATE, END = 0, 255
# meta keys (+ workspace prefix) that travel with the rows: where the change feed begins.
META_KEYS = (b"pruned:",)
META = 254
_FRAME = struct.Struct(">BI")
_LENGTH = struct.Struct(">Q")
_HEADER = struct.Struct(">QQ")
# Seconds an upload or download may take (a million people: some hundreds of MB).
TRANSFER_SECONDS = 600.0


def bucket_for(stream: str) -> str:
    """The object store bucket of the checkpoints of `stream`'s workspaces."""
    return stream.removesuffix("_OPS") + "_CHECKPOINTS"


@dataclass(frozen=True)
class Covered:
    """What a shared checkpoint covers: the log up to record `op_seq`, whose last part is at
    stream sequence `stream_seq`."""

    stream_seq: int
    op_seq: int

    def describe(self) -> str:
        return f"op {self.op_seq} stream {self.stream_seq}"

    @staticmethod
    def parse(description: str | None) -> Covered | None:
        try:
            _, op, _, stream = (description or "").split()
            return Covered(int(stream), int(op))
        except ValueError:
            return None


def write_checkpoint(
    out: BinaryIO, txn: Txn, workspace_prefix: bytes, state: bytes, covered: Covered
) -> None:
    """Writes the object: `state` and every row of the workspace in `txn`."""
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1) as gz:
        gz.write(MAGIC + _HEADER.pack(covered.stream_seq, covered.op_seq))
        _frame(gz, STATE, b"", state)
        for kind, table in enumerate(ROW_TABLES, start=1):
            for key, value in txn.scan(table, workspace_prefix):
                _frame(gz, kind, key[len(workspace_prefix) :], value)
        for key in META_KEYS:
            found = txn.get("meta", key + workspace_prefix)
            if found is not None:
                _frame(gz, META, key, found)
        _frame(gz, END, b"", b"")


def _frame(gz: gzip.GzipFile, kind: int, key: bytes, value: bytes) -> None:
    gz.write(_FRAME.pack(kind, len(key)) + key + _LENGTH.pack(len(value)) + value)


def read_checkpoint(source: BinaryIO) -> tuple[Covered, Iterator[tuple[int, bytes, bytes]]]:
    """What the object covers, and its frames (kind, key, value) up to the end; ValueError
    when it is not a whole checkpoint object."""
    gz = gzip.GzipFile(fileobj=source, mode="rb")
    head = _exactly(gz, len(MAGIC) + _HEADER.size)
    if not head.startswith(MAGIC):
        raise ValueError("not a segsvc checkpoint object")
    stream_seq, op_seq = _HEADER.unpack(head[len(MAGIC) :])

    def frames() -> Iterator[tuple[int, bytes, bytes]]:
        while True:
            kind, key_length = _FRAME.unpack(_exactly(gz, _FRAME.size))
            key = _exactly(gz, key_length)
            (value_length,) = _LENGTH.unpack(_exactly(gz, _LENGTH.size))
            value = _exactly(gz, value_length)
            if kind == END:
                return
            yield kind, key, value

    return Covered(stream_seq, op_seq), frames()


def _exactly(gz: gzip.GzipFile, size: int) -> bytes:
    data = gz.read(size)
    if len(data) != size:
        raise ValueError("the checkpoint object ends early")
    return data


def restore_checkpoint(
    source: BinaryIO, txn: Txn, workspace_prefix: bytes
) -> tuple[Covered, bytes]:
    """Stores the object's rows under `workspace_prefix` in `txn`; returns what it covers and
    the state's bytes. ValueError when the object is not whole."""
    covered, frames = read_checkpoint(source)
    state = b""
    # A table's rows come in key order, one table after another: each table is written with
    # one cursor (put_many), much faster per row than a put each.
    for kind, run in groupby(frames, key=itemgetter(0)):
        if kind == STATE:
            state = b"".join(value for _, _, value in run)
        elif kind == META:
            for _, key, value in run:
                txn.put("meta", key + workspace_prefix, value)
        elif 1 <= kind <= len(ROW_TABLES):
            rows = ((workspace_prefix + key, value) for _, key, value in run)
            txn.put_many(ROW_TABLES[kind - 1], rows)
        else:
            raise ValueError(f"unknown frame kind {kind} in the checkpoint object")
    if not state:
        raise ValueError("the checkpoint object holds no state")
    return covered, state


@dataclass(frozen=True)
class SharedCheckpoint:
    """One workspace's checkpoint to publish: its state as of `covered`, with the rows of
    `store` under `workspace_prefix`, as object `object_name`."""

    store: Store
    workspace: str
    object_name: str
    workspace_prefix: bytes
    state: bytes
    covered: Covered


class CheckpointPublisher:
    """Puts workspaces' checkpoints into the object store, each on a thread of its own."""

    def __init__(self, js: JetStream, stream: str) -> None:
        self.js = js
        self.stream = stream
        self.bucket = bucket_for(stream)
        self._lock = threading.Lock()
        self._running: dict[str, threading.Thread] = {}

    def publish(self, checkpoint: SharedCheckpoint) -> bool:
        """Starts publishing `checkpoint` and the workspace's rows as they are in its store
        now; returns once the thread holds its LMDB snapshot, so the caller (who holds the
        workspace lock) may let writes go on. False when the last checkpoint of the
        workspace is still being published (this one is skipped: the next one goes)."""
        workspace = checkpoint.workspace
        with self._lock:
            running = self._running.get(workspace)
            if running is not None and running.is_alive():
                log.info(
                    "workspace %s: checkpoint at op %d not published, the last one still is",
                    workspace,
                    checkpoint.covered.op_seq,
                )
                return False
            snapshot_taken = threading.Event()
            thread = threading.Thread(
                target=self._run,
                args=(checkpoint, snapshot_taken),
                name=f"segsvc-checkpoint-{workspace}",
                daemon=True,
            )
            self._running[workspace] = thread
            thread.start()
        snapshot_taken.wait()
        return True

    def _run(self, checkpoint: SharedCheckpoint, snapshot_taken: threading.Event) -> None:
        workspace, covered, object_name = (
            checkpoint.workspace,
            checkpoint.covered,
            checkpoint.object_name,
        )
        started = time.perf_counter()
        try:
            with tempfile.TemporaryFile(prefix="segsvc-checkpoint-") as spool:
                try:
                    with checkpoint.store.read() as txn:
                        snapshot_taken.set()
                        write_checkpoint(
                            spool, txn, checkpoint.workspace_prefix, checkpoint.state, covered
                        )
                finally:
                    snapshot_taken.set()
                size = spool.tell()
                spool.seek(0)
                self.js.ensure_object_store(self.bucket, self.stream)
                stored = Covered.parse(self.js.object_description(self.bucket, object_name))
                if stored is not None and stored.op_seq >= covered.op_seq:
                    return  # another node published one as new or newer
                self.js.put_object(
                    self.bucket, object_name, spool, covered.describe(), TRANSFER_SECONDS
                )
            log.info(
                "workspace %s: checkpoint at op %d published to object store %s (%d bytes, %.1f s)",
                workspace,
                covered.op_seq,
                self.bucket,
                size,
                time.perf_counter() - started,
            )
        except (NatsError, OSError) as exc:
            # The local checkpoint stands; a joining node uses an older object, or the stream.
            log.warning(
                "workspace %s: checkpoint at op %d not published to object store %s: %s",
                workspace,
                covered.op_seq,
                self.bucket,
                exc,
            )
        except Exception:
            log.exception("workspace %s: publishing checkpoint failed", workspace)

    def wait(self, timeout: float = TRANSFER_SECONDS) -> bool:
        """Waits for the publishes in progress; says whether all finished in time."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._running.values())
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    def fetch(self, object_name: str, into: BinaryIO) -> Covered | None:
        """Writes the workspace's checkpoint object into `into`; what it covers (None: there
        is none)."""
        description = self.js.get_object(self.bucket, object_name, into, TRANSFER_SECONDS)
        if description is None:
            return None
        return Covered.parse(description)
