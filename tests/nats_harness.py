"""Real nats-server processes with JetStream for the tests: one server, or a cluster of three,
on free loopback ports with their stores under the test's tmp_path, killed (kill -9 when a
test asks) and restarted on the same store.

`scripts/test` installs the Debian package `nats-server` when it is missing and it may (root
with apt-get); the tests never skip: without the binary they fail with that instruction.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Debian installs it in /usr/sbin, which is not on every user's PATH.
_SEARCH_PATH = "/usr/local/bin:/usr/bin:/usr/sbin:/usr/local/sbin"


def nats_server_binary() -> str:
    found = shutil.which("nats-server") or shutil.which("nats-server", path=_SEARCH_PATH)
    if found is None:
        pytest.fail(
            "the NATS tests need nats-server 2.9 or newer on PATH: `apt install nats-server` "
            "(scripts/test installs it when run as root)"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class NatsServer:
    """One nats-server with JetStream; `url` is what clients connect to."""

    name: str
    store_dir: Path
    port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    cluster_port: int = 0
    routes: list[int] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        lines = [
            f'server_name: "{self.name}"',
            'host: "127.0.0.1"',
            f"port: {self.port}",
            f"http_port: {self.monitor_port}",
            f'jetstream {{ store_dir: "{self.store_dir}" }}',
        ]
        if self.cluster_port:
            routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.routes)
            lines.append(
                f'cluster {{ name: "segsvc-test", host: "127.0.0.1", '
                f"port: {self.cluster_port}, routes: [{routes}] }}"
            )
        return "\n".join(lines) + "\n"

    def start(self, wait: bool = True) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        config = self.store_dir.parent / f"{self.name}.conf"
        config.write_text(self.config_text())
        log = (self.store_dir.parent / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /healthz says JetStream is up (in a cluster: once a meta leader exists)."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.monitor_port}/healthz"
        last = ""
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise TimeoutError(f"nats-server {self.name} not healthy after {timeout} s: {last}")

    def kill(self) -> None:
        """kill -9: what a crash does."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def log_tail(self, lines: int = 20) -> str:
        path = self.store_dir.parent / f"{self.name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class NatsCluster:
    servers: list[NatsServer]

    @property
    def urls(self) -> str:
        """The comma-separated list `segsvc serve --nats` takes."""
        return ",".join(s.url for s in self.servers)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def start_nats(root: Path, name: str = "n1") -> NatsServer:
    server = NatsServer(name, root / name / "jetstream")
    server.start()
    return server


def start_nats_cluster(root: Path, size: int = 3) -> NatsCluster:
    """`size` servers routed to each other; ready once each reports healthy."""
    cluster_ports = [free_port() for _ in range(size)]
    servers = [
        NatsServer(
            f"n{i + 1}",
            root / f"n{i + 1}" / "jetstream",
            cluster_port=port,
            routes=[p for p in cluster_ports if p != port],
        )
        for i, port in enumerate(cluster_ports)
    ]
    for server in servers:
        server.start(wait=False)
    for server in servers:
        server.wait_ready(timeout=60)
    return NatsCluster(servers)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = start_nats(tmp_path / "nats")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = start_nats_cluster(tmp_path / "nats")
    try:
        yield cluster
    finally:
        cluster.stop()
