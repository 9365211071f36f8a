"""Where each node stands in the shared log, as an operator sees it: `GetServerStatus`,
`segsvc status` and the Prometheus gauges show, with --nats, the node's name and per
workspace the last operation it applied, the stream's last message on the workspace's
subject, and the lag; with the embedded log, none of it."""

from __future__ import annotations

import time

from api_harness import person
from click.testing import CliRunner
from server_harness import Stubs
from test_operations import metrics_url, scrape, value

from segsvc.cli import main
from segsvc.config import Replication
from segsvc.v1 import people_pb2, segments_pb2, workspaces_pb2

STATUS = workspaces_pb2.GetServerStatusRequest()


def status_of_workspace(stubs: Stubs, name: str = "default") -> workspaces_pb2.WorkspaceStatus:
    found = stubs.workspaces.GetServerStatus(STATUS)
    return next(ws for ws in found.workspaces if ws.name == name)


def test_two_node_processes_agree_on_the_stream_and_the_follower_has_no_lag_once_quiet(
    server_processes, nats_server, tmp_path
):
    nodes = [
        server_processes(
            tmp_path / name,
            "--nats",
            nats_server.url,
            "--node-name",
            name,
            "--metrics-listen",
            "127.0.0.1:0",
        )
        for name in ("node-a", "node-b")
    ]
    a, b = (Stubs.connect(node.address) for node in nodes)
    for i in range(3):
        a.people.UpsertPeople(people_pb2.UpsertPeopleRequest(people=[person(f"p{i}")]))
    b.segments.CreateSegment(
        segments_pb2.CreateSegmentRequest(name="by hand", type=segments_pb2.SEGMENT_TYPE_MANUAL)
    )
    a.people.UpsertPeople(people_pb2.UpsertPeopleRequest(people=[person("p3")]))

    deadline = time.monotonic() + 20
    while True:
        on_a, on_b = status_of_workspace(a), status_of_workspace(b)
        if on_b.replica.applied_op_seq == 5 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for stubs, name, ws in ((a, "node-a", on_a), (b, "node-b", on_b)):
        assert stubs.workspaces.GetServerStatus(STATUS).node_name == name
        assert ws.HasField("replica")
        assert ws.replica.stream_error == ""
        assert ws.replica.applied_op_seq == ws.last_op_seq == 5
        assert ws.replica.stream_last_op_seq == 5
        assert ws.replica.lag_ops == 0
    # One message per record here (nothing is large enough to be split): the same stream
    # sequence on both nodes, since both read one stream.
    assert on_a.replica.stream_last_seq == on_b.replica.stream_last_seq == 5

    samples = scrape(metrics_url(nodes[1]))
    assert value(samples, "segsvc_node_info", node="node-b") == 1
    assert value(samples, "segsvc_replica_applied_op_seq", workspace="default") == 5
    assert value(samples, "segsvc_replica_stream_last_seq", workspace="default") == 5
    assert value(samples, "segsvc_replica_stream_last_op_seq", workspace="default") == 5
    assert value(samples, "segsvc_replica_lag_ops", workspace="default") == 0

    result = CliRunner().invoke(main, ["--server", nodes[1].address, "status"])
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines()]
    assert ["node", "node-b"] in lines
    assert ["applied", "op", "seq", "5"] in lines
    assert ["stream", "last", "op", "5", "(stream", "seq", "5)"] in lines
    assert ["replica", "lag", "0", "ops"] in lines


def test_a_node_that_stopped_applying_shows_its_lag(api_servers, nats_server, tmp_path):
    replication = Replication(servers=(nats_server.url,), node_name="b")
    a, b = (
        api_servers.start(api_servers.config(data_dir=tmp_path / name, replication=replication))
        for name in ("a", "b")
    )
    a.people.UpsertPeople(people_pb2.UpsertPeopleRequest(people=[person("p0")]))
    # B opens the workspace on its first record.
    deadline = time.monotonic() + 10
    while b.engine.applied_seq("default") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    # B stops following (as when its follower falls behind a burst): A writes three more.
    b.engine._follower.stop()
    for i in range(1, 4):
        a.people.UpsertPeople(people_pb2.UpsertPeopleRequest(people=[person(f"p{i}")]))
    on_a, on_b = status_of_workspace(a), status_of_workspace(b)
    assert on_b.replica.applied_op_seq == 1
    assert on_b.replica.stream_last_op_seq == on_a.replica.applied_op_seq == 4
    assert on_b.replica.stream_last_seq == on_a.replica.stream_last_seq
    assert on_b.replica.lag_ops == 3
    b.engine.workspace("default").core.catch_up()
    assert status_of_workspace(b).replica.lag_ops == 0


def test_with_the_embedded_log_there_is_no_replica_position(api):
    api.people.UpsertPeople(people_pb2.UpsertPeopleRequest(people=[person("p0")]))
    found = api.workspaces.GetServerStatus(STATUS)
    assert found.node_name == ""
    [ws] = found.workspaces
    assert not ws.HasField("replica")
