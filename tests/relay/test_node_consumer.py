"""A Node consumer (tests/node/consumer.mjs: the `nats` package, protobufjs over protos/)
reads what `segsvc relay-changes` published, through durable JetStream consumers filtered to
all of a workspace's segments and to one segment, against a real nats-server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from nats_harness import NatsServer
from relay_harness import WORKSPACE, RelayProcess, feed, start_workspace, wait_relayed, write_round

from segsvc.relay.subjects import DEFAULT_STREAM, subject_token
from segsvc.v1 import changes_pb2


def as_json(change: changes_pb2.Change, consumer: str) -> dict[str, object]:
    """What consumer.mjs prints for `change`."""
    kind = changes_pb2.ChangeKind.Name(change.kind)
    return {
        "consumer": consumer,
        "seq": change.seq,
        "segment_id": change.segment_id,
        "person_id": change.person_id,
        "kind": kind,
        "cause": changes_pb2.ChangeCause.Name(change.cause),
        "header_seq": change.seq,
        "header_kind": kind.removeprefix("CHANGE_KIND_"),
        "msg_id": f"{WORKSPACE}:{change.seq}",
    }


def test_a_node_consumer_reads_the_relayed_feed_with_durable_filtered_consumers(
    node_dir: Path, server_processes, nats_server: NatsServer, tmp_path: Path
) -> None:
    server = server_processes(tmp_path / "data")
    client, pro, vip = start_workspace(server.address)
    with client:
        for round_no in range(1, 6):
            write_round(client, round_no, vip)
    expected = feed(server.address, WORKSPACE)
    relay = RelayProcess(
        tmp_path / "relay.log", server.address, WORKSPACE, nats_server.url, "--from-start"
    )
    wait_relayed(nats_server.url, WORKSPACE, expected[-1].seq)
    assert relay.terminate() == 0, relay.log()

    result = subprocess.run(
        [
            "node",
            str(node_dir / "consumer.mjs"),
            nats_server.url,
            DEFAULT_STREAM,
            subject_token(WORKSPACE),
            str(vip),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    only_vip = feed(server.address, WORKSPACE, (vip,))
    assert {change.segment_id for change in expected} == {pro, vip}
    assert only_vip and len(only_vip) < len(expected)
    assert lines == [as_json(c, "all") for c in expected] + [as_json(c, "one") for c in only_vip]
