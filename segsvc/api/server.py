"""The gRPC server: services, interceptors, health, reflection, and the process around it.

`create_server(config)` gives a started server and its port (tests, embedding);
`serve(config)` is the `segsvc serve` process: startup checks, engine, ticker, server, signals,
and a stop that is bounded in time whatever grpc or a handler does.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from segsvc import package_version
from segsvc.api.admission import StreamAdmission, stream_budget
from segsvc.api.applied_seq import AppliedSeqInterceptor
from segsvc.api.audiences import AudiencesServicer
from segsvc.api.auth import AuthInterceptor
from segsvc.api.changes import ChangesServicer
from segsvc.api.decoding import DecodingInterceptor
from segsvc.api.errors import ErrorInterceptor
from segsvc.api.metrics import CallObserver, MetricsHttp, ServerMetrics, start_metrics_http
from segsvc.api.people import PeopleServicer
from segsvc.api.reflection import enable_reflection
from segsvc.api.replica_health import follow_lag
from segsvc.api.segments import SegmentsServicer
from segsvc.api.startup_checks import (
    ServerConfigError,
    check_data_dir,
    check_listen_address,
    check_metrics_address,
    check_port_free,
    split_listen,
    tls_credentials,
)
from segsvc.api.workspaces import WorkspacesServicer
from segsvc.config import Config
from segsvc.engine.engine import Engine
from segsvc.engine.observer import NO_OBSERVER
from segsvc.logs import configure_logging
from segsvc.sizes import format_size
from segsvc.storage.errors import StorageError
from segsvc.tokens_file import Token, TokensFileError, load_tokens
from segsvc.v1 import (
    audiences_pb2,
    audiences_pb2_grpc,
    changes_pb2,
    changes_pb2_grpc,
    people_pb2,
    people_pb2_grpc,
    segments_pb2,
    segments_pb2_grpc,
    workspaces_pb2,
    workspaces_pb2_grpc,
)

log = logging.getLogger(__name__)
# The lines an operator looks for: the server is up (and how), the server stopped (and how).
startup_log = logging.getLogger("segsvc")

# After the grace period grpc cancels every call. A call still running this much later is
# stuck (in grpc itself, or in a handler that ignores cancellation) and is abandoned; the
# engine then gets as long again to checkpoint and close. So stop() ends within
# grace + 2 * STOP_DEADLINE_SECONDS. Nothing acknowledged is at risk either way: every write is
# committed to the log before it is acknowledged, and the next start replays what the last
# checkpoint does not cover.
STOP_DEADLINE_SECONDS = 5.0

SEGSVC_SERVICES = tuple(
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (people_pb2, "PeopleService"),
        (segments_pb2, "SegmentsService"),
        (changes_pb2, "ChangesService"),
        (audiences_pb2, "AudiencesService"),
        (workspaces_pb2, "WorkspacesService"),
    )
)


class SegsvcServer(grpc.Server):
    """grpc's server, plus the engine it serves and its health.

    `stop(grace)` reports NOT_SERVING, ends the change-feed followers and stops grpc: calls in
    flight get `grace` seconds, then grpc cancels them. An engine the server owns is closed
    (checkpointed) once every call has ended. The returned event is set when all that is done,
    and at the latest after grace + 2 * STOP_DEADLINE_SECONDS: calls that outlive the deadline
    are abandoned and `calls_abandoned` says so (their threads still run; a process should then
    exit without waiting for them, as `serve` does).
    """

    def __init__(
        self,
        inner: grpc.Server,
        port: int,
        engine: Engine,
        owns_engine: bool,
        health_servicer: health.HealthServicer,
        stopping: threading.Event,
        executor: ThreadPoolExecutor,
        metrics_http: MetricsHttp | None = None,
        call_observer: CallObserver | None = None,
    ) -> None:
        self._inner = inner
        # The /metrics endpoint (None without --metrics-listen), stopped with the server.
        self.metrics_http = metrics_http
        # The metrics and access-log interceptor (None when both are off); its last access
        # lines are written when the server has stopped.
        self.call_observer = call_observer
        self.port = port
        self.engine = engine
        self._owns_engine = owns_engine
        self.health = health_servicer
        self._stopping = stopping
        self._executor = executor
        self._stop_started = False
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self.calls_abandoned = False
        # After stop: whether the engine wrote its closing checkpoint (None: not the
        # server's engine to close).
        self.checkpointed: bool | None = None

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Any) -> None:
        self._inner.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_insecure_port(self, address: str) -> int:
        return self._inner.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._inner.add_secure_port(address, server_credentials)

    def start(self) -> None:
        self._inner.start()

    def stop(self, grace: float | None = None) -> threading.Event:
        with self._stop_lock:
            if not self._stop_started:
                self._stop_started = True
                self._stopping.set()
                self.health.enter_graceful_shutdown()
                # On its own thread: grpc's stop(None) waits for the end of every call on the
                # calling thread, which is forever when a call never ends.
                threading.Thread(
                    target=self._stop_by_deadline, args=(grace,), name="segsvc-stop", daemon=True
                ).start()
            return self._stopped

    def _stop_by_deadline(self, grace: float | None) -> None:
        try:
            if self.metrics_http is not None:
                self.metrics_http.stop()
            calls_deadline = time.monotonic() + (grace or 0.0) + STOP_DEADLINE_SECONDS
            ended = _finishes_by(
                lambda: self._inner.stop(grace).wait(), calls_deadline, "grpc-stop"
            ) and _finishes_by(
                # Handlers may still be finishing in the pool after grpc let go of their calls.
                lambda: self._executor.shutdown(wait=True),
                calls_deadline,
                "rpc-pool-shutdown",
            )
            if not ended:
                self.calls_abandoned = True
                log.error(
                    "calls still running %.1f s after the %.1f s grace period: abandoning "
                    "them (every acknowledged write is already in the log)",
                    STOP_DEADLINE_SECONDS,
                    grace or 0.0,
                )
            if self.call_observer is not None:
                # The access lines of the calls before what the engine logs as it closes.
                self.call_observer.close()
            if not self._owns_engine:
                return
            checkpointed: list[bool] = []
            if ended:
                checkpointed.append(self.engine.close())
            elif not _finishes_by(
                lambda: checkpointed.append(self.engine.close()),
                time.monotonic() + STOP_DEADLINE_SECONDS,
                "engine-close",
            ):
                # An abandoned call may hold the engine's lock; the checkpoint only saves the
                # next start some replay, so it is given up rather than waited for.
                log.error(
                    "the engine did not checkpoint and close within %.1f s: stopping without "
                    "it; the next start replays the log",
                    STOP_DEADLINE_SECONDS,
                )
            self.checkpointed = all(checkpointed) if checkpointed else False
        except Exception:
            log.exception("stopping the server failed")
        finally:
            if self.call_observer is not None:
                self.call_observer.close()
            self._stopped.set()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        # As grpc's: True when the timeout passed before the server stopped.
        return not self._stopped.wait(timeout)


def _finishes_by(work: Callable[[], object], deadline: float, name: str) -> bool:
    """Runs `work` on a daemon thread; whether it ended (raising counts, logged) by `deadline`,
    a time.monotonic() value. Past the deadline it is left running."""
    done = threading.Event()

    def run() -> None:
        try:
            work()
        except Exception:
            log.exception("%s failed", name)
        finally:
            done.set()

    threading.Thread(target=run, name=f"segsvc-{name}", daemon=True).start()
    return done.wait(max(0.0, deadline - time.monotonic()))


def create_server(
    config: Config, engine: Engine | None = None, metrics: ServerMetrics | None = None
) -> tuple[grpc.Server, int]:
    """A started server on `config.listen` (port 0 picks a free port) and the port bound.
    Without `engine`, the server opens one on config.data_dir and closes it on stop()."""
    server = build_server(config, engine, metrics)
    return server, server.port


def build_server(
    config: Config, engine: Engine | None = None, metrics: ServerMetrics | None = None
) -> SegsvcServer:
    """As create_server, returning the SegsvcServer (with .port, .engine, .health). With
    config.metrics_listen the server serves `metrics` (new ones when not given; an engine
    given by the caller reports its timings to the observer it was made with, such as
    `metrics.engine_observer`)."""
    tokens, credentials = check_startup(config)
    if metrics is None and config.metrics_listen is not None:
        metrics = ServerMetrics()
    observer = metrics.engine_observer if metrics is not None else NO_OBSERVER
    bound = _bind_server(config, AuthInterceptor(tokens), credentials, metrics)
    owns_engine = engine is None
    try:
        running_engine = engine if engine is not None else Engine(config, observer=observer)
    except BaseException:
        bound.release()
        raise
    try:
        return _start(config, running_engine, owns_engine, bound)
    except BaseException:
        if owns_engine:
            running_engine.close()
        raise


def check_startup(config: Config) -> tuple[list[Token] | None, grpc.ServerCredentials | None]:
    """Everything about `config` that can be checked without touching the data: the tokens,
    the listen address, the TLS files. Returns the tokens and the TLS credentials, or raises
    ServerConfigError / TokensFileError saying what to change."""
    tokens = load_tokens(config.tokens_file) if config.tokens_file is not None else None
    check_listen_address(config.listen, authenticated=tokens is not None)
    credentials = tls_credentials(config)
    if config.metrics_listen is not None:
        check_metrics_address(
            config.metrics_listen, guarded=tokens is not None or credentials is not None
        )
    return tokens, credentials


@dataclass
class _BoundServer:
    """A grpc server holding its port, not yet started: no servicer, nobody answered.
    Binding comes before the engine opens the data, so a taken port refuses the start before
    anything is created on disk; connections that arrive while the engine loads wait in the
    listen backlog rather than being refused. The metrics endpoint, when asked for, is
    already up (an empty scrape until the engine is watched)."""

    inner: grpc.Server
    executor: ThreadPoolExecutor
    port: int
    applied_seq: AppliedSeqInterceptor
    metrics: ServerMetrics | None = None
    call_observer: CallObserver | None = None
    metrics_http: MetricsHttp | None = None

    def release(self) -> None:
        """Lets go of the port of a server that will never serve. grpc frees the port of a
        server that was never started only when the process ends, so it is started, with
        nothing to serve (a caller in that instant gets UNIMPLEMENTED), and stopped at once."""
        if self.metrics_http is not None:
            self.metrics_http.stop()
        self.inner.start()
        self.inner.stop(None).wait()
        self.executor.shutdown(wait=False)


def _bind_server(
    config: Config,
    auth: AuthInterceptor,
    credentials: grpc.ServerCredentials | None,
    metrics: ServerMetrics | None,
) -> _BoundServer:
    executor = ThreadPoolExecutor(config.workers, thread_name_prefix="segsvc-rpc")
    # Outermost of all: it sees every call's final status, whoever set it. Left out when it
    # has nothing to do, so that it costs nothing then.
    call_observer = (
        CallObserver(metrics.rpc if metrics is not None else None, config.access_log)
        if metrics is not None or config.access_log
        else None
    )
    observing: list[grpc.ServerInterceptor] = (  # type: ignore[type-arg]
        [] if call_observer is None else [call_observer]
    )
    # Told its engine once the engine is open (_start); no call reaches it before.
    applied_seq = AppliedSeqInterceptor()
    max_bytes = config.limits.max_message_bytes
    inner = grpc.server(
        executor,
        # The error interceptor is the outermost, so it also maps what the others raise;
        # admission comes after auth, so refused callers take no stream slot; requests are
        # parsed innermost, so nobody unauthenticated or refused gets anything parsed.
        interceptors=[
            *observing,
            ErrorInterceptor(),
            auth,
            applied_seq,
            StreamAdmission(stream_budget(config.workers)),
            DecodingInterceptor(config.limits),
        ],
        options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            # Without this a second server on the same port would silently share it.
            ("grpc.so_reuseport", 0),
        ],
    )
    try:
        port = _bind(inner, config.listen, credentials)
    except BaseException:
        executor.shutdown(wait=False)
        raise
    bound = _BoundServer(inner, executor, port, applied_seq, metrics, call_observer)
    if metrics is not None and config.metrics_listen is not None:
        try:
            bound.metrics_http = _serve_metrics(config, metrics)
        except BaseException:
            bound.release()
            raise
    return bound


def _start(config: Config, engine: Engine, owns_engine: bool, bound: _BoundServer) -> SegsvcServer:
    inner = bound.inner
    stopping = threading.Event()
    people_pb2_grpc.add_PeopleServiceServicer_to_server(PeopleServicer(engine), inner)
    segments_pb2_grpc.add_SegmentsServiceServicer_to_server(SegmentsServicer(engine), inner)
    changes_pb2_grpc.add_ChangesServiceServicer_to_server(ChangesServicer(engine, stopping), inner)
    audiences_pb2_grpc.add_AudiencesServiceServicer_to_server(
        AudiencesServicer(engine, stopping), inner
    )
    workspaces_pb2_grpc.add_WorkspacesServiceServicer_to_server(WorkspacesServicer(engine), inner)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, inner)
    enable_reflection(inner, (*SEGSVC_SERVICES, health.SERVICE_NAME))
    bound.applied_seq.engine = engine
    if bound.metrics is not None:
        bound.metrics.watch(engine)
    inner.start()
    # Ready: the engine finished loading before the server was built.
    for service in ("", *SEGSVC_SERVICES):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    if config.replication is not None:
        lag_limit = config.replication.max_lag_records
        follow_lag(engine, health_servicer, ("", *SEGSVC_SERVICES), lag_limit, stopping)
    return SegsvcServer(
        inner,
        bound.port,
        engine,
        owns_engine,
        health_servicer,
        stopping,
        bound.executor,
        bound.metrics_http,
        bound.call_observer,
    )


def _serve_metrics(config: Config, metrics: ServerMetrics) -> MetricsHttp:
    """The /metrics endpoint on config.metrics_listen: HTTPS with the server's certificate
    when it has one."""
    assert config.metrics_listen is not None
    host, port = split_listen(config.metrics_listen)
    tls = (
        (str(config.tls_cert), str(config.tls_key))
        if config.tls_cert is not None and config.tls_key is not None
        else None
    )
    try:
        return start_metrics_http(host, int(port), metrics.registry, tls)
    except OSError as exc:
        raise ServerConfigError(
            f"cannot serve metrics on {config.metrics_listen}: {exc.strerror or exc}"
        ) from None


def _bind(server: grpc.Server, listen: str, credentials: grpc.ServerCredentials | None) -> int:
    try:
        if credentials is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, credentials)
    except RuntimeError as exc:
        # check_tls_files vetted the files with OpenSSL; grpc's BoringSSL may still refuse one.
        tls = "" if credentials is None else " (or grpc refused the TLS certificate or key)"
        raise ServerConfigError(f"cannot listen on {listen}{tls}: {exc}") from exc
    if not port:
        raise ServerConfigError(f"cannot listen on {listen} (address in use or not local)")
    return port


def serve(config: Config) -> None:
    """Runs the server in the foreground until SIGTERM or SIGINT, then shuts down: NOT_SERVING,
    calls in flight get `config.grace_seconds`, the engine checkpoints and closes, exit 0. The
    stop is bounded (see STOP_DEADLINE_SECONDS): when calls are stuck the process still exits.
    SIGHUP reloads the tokens file. One INFO line (logger `segsvc`) says the server is up,
    with what it runs and loaded; one says it stopped and how.

    A refused start prints one line `segsvc: <why>` and exits with status 2, and creates
    nothing: every check that only looks comes first, then the port is bound, and only then
    does the engine create or open the data directory."""
    started = time.monotonic()
    if not logging.getLogger().handlers:
        configure_logging()
    metrics = ServerMetrics() if config.metrics_listen is not None else None
    try:
        tokens, credentials = check_startup(config)
        check_data_dir(config.data_dir, config.map_size)
        # The probe names the usual mistake (a port in use) better than grpc's bind would.
        check_port_free(config.listen)
        if config.metrics_listen is not None:
            check_port_free(config.metrics_listen)
        auth = AuthInterceptor(tokens)
        bound = _bind_server(config, auth, credentials, metrics)
    except (ServerConfigError, TokensFileError, StorageError) as exc:
        _refuse(exc)
    signal.signal(signal.SIGHUP, lambda signum, frame: reload_tokens(auth, config.tokens_file))
    try:
        engine = Engine(
            config, observer=metrics.engine_observer if metrics is not None else NO_OBSERVER
        )
    except StorageError as exc:
        # Not bound.release(): the port goes with the process, without ever answering.
        _refuse(exc)
    loaded = time.monotonic()
    try:
        engine.start_ticker()
        server = _start(config, engine, True, bound)
    except BaseException:
        engine.close()
        raise
    stopped_by: list[str] = []
    shutdown = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopped_by.append(signal.Signals(signum).name)
        shutdown.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop_started = time.monotonic()
    try:
        startup_log.info(
            "%s",
            startup_line(
                config,
                server.port,
                engine,
                tokens,
                loaded_seconds=loaded - started,
                ready_seconds=time.monotonic() - started,
            ),
        )
        if server.metrics_http is not None:
            metrics_host, _ = split_listen(str(config.metrics_listen))
            scheme = "http" if config.tls_cert is None else "https"
            print(
                f"segsvc metrics on {scheme}://{metrics_host}:{server.metrics_http.port}/metrics",
                file=sys.stderr,
                flush=True,
            )
        # A timed wait, so the main thread wakes for the signal handler on every platform.
        while not shutdown.wait(1.0):
            pass
        stop_started = time.monotonic()
    finally:
        # The server owns the engine: it closes it, or gives up on it, within the deadline.
        server.stop(config.grace_seconds).wait()
    startup_log.info(
        "%s",
        shutdown_line(
            server,
            stopped_by[0] if stopped_by else "an error",
            stop_started,
            config.grace_seconds,
        ),
    )
    if server.calls_abandoned:
        # The threads of the abandoned calls would hold the interpreter's exit forever.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def reload_tokens(auth: AuthInterceptor, path: Path | None) -> None:
    """SIGHUP: reads the tokens file again and accepts its tokens from the next call on. A
    file that cannot be used is logged, and the tokens accepted so far stay."""
    if path is None:
        log.warning("SIGHUP: no tokens file to reload (the server runs without --tokens-file)")
        return
    try:
        tokens = load_tokens(path)
    except TokensFileError as exc:
        log.error("tokens file not reloaded, the tokens loaded before stay in use: %s", exc)
        return
    auth.replace_tokens(tokens)
    log.info("tokens file %s reloaded: %d tokens", path, len(tokens))


def startup_line(
    config: Config,
    port: int,
    engine: Engine,
    tokens: list[Token] | None,
    loaded_seconds: float,
    ready_seconds: float,
) -> str:
    """What an operator checks first in a log: which segsvc listens where on which data,
    with which options, holding what, and how long the start took."""
    host, _ = split_listen(config.listen)
    options = ", ".join(
        (
            f"map size {format_size(config.map_size)}",
            f"tick {config.tick_seconds:g} s",
            f"change retention {config.change_retention_seconds / 86400:g} d",
            f"event retention {config.event_retention_seconds / 86400:g} d",
            f"snapshot retention {config.snapshot_retention_seconds / 3600:g} h",
            f"checkpoint every {config.checkpoint_every_ops}",
            f"grace {config.grace_seconds:g} s",
            f"workers {config.workers}",
            f"default region {config.default_region or 'none'}",
            f"tokens {f'on ({len(tokens)})' if tokens is not None else 'off'}",
            f"TLS {'on' if config.tls_cert is not None else 'off'}",
        )
    )
    workspaces = ", ".join(
        f"{w.name} ({w.people} people, {w.segments} segments)" for w in engine.summaries()
    )
    return (
        f"segsvc listening on {host}:{port} (data {config.data_dir}) version "
        f"{package_version()}; {options}; workspaces: {workspaces or 'none'}; loaded and "
        f"replayed in {loaded_seconds:.2f} s, ready {ready_seconds:.2f} s after start"
    )


def shutdown_line(server: SegsvcServer, cause: str, stop_started: float, grace: float) -> str:
    """The last line of a server's life: why it stopped, how long that took, and whether the
    next start has a fresh checkpoint or replays the log."""
    checkpoint = (
        "checkpoint written"
        if server.checkpointed
        else "checkpoint not written (the next start replays the log; nothing is lost)"
    )
    abandoned = "; calls still running were abandoned" if server.calls_abandoned else ""
    return (
        f"segsvc stopped on {cause}: the stop took {time.monotonic() - stop_started:.2f} s "
        f"(grace {grace:g} s); {checkpoint}{abandoned}"
    )


def _refuse(problem: Exception) -> NoReturn:
    print(f"segsvc: {problem}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None
