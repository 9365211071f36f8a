"""Only a write creates a workspace: reads of unknown workspaces answer as empty ones and
leave nothing behind, in memory or on disk (issue 11, item 9)."""

from __future__ import annotations

import threading

import grpc
import lmdb
from api_harness import by_id, person, status_of
from server_harness import Stubs

from segsvc.v1 import audiences_pb2 as A
from segsvc.v1 import changes_pb2 as Ch
from segsvc.v1 import people_pb2 as P
from segsvc.v1 import segments_pb2 as S


def stored_workspaces(data_dir) -> set[str]:
    """The workspace names the store lists, read straight from LMDB (server stopped)."""
    env = lmdb.open(str(data_dir), max_dbs=16, readonly=True, lock=False)
    try:
        meta = env.open_db(b"meta")
        with env.begin(db=meta) as txn:
            return {bytes(k)[3:].decode() for k, _ in txn.cursor() if bytes(k).startswith(b"ws:")}
    finally:
        env.close()


def test_reads_of_unknown_workspaces_leave_nothing_behind(server_processes, tmp_path):
    data = tmp_path / "data"
    server = server_processes(data)
    stubs = Stubs.connect(server.address)
    stubs.people.UpsertPeople(P.UpsertPeopleRequest(people=[person("ann")]))
    for n in range(300):
        metadata = [("workspace", f"typo-{n}")]
        code, _ = status_of(
            lambda md=metadata: stubs.people.GetPerson(
                P.GetPersonRequest(person=by_id("ann")), metadata=md
            )
        )
        assert code == grpc.StatusCode.NOT_FOUND
        page = stubs.segments.ListSegments(S.ListSegmentsRequest(), metadata=metadata)
        assert list(page.segments) == []
        code, _ = status_of(
            lambda md=metadata: stubs.segments.GetSegment(
                S.GetSegmentRequest(segment_id=1), metadata=md
            )
        )
        assert code == grpc.StatusCode.NOT_FOUND
        stored = stubs.changes.WatchChanges(
            Ch.WatchChangesRequest(no_follow=True), metadata=metadata
        )
        assert list(stored) == []
    # A read of the real workspace still sees its data.
    assert stubs.people.GetPerson(P.GetPersonRequest(person=by_id("ann"))).person.id == "ann"
    stubs.channel.close()
    assert server.terminate() == 0
    assert stored_workspaces(data) == {"default"}


def test_a_write_creates_the_workspace_a_read_found_empty(api):
    metadata = [("workspace", "later")]
    code, _ = status_of(
        lambda: api.audiences.CountAudience(
            A.CountAudienceRequest(audience=A.AudienceSpec(include=[1])), metadata=metadata
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert "later" not in {ws.name for ws in api.engine.workspaces()}
    api.people.UpsertPeople(P.UpsertPeopleRequest(people=[person("bo")]), metadata=metadata)
    found = api.people.GetPerson(P.GetPersonRequest(person=by_id("bo")), metadata=metadata).person
    assert found.id == "bo"
    assert "later" in {ws.name for ws in api.engine.workspaces()}


def test_a_follower_of_an_unknown_workspace_sees_its_first_changes(api):
    metadata = [("workspace", "fresh")]
    assert "fresh" not in {ws.name for ws in api.engine.workspaces()}
    follow = api.changes.WatchChanges(Ch.WatchChangesRequest(from_now=True), metadata=metadata)
    received: list[Ch.Change] = []

    def read_two() -> None:
        for response in follow:
            received.extend(response.changes)
            if len(received) >= 2:
                return

    reader = threading.Thread(target=read_two)
    reader.start()
    segment = api.segments.CreateSegment(
        S.CreateSegmentRequest(name="all", type=S.SEGMENT_TYPE_MANUAL), metadata=metadata
    ).segment
    api.people.UpsertPeople(
        P.UpsertPeopleRequest(people=[person("a"), person("b")]), metadata=metadata
    )
    api.segments.AddMembers(
        S.AddMembersRequest(segment_id=segment.id, people=[by_id("a"), by_id("b")]),
        metadata=metadata,
    )
    reader.join(timeout=10)
    follow.cancel()
    assert not reader.is_alive()
    assert [(c.person_id, c.kind) for c in received] == [
        ("a", Ch.CHANGE_KIND_ENTERED),
        ("b", Ch.CHANGE_KIND_ENTERED),
    ]


def test_list_workspaces_shows_what_writes_created(api):
    from segsvc.v1 import workspaces_pb2 as W

    metadata = [("workspace", "acme")]
    api.people.UpsertPeople(
        P.UpsertPeopleRequest(people=[person("a"), person("b")]), metadata=metadata
    )
    api.segments.CreateSegment(
        S.CreateSegmentRequest(name="all", type=S.SEGMENT_TYPE_MANUAL), metadata=metadata
    )
    api.segments.ListSegments(S.ListSegmentsRequest(), metadata=[("workspace", "acme-typo")])
    listed = api.workspaces.ListWorkspaces(W.ListWorkspacesRequest())
    assert [(w.name, w.people, w.segments) for w in listed.workspaces] == [("acme", 2, 1)]
