"""The gRPC server: services, interceptors, health, reflection, and the process around it.

`create_server(config)` gives a started server and its port (tests, embedding);
`serve(config)` is the `segsvc serve` process: engine, ticker, server, signals, clean exit.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from segsvc.api.audiences import AudiencesServicer
from segsvc.api.auth import AuthInterceptor, TokensFileError, load_tokens
from segsvc.api.changes import ChangesServicer
from segsvc.api.errors import ErrorInterceptor
from segsvc.api.people import PeopleServicer
from segsvc.api.segments import SegmentsServicer
from segsvc.config import Config
from segsvc.engine.engine import Engine
from segsvc.storage.errors import StorageError
from segsvc.v1 import (
    audiences_pb2,
    audiences_pb2_grpc,
    changes_pb2,
    changes_pb2_grpc,
    people_pb2,
    people_pb2_grpc,
    segments_pb2,
    segments_pb2_grpc,
)

log = logging.getLogger(__name__)

SEGSVC_SERVICES = tuple(
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (people_pb2, "People"),
        (segments_pb2, "Segments"),
        (changes_pb2, "Changes"),
        (audiences_pb2, "Audiences"),
    )
)


class ServerConfigError(ValueError):
    """The configuration cannot be served as given; the message says what to change."""


class SegsvcServer(grpc.Server):
    """grpc's server, plus the engine it serves and its health.

    `stop()` first reports NOT_SERVING and ends the change-feed followers, then stops grpc;
    an engine the server created itself is closed (checkpointed) once every call has ended,
    and the returned event is set only after that.
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
    ) -> None:
        self._inner = inner
        self.port = port
        self.engine = engine
        self._owns_engine = owns_engine
        self.health = health_servicer
        self._stopping = stopping
        self._executor = executor
        self._stopped: threading.Event | None = None
        self._stop_lock = threading.Lock()

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
            if self._stopped is not None:
                return self._stopped
            self._stopping.set()
            self.health.enter_graceful_shutdown()
            grpc_done = self._inner.stop(grace)
            if not self._owns_engine:
                self._stopped = grpc_done
                return grpc_done
            self._stopped = threading.Event()
            threading.Thread(
                target=self._close_after, args=(grpc_done,), name="segsvc-close", daemon=True
            ).start()
            return self._stopped

    def _close_after(self, grpc_done: threading.Event) -> None:
        grpc_done.wait()
        # Handlers may still be finishing in the pool after grpc let go of their calls.
        self._executor.shutdown(wait=True)
        self.engine.close()
        assert self._stopped is not None
        self._stopped.set()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return bool(self._inner.wait_for_termination(timeout))


def create_server(config: Config, engine: Engine | None = None) -> tuple[grpc.Server, int]:
    """A started server on `config.listen` (port 0 picks a free port) and the port bound.
    Without `engine`, the server opens one on config.data_dir and closes it on stop()."""
    server = build_server(config, engine)
    return server, server.port


def build_server(config: Config, engine: Engine | None = None) -> SegsvcServer:
    """As create_server, returning the SegsvcServer (with .port, .engine, .health)."""
    tokens = load_tokens(config.tokens_file) if config.tokens_file is not None else None
    check_listen_address(config.listen, authenticated=tokens is not None)
    credentials = _tls_credentials(config)
    owns_engine = engine is None
    running_engine = engine if engine is not None else Engine(config)
    try:
        return _start(config, running_engine, owns_engine, AuthInterceptor(tokens), credentials)
    except BaseException:
        if owns_engine:
            running_engine.close()
        raise


def _start(
    config: Config,
    engine: Engine,
    owns_engine: bool,
    auth: AuthInterceptor,
    credentials: grpc.ServerCredentials | None,
) -> SegsvcServer:
    executor = ThreadPoolExecutor(config.workers, thread_name_prefix="segsvc-rpc")
    max_bytes = config.limits.max_message_bytes
    inner = grpc.server(
        executor,
        # The error interceptor is the outermost, so it also maps what auth raises.
        interceptors=[ErrorInterceptor(), auth],
        options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            # Without this a second server on the same port would silently share it.
            ("grpc.so_reuseport", 0),
        ],
    )
    stopping = threading.Event()
    people_pb2_grpc.add_PeopleServicer_to_server(PeopleServicer(engine), inner)
    segments_pb2_grpc.add_SegmentsServicer_to_server(SegmentsServicer(engine), inner)
    changes = ChangesServicer(engine, stopping, max_followers=max(1, config.workers // 2))
    changes_pb2_grpc.add_ChangesServicer_to_server(changes, inner)
    audiences_pb2_grpc.add_AudiencesServicer_to_server(AudiencesServicer(engine, stopping), inner)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, inner)
    reflection.enable_server_reflection(
        (*SEGSVC_SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), inner
    )
    port = _bind(inner, config.listen, credentials)
    inner.start()
    # Ready: the engine finished loading before the server was built.
    for service in ("", *SEGSVC_SERVICES):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return SegsvcServer(inner, port, engine, owns_engine, health_servicer, stopping, executor)


def _bind(server: grpc.Server, listen: str, credentials: grpc.ServerCredentials | None) -> int:
    try:
        if credentials is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, credentials)
    except RuntimeError as exc:
        raise ServerConfigError(f"cannot listen on {listen}: {exc}") from exc
    if not port:
        raise ServerConfigError(f"cannot listen on {listen} (address in use or not local)")
    return port


def split_listen(listen: str) -> tuple[str, str]:
    """HOST and PORT of HOST:PORT, brackets of an IPv6 host removed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ServerConfigError(f"listen address {listen!r} is not HOST:PORT")
    return host.removeprefix("[").removesuffix("]"), port


def check_listen_address(listen: str, authenticated: bool) -> None:
    """Without tokens, anyone who can connect can read and change everything: only this
    machine may connect then."""
    host, _ = split_listen(listen)
    if authenticated or _is_loopback(host):
        return
    raise ServerConfigError(
        f"refusing to listen on {listen} without authentication: anyone on the network "
        "could read and change every segment. Give a tokens file, or listen on 127.0.0.1"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _tls_credentials(config: Config) -> grpc.ServerCredentials | None:
    if config.tls_cert is None and config.tls_key is None:
        return None
    if config.tls_cert is None or config.tls_key is None:
        raise ServerConfigError("TLS needs both a certificate and a private key")
    try:
        key, chain = config.tls_key.read_bytes(), config.tls_cert.read_bytes()
    except OSError as exc:
        raise ServerConfigError(f"cannot read the TLS files: {exc}") from exc
    return grpc.ssl_server_credentials([(key, chain)])


def serve(config: Config) -> None:
    """Runs the server in the foreground until SIGTERM or SIGINT, then shuts down cleanly:
    NOT_SERVING, calls in flight get `config.grace_seconds`, the engine checkpoints and
    closes. Refused configurations exit with status 2 and one line saying why."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    try:
        # Checked before the engine opens the data, so a refusal is quick and touches nothing.
        if config.tokens_file is not None:
            load_tokens(config.tokens_file)
        check_listen_address(config.listen, authenticated=config.tokens_file is not None)
        engine = Engine(config)
    except (ServerConfigError, TokensFileError, StorageError) as exc:
        print(f"segsvc: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    try:
        engine.start_ticker()
        try:
            server = build_server(config, engine)
        except (ServerConfigError, TokensFileError) as exc:
            print(f"segsvc: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        shutdown = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            shutdown.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        host, _ = split_listen(config.listen)
        print(
            f"segsvc listening on {host}:{server.port} (data {config.data_dir})",
            file=sys.stderr,
            flush=True,
        )
        # A timed wait, so the main thread wakes for the signal handler on every platform.
        while not shutdown.wait(1.0):
            pass
        server.stop(config.grace_seconds).wait()
    finally:
        engine.close()
    log.info("stopped")
