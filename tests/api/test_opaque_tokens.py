"""Page tokens and audience cursors are opaque and tamper-evident: a forged, truncated or
edited one, or one made in another workspace or for another segment, is INVALID_ARGUMENT at
its field and never reaches data; an expired audience snapshot is NOT_FOUND."""

from __future__ import annotations

import base64

import grpc
import pytest
from api_harness import (
    add_members,
    manual_segment,
    person,
    rpc_error,
    status_of,
    upsert,
    violations,
)

from segsvc.v1 import audiences_pb2 as A
from segsvc.v1 import people_pb2 as P
from segsvc.v1 import segments_pb2 as S
from segsvc.v1 import types_pb2 as T

ACME = [("workspace", "acme")]
OTHER = [("workspace", "other")]


def _members_page(api, segment, token="", metadata=ACME):
    request = S.ListMembersRequest(segment_id=segment, page_size=2, page_token=token)
    return api.segments.ListMembers(request, metadata=metadata)


@pytest.fixture
def two_workspaces(api):
    """The same segment id 1 in two workspaces: a token must not cross between them."""
    for metadata, prefix in ((ACME, "a"), (OTHER, "o")):
        ids = [f"{prefix}{i}" for i in range(5)]
        api.people.UpsertPeople(
            P.UpsertPeopleRequest(people=[person(i) for i in ids]),
            metadata=metadata,
        )
        segment = api.segments.CreateSegment(
            S.CreateSegmentRequest(name="all", type=S.SEGMENT_TYPE_MANUAL), metadata=metadata
        ).segment.id
        api.segments.AddMembers(
            S.AddMembersRequest(
                segment_id=segment,
                people=[T.PersonRef(id=i) for i in ids],
            ),
            metadata=metadata,
        )
    return api


def _refused(call, field):
    error = rpc_error(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert [f for f, _ in violations(error)] == [field]


def test_a_token_pages_only_where_it_was_made(two_workspaces):
    api = two_workspaces
    first = _members_page(api, 1)
    token = first.next_page_token
    assert [m.id for m in first.members] == ["a0", "a1"]
    assert not token.isdigit()  # not the engine's position ("2") in the clear
    assert [m.id for m in _members_page(api, 1, token).members] == ["a2", "a3"]
    # Another workspace with a segment of the same id: refused, nothing of it shown.
    _refused(lambda: _members_page(api, 1, token, OTHER), "page_token")
    # Another segment of the same workspace, or the segment list: refused.
    api.segments.CreateSegment(
        S.CreateSegmentRequest(name="second", type=S.SEGMENT_TYPE_MANUAL), metadata=ACME
    )
    _refused(lambda: _members_page(api, 2, token), "page_token")
    _refused(
        lambda: api.segments.ListSegments(S.ListSegmentsRequest(page_token=token), metadata=ACME),
        "page_token",
    )


@pytest.mark.parametrize(
    "forge",
    [
        lambda t: t[:-3],  # truncated
        lambda t: t[:10],
        lambda t: t + "AAAA",  # extended
        lambda t: ("B" if t[5] != "B" else "C").join((t[:5], t[6:])),  # one character edited
        lambda t: "2",  # the raw position a client might guess
        lambda t: base64.urlsafe_b64encode(b"\x01" + b"\x00" * 16 + b"4").decode(),  # forged
    ],
)
def test_forged_or_damaged_tokens_are_refused(two_workspaces, forge):
    api = two_workspaces
    token = _members_page(api, 1).next_page_token
    _refused(lambda: _members_page(api, 1, forge(token)), "page_token")


def test_audience_cursors_are_bound_to_their_workspace_and_expire(api_servers):
    api = api_servers.start(api_servers.config(snapshot_retention_seconds=3600))
    upsert(api, *(person(f"p{i}") for i in range(6)))
    segment = manual_segment(api, "all")
    add_members(api, segment, *(f"p{i}" for i in range(6)))
    request = A.ResolveAudienceRequest(audience=A.AudienceSpec(include=[segment]), chunk_size=2)
    stream = api.audiences.ResolveAudience(request)
    cursor = next(stream).cursor
    stream.cancel()
    resumed = api.audiences.ResolveAudience(A.ResolveAudienceRequest(cursor=cursor))
    assert [m.id for c in resumed for m in c.members] == ["p2", "p3", "p4", "p5"]
    _refused(
        lambda: list(
            api.audiences.ResolveAudience(A.ResolveAudienceRequest(cursor=cursor), metadata=OTHER)
        ),
        "cursor",
    )
    _refused(
        lambda: list(api.audiences.ResolveAudience(A.ResolveAudienceRequest(cursor=cursor[:-2]))),
        "cursor",
    )
    # Past the snapshot's retention the cursor is genuine but its snapshot is gone.
    api.clock.advance(7200)
    api.engine.tick()
    code, message = status_of(
        lambda: list(api.audiences.ResolveAudience(A.ResolveAudienceRequest(cursor=cursor)))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert "expired" in message
