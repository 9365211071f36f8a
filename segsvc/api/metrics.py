"""What the server tells its operators: Prometheus metrics and the access log.

- `CallObserver`, the outermost interceptor, sees the start and the final status of every
  call, unary and streamed alike (refusals by auth and admission, errors raised mid-stream,
  cancellations included). From it come the common gRPC server metrics, with the names and
  labels of go-grpc-prometheus so existing dashboards work (`grpc_server_started_total`,
  `grpc_server_handled_total`, `grpc_server_handling_seconds`, `grpc_server_msg_received_total`,
  `grpc_server_msg_sent_total`; grpc_code spelt as Go spells it: OK, InvalidArgument, ...),
  and one access-log line per call on the logger `segsvc.access`.
- `ServerMetrics` holds the registry (one per server, not prometheus_client's global one, so
  several servers can run in one process), the engine's timings (`PrometheusObserver`, fed
  where the engine works) and `EngineCollector`, which reads segsvc.engine.stats at scrape
  time: sizes cost the writes nothing.
- `start_metrics_http` serves the registry with prometheus_client's own HTTP server.

The access log never holds tokens or people's data: no metadata but the workspace, no
request content but item counts, and the quoted values of error messages (ids, emails and
phones are quoted there) replaced by '…'.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.exposition import start_http_server

from segsvc.api.calls import CallNotes, open_notes
from segsvc.api.engine_metrics import EngineCollector, PrometheusObserver
from segsvc.api.errors import internal_error_id
from segsvc.api.interception import (
    Behaviour,
    HandlerInterceptor,
    StreamBehaviour,
    rewrap,
    steps_in,
)
from segsvc.engine.engine import Engine

access_log = logging.getLogger("segsvc.access")
HEALTH_SERVICE = "grpc.health.v1.Health"

# go-grpc-prometheus's spelling of status codes (codes.Code.String() in Go).
GO_CODE_NAMES = {
    code: "".join(word.capitalize() for word in code.name.split("_")) for code in grpc.StatusCode
}
GO_CODE_NAMES[grpc.StatusCode.OK] = "OK"
GO_CODE_NAMES[grpc.StatusCode.CANCELLED] = "Canceled"

# Seconds. Prometheus's default buckets start at 5 ms; most of our calls take less than one.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# Server faults: logged at ERROR. Every other outcome is the caller's (INFO).
_SERVER_FAULTS = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
)
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def redact(message: str) -> str:
    """`message` with every quoted value replaced by '…': the engine quotes what the caller
    sent (ids, emails, phones, attribute values), and the log must not keep people's data."""
    return _QUOTED.sub("'…'", message)


class RpcMetrics:
    """The common gRPC server metrics, in one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("grpc_type", "grpc_service", "grpc_method")
        self.started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", labels, registry=registry
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, whatever their status.",
            (*labels, "grpc_code"),
            registry=registry,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status, in seconds.",
            labels,
            buckets=RPC_BUCKETS,
            registry=registry,
        )
        self.received = Counter(
            "grpc_server_msg_received_total",
            "Request messages received (one per unary request).",
            labels,
            registry=registry,
        )
        self.sent = Counter(
            "grpc_server_msg_sent_total",
            "Response messages sent (one per unary response).",
            labels,
            registry=registry,
        )


class _Method:
    """One method's names and its metric children, made once: a call then only increments."""

    def __init__(self, full_method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> None:
        service, _, name = full_method.lstrip("/").rpartition("/")
        self.service, self.name = service, name
        self.short = f"{service.rsplit('.', 1)[-1]}/{name}"
        self.request_streaming = handler.request_streaming
        if handler.request_streaming:
            self.grpc_type = "bidi_stream" if handler.response_streaming else "client_stream"
        else:
            self.grpc_type = "server_stream" if handler.response_streaming else "unary"
        self.response_batch_fields = _response_batch_fields(service, name)
        # Load balancers check health every few seconds: counted, but not access-logged.
        self.logged = service != HEALTH_SERVICE
        self.rpc: RpcMetrics | None = None
        self._handled: dict[grpc.StatusCode, Any] = {}

    def with_metrics(self, rpc: RpcMetrics) -> _Method:
        labels = (self.grpc_type, self.service, self.name)
        self.rpc = rpc
        self.started = rpc.started.labels(*labels)
        self.handling = rpc.handling.labels(*labels)
        self.received = rpc.received.labels(*labels)
        self.sent = rpc.sent.labels(*labels)
        return self

    def handled(self, code: grpc.StatusCode) -> Any:
        child = self._handled.get(code)
        if child is None:
            assert self.rpc is not None
            child = self._handled[code] = self.rpc.handled.labels(
                self.grpc_type, self.service, self.name, GO_CODE_NAMES[code]
            )
        return child


def _response_batch_fields(service: str, name: str) -> tuple[str, ...]:
    try:
        method = descriptor_pool.Default().FindMethodByName(f"{service}.{name}")
    except KeyError:
        return ()
    return tuple(f.name for f in method.output_type.fields if f.is_repeated)


class _Call:
    """One call under way: its counts, and its end."""

    __slots__ = (
        "context",
        "counting",
        "items_out",
        "method",
        "notes",
        "received",
        "sent",
        "started",
    )

    def __init__(self, method: _Method, context: grpc.ServicerContext, counting: bool) -> None:
        self.method = method
        self.context = context
        # Message counters move as messages pass, so a stream open for days shows its
        # traffic while it runs.
        self.counting = counting
        self.notes = CallNotes()
        self.received = 0
        self.sent = 0
        self.items_out = 0
        self.started = time.perf_counter()

    def requests(self, requests: Iterator[Any]) -> Iterator[Any]:
        for request in requests:
            self.received += 1
            if self.counting:
                self.method.received.inc()
            yield request

    def response(self, response: Any) -> Any:
        self.sent += 1
        if self.counting:
            self.method.sent.inc()
        for name in self.method.response_batch_fields:
            self.items_out += len(getattr(response, name))
        return response


class CallObserver(HandlerInterceptor):
    """Metrics (when `rpc` is given) and an access-log line (when `access`) for every call.
    Place it outermost, before ErrorInterceptor: only there is the final status known."""

    def __init__(self, rpc: RpcMetrics | None, access: bool) -> None:
        self._rpc = rpc
        self._access_writer = _AccessWriter() if access else None
        self._methods: dict[str, _Method] = {}

    def wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], call: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = self._method(call.method, handler)
        return rewrap(
            handler,
            lambda behaviour: self._unary(method, behaviour),
            lambda behaviour: self._streaming(method, behaviour),
        )

    def _method(self, full_method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> _Method:
        method = self._methods.get(full_method)
        if method is None:
            # A race builds it twice; both are equal and the children are the same objects.
            method = _Method(full_method, handler)
            if self._rpc is not None:
                method.with_metrics(self._rpc)
            self._methods[full_method] = method
        return method

    def _begin(self, method: _Method, context: grpc.ServicerContext) -> _Call:
        call = _Call(method, context, counting=self._rpc is not None)
        if self._rpc is not None:
            method.started.inc()
        if not method.request_streaming:
            call.received = 1
            if self._rpc is not None:
                method.received.inc()
        return call

    def _unary(self, method: _Method, behaviour: Behaviour) -> Behaviour:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            call = self._begin(method, context)
            if method.request_streaming:
                request = call.requests(request)
            scope = open_notes(call.notes)
            try:
                response = scope.run(behaviour, request, context)
            except BaseException as exc:
                self._end(call, exc)
                raise
            call.response(response)
            self._end(call, None)
            return response

        return run

    def _streaming(self, method: _Method, behaviour: StreamBehaviour) -> StreamBehaviour:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            call = self._begin(method, context)
            if method.request_streaming:
                request = call.requests(request)
            scope = open_notes(call.notes)
            try:
                for response in steps_in(scope, scope.run(behaviour, request, context)):
                    yield call.response(response)
            except BaseException as exc:
                self._end(call, exc)
                raise
            self._end(call, None)

        return run

    def _end(self, call: _Call, exc: BaseException | None) -> None:
        seconds = time.perf_counter() - call.started
        code = _final_code(call.context, exc)
        method = call.method
        if self._rpc is not None:
            method.handled(code).inc()
            method.handling.observe(seconds)
        if self._access_writer is not None and method.logged:
            self._log(call, code, seconds)

    def _log(self, call: _Call, code: grpc.StatusCode, seconds: float) -> None:
        level = logging.ERROR if code in _SERVER_FAULTS else logging.INFO
        if self._access_writer is None or not access_log.isEnabledFor(level):
            return
        notes = call.notes
        line = AccessLine(
            call.method,
            code,
            level,
            time.time(),
            seconds,
            notes.workspace,
            call.context.peer(),
            (call.received, notes.items_in, call.sent, call.items_out),
            "" if code is grpc.StatusCode.OK else _details(call.context),
        )
        if level >= logging.WARNING:
            line.write()  # at once: an on-call engineer waits for these
        else:
            self._access_writer.add(line)

    def flush(self) -> None:
        """Writes the access lines still waiting (the writer does every quarter second)."""
        if self._access_writer is not None:
            self._access_writer.drain()

    def close(self) -> None:
        """Writes the waiting access lines and stops the writer thread."""
        if self._access_writer is not None:
            self._access_writer.close()


class AccessLine:
    """The facts of one finished call, taken on its thread; made into a log record later."""

    __slots__ = (
        "at",
        "code",
        "counts",
        "details",
        "level",
        "method",
        "peer",
        "seconds",
        "workspace",
    )

    def __init__(
        self,
        method: _Method,
        code: grpc.StatusCode,
        level: int,
        at: float,
        seconds: float,
        workspace: str,
        peer: str,
        counts: tuple[int, int, int, int],
        details: str,
    ) -> None:
        self.method = method
        self.code = code
        self.level = level
        self.at = at
        self.seconds = seconds
        self.workspace = workspace
        self.peer = peer
        self.counts = counts
        self.details = details

    def write(self) -> None:
        method = self.method
        msgs_in, items_in, msgs_out, items_out = self.counts
        duration_ms = round(self.seconds * 1000, 3)
        fields: dict[str, Any] = {
            "rpc": method.short,
            "grpc_service": method.service,
            "grpc_method": method.name,
            "grpc_code": self.code.name,
            "duration_ms": duration_ms,
            "workspace": self.workspace,
            "peer": self.peer,
            "msgs_in": msgs_in,
            "msgs_out": msgs_out,
            "items_in": items_in,
            "items_out": items_out,
        }
        text = (
            f"{method.short} {self.code.name} {duration_ms:.2f} ms "
            f"workspace={self.workspace or '-'} peer={self.peer} "
            f"in={msgs_in}/{items_in} out={msgs_out}/{items_out}"
        )
        if self.code is not grpc.StatusCode.OK:
            error_id = internal_error_id(self.details)
            if error_id is not None:
                fields["error_id"] = error_id
            fields["error"] = redact(self.details)
            text += f": {fields['error']}"
        access_log.handle(_record(self.level, self.at, text, fields))


# What every access record shares (logger, process, source line: none), taken once from a
# record LogRecord made: its constructor looks all that up again for every record, and would
# cost a line a quarter of its time.
_TEMPLATE = access_log.makeRecord(access_log.name, logging.INFO, "", 0, "", (), None).__dict__


def _record(level: int, at: float, text: str, fields: dict[str, Any]) -> logging.LogRecord:
    """An access record at `level`, of time `at` (when the call ended, not when the line is
    written), message `text`, with `fields` as its extra attributes; sent straight to the
    handlers (Logger.log would also walk the stack for a caller that says nothing here)."""
    record = logging.LogRecord.__new__(logging.LogRecord)
    attributes = record.__dict__
    attributes.update(_TEMPLATE)
    attributes.update(fields)
    attributes["msg"] = text
    attributes["levelno"] = level
    attributes["levelname"] = logging.getLevelName(level)
    attributes["created"] = at
    attributes["msecs"] = (at - int(at)) * 1000
    attributes["relativeCreated"] = (
        _TEMPLATE["relativeCreated"] + (at - _TEMPLATE["created"]) * 1000
    )
    return record


class _AccessWriter:
    """Writes the access lines of finished calls from a thread of its own, a batch every
    WRITE_INTERVAL_SECONDS, so that a call pays an append to a queue and not the record, the
    formatting and the write (measured in segsvc serve: about 100 us of CPU a line, a fifth
    of a whole GetSegment call). A queue past MAX_WAITING is written by the calls themselves:
    memory stays bounded when the writer cannot keep up."""

    WRITE_INTERVAL_SECONDS = 0.25
    MAX_WAITING = 50_000

    def __init__(self) -> None:
        self._waiting: deque[AccessLine] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="segsvc-access-log", daemon=True)
        self._thread.start()

    def add(self, line: AccessLine) -> None:
        self._waiting.append(line)
        if len(self._waiting) > self.MAX_WAITING:
            self.drain()

    def drain(self) -> None:
        while True:
            try:
                line = self._waiting.popleft()
            except IndexError:
                return
            try:
                line.write()
            except Exception:
                logging.getLogger(__name__).exception("writing an access-log line failed")

    def _run(self) -> None:
        while not self._stop.wait(self.WRITE_INTERVAL_SECONDS):
            self.drain()
        self.drain()

    def close(self) -> None:
        """Writes what waits and stops the thread; closing again does nothing more."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.drain()


def _final_code(context: Any, exc: BaseException | None) -> grpc.StatusCode:
    """The status the call ended with. A handler's abort (ErrorInterceptor maps every error
    to one) has set it; otherwise a call that raised was cancelled or failed in grpc."""
    code = context.code()
    if code is not None:
        return code  # type: ignore[no-any-return]
    if isinstance(exc, GeneratorExit | grpc.RpcError) or not context.is_active():
        # The client went away: grpc closed the response stream, the request stream raised,
        # or a handler saw the call inactive and returned (a change-feed follower does).
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.OK if exc is None else grpc.StatusCode.UNKNOWN


def _details(context: Any) -> str:
    details = context.details()
    if isinstance(details, bytes):
        return details.decode(errors="replace")
    return details or ""


class ServerMetrics:
    """Everything one server exposes on /metrics, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # process_cpu_seconds_total, process_open_fds, ...: what dashboards expect of a process.
        ProcessCollector(registry=self.registry)
        self.rpc = RpcMetrics(self.registry)
        self.engine_observer = PrometheusObserver(self.registry)

    def watch(self, engine: Engine) -> None:
        self.registry.register(EngineCollector(engine))


class MetricsHttp:
    """prometheus_client's HTTP server for one registry, on its own thread."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.port: int = server.server_port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_http(
    host: str, port: int, registry: CollectorRegistry, tls: tuple[str, str] | None
) -> MetricsHttp:
    """Serves `registry` at http(s)://host:port/metrics (port 0: a free one); HTTPS with the
    (certificate, key) files of `tls`."""
    certfile, keyfile = tls if tls is not None else (None, None)
    server, thread = start_http_server(
        port, addr=host, registry=registry, certfile=certfile, keyfile=keyfile
    )
    return MetricsHttp(server, thread)
