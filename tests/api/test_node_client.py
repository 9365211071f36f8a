"""The contract as a Node team sees it: tests/node/client.mjs loads protos/ with @grpc/grpc-js,
calls one RPC of every service against a real server and decodes a google.rpc.BadRequest."""

from __future__ import annotations

import json
import subprocess


def test_a_node_client_calls_every_service_and_reads_bad_request(
    node_dir, server_processes, tmp_path
):
    server = server_processes(tmp_path / "data")
    result = subprocess.run(
        ["node", str(node_dir / "client.mjs"), server.address],
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
