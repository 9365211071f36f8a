"""The connection to NATS JetStream that the replicated operation log rides on: one client
connection, a stream made if missing, publishes that wait for JetStream's acknowledgement, and
reads of one subject after a stream sequence, and whole objects in JetStream's object store.

nats-py is asyncio and the server is threads: the connection lives on one event loop in a
daemon thread of its own, and `JetStream` is a synchronous facade over it
(run_coroutine_threadsafe, every call bounded by a timeout). What can go wrong comes back as
one of three errors, so callers never see nats-py's own: `NatsUnavailableError` (no server
answered in time: the outcome of a publish is then unknown), `WrongLastSequenceError` (the
publish named a last subject sequence that is no longer the last: another writer got there
first, nothing was stored) and `NatsRefusedError` (JetStream answered no for another reason).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    ObjectMeta,
    ObjectMetaOptions,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from segsvc.storage.errors import StorageError

T = TypeVar("T")
log = logging.getLogger(__name__)

# JetStream's error code for "wrong last sequence" (Nats-Expected-Last-Subject-Sequence).
WRONG_LAST_SEQUENCE = 10071
STREAM_NOT_FOUND = 10059
# Messages fetched per request while reading a subject.
READ_BATCH = 256
# Bytes per message of an object in the object store (nats-py's default is 128 KiB: a
# checkpoint of a million people would be thousands of round trips).
OBJECT_CHUNK = 512 * 1024


class NatsError(StorageError):
    """Base of what this module raises (a storage error: at startup, a refusal)."""


class NatsUnavailableError(NatsError):
    """No NATS server answered within the timeout (or none could be reached)."""


class WrongLastSequenceError(NatsError):
    """JetStream refused a publish because the subject's last sequence is not the one the
    publisher expected: another writer published first. Nothing was stored."""


class NatsRefusedError(NatsError):
    """JetStream answered with an error other than a wrong last sequence."""


@dataclass(frozen=True)
class NatsOptions:
    """How to reach NATS: the server URLs (nats:// or tls://), and the credentials and TLS
    trust NATS users expect (a .creds file, a CA file)."""

    servers: tuple[str, ...]
    creds_file: str | None = None
    tls_ca_file: str | None = None
    client_name: str = "segsvc"
    timeout: float = 5.0


@dataclass(frozen=True)
class StoredMessage:
    stream_seq: int
    headers: dict[str, str]
    data: bytes


class JetStream:
    """One connection to NATS with JetStream, usable from any thread."""

    def __init__(self, options: NatsOptions) -> None:
        self.options = options
        self.timeout = options.timeout
        # What the client last reported going wrong (connection refused, ...), for the
        # message of a call that timed out meanwhile.
        self._last_problem = ""
        self._closing = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="nats-client", daemon=True
        )
        self._thread.start()
        try:
            self._nc = self._run(self._connect())
        except BaseException:
            self._stop_loop()
            raise
        self._js = self._nc.jetstream(timeout=options.timeout)

    async def _connect(self) -> Any:
        tls = None
        if self.options.tls_ca_file:
            tls = ssl.create_default_context(cafile=self.options.tls_ca_file)
        return await nats.connect(
            servers=list(self.options.servers),
            name=self.options.client_name,
            connect_timeout=max(1, int(self.options.timeout)),
            # A server that goes away is reconnected to for as long as the process lives;
            # calls made meanwhile time out and are reported, not queued without bound.
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            allow_reconnect=True,
            tls=tls,
            user_credentials=self.options.creds_file,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )

    async def _on_error(self, exc: Exception) -> None:
        # nats-py reports every failed reconnect attempt: one line per change of problem.
        problem = f"{type(exc).__name__}: {exc}".rstrip(": ")
        # Before the first connection, the failure of the start says it (in one line).
        if problem != self._last_problem and hasattr(self, "_nc"):
            log.warning("NATS at %s: %s", self.where, problem)
        self._last_problem = problem

    async def _on_disconnected(self) -> None:
        if not self._closing:
            log.warning("NATS at %s: disconnected; reconnecting", self.where)

    async def _on_reconnected(self) -> None:
        self._last_problem = ""
        log.info("NATS: reconnected to %s", self._nc.connected_url.netloc)

    @property
    def where(self) -> str:
        return ",".join(self.options.servers)

    @property
    def max_payload(self) -> int:
        return int(self._nc.max_payload)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Runs `coro` on the connection's loop and waits at most `timeout` (default: the
        connection's) for it, translating nats-py's errors into this module's."""
        limit = self.timeout if timeout is None else timeout
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(limit + 1)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            why = f" ({self._last_problem})" if self._last_problem else ""
            raise NatsUnavailableError(
                f"NATS at {self.where} did not answer within {limit:g} s{why}"
            ) from exc
        except nats.js.errors.APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise WrongLastSequenceError(str(exc.description)) from exc
            raise NatsRefusedError(
                f"JetStream at {self.where} refused: {exc.description} (err_code {exc.err_code})"
            ) from exc
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            raise NatsUnavailableError(
                f"NATS at {self.where} is unreachable: {type(exc).__name__} {exc}".rstrip()
            ) from exc

    def ensure_stream(
        self, name: str, subjects: list[str], replicas: int, duplicate_window: float
    ) -> int:
        """Creates the stream when it is missing (file storage, `replicas` copies, messages
        deduplicated by Nats-Msg-Id within `duplicate_window` seconds); an existing stream is
        used as it is. Returns its number of replicas."""

        async def ensure() -> int:
            try:
                info = await self._js.stream_info(name)
            except nats.js.errors.NotFoundError:
                config = StreamConfig(
                    name=name,
                    subjects=subjects,
                    retention=RetentionPolicy.LIMITS,
                    storage=StorageType.FILE,
                    num_replicas=replicas,
                    duplicate_window=duplicate_window,
                )
                info = await self._js.add_stream(config)
            return int(info.config.num_replicas or 1)

        return self._run(ensure())

    def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> tuple[int, bool]:
        """Publishes and waits for JetStream's acknowledgement: (the stream sequence, whether
        it was a duplicate of a message id already stored)."""

        async def publish() -> tuple[int, bool]:
            ack = await self._js.publish(subject, data, timeout=self.timeout, headers=dict(headers))
            return int(ack.seq), bool(ack.duplicate)

        return self._run(publish())

    def last_seq(self, stream: str, subject: str) -> int:
        """The stream sequence of the last message on `subject` (0: none)."""
        last = self.last_message(stream, subject)
        return 0 if last is None else last.stream_seq

    def last_message(self, stream: str, subject: str) -> StoredMessage | None:
        """The last message on `subject` (None: none)."""

        async def last() -> StoredMessage | None:
            try:
                msg = await self._js.get_last_msg(stream, subject)
            except nats.js.errors.NotFoundError:
                return None
            return StoredMessage(int(msg.seq or 0), dict(msg.headers or {}), bytes(msg.data or b""))

        return self._run(last())

    def watch(self, pattern: str, on_message: Callable[[str, dict[str, str]], None]) -> None:
        """Calls `on_message(subject, headers)` for every message published on subjects
        matching `pattern` from now on (a plain subscription: no payload kept, nothing
        replayed; called on the connection's thread, so it must be quick)."""

        async def handle(msg: Any) -> None:
            on_message(msg.subject, dict(msg.headers or {}))

        async def subscribe() -> None:
            await self._nc.subscribe(pattern, cb=handle)

        self._run(subscribe())

    def subjects(self, stream: str, pattern: str) -> list[str]:
        """The subjects of `stream` matching `pattern` that hold messages."""

        async def subjects() -> list[str]:
            info = await self._js.stream_info(stream, subjects_filter=pattern)
            return sorted(info.state.subjects or {})

        return self._run(subjects())

    def read(
        self, stream: str, subject: str, after_seq: int
    ) -> Generator[StoredMessage, None, None]:
        """The messages on `subject` with a stream sequence above `after_seq`, in order, up
        to the last one stored when the read began."""
        last = self.last_seq(stream, subject)
        if last <= after_seq:
            return
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=after_seq + 1,
            ack_policy=AckPolicy.NONE,
            # Left behind by a crash, the consumer goes away by itself.
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        )
        sub = self._run(self._js.pull_subscribe(subject, stream=stream, config=config))
        try:
            seq = after_seq
            while seq < last:
                msgs = self._run(sub.fetch(READ_BATCH, timeout=self.timeout))
                for msg in msgs:
                    seq = int(msg.metadata.sequence.stream)
                    yield StoredMessage(seq, dict(msg.headers or {}), bytes(msg.data))
                    if seq >= last:
                        break
        finally:
            with contextlib.suppress(NatsError):  # else the consumer expires by itself
                self._run(sub.unsubscribe())

    def purge(self, stream: str, subject: str, before_seq: int) -> None:
        """Drops the messages on `subject` whose stream sequence is below `before_seq` (as a
        retention limit or an operator's purge does)."""

        async def purge() -> None:
            await self._js.purge_stream(stream, seq=before_seq, subject=subject)

        self._run(purge())

    # -- the object store ------------------------------------------------------------------------

    def ensure_object_store(self, bucket: str, like_stream: str) -> None:
        """Creates the object store `bucket` when it is missing, with as many replicas as
        `like_stream` has (file storage); an existing one is used as it is."""

        async def ensure() -> None:
            try:
                await self._js.object_store(bucket)
            except nats.js.errors.BucketNotFoundError:
                info = await self._js.stream_info(like_stream)
                config = ObjectStoreConfig(
                    storage=StorageType.FILE, replicas=int(info.config.num_replicas or 1)
                )
                await self._js.create_object_store(bucket, config=config)

        self._run(ensure())

    def object_description(self, bucket: str, name: str) -> str | None:
        """The description of object `name` (None: no such object or bucket)."""

        async def describe() -> str | None:
            try:
                store = await self._js.object_store(bucket)
                info = await store.get_info(name)
            except (nats.js.errors.BucketNotFoundError, nats.js.errors.NotFoundError):
                return None
            return str(info.description or "")

        return self._run(describe())

    def put_object(
        self, bucket: str, name: str, source: BinaryIO, description: str, timeout: float
    ) -> None:
        """Stores what `source` holds (read to its end) as object `name`, replacing the
        previous version once the new one is whole; waits at most `timeout` seconds."""

        async def put() -> None:
            store = await self._js.object_store(bucket)
            meta = ObjectMeta(
                name=name,
                description=description,
                options=ObjectMetaOptions(max_chunk_size=OBJECT_CHUNK),
            )
            await store.put(name, source, meta=meta)

        self._run(put(), timeout=timeout)

    def get_object(self, bucket: str, name: str, into: BinaryIO, timeout: float) -> str | None:
        """Writes object `name` into `into` and returns its description (None, and nothing
        written: no such object or bucket); waits at most `timeout` seconds."""

        async def get() -> str | None:
            try:
                store = await self._js.object_store(bucket)
                found = await store.get(name, writeinto=into)
            except (nats.js.errors.BucketNotFoundError, nats.js.errors.NotFoundError):
                return None
            return str(found.info.description or "")

        return self._run(get(), timeout=timeout)

    def close(self) -> None:
        self._closing = True
        try:
            self._run(self._nc.drain() if self._nc.is_connected else self._nc.close())
        except NatsError:
            pass
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        # Tasks the client leaves behind (a reconnect in progress) are cancelled and
        # awaited here: left to the garbage collector, they would be finalised at a random
        # point of another thread's work.
        with contextlib.suppress(NatsError):
            self._run(_cancel_other_tasks(), timeout=2.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()


async def _cancel_other_tasks() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
