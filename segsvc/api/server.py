"""The gRPC server: services, interceptors, health, reflection, and the process around it.

`create_server(config)` gives a started server and its port (tests, embedding);
`serve(config)` is the `segsvc serve` process: startup checks, engine, ticker, server, signals,
and a stop that is bounded in time whatever grpc or a handler does.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from segsvc.api.admission import StreamAdmission, stream_budget
from segsvc.api.applied_seq import AppliedSeqInterceptor
from segsvc.api.audiences import AudiencesServicer
from segsvc.api.auth import AuthInterceptor, Token, TokensFileError, load_tokens
from segsvc.api.changes import ChangesServicer
from segsvc.api.decoding import DecodingInterceptor
from segsvc.api.errors import ErrorInterceptor
from segsvc.api.people import PeopleServicer
from segsvc.api.reflection import enable_reflection
from segsvc.api.replica_health import follow_lag
from segsvc.api.segments import SegmentsServicer
from segsvc.api.workspaces import WorkspacesServicer
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
    workspaces_pb2,
    workspaces_pb2_grpc,
)

log = logging.getLogger(__name__)

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


class ServerConfigError(ValueError):
    """The configuration cannot be served as given; the message says what to change."""


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
    ) -> None:
        self._inner = inner
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
            if not self._owns_engine:
                return
            if ended:
                self.engine.close()
            elif not _finishes_by(
                self.engine.close, time.monotonic() + STOP_DEADLINE_SECONDS, "engine-close"
            ):
                # An abandoned call may hold the engine's lock; the checkpoint only saves the
                # next start some replay, so it is given up rather than waited for.
                log.error(
                    "the engine did not checkpoint and close within %.1f s: stopping without "
                    "it; the next start replays the log",
                    STOP_DEADLINE_SECONDS,
                )
        except Exception:
            log.exception("stopping the server failed")
        finally:
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


def create_server(config: Config, engine: Engine | None = None) -> tuple[grpc.Server, int]:
    """A started server on `config.listen` (port 0 picks a free port) and the port bound.
    Without `engine`, the server opens one on config.data_dir and closes it on stop()."""
    server = build_server(config, engine)
    return server, server.port


def build_server(config: Config, engine: Engine | None = None) -> SegsvcServer:
    """As create_server, returning the SegsvcServer (with .port, .engine, .health)."""
    tokens, credentials = check_startup(config)
    owns_engine = engine is None
    running_engine = engine if engine is not None else Engine(config)
    try:
        return _start(config, running_engine, owns_engine, AuthInterceptor(tokens), credentials)
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
    return tokens, _tls_credentials(config)


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
        # The error interceptor is the outermost, so it also maps what the others raise;
        # admission comes after auth, so refused callers take no stream slot; requests are
        # parsed innermost, so nobody unauthenticated or refused gets anything parsed.
        interceptors=[
            ErrorInterceptor(),
            auth,
            AppliedSeqInterceptor(engine),
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
    port = _bind(inner, config.listen, credentials)
    inner.start()
    # Ready: the engine finished loading before the server was built.
    for service in ("", *SEGSVC_SERVICES):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    if config.replication is not None:
        lag_limit = config.replication.max_lag_records
        follow_lag(engine, health_servicer, ("", *SEGSVC_SERVICES), lag_limit, stopping)
    return SegsvcServer(inner, port, engine, owns_engine, health_servicer, stopping, executor)


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


def check_port_free(listen: str) -> None:
    """Refuses an address another process listens on (or a port this user may not use) before
    the engine loads: the bind after loading still decides, this only makes the common
    mistake quick to see and leaves the data untouched."""
    host, port = split_listen(listen)
    if port == "0":
        return
    try:
        addresses = socket.getaddrinfo(
            host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise ServerConfigError(f"cannot listen on {listen}: {exc}") from None
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            # As grpc does: a port whose last connections are in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ServerConfigError(
                        f"cannot listen on {listen}: another process listens there"
                    ) from None
                if exc.errno == errno.EACCES:
                    raise ServerConfigError(
                        f"cannot listen on {listen}: this user may not use port {port}"
                    ) from None
                # Anything else (say, no IPv6 on this host) is for grpc's bind to judge.


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
    check_tls_files(config.tls_cert, config.tls_key)
    return grpc.ssl_server_credentials(
        [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())]
    )


class _EncryptedKey(Exception):
    pass


def _refuse_passphrase() -> str:
    raise _EncryptedKey


def check_tls_files(cert: Path, key: Path) -> None:
    """Raises ServerConfigError naming the file that is wrong, unless `cert` is a PEM
    certificate chain and `key` the unencrypted PEM private key of its first certificate.
    grpc itself would only say that it failed to bind."""
    cert_text, key_text = _read_pem(cert, "certificate"), _read_pem(key, "private key")
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        swapped = " (it holds a private key: are the certificate and key swapped?)"
        raise ServerConfigError(
            f"the TLS certificate {cert} holds no PEM certificate"
            + (swapped if "PRIVATE KEY-----" in cert_text else "")
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cadata=cert_text)
    except ssl.SSLError as exc:
        raise ServerConfigError(
            f"the TLS certificate {cert} cannot be read: {exc.reason or exc}"
        ) from None
    if "PRIVATE KEY-----" not in key_text:
        raise ServerConfigError(f"the TLS key {key} holds no PEM private key")
    try:
        context.load_cert_chain(cert, key, password=_refuse_passphrase)
    except _EncryptedKey:
        raise ServerConfigError(
            f"the TLS key {key} is encrypted: give it without a passphrase "
            "(openssl pkey -in KEY -out PLAIN_KEY)"
        ) from None
    except ssl.SSLError as exc:
        # NO_CERTIFICATE_ASSIGNED: a key of another type than the certificate's (EC for RSA).
        if exc.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):
            raise ServerConfigError(
                f"the TLS key {key} is not the key of the certificate in {cert} (the first "
                "certificate of the file must be the server's own)"
            ) from None
        raise ServerConfigError(
            f"the TLS key {key} cannot be read as a PEM private key: {exc.reason or exc}"
        ) from None


def _read_pem(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="ascii")
    except OSError as exc:
        raise ServerConfigError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ServerConfigError(
            f"the TLS {what} {path} is not PEM text (DER? convert it with openssl)"
        ) from None


def check_data_dir(path: Path) -> None:
    """Raises ServerConfigError unless this process can use `path` as its data directory, or
    create it: checked before anything is written, so a refused start leaves nothing behind."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == path:
        if not path.is_dir():
            raise ServerConfigError(f"the data directory {path} is not a directory")
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            raise ServerConfigError(f"the data directory {path} is not writable by this user")
        return
    if not existing.is_dir():
        raise ServerConfigError(f"cannot create the data directory {path}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ServerConfigError(
            f"cannot create the data directory {path}: {existing} is not writable by this user"
        )


def serve(config: Config) -> None:
    """Runs the server in the foreground until SIGTERM or SIGINT, then shuts down: NOT_SERVING,
    calls in flight get `config.grace_seconds`, the engine checkpoints and closes, exit 0. The
    stop is bounded (see STOP_DEADLINE_SECONDS): when calls are stuck the process still exits.
    A refused start prints one line `segsvc: <why>` and exits with status 2."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    try:
        # Checked before the engine opens the data, so a refusal is quick and touches nothing.
        tokens, credentials = check_startup(config)
        check_port_free(config.listen)
        check_data_dir(config.data_dir)
        engine = Engine(config)
    except (ServerConfigError, TokensFileError, StorageError) as exc:
        _refuse(exc)
    shutdown = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: shutting down", signal.Signals(signum).name)
        shutdown.set()

    try:
        engine.start_ticker()
        server = _start(config, engine, True, AuthInterceptor(tokens), credentials)
    except ServerConfigError as exc:
        engine.close()
        _refuse(exc)
    except BaseException:
        engine.close()
        raise
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        host, _ = split_listen(config.listen)
        print(
            f"segsvc listening on {host}:{server.port} (data {config.data_dir})",
            file=sys.stderr,
            flush=True,
        )
        # A timed wait, so the main thread wakes for the signal handler on every platform.
        while not shutdown.wait(1.0):
            pass
    finally:
        # The server owns the engine: it closes it, or gives up on it, within the deadline.
        server.stop(config.grace_seconds).wait()
    if server.calls_abandoned:
        log.warning("exiting without waiting for the abandoned calls")
        # The threads of the abandoned calls would hold the interpreter's exit forever.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    log.info("stopped")


def _refuse(problem: Exception) -> NoReturn:
    print(f"segsvc: {problem}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None
