"""segsvc.client: metadata on every call, paging, retries by service config, and audiences
and change feeds that resume after the server restarts."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
import pytest
from api_harness import add_members, manual_segment, person, upsert

import segsvc.client
from segsvc.client import Client, field_violations
from segsvc.v1 import audiences_pb2 as A
from segsvc.v1 import changes_pb2 as Ch
from segsvc.v1 import people_pb2 as P
from segsvc.v1 import people_pb2_grpc, types_pb2
from segsvc.v1 import segments_pb2 as S


def test_workspace_and_paging(api):
    with Client(api.address, workspace="acme") as client:
        client.people.UpsertPeople(
            P.UpsertPeopleRequest(people=[person(f"p{i:02}") for i in range(23)])
        )
        for n in range(7):
            client.segments.CreateSegment(
                S.CreateSegmentRequest(name=f"s{n}", type=S.SEGMENT_TYPE_MANUAL)
            )
        client.segments.AddMembers(
            S.AddMembersRequest(
                segment_id=1, people=[types_pb2.PersonRef(id=f"p{i:02}") for i in range(23)]
            )
        )
        members = [m.id for m in client.iter_members(1, page_size=5)]
        assert members == [f"p{i:02}" for i in range(23)]
        names = [s.name for s in client.iter_segments(S.ListSegmentsRequest(page_size=2))]
        assert names == [f"s{n}" for n in range(7)]
    # All of it went to the workspace the client named, none to the default one.
    assert list(api.segments.ListSegments(S.ListSegmentsRequest()).segments) == []


def test_field_violations_decode_the_bad_request(api):
    with Client(api.address) as client, pytest.raises(grpc.RpcError) as caught:
        client.segments.CreateSegment(S.CreateSegmentRequest(name="", type=S.SEGMENT_TYPE_MANUAL))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in field_violations(caught.value)] == ["name"]


class _FlakyPeople(people_pb2_grpc.PeopleServiceServicer):
    """UNAVAILABLE for the first `failures` calls of each method, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def _attempt(self, method: str, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls[method] = self.calls.get(method, 0) + 1
            calls = self.calls[method]
        if calls <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")

    def GetPerson(self, request, context):
        self._attempt("GetPerson", context)
        return P.GetPersonResponse(person=P.Person(id=request.person.id))

    def TrackEvents(self, request, context):
        self._attempt("TrackEvents", context)
        return P.TrackEventsResponse(tracked=len(request.events))


def test_idempotent_calls_are_retried_on_unavailable_and_events_are_not():
    servicer = _FlakyPeople(failures=2)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    people_pb2_grpc.add_PeopleServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Client(f"127.0.0.1:{port}") as client:
            found = client.people.GetPerson(
                P.GetPersonRequest(person=types_pb2.PersonRef(id="ann")), timeout=10
            )
            assert found.person.id == "ann"
            assert servicer.calls["GetPerson"] == 3
            with pytest.raises(grpc.RpcError) as caught:
                client.people.TrackEvents(P.TrackEventsRequest(), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert servicer.calls["TrackEvents"] == 1
    finally:
        server.stop(None)


def test_audience_and_feed_resume_after_a_server_restart(server_processes, tmp_path, monkeypatch):
    monkeypatch.setattr(segsvc.client, "RECONNECT_DELAY", 0.5)
    data = tmp_path / "data"
    first = server_processes(data)
    client = Client(first.address)
    ids = [f"p{i:02}" for i in range(20)]
    upsert(client, *(person(i) for i in ids))
    segment = manual_segment(client, "all")
    add_members(client, segment, *ids)

    request = A.ResolveAudienceRequest(audience=A.AudienceSpec(include=[segment]), chunk_size=4)
    chunks = client.resolve_audience(request, max_reconnects=20)
    received = [m.id for m in next(chunks).members]
    feed = client.watch_changes(Ch.WatchChangesRequest(), max_reconnects=20)
    seen = [next(feed) for _ in range(10)]

    # The same address again (a restarted server), the same data.
    assert first.terminate() == 0
    server_processes(data, "--listen", first.address)
    for chunk in chunks:
        received += [m.id for m in chunk.members]
    assert received == ids  # nobody twice, nobody skipped
    seen += [next(feed) for _ in range(10)]
    assert [c.seq for c in seen] == list(range(1, 21))
    assert [c.person_id for c in seen] == ids
    client.close()
