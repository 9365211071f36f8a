"""Fixtures for the CLI tests: a real segsvc server on a free port over a temporary data
directory, and a runner that invokes the real `segsvc` command against it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_harness import Cli

from segsvc.config import Config


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    # Imported here so the tests that need no server (readers, fake servers) still run
    # whatever state segsvc.api is in.
    from segsvc.api.server import create_server

    config = Config(data_dir=tmp_path / "data", listen="127.0.0.1:0", tick_seconds=3600)
    grpc_server, port = create_server(config)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        grpc_server.stop(grace=None)


@pytest.fixture
def cli(server: str) -> Cli:
    return Cli(server)


@pytest.fixture
def people_csv(tmp_path: Path) -> Path:
    """Five people, loaded by the tests that need someone to add to segments."""
    path = tmp_path / "people.csv"
    path.write_text(
        "id,email,phone,plan\n"
        "u1,alice@example.com,+15550100001,pro\n"
        "u2,bob@example.com,+15550100002,free\n"
        "u3,carol@example.com,+15550100003,pro\n"
        "u4,dave@example.com,,free\n"
        "u5,erin@example.com,,team\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def loaded(cli: Cli, people_csv: Path) -> Cli:
    """The CLI against a server that holds the five people of `people_csv`."""
    summary = cli.json("people", "import", str(people_csv))
    assert summary["created"] == 5, summary
    return cli
