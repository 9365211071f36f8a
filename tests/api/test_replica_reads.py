"""Read-your-writes across two nodes on one JetStream log (in-process servers, real
nats-server): a write's answer carries the `segsvc-seq` trailer; a read on the other node
with that number as `segsvc-min-seq` waits until it has applied it, within the deadline."""

from __future__ import annotations

import threading
import time

import grpc
from api_harness import person, status_of
from grpc_health.v1 import health_pb2

from segsvc.config import Replication
from segsvc.v1 import people_pb2, types_pb2


def two_nodes(api_servers, nats_server, tmp_path):
    replication = Replication(servers=(nats_server.url,))
    return [
        api_servers.start(api_servers.config(data_dir=tmp_path / name, replication=replication))
        for name in ("a", "b")
    ]


def seq_of(call: grpc.Call) -> int:
    return int(dict(call.trailing_metadata())["segsvc-seq"])


def get(node, person_id: str, min_seq: int, timeout: float = 10) -> people_pb2.GetPersonResponse:
    return node.people.GetPerson(
        people_pb2.GetPersonRequest(person=types_pb2.PersonRef(id=person_id)),
        metadata=(("segsvc-min-seq", str(min_seq)),),
        timeout=timeout,
    )


def upsert(node, person_id: str) -> int:
    _, call = node.people.UpsertPeople.with_call(
        people_pb2.UpsertPeopleRequest(people=[person(person_id)])
    )
    return seq_of(call)


def test_a_read_with_min_seq_waits_for_the_write_it_names(api_servers, nats_server, tmp_path):
    a, b = two_nodes(api_servers, nats_server, tmp_path)
    first = upsert(a, "p1")
    assert first == 1
    assert get(b, "p1", first).person.id == "p1"
    # B is asked for a record nobody has written yet: it waits, and answers once A wrote it.
    answers: list[people_pb2.GetPersonResponse] = []
    reader = threading.Thread(target=lambda: answers.append(get(b, "p2", first + 1)))
    reader.start()
    assert upsert(a, "p2") == first + 1
    reader.join(15)
    assert [r.person.id for r in answers] == ["p2"]


def test_a_record_not_applied_within_the_deadline_is_unavailable(
    api_servers, nats_server, tmp_path
):
    a, b = two_nodes(api_servers, nats_server, tmp_path)
    seq = upsert(a, "p1")
    code, message = status_of(lambda: get(b, "p1", seq + 5, timeout=1))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert f"not yet {seq + 5} (segsvc-min-seq)" in message
    code, message = status_of(lambda: get(b, "p1", -1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "segsvc-min-seq header" in message


def test_health_is_not_serving_while_the_node_is_behind_the_log(api_servers, nats_server, tmp_path):
    replication = Replication(servers=(nats_server.url,), max_lag_records=2)
    a, b = (
        api_servers.start(api_servers.config(data_dir=tmp_path / name, replication=replication))
        for name in ("a", "b")
    )
    # B stops applying what it hears of (as when its follower falls behind a burst).
    b.engine._follower.stop()
    for i in range(5):
        upsert(a, f"p{i}")
    assert wait_for_health(b, NOT_SERVING)
    b.engine.workspace("default").core.catch_up()
    assert wait_for_health(b, SERVING)
    assert get(b, "p4", 5).person.id == "p4"


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def wait_for_health(node, status: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.health.Check(health_pb2.HealthCheckRequest()).status == status:
            return True
        time.sleep(0.05)
    return False
