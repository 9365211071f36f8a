"""Failover on loopback: a 3-server NATS cluster with the log at R=3 and two segsvc nodes;
a client writes through node A; one NATS server and then node A are killed (kill -9)
mid-load; every write A acknowledged is on node B; once the killed processes are back they
catch up, and both nodes agree."""

from __future__ import annotations

import os
import time

import grpc
import pytest
from api_harness import WritesUntilFailure, manual_segment, members_of, person, stored_changes
from server_harness import Stubs

from segsvc.v1 import people_pb2, types_pb2


def people_on(node: Stubs, ids: list[str]) -> set[str]:
    found = set()
    for person_id in ids:
        try:
            node.people.GetPerson(
                people_pb2.GetPersonRequest(person=types_pb2.PersonRef(id=person_id)), timeout=5
            )
            found.add(person_id)
        except grpc.RpcError:
            pass  # not there yet
    return found


def feed(node: Stubs) -> list[tuple[int, int, str, int, int]]:
    return [(c.seq, c.segment_id, c.person_id, c.kind, c.cause) for c in stored_changes(node)]


def eventually(check, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "did not happen in time"
        time.sleep(0.1)


# FAILOVER_ROUNDS=20 runs it many times (CI runs one round).
@pytest.mark.parametrize("round_", range(int(os.environ.get("FAILOVER_ROUNDS", "1"))))
def test_acknowledged_writes_survive_a_nats_server_and_a_node_killed(
    server_processes, nats_cluster, tmp_path, round_
):
    nats = ("--nats", nats_cluster.urls, "--nats-replicas", "3")
    node_a = server_processes(tmp_path / "a", *nats)
    node_b = server_processes(tmp_path / "b", *nats)
    a, b = Stubs.connect(node_a.address), Stubs.connect(node_b.address)
    manual = manual_segment(a, "Failover list")
    writer = WritesUntilFailure(a, manual)
    writer.wait_for_members(50, timeout=60)
    victim = nats_cluster.servers[round_ % 3]
    victim.kill()
    time.sleep(0.5)  # the load goes on through the election
    node_a.kill()
    writer.join_failed()
    acknowledged, members = list(writer.people), list(writer.members)
    assert len(members) >= 50
    a.channel.close()

    # The client moves to B: everything A acknowledged is there (B follows the log).
    eventually(lambda: people_on(b, acknowledged) == set(acknowledged))
    eventually(lambda: set(members) <= members_of(b, manual))
    moved = b.people.UpsertPeople(
        people_pb2.UpsertPeopleRequest(people=[person("after-failover")]), timeout=30
    )
    assert moved.created == 1

    # The killed processes come back, catch up, and both nodes agree.
    victim.start()
    node_a = server_processes(tmp_path / "a", *nats)
    a = Stubs.connect(node_a.address)
    eventually(lambda: feed(a) == feed(b))
    assert members_of(a, manual) == members_of(b, manual)
    assert set(members) <= members_of(a, manual)
    a.channel.close()
    b.channel.close()
