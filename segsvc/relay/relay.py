"""The relay: follows one workspace's change feed over gRPC and publishes every change to
JetStream (layout in `subjects`), pipelined, so that a relay that stops at any moment and
starts again publishes nothing twice and misses nothing.

Where it stopped is read from JetStream itself, never from a file of ours: the last message
on the workspace's subjects is the last change the stream holds. The relay publishes the
feed in order over one connection and never lets nats-py resend on a new one what it
buffered (no reconnect inside a connection); the server stores one connection's messages in
the order they arrive, so whenever the relay or its connection dies, even by kill -9, the
stream holds an unbroken prefix of the feed. A publish that is refused, not acknowledged in
time, or cut off with its connection makes the relay publish again, on a new connection,
from the first change not acknowledged: what JetStream had stored of them is dropped as a
duplicate by its message id.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import signal
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from segsvc.client import Client, RpcError, call_status
from segsvc.relay.subjects import (
    STREAM_SUBJECTS,
    change_headers,
    change_subject,
    message_id,
    workspace_subjects,
)
from segsvc.v1 import changes_pb2

log = logging.getLogger("segsvc.relay")

# A republished change is a duplicate only within the stream's duplicate window. The relay
# republishes after a refused or lost acknowledgement, within seconds (the ack timeout plus
# a backoff), and a restarted relay republishes nothing; the window covers a NATS outage of
# a few minutes during which the relay keeps retrying the same changes.
DUPLICATE_WINDOW = timedelta(minutes=10)
# Waits between attempts after a failure, doubled each time up to the maximum.
RETRY_DELAY = 0.2
MAX_RETRY_DELAY = 10.0
# Batches of the feed read ahead of the publisher (each up to 1000 changes).
READ_AHEAD_BATCHES = 8
PROGRESS_SECONDS = 10.0
ACK_POLL_SECONDS = 0.25
# JetStream API calls (stream info, create, last message): a busy cluster may take a while.
API_TIMEOUT = 30.0
# JetStream's error code for a stream name taken by a stream with other settings.
STREAM_NAME_IN_USE = 10058


class RelayError(Exception):
    """Something the operator must decide or fix; the message says what. The relay stops."""


@dataclass(frozen=True)
class RelaySettings:
    workspace: str
    nats_servers: tuple[str, ...]
    stream: str
    replicas: int = 1
    nats_creds: Path | None = None
    nats_tls_ca: Path | None = None
    # Where a first start (no change of the workspace in the stream yet) begins: True from
    # the oldest change the feed holds, False from now; None refuses to guess.
    first_from_start: bool | None = None
    # Relay changes after this seq even if the stream's last one is older (a gap the
    # operator accepts, e.g. changes pruned before they were relayed).
    resume_after: int | None = None
    max_in_flight: int = 1000
    ack_timeout: float = 10.0
    # Create the stream for this workspace alone (its subjects only), which lets the relay
    # chain its publishes; see Relay._chained.
    own_stream: bool = False


@dataclass(frozen=True)
class RelayReport:
    relayed: int
    last_seq: int


class _FeedEnded:
    """The feed call ended (an error, or the relay closed it): the last item of a pump."""

    def __init__(self, error: RpcError | None) -> None:
        self.error = error


class _FeedPump:
    """WatchChanges read on a thread (grpc's blocking stream) and handed to the event loop
    one response at a time; the bounded queue holds the reader back when NATS is slower."""

    def __init__(
        self,
        client: Client,
        request: changes_pb2.WatchChangesRequest,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.queue: asyncio.Queue[list[changes_pb2.Change] | _FeedEnded] = asyncio.Queue(
            READ_AHEAD_BATCHES
        )
        self._client = client
        self._request = request
        self._loop = loop
        self._closed = threading.Event()
        self._call: Any = None
        self._thread = threading.Thread(target=self._read, name="feed-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            self._call = self._client.changes.WatchChanges(self._request)
            if self._closed.is_set():
                self._call.cancel()
            for response in self._call:
                if not self._hand_over(list(response.changes)):
                    return
            self._hand_over(_FeedEnded(None))
        except RpcError as error:
            self._hand_over(_FeedEnded(error))

    def _hand_over(self, item: list[changes_pb2.Change] | _FeedEnded) -> bool:
        try:
            put = asyncio.run_coroutine_threadsafe(self.queue.put(item), self._loop)
        except RuntimeError:  # the loop is gone: the relay has ended
            return False
        while not self._closed.is_set():
            try:
                put.result(timeout=0.2)
                return True
            except concurrent.futures.TimeoutError:
                continue
        put.cancel()
        return False

    def close(self) -> None:
        """Ends the call; the reader stops handing anything over."""
        self._closed.set()
        if self._call is not None:
            self._call.cancel()


class _PublishFailed(Exception):
    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"change {seq} was not stored: {reason}")
        self.seq = seq


class Relay:
    """One workspace's feed into one stream. `run()` until `stop()` (SIGTERM) or an error
    the operator must handle (RelayError)."""

    def __init__(self, client: Client, settings: RelaySettings) -> None:
        self._client = client
        self._settings = settings
        self._stopping = asyncio.Event()
        self._pump: _FeedPump | None = None
        # The last seq JetStream acknowledged with every seq before it (or that the operator
        # chose to skip): where to go on from. None until a --from-now start sees its first
        # change.
        self._confirmed: int | None = 0
        self._relayed = 0
        self._progress = _Progress()
        # Whether the stream holds this workspace alone. Then every publish but a session's
        # first names the change before it (Nats-Expected-Last-Msg-Id): JetStream stores a
        # change only right after the one before, so even when it refuses one and would take
        # the next (a stream leader change), the next is refused too and the stream stays in
        # feed order. In a shared stream other workspaces' messages come between, so the
        # header cannot be used there.
        self._chained = False

    def _confirm(self, seq: int) -> None:
        self._confirmed = seq
        self._relayed += 1

    def stop(self) -> None:
        """Stop reading the feed; `run()` returns once the changes in flight are acknowledged."""
        self._stopping.set()
        if self._pump is not None:
            self._pump.close()

    async def run(self) -> RelayReport:
        nc = await self._connect()
        try:
            js = self._jetstream(nc)
            try:
                await self._ensure_stream(js)
                request = await self._start_request(js)
            except (nats.errors.Error, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
                raise RelayError(f"JetStream did not answer: {reason}") from None
            await self._relay(nc, request)
        finally:
            await self._close(nc)
        return RelayReport(self._relayed, self._confirmed or 0)

    # -- NATS -------------------------------------------------------------------------------

    async def _connect(self) -> NatsClient:
        settings = self._settings
        options: dict[str, Any] = {
            "servers": list(settings.nats_servers),
            "name": f"segsvc-relay {settings.workspace}",
            "connect_timeout": 5,
            # No reconnect within a connection: nats-py would send what it buffered while
            # disconnected, after what the dead socket lost, and the stream would hold later
            # changes without earlier ones. A lost connection ends the session instead; the
            # next one, on a new connection, publishes again from the first change not
            # acknowledged.
            "allow_reconnect": False,
            "error_cb": _log_nats_error,
        }
        if settings.nats_creds is not None:
            options["user_credentials"] = str(settings.nats_creds)
        if settings.nats_tls_ca is not None:
            options["tls"] = ssl.create_default_context(cafile=str(settings.nats_tls_ca))
        try:
            return await nats.connect(**options)
        except (OSError, nats.errors.Error) as exc:
            servers = ",".join(settings.nats_servers)
            reason = str(exc) or type(exc).__name__
            raise RelayError(f"cannot connect to NATS at {servers}: {reason}") from None

    async def _reconnect(self) -> NatsClient | None:
        """A new connection, tried until it works or the relay stops (then None)."""
        delay = RETRY_DELAY
        while not self._stopping.is_set():
            try:
                return await self._connect()
            except RelayError as exc:
                log.warning("%s; trying again in %.1f s", exc, delay)
            await self._wait(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)
        return None

    def _jetstream(self, nc: NatsClient) -> JetStreamContext:
        return nc.jetstream(timeout=API_TIMEOUT)

    @staticmethod
    async def _close(nc: NatsClient) -> None:
        if not nc.is_closed:
            await nc.close()

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        """The stream, created when missing: file storage, the replicas asked for, every
        workspace's changes (or, --own-stream, this workspace's), a duplicate window longer
        than any republish."""
        name = self._settings.stream
        own = workspace_subjects(self._settings.workspace)
        wanted = own if self._settings.own_stream else STREAM_SUBJECTS
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            config = StreamConfig(
                name=name,
                subjects=[wanted],
                storage=StorageType.FILE,
                num_replicas=self._settings.replicas,
                duplicate_window=DUPLICATE_WINDOW.total_seconds(),
            )
            try:
                info = await js.add_stream(config)
                log.info(
                    "created stream %s (subjects %s, %d replica(s), file storage)",
                    name,
                    wanted,
                    self._settings.replicas,
                )
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != STREAM_NAME_IN_USE:
                    raise RelayError(f"cannot create stream {name}: {exc.description}") from None
                # Another relay created it meanwhile (with its own settings): use that one.
                info = await js.stream_info(name)
            except nats.js.errors.APIError as exc:
                raise RelayError(f"cannot create stream {name}: {exc.description}") from None
        subjects = info.config.subjects or []
        self._chained = subjects == [own]
        if STREAM_SUBJECTS not in subjects and not self._chained:
            raise RelayError(
                f"stream {name} takes the subjects {subjects}: the relay needs one that takes "
                f"{STREAM_SUBJECTS} (all workspaces) or {own} alone (--own-stream)"
            )
        if info.config.num_replicas != self._settings.replicas:
            log.warning(
                "stream %s exists with %s replica(s), not the %d asked for: left as it is",
                name,
                info.config.num_replicas,
                self._settings.replicas,
            )

    async def _last_relayed(self, js: JetStreamContext) -> int | None:
        """The seq of the workspace's last message in the stream; None when it has none."""
        subjects = workspace_subjects(self._settings.workspace)
        try:
            message = await js.get_last_msg(self._settings.stream, subjects)
        except nats.js.errors.NotFoundError:
            return None
        return changes_pb2.Change.FromString(message.data or b"").seq

    async def _start_request(self, js: JetStreamContext) -> changes_pb2.WatchChangesRequest:
        settings = self._settings
        last = await self._last_relayed(js)
        skip_to = settings.resume_after
        if last is not None and (skip_to is None or skip_to <= last):
            log.info("stream %s holds changes up to %d: relaying after it", settings.stream, last)
            self._confirmed = last
            return changes_pb2.WatchChangesRequest(after_seq=last)
        if skip_to is not None:
            if last is not None:
                log.warning("skipping changes %d to %d (--resume-after)", last + 1, skip_to)
            self._confirmed = skip_to
            return changes_pb2.WatchChangesRequest(after_seq=skip_to)
        if settings.first_from_start is None:
            raise RelayError(
                f"stream {settings.stream} holds no change of workspace "
                f"{settings.workspace!r} yet: on a first start choose --from-start (every "
                "change the feed still holds) or --from-now (only changes from now on)"
            )
        log.info(
            "first start for workspace %r: relaying %s",
            settings.workspace,
            "from the oldest change kept" if settings.first_from_start else "from now on",
        )
        if not settings.first_from_start:
            self._confirmed = None
        return changes_pb2.WatchChangesRequest(from_now=not settings.first_from_start)

    # -- the relay loop ---------------------------------------------------------------------

    async def _relay(self, nc: NatsClient, request: changes_pb2.WatchChangesRequest) -> None:
        delay = RETRY_DELAY
        while not self._stopping.is_set():
            before = self._confirmed
            try:
                ended = await self._session(nc, request)
            except _PublishFailed as failure:
                log.warning("%s; publishing again from it on a new connection", failure)
                await self._close(nc)
            else:
                if self._stopping.is_set():
                    return
                self._check_feed_end(ended, request)
                log.warning("the change feed ended (%s); following again", _reason(ended))
            if self._confirmed != before:
                delay = RETRY_DELAY
            await self._wait(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)
            if nc.is_closed:
                reconnected = await self._reconnect()
                if reconnected is None:
                    return
                nc = reconnected
            if self._confirmed is not None:
                request = changes_pb2.WatchChangesRequest(after_seq=self._confirmed)

    def _check_feed_end(self, ended: _FeedEnded, request: changes_pb2.WatchChangesRequest) -> None:
        """Raises RelayError when following the feed again cannot help."""
        status = call_status(ended.error)
        if status is None:
            return
        code, details = status
        # The server restarting, or at its limit of streams for now: follow again later.
        if code in ("UNAVAILABLE", "RESOURCE_EXHAUSTED"):
            return
        if code == "OUT_OF_RANGE":
            where = (
                f"after seq {request.after_seq}, where the relay stopped,"
                if request.after_seq
                else "from its first change"
            )
            raise RelayError(
                f"the change feed of workspace {self._settings.workspace!r} no longer holds "
                f"the changes {where} ({details}). They were pruned by the server's "
                "retention before they were relayed and cannot be relayed now. To go on "
                "without them, start once with --resume-after SEQ (the oldest kept, as the "
                "server says); to keep this from happening, give the server a longer "
                "--change-retention-days or restart the relay sooner"
            )
        raise RelayError(f"the change feed refused the relay: {code}: {details}")

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _session(
        self, nc: NatsClient, request: changes_pb2.WatchChangesRequest
    ) -> _FeedEnded:
        """Publishes the feed from `request` until it ends or the relay stops, then waits
        for every publish in flight. Raises _PublishFailed at the first change JetStream did
        not store (or the connection lost)."""
        workspace = self._settings.workspace
        pump = _FeedPump(self._client, request, asyncio.get_running_loop())
        self._pump = pump
        if self._stopping.is_set():
            pump.close()
        acks = _Acks(self._settings.max_in_flight)
        inbox = f"{nc.new_inbox()}."
        subscription = await nc.subscribe(f"{inbox}*", cb=acks.on_reply)
        # (seq, when published), oldest first.
        in_flight: deque[tuple[int, float]] = deque()
        published = asyncio.Event()
        feed_done = False
        ended = _FeedEnded(None)

        async def publish() -> None:
            nonlocal feed_done, ended
            # The change published before, in this session (a session's first publish
            # names none: what comes before it in the stream is an unbroken prefix).
            previous: int | None = None
            try:
                while not self._stopping.is_set():
                    item = await pump.queue.get()
                    if isinstance(item, _FeedEnded):
                        ended = item
                        return
                    for change in item:
                        if self._stopping.is_set():
                            return
                        if self._confirmed is None:
                            # Started --from-now: the feed's first change fixes where "now"
                            # was, so a retry goes on from there rather than from a new now.
                            self._confirmed = change.seq - 1
                        headers = change_headers(workspace, change)
                        if self._chained and previous is not None:
                            headers["Nats-Expected-Last-Msg-Id"] = message_id(workspace, previous)
                        previous = change.seq
                        await acks.window.acquire()
                        try:
                            # The reply subject names the change: JetStream's answer goes
                            # to it.
                            await nc.publish(
                                change_subject(workspace, change.segment_id),
                                change.SerializeToString(),
                                reply=f"{inbox}{change.seq}",
                                headers=headers,
                            )
                        except nats.errors.Error as exc:  # e.g. the connection is closed
                            reason = str(exc) or type(exc).__name__
                            raise _PublishFailed(change.seq, reason) from None
                        in_flight.append((change.seq, time.monotonic()))
                        published.set()
            finally:
                feed_done = True
                published.set()

        async def confirm() -> None:
            timeout = self._settings.ack_timeout
            while in_flight or not feed_done:
                if not in_flight:
                    published.clear()
                    await published.wait()
                    continue
                seq, sent = in_flight[0]
                if acks.take(seq):
                    # Answers mostly come in order: take every one that is in.
                    while True:
                        in_flight.popleft()
                        self._confirm(seq)
                        if not in_flight or not acks.take(in_flight[0][0]):
                            break
                        seq = in_flight[0][0]
                    self._progress.maybe_log(self._relayed, self._confirmed)
                    continue
                refused = acks.refused.get(seq)
                if refused is not None:
                    raise _PublishFailed(seq, refused)
                if nc.is_closed:
                    raise _PublishFailed(seq, "the NATS connection was lost")
                left = sent + timeout - time.monotonic()
                if left <= 0:
                    raise _PublishFailed(seq, f"no acknowledgement in {timeout:g} s")
                acks.answered.clear()
                # In slices, so that a lost connection is noticed at once.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(acks.answered.wait(), min(left, ACK_POLL_SECONDS))

        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(publish())
                tasks.create_task(confirm())
        except* _PublishFailed as failures:
            raise failures.exceptions[0] from None
        finally:
            pump.close()
            self._pump = None
            if not nc.is_closed:
                with contextlib.suppress(nats.errors.Error):
                    await subscription.unsubscribe()
        return ended


class _Acks:
    """JetStream's answers to one session's publishes, told apart by the seq that ends
    their reply subject; `window` holds the publisher back at max_in_flight unanswered."""

    def __init__(self, max_in_flight: int) -> None:
        self.window = asyncio.Semaphore(max_in_flight)
        self.answered = asyncio.Event()
        self.refused: dict[int, str] = {}
        self._stored: set[int] = set()

    async def on_reply(self, msg: Msg) -> None:
        seq = int(msg.subject.rsplit(".", 1)[1])
        if not msg.data:
            # A status without a body: 503 when no stream takes the subject.
            status = (msg.headers or {}).get("Status", "no answer")
            self.refused[seq] = f"no stream took it (status {status})"
        elif b'"error"' in msg.data:
            error = json.loads(msg.data).get("error", {})
            self.refused[seq] = f"JetStream refused it: {error.get('description', error)}"
        else:
            # Stored, or a duplicate of a change stored before: either way it is there.
            self._stored.add(seq)
        self.window.release()
        self.answered.set()

    def take(self, seq: int) -> bool:
        """Whether `seq` is stored (forgetting it)."""
        if seq in self._stored:
            self._stored.discard(seq)
            return True
        return False


class _Progress:
    """A log line every PROGRESS_SECONDS while changes flow: how many, up to which seq, how
    fast."""

    def __init__(self) -> None:
        self._at = time.monotonic()
        self._relayed = 0

    def maybe_log(self, relayed: int, last_seq: int | None) -> None:
        now = time.monotonic()
        if now - self._at < PROGRESS_SECONDS:
            return
        rate = (relayed - self._relayed) / (now - self._at)
        log.info("relayed %d changes, up to seq %s (%.0f/s)", relayed, last_seq, rate)
        self._at, self._relayed = now, relayed


async def _log_nats_error(error: Exception) -> None:
    log.warning("NATS: %s", str(error) or type(error).__name__)


def _reason(ended: _FeedEnded) -> str:
    status = call_status(ended.error)
    if status is not None:
        return f"{status[0]}: {status[1]}"
    return "the server closed it"


def run_relay(client: Client, settings: RelaySettings) -> RelayReport:
    """Runs the relay until SIGTERM or SIGINT (then returns after the changes in flight are
    acknowledged) or a RelayError."""

    async def main() -> RelayReport:
        relay = Relay(client, settings)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, relay.stop)
        return await relay.run()

    return asyncio.run(main())
