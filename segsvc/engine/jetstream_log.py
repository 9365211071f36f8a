"""The operation log on NATS JetStream: each workspace's records on one subject of one stream
(`segsvc.ops.<workspace>`), ordered by JetStream's own Raft; LMDB keeps only this node's
materialisation (the checkpoint, as of a stream sequence, and the rows).

A record is published with `Nats-Expected-Last-Subject-Sequence` = the stream sequence of the
last message this node read or wrote on the subject, so a node that missed another node's
record is refused (ConcurrentWrite) before anything moved, and with a `Nats-Msg-Id` derived
from the workspace, the record's sequence and its bytes, so a publish retried after a lost
acknowledgement is stored once. A record larger than the server's payload limit goes out in
parts, each expecting the previous one; a reader assembles them and drops a record whose
parts were cut short (its writer died, or was overtaken: then another record follows with the
same sequence number).

`append` returns once JetStream acknowledged the record: unlike the LMDB log, the record is
then durable whatever becomes of the local transaction, and load_state replays it.

Each checkpoint is also published to JetStream's object store (segsvc.engine.shared_checkpoints),
and a node that has stored nothing of a workspace whose stream no longer starts at record 1
starts from it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field

from segsvc.config import Replication
from segsvc.engine.core import MATERIALISED
from segsvc.engine.errors import ConcurrentWrite, Unavailable
from segsvc.engine.oplog import read_checkpoint, store_checkpoint
from segsvc.engine.ops import Op, decode, encode
from segsvc.engine.shared_checkpoints import (
    CheckpointPublisher,
    Covered,
    SharedCheckpoint,
    restore_checkpoint,
)
from segsvc.engine.state import WorkspaceState
from segsvc.storage.errors import CorruptRecordError
from segsvc.storage.nats import (
    JetStream,
    NatsError,
    NatsOptions,
    NatsUnavailableError,
    StoredMessage,
    WrongLastSequenceError,
)
from segsvc.storage.records import reading
from segsvc.storage.store import Store, Txn, prefix, read_u64, u64

log = logging.getLogger(__name__)

DEFAULT_STREAM = "SEGSVC_OPS"
SUBJECT_ROOT = "segsvc.ops"
# Long enough to cover every retry of a publish (a few timeouts of a few seconds each).
DUPLICATE_WINDOW_SECONDS = 120.0
OP_SEQ = "Segsvc-Op-Seq"
PART = "Segsvc-Part"
ENCODING = "Segsvc-Encoding"
# Records larger than this go compressed (zlib); one person's update stays as it is.
COMPRESS_ABOVE = 16 * 1024
# Room left in a message for the headers.
HEADER_ROOM = 1024
PUBLISH_ATTEMPTS = 3
_PLAIN_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


def subject_token(workspace: str) -> str:
    """The workspace as one subject token: itself when it is letters, digits, '_' and '-',
    else '~' and its UTF-8 bytes in hex ('.' separates tokens, and workspace names may hold
    one; '~' is in no workspace name, so the two forms never meet)."""
    if _PLAIN_TOKEN.fullmatch(workspace):
        return workspace
    return "~" + workspace.encode().hex()


def workspace_of(token: str) -> str:
    """The workspace a subject token stands for (the inverse of subject_token)."""
    return bytes.fromhex(token[1:]).decode() if token.startswith("~") else token


def node_name(replication: Replication) -> str:
    """The name a node goes by: --node-name, else the host name."""
    return replication.node_name or socket.gethostname()


def open_stream(js: JetStream, stream: str = DEFAULT_STREAM, replicas: int = 1) -> int:
    """Makes sure the stream of every workspace's log exists (created with `replicas`
    copies, file storage); returns the replicas it has. NatsError when NATS cannot."""
    return js.ensure_stream(stream, [f"{SUBJECT_ROOT}.>"], replicas, DUPLICATE_WINDOW_SECONDS)


class JetStreamLogs:
    """Every workspace's log on one connection to NATS (`serve --nats`). Opening it
    connects and makes sure the stream exists: NatsError (a StorageError, so the start is
    refused in one line) when NATS cannot be reached in time."""

    def __init__(self, replication: Replication) -> None:
        self.stream = replication.stream
        creds, ca = replication.creds_file, replication.tls_ca_file
        options = NatsOptions(
            servers=replication.servers,
            creds_file=None if creds is None else str(creds),
            tls_ca_file=None if ca is None else str(ca),
            client_name=f"segsvc {node_name(replication)}",
            timeout=replication.timeout,
        )
        self.js = JetStream(options)
        try:
            replicas = open_stream(self.js, self.stream, replication.replicas)
        except BaseException:
            self.js.close()
            raise
        if replicas != replication.replicas:
            # An existing stream keeps its own settings: say so rather than change them.
            log.warning(
                "stream %s has %d replicas, not the %d asked for: it is used as it is",
                self.stream,
                replicas,
                replication.replicas,
            )
        log.info("operation log on JetStream stream %s at %s", self.stream, self.js.where)
        self.shared_checkpoints = CheckpointPublisher(self.js, self.stream)

    def log_for(self, workspace: str) -> JetStreamOperationLog:
        return JetStreamOperationLog(
            self.js, workspace, prefix(workspace), self.stream, self.shared_checkpoints
        )

    def workspace_names(self) -> list[str]:
        """The workspaces whose logs hold records, by name."""
        root = SUBJECT_ROOT + "."
        return [
            workspace_of(subject[len(root) :])
            for subject in self.js.subjects(self.stream, f"{SUBJECT_ROOT}.>")
        ]

    def wait_for_shared_checkpoints(self) -> None:
        """Until the checkpoints being published (the last one of a stopping node among
        them) are in the object store, within bounds."""
        if not self.shared_checkpoints.wait():
            log.warning("a checkpoint was still being published at close: left unfinished")

    def close(self) -> None:
        self.wait_for_shared_checkpoints()
        self.js.close()


@dataclass
class _Assembly:
    """The parts of one record read so far."""

    op_seq: int
    total: int
    parts: list[bytes] = field(default_factory=list)
    encoding: str = ""


class JetStreamOperationLog:
    """One workspace's log on a JetStream subject. Besides the checkpoint, LMDB holds (in
    `meta`, under `jsckpt:` and the workspace prefix) the stream sequence and the record
    sequence the checkpoint covers: where a replay starts reading."""

    shared = True

    def __init__(
        self,
        js: JetStream,
        workspace: str,
        workspace_prefix: bytes,
        stream: str = DEFAULT_STREAM,
        shared_checkpoints: CheckpointPublisher | None = None,
    ) -> None:
        self.js = js
        # Where checkpoints are published for nodes that join later, and fetched from when
        # this node joins after the stream dropped the workspace's first records (None:
        # neither).
        self.shared_checkpoints = shared_checkpoints
        # What the checkpoint stored last covers, for checkpoint_stored.
        self._stored: Covered | None = None
        self.workspace = workspace
        self.prefix = workspace_prefix
        self.stream = stream
        self.subject = f"{SUBJECT_ROOT}.{subject_token(workspace)}"
        # The stream sequence of the last message this node read or wrote on the subject:
        # what the next publish expects to follow.
        self.tail = 0
        # Record sequence -> the stream sequence of its last part, since the checkpoint.
        self.stream_seq_of: dict[int, int] = {}

    # -- appending ------------------------------------------------------------------------------

    def append(self, txn: Txn, seq: int, op: Op) -> None:
        data = encode(op)
        encoding = ""
        if len(data) > COMPRESS_ABOVE:
            # A bulk load's record (rows included) shrinks about 4 times: fewer parts, each
            # a round trip to a quorum, and fewer bytes for every replica to store.
            data, encoding = zlib.compress(data, 1), "zlib"
        digest = hashlib.blake2b(data, digest_size=12).hexdigest()
        room = max(self.js.max_payload - HEADER_ROOM, 1024)
        chunks = [data[i : i + room] for i in range(0, len(data), room)] or [b""]
        for part, chunk in enumerate(chunks):
            headers = {
                OP_SEQ: str(seq),
                PART: f"{part}/{len(chunks)}",
                "Nats-Msg-Id": f"{self.subject}:{seq}:{digest}:{part}",
                "Nats-Expected-Last-Subject-Sequence": str(self.tail),
            }
            if encoding:
                headers[ENCODING] = encoding
            self.tail = self._publish(chunk, headers)
        self.stream_seq_of[seq] = self.tail

    def _publish(self, chunk: bytes, headers: dict[str, str]) -> int:
        """The stream sequence of the acknowledged message; a lost acknowledgement is
        retried with the same message id, which JetStream stores once."""
        last_error: NatsUnavailableError | None = None
        for _ in range(PUBLISH_ATTEMPTS):
            try:
                stream_seq, _ = self.js.publish(self.subject, chunk, headers)
                return stream_seq
            except NatsUnavailableError as exc:
                last_error = exc
            except WrongLastSequenceError as exc:
                if last_error is not None:
                    # An earlier attempt may have been stored with its answer lost.
                    stored = self._last_if_ours(headers["Nats-Msg-Id"])
                    if stored:
                        return stored
                raise ConcurrentWrite(
                    f"another node wrote to workspace {self.workspace!r} first; retry"
                ) from exc
            except NatsError as exc:
                raise Unavailable(
                    f"the operation log refused the write to workspace {self.workspace!r}: "
                    f"{exc}; nothing was applied"
                ) from exc
        # NATS may still store the record (a client flushes what it buffered while it
        # reconnects): then this node applies it when it catches up, like any other's.
        raise Unavailable(
            f"the operation log of workspace {self.workspace!r} is unreachable: {last_error}; "
            "the write was not applied here, though NATS may still store it: check, then retry"
        ) from last_error

    def _last_if_ours(self, msg_id: str) -> int:
        try:
            for message in self.js.read(self.stream, self.subject, self.tail):
                if message.headers.get("Nats-Msg-Id") == msg_id:
                    return message.stream_seq
        except NatsError:
            pass
        return 0

    # -- reading --------------------------------------------------------------------------------

    def read_from(self, txn: Txn, after_seq: int) -> Iterator[tuple[int, Op]]:
        start = self.stream_seq_of.get(after_seq)
        if start is None:
            # Records a checkpoint covers are not replayed (as the LMDB log drops them).
            start, covered = self._checkpoint_position(txn)
            after_seq = max(after_seq, covered)
        expected = after_seq + 1
        try:
            for seq, op in self._records(start):
                if seq < expected:
                    continue
                if seq > expected:
                    raise CorruptRecordError(
                        "ops",
                        f"stream {self.stream} subject {self.subject}",
                        f"records {expected} to {seq - 1} of workspace {self.workspace!r} are "
                        "no longer in the stream and no checkpoint here or in the object store "
                        "covers them",
                    )
                expected = seq + 1
                yield seq, op
        except NatsError as exc:
            raise Unavailable(
                f"cannot read the operation log of workspace {self.workspace!r}: {exc}"
            ) from exc

    def _records(self, start: int) -> Iterator[tuple[int, Op]]:
        """The complete records after stream sequence `start`; moves `tail` along."""
        building: _Assembly | None = None
        for message in self.js.read(self.stream, self.subject, start):
            self.tail = max(self.tail, message.stream_seq)
            building = self._add_part(building, message)
            if building is not None and len(building.parts) == building.total:
                where = f"stream {self.stream} seq {message.stream_seq} ({self.subject})"
                with reading("ops", where):
                    data = b"".join(building.parts)
                    if building.encoding == "zlib":
                        data = zlib.decompress(data)
                    elif building.encoding:
                        raise ValueError(f"unknown {ENCODING} {building.encoding!r}")
                    op = decode(data)
                self.stream_seq_of[building.op_seq] = message.stream_seq
                yield building.op_seq, op
                building = None

    def _add_part(self, building: _Assembly | None, message: StoredMessage) -> _Assembly | None:
        where = f"stream {self.stream} seq {message.stream_seq} ({self.subject})"
        with reading("ops", where):
            op_seq = int(message.headers[OP_SEQ])
            part, total = (int(x) for x in message.headers.get(PART, "0/1").split("/"))
        if part == 0:
            # A record cut short before this one is dropped: its writer never finished it.
            encoding = message.headers.get(ENCODING, "")
            return _Assembly(op_seq, total, [message.data], encoding)
        if building is None or building.op_seq != op_seq or len(building.parts) != part:
            return None
        building.parts.append(message.data)
        return building

    def stream_head(self) -> tuple[int, int]:
        """(the stream sequence, the record sequence) of the last message on the subject:
        (0, 0) when it holds none. NatsError when NATS does not answer."""
        last = self.js.last_message(self.stream, self.subject)
        if last is None:
            return 0, 0
        try:
            return last.stream_seq, int(last.headers.get(OP_SEQ, "0"))
        except ValueError:
            return last.stream_seq, 0

    # -- checkpoints ----------------------------------------------------------------------------

    def _checkpoint_key(self) -> bytes:
        return b"jsckpt:" + self.prefix

    def _checkpoint_position(self, txn: Txn) -> tuple[int, int]:
        """(the stream sequence, the record sequence) the stored checkpoint covers."""
        raw = txn.get("meta", self._checkpoint_key())
        return (0, 0) if raw is None else (read_u64(raw), read_u64(raw, 8))

    def latest_checkpoint(self, txn: Txn) -> WorkspaceState:
        if txn.get("checkpoints", self.prefix) is None and self._materialised_nothing(txn):
            self._restore_shared_checkpoint(txn)
        state = read_checkpoint(txn, self.prefix)
        self.stream_seq_of[state.op_seq] = self._checkpoint_position(txn)[0]
        return state

    def checkpoint(self, txn: Txn, blob: bytes, covered_seq: int) -> None:
        # The stream keeps its records (its retention decides what it drops): only where a
        # replay starts moves.
        stream_seq = self.stream_seq_of.get(covered_seq)
        if stream_seq is None:
            raise ValueError(f"record {covered_seq} was never read or written by this node")
        store_checkpoint(txn, self.prefix, blob)
        txn.put("meta", self._checkpoint_key(), u64(stream_seq) + u64(covered_seq))
        for seq in [s for s in self.stream_seq_of if s < covered_seq]:
            del self.stream_seq_of[seq]
        self._stored = Covered(stream_seq, covered_seq)

    def checkpoint_stored(self, store: Store, blob: bytes) -> None:
        if self.shared_checkpoints is None or self._stored is None:
            return
        self.shared_checkpoints.publish(
            SharedCheckpoint(
                store, self.workspace, self.object_name, self.prefix, blob, self._stored
            )
        )

    @property
    def object_name(self) -> str:
        """The name of the workspace's checkpoint in the object store."""
        return subject_token(self.workspace)

    def _materialised_nothing(self, txn: Txn) -> bool:
        return txn.get("meta", MATERIALISED + self.prefix) is None

    def _first_record_seq(self) -> int:
        """The sequence of the first whole record the stream still holds on the subject (0:
        it holds none)."""
        with closing(self.js.read(self.stream, self.subject, 0)) as messages:
            first = next(messages, None)
        if first is None:
            return 0
        where = f"stream {self.stream} seq {first.stream_seq} ({self.subject})"
        with reading("ops", where):
            op_seq = int(first.headers[OP_SEQ])
            part = int(first.headers.get(PART, "0/1").split("/")[0])
        # A record whose first parts were dropped cannot be read: the next one is the first.
        return op_seq if part == 0 else op_seq + 1

    def _restore_shared_checkpoint(self, txn: Txn) -> bytes | None:
        """On a node that has stored nothing of the workspace, when the stream no longer
        holds its first record: the newest published checkpoint, its rows stored in `txn`
        (None, and nothing stored, when the stream starts at the beginning or there is no
        checkpoint to load: read_from then names the gap)."""
        if self.shared_checkpoints is None:
            return None
        try:
            first = self._first_record_seq()
            if first == 1:
                return None  # the stream has it all: it is read from the beginning
            # Nothing on the subject (0) may mean everything was purged after a checkpoint.
            with tempfile.TemporaryFile(prefix="segsvc-checkpoint-") as spool:
                covered = self.shared_checkpoints.fetch(self.object_name, spool)
                if covered is None and not first:
                    return None
                if covered is None or covered.op_seq + 1 < first:
                    log.warning(
                        "workspace %s: the stream starts at record %d and %s",
                        self.workspace,
                        first,
                        "no checkpoint was published"
                        if covered is None
                        else f"the published checkpoint covers only up to {covered.op_seq}",
                    )
                    return None
                spool.seek(0)
                where = f"object {self.object_name} of {self.shared_checkpoints.bucket}"
                with reading("checkpoints", where):
                    covered, blob = restore_checkpoint(spool, txn, self.prefix)
        except NatsError as exc:
            raise Unavailable(
                f"cannot load the published checkpoint of workspace {self.workspace!r}: {exc}"
            ) from exc
        txn.put("checkpoints", self.prefix, blob)
        txn.put("meta", self._checkpoint_key(), u64(covered.stream_seq) + u64(covered.op_seq))
        txn.put("meta", MATERIALISED + self.prefix, u64(covered.op_seq))
        log.info(
            "workspace %s: the stream starts at record %d: loaded the published checkpoint "
            "at record %d (stream seq %d)",
            self.workspace,
            first,
            covered.op_seq,
            covered.stream_seq,
        )
        return blob
