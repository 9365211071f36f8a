"""Shared fixtures: an in-process segsvc server on a free port with a fixed clock, and real
server processes for the tests that must kill one.

In-process servers get their Engine from the test (FakeClock injected), so a test can
advance time, call engine.tick() and restart on the same data directory.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from segsvc.config import Config, Limits
from segsvc.engine.clock import FakeClock
from segsvc.engine.engine import Engine
from segsvc.v1 import (
    audiences_pb2_grpc,
    changes_pb2_grpc,
    people_pb2_grpc,
    segments_pb2_grpc,
    workspaces_pb2_grpc,
)

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Stubs:
    """A channel to a server and the segsvc stubs over it."""

    channel: grpc.Channel
    people: people_pb2_grpc.PeopleServiceStub = field(init=False)
    segments: segments_pb2_grpc.SegmentsServiceStub = field(init=False)
    changes: changes_pb2_grpc.ChangesServiceStub = field(init=False)
    audiences: audiences_pb2_grpc.AudiencesServiceStub = field(init=False)
    health: health_pb2_grpc.HealthStub = field(init=False)
    workspaces: workspaces_pb2_grpc.WorkspacesServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.people = people_pb2_grpc.PeopleServiceStub(self.channel)
        self.segments = segments_pb2_grpc.SegmentsServiceStub(self.channel)
        self.changes = changes_pb2_grpc.ChangesServiceStub(self.channel)
        self.audiences = audiences_pb2_grpc.AudiencesServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.workspaces = workspaces_pb2_grpc.WorkspacesServiceStub(self.channel)

    @staticmethod
    def connect(address: str, root_certificate: bytes | None = None) -> Stubs:
        """Stubs over a channel to `address`, TLS when a root certificate is given."""
        options = [
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ]
        if root_certificate is None:
            channel = grpc.insecure_channel(address, options=options)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificate)
            channel = grpc.secure_channel(address, credentials, options=options)
        grpc.channel_ready_future(channel).result(timeout=10)
        return Stubs(channel)


@dataclass
class Api(Stubs):
    """An in-process server with its engine, clock and config, and stubs connected to it."""

    server: Any = None  # segsvc.api.server.SegsvcServer
    engine: Engine | None = None
    clock: FakeClock | None = None
    config: Config | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"


class ApiServers:
    """Starts in-process servers; stops every one at the end of the test."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp_path = tmp_path
        self._running: list[Api] = []

    def config(self, **overrides: Any) -> Config:
        limits = overrides.pop("limits", Limits())
        base = Config(
            data_dir=self._tmp_path / "data",
            listen="127.0.0.1:0",
            tick_seconds=3600,
            grace_seconds=0.5,
            workers=16,
            limits=limits,
        )
        return replace(base, **overrides)

    def start(self, config: Config | None = None, clock: FakeClock | None = None) -> Api:
        from segsvc.api.server import build_server

        config = config or self.config()
        clock = clock or FakeClock()
        engine = Engine(config, clock)
        try:
            server = build_server(config, engine)
        except BaseException:
            engine.close()
            raise
        if config.tls_cert is None:
            stubs = Stubs.connect(f"127.0.0.1:{server.port}")
        else:  # the certificate names localhost
            stubs = Stubs.connect(f"localhost:{server.port}", config.tls_cert.read_bytes())
        api = Api(stubs.channel, server=server, engine=engine, clock=clock, config=config)
        self._running.append(api)
        return api

    def stop(self, api: Api) -> None:
        """A clean shutdown: the server stops, then the engine checkpoints and closes."""
        if api not in self._running:
            return
        self._running.remove(api)
        api.channel.close()
        api.server.stop(None).wait(10)
        assert api.engine is not None
        api.engine.close()

    def restart(self, api: Api) -> Api:
        """Stops `api` and starts a new server on the same data directory and clock."""
        self.stop(api)
        return self.start(api.config, api.clock)

    def stop_all(self) -> None:
        for api in list(self._running):
            self.stop(api)


@pytest.fixture
def api_servers(tmp_path: Path) -> Iterator[ApiServers]:
    servers = ApiServers(tmp_path)
    try:
        yield servers
    finally:
        servers.stop_all()


@pytest.fixture
def api(api_servers: ApiServers) -> Api:
    """A server on 127.0.0.1:0 over an empty data directory, clock at 2026-01-01."""
    return api_servers.start()


# -- real server processes ---------------------------------------------------------------------


def serve_command() -> list[str]:
    """`segsvc serve` in a fresh interpreter, however the CLI package is laid out."""
    if importlib.util.find_spec("segsvc.cli.__main__") is not None:
        return [sys.executable, "-m", "segsvc.cli", "serve"]
    return [sys.executable, "-c", "from segsvc.cli import main; main()", "serve"]


_LISTENING = re.compile(r"segsvc listening on (\S+):(\d+) ")


class ChildProcess:
    """A segsvc command as a child process with PYTHONPATH on this checkout; its stderr
    goes to `log_path`, its stdout nowhere."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.process = subprocess.Popen(
            args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=self._log, env=env
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a power cut or an OOM kill."""
        self.process.send_signal(signal.SIGKILL)
        self.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout=timeout)
        self._log.close()
        return code


class ServerProcess(ChildProcess):
    """`segsvc serve` as a child process on a free port; its stderr goes to a file."""

    def __init__(self, data_dir: Path, log_path: Path, extra: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        args = [*serve_command(), "--data", str(data_dir), "--listen", "127.0.0.1:0", *extra]
        super().__init__(args, log_path)
        self.port = self._wait_for_port(timeout=30)
        self.address = f"127.0.0.1:{self.port}"
        self._wait_serving(timeout=30)

    def _wait_for_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = _LISTENING.search(self.log())
            if found:
                return int(found.group(2))
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"server did not report its port:\n{self.log()}")

    def _wait_serving(self, timeout: float) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.05)


@pytest.fixture
def server_processes(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Starts `segsvc serve` processes (`start(data_dir, *extra_args)`); kills leftovers."""
    started: list[ServerProcess] = []

    def start(data_dir: Path, *extra: str) -> ServerProcess:
        log_path = tmp_path / f"server-{len(started)}.log"
        process = ServerProcess(data_dir, log_path, extra)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.kill()


# -- bounded disks (tmpfs: the tests run as root, locally and in CI) --------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """`mount(mib)`: a fresh tmpfs of that size; unmounted (lazily, after any server on it
    is killed) at the end of the test."""
    mounted: list[Path] = []

    def mount(mib: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            pytest.fail(
                f"cannot mount a {mib} MiB tmpfs on {where} (the storage fault tests run as "
                f"root, as CI does): {result.stderr.strip()}"
            )
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def resize(disk: Path, mib: int) -> None:
    remount(disk, f"size={mib}m")


def remount(disk: Path, option: str) -> None:
    """Changes a mounted `small_disk`: `size=64m`, `ro`, `rw`."""
    subprocess.run(["mount", "-o", f"remount,{option}", str(disk)], check=True)
