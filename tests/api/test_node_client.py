"""The contract as a Node team sees it: tests/node/client.mjs loads protos/ with @grpc/grpc-js,
calls one RPC of every service against a real server and decodes a google.rpc.BadRequest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


def _ensure_node() -> None:
    """node and npm, installed from Debian's packages when missing and we may (root, apt)."""
    if shutil.which("node") and shutil.which("npm"):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "nodejs", "npm"], check=True)
        return
    pytest.fail(
        "the Node client test needs node and npm: install them (e.g. apt install nodejs npm)"
    )


@pytest.fixture(scope="module")
def node_client() -> Path:
    _ensure_node()
    lock = NODE_DIR / "package-lock.json"
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run(
            ["npm", "ci", "--silent", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True
        )
    return NODE_DIR / "client.mjs"


def test_a_node_client_calls_every_service_and_reads_bad_request(
    node_client, server_processes, tmp_path
):
    server = server_processes(tmp_path / "data")
    result = subprocess.run(
        ["node", str(node_client), server.address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = {d.pop("what"): d for d in map(json.loads, result.stdout.splitlines())}
    assert lines == {
        "UpsertPeople": {"created": 1},
        "CreateSegment": {"id": 1, "members": 1},
        "GetPerson": {"id": "ann", "segment_ids": [1]},
        "CountAudience": {"count": 1},
        "WatchChanges": {"changes": [[1, "ann", "CHANGE_KIND_ENTERED", "CHANGE_CAUSE_DEFINITION"]]},
        "Health.Check": {"status": "SERVING"},
        "CreateSegment(bad)": {"code": 3, "fields": ["name"]},
    }
