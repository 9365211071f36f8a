"""Slow stream readers cannot starve a real server: streams share a budget of worker threads,
the rest stay free for unary calls and health checks (segsvc/api/admission.py).

The scenario of the adversarial run: many ResolveAudience clients each read one chunk and then
stop reading, so grpc blocks the serving thread on flow control. Before the budget, 16 such
clients took every worker and Health.Check timed out.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait

import grpc
from api_harness import add_members, by_id, dynamic_segment, manual_segment, status_of
from grpc_health.v1 import health_pb2
from server_harness import Stubs

from segsvc.api.admission import stream_budget
from segsvc.config import Config
from segsvc.v1 import audiences_pb2, changes_pb2, people_pb2
from segsvc.v1 import conditions_pb2 as C

A = audiences_pb2
READERS = 32
PEOPLE = 40_000
# A chunk of 10,000 members with email and phone is ~450 KB, far above an HTTP/2 stream's
# flow-control window: a server thread sending one to a client that does not read blocks.
CHUNK = 10_000
DEADLINE = 1.0  # per Health / GetPerson call; the issue asks for 100 ms, measured below


def _load(client: Stubs) -> int:
    for start in range(0, PEOPLE, 10_000):
        batch = [
            people_pb2.PersonUpsert(
                id=f"p{i:06}", email=f"person{i:06}@example.com", phone=f"+1555{i:07}"
            )
            for i in range(start, start + 10_000)
        ]
        response = client.people.UpsertPeople(
            people_pb2.UpsertPeopleRequest(people=batch), timeout=60
        )
        assert response.rejected == 0, response
    has_email = C.AttributeCondition(field=C.BUILTIN_FIELD_EMAIL, operator=C.OPERATOR_EXISTS)
    return dynamic_segment(client, "Reachable by email", C.Condition(attribute=has_email))


def _reader(address: str) -> Stubs:
    # BDP probing would grow the stream's window to hold the whole audience, so the server
    # would finish sending to a client that never reads; without it a stream window stays
    # 64 KiB, as for a reader behind a slow link.
    channel = grpc.insecure_channel(address, options=[("grpc.http2.bdp_probe", 0)])
    grpc.channel_ready_future(channel).result(timeout=10)
    return Stubs(channel)


def _timed(call, request) -> float:
    started = time.perf_counter()
    call(request, timeout=DEADLINE)
    return time.perf_counter() - started


def test_slow_audience_readers_leave_health_and_unary_calls_a_thread(server_processes, tmp_path):
    server = server_processes(tmp_path / "data")  # the default 16 workers
    client = Stubs.connect(server.address)
    segment = _load(client)
    request = A.ResolveAudienceRequest(
        audience=A.AudienceSpec(include=[segment]), chunk_size=CHUNK, fields=["email", "phone"]
    )
    # Each reader its own connection, like separate clients.
    readers = [_reader(server.address) for _ in range(READERS)]
    streams = [reader.audiences.ResolveAudience(request, timeout=120) for reader in readers]
    pool = ThreadPoolExecutor(READERS)
    try:
        # Each reader takes one chunk and then stops reading; a refused one gets its error.
        firsts = [pool.submit(next, stream) for stream in streams]
        wait(firsts, timeout=30)
        health, person = _latencies(client)
        print(
            f"\n{READERS} slow readers: Health.Check median {statistics.median(health):.1f} ms, "
            f"max {max(health):.1f} ms; GetPerson median {statistics.median(person):.1f} ms, "
            f"max {max(person):.1f} ms"
        )
        assert all(first.done() for first in firsts), "a reader neither served nor refused"
        _check_served_or_refused(streams, firsts)
    finally:
        for stream in streams:
            stream.cancel()
        pool.shutdown(wait=True)
        for reader in readers:
            reader.channel.close()
    # Every slot is free again once the readers are gone.
    assert len(list(client.audiences.ResolveAudience(request, timeout=30))) == PEOPLE // CHUNK


def _latencies(client: Stubs) -> tuple[list[float], list[float]]:
    """Milliseconds of 50 Health.Check and 50 GetPerson calls, each of which must succeed
    within DEADLINE."""
    health, person = [], []
    for i in range(50):
        health.append(_timed(client.health.Check, health_pb2.HealthCheckRequest()))
        by_key = people_pb2.GetPersonRequest(person=by_id(f"p{i * 797:06}"))
        person.append(_timed(client.people.GetPerson, by_key))
    return health, person


def _timed(call, request) -> float:
    started = time.perf_counter()
    call(request, timeout=DEADLINE)
    return (time.perf_counter() - started) * 1000


def _check_served_or_refused(streams: list, firsts: list[Future]) -> None:
    budget = stream_budget(Config().workers)
    refused = [first.exception() for first in firsts if first.exception() is not None]
    # Every admitted reader still holds its thread: the budget is full, the rest refused.
    assert len(refused) == READERS - budget
    for error in refused:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"too many open streams ({budget}" in (error.details() or "")
    # The admitted readers, reading again, get the whole audience, everyone once.
    for stream, first in zip(streams, firsts, strict=True):
        if first.exception() is None:
            ids = [m.id for m in first.result().members]
            for chunk in stream:
                ids.extend(m.id for m in chunk.members)
            assert len(ids) == len(set(ids)) == PEOPLE


def test_the_budget_keeps_a_quarter_of_the_workers_and_at_least_four() -> None:
    assert [stream_budget(w) for w in (1, 4, 5, 6, 16, 64)] == [1, 1, 1, 2, 12, 48]


def test_uploads_and_followers_share_the_budget(api_servers) -> None:
    # Five workers: one stream at a time, four threads kept for everything else.
    api = api_servers.start(api_servers.config(workers=5))
    upload = people_pb2.UpsertPeopleRequest(people=[people_pb2.PersonUpsert(id="u1")])
    api.people.UpsertPeople(upload)
    add_members(api, manual_segment(api, "One"), "u1")
    follower = api.changes.WatchChanges(changes_pb2.WatchChangesRequest(after_seq=0))
    try:
        next(follower)  # admitted: it holds the one slot while it follows
        stream_upload = people_pb2.StreamUpsertPeopleRequest(people=upload.people)
        code, message = status_of(lambda: api.people.StreamUpsertPeople(iter([stream_upload])))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many open streams (1, the server's limit)" in message
        # Unary calls and health do not wait for the stream.
        health = api.health.Check(health_pb2.HealthCheckRequest(), timeout=DEADLINE)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        api.people.UpsertPeople(upload, timeout=DEADLINE)
    finally:
        follower.cancel()
    deadline = time.monotonic() + 10
    while True:  # the cancelled follower gives its slot back
        try:
            summary = api.people.StreamUpsertPeople(iter([upload]), timeout=5)
            break
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() < deadline, "the slot was never given back"
            time.sleep(0.1)
    assert summary.received == 1
