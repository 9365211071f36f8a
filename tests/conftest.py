"""Fixtures shared by every test folder; the machinery lives in server_harness.py so that test
modules can import it by a name no other folder's conftest.py shadows."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from nats_harness import nats_cluster, nats_server
from node_harness import node_dir
from server_harness import api, api_servers, server_processes, small_disk

from segsvc.storage.store import Store

__all__ = [
    "api",
    "api_servers",
    "nats_cluster",
    "nats_server",
    "node_dir",
    "server_processes",
    "small_disk",
    "store",
]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A small store of its own, closed after the test."""
    s = Store(tmp_path / "db", map_size=32 * 1024 * 1024)
    try:
        yield s
    finally:
        s.close()
