"""`segsvc serve --nats` as a real process on a real nats-server: a start without NATS is
refused in one line; writes are acknowledged once JetStream has them; after kill -9 every
acknowledged write is there on restart, on the same data directory and on an empty one
(which catches up from the stream alone)."""

from __future__ import annotations

import subprocess

import grpc
from api_harness import (
    WritesUntilFailure,
    attr,
    by_id,
    dynamic_segment,
    manual_segment,
    members_of,
    stored_changes,
)
from nats_harness import free_port
from server_harness import REPO, Stubs, serve_command

from segsvc.storage.nats import JetStream, NatsOptions
from segsvc.v1 import conditions_pb2 as C
from segsvc.v1 import people_pb2


def test_a_start_without_nats_is_refused_in_one_line(tmp_path):
    port = free_port()  # nothing listens there
    done = subprocess.run(
        [*serve_command(), "--data", str(tmp_path / "data"), "--listen", "127.0.0.1:0"],
        cwd=REPO,
        env={"SEGSVC_NATS": f"nats://127.0.0.1:{port}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"segsvc: NATS at nats://127.0.0.1:{port} did not answer")


def test_acknowledged_writes_survive_kill_9_and_an_empty_node_catches_up(
    server_processes, nats_server, tmp_path
):
    nats = ("--nats", nats_server.url)
    data = tmp_path / "data"
    server = server_processes(data, *nats)
    client = Stubs.connect(server.address)
    manual = manual_segment(client, "Crash list")
    dynamic = dynamic_segment(client, "Has n", attr("n", C.OPERATOR_EXISTS))
    writer = WritesUntilFailure(client, manual)
    writer.wait_for_members(100, timeout=60)
    server.kill()
    assert writer.join_failed().code() == grpc.StatusCode.UNAVAILABLE
    acknowledged, members = writer.people, writer.members
    client.channel.close()
    # Acknowledged means in the stream: one record per acknowledged call (two segments, and
    # per batch of five an upsert and an add), whatever the killed node committed locally.
    js = JetStream(NatsOptions((nats_server.url,)))
    try:
        records = list(js.read("SEGSVC_OPS", "segsvc.ops.default", 0))
    finally:
        js.close()
    assert len(records) >= 2 + len(acknowledged) // 5 + len(members) // 5

    def check(node_address: str) -> list[tuple[int, int, str, int, int]]:
        node = Stubs.connect(node_address)
        try:
            for person_id in acknowledged:
                got = node.people.GetPerson(people_pb2.GetPersonRequest(person=by_id(person_id)))
                assert got.person.id == person_id
            assert set(members) <= members_of(node, manual)
            assert set(acknowledged) <= members_of(node, dynamic)
            feed = [
                (c.seq, c.segment_id, c.person_id, c.kind, c.cause) for c in stored_changes(node)
            ]
            seqs = [change[0] for change in feed]
            assert seqs == list(range(1, len(seqs) + 1)), "gaps or repeats in the change feed"
            return feed
        finally:
            node.channel.close()

    restarted = server_processes(data, *nats)
    feed = check(restarted.address)
    restarted.terminate()
    # A node with nothing on disk rebuilds the same state, change feed included.
    fresh = server_processes(tmp_path / "empty", *nats)
    assert check(fresh.address) == feed
