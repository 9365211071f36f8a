"""Audiences: counts, and resolution from a frozen snapshot in resumable chunks."""

from __future__ import annotations

import grpc
from api_harness import (
    add_members,
    by_id,
    manual_segment,
    rpc_error,
    status_of,
    upsert,
    value,
    violations,
)

from segsvc.v1 import audiences_pb2, people_pb2, segments_pb2

A = audiences_pb2


def _crowd(api):
    """p00..p19: even ones have email, every third a phone, p05 unsubscribed, p07 an
    ios device. Segment `all` holds everyone, `even` the even ones, `block` p00..p03."""
    people = []
    for i in range(20):
        upsert_msg = people_pb2.PersonUpsert(
            id=f"p{i:02}",
            attributes={"n": value(i), "tier": value("gold" if i % 2 else "silver")},
        )
        if i % 2 == 0:
            upsert_msg.email = f"p{i}@example.com"
        if i % 3 == 0:
            upsert_msg.phone = f"+4670000{i:04}"
        if i == 5:
            upsert_msg.unsubscribed = True
        if i == 7:
            upsert_msg.devices.add(id="d7", platform="ios")
        people.append(upsert_msg)
    upsert(api, *people)
    segments = {}
    for name, members in (
        ("all", range(20)),
        ("even", range(0, 20, 2)),
        ("block", range(4)),
    ):
        segments[name] = manual_segment(api, name)
        add_members(api, segments[name], *[f"p{i:02}" for i in members])
    return segments


def _count(api, **spec):
    return api.audiences.CountAudience(
        A.CountAudienceRequest(audience=A.AudienceSpec(**spec))
    ).count


def test_count_audience_combines_segments_and_channels(api):
    seg = _crowd(api)
    assert _count(api, include=[seg["all"]]) == 19  # p05 opted out
    assert _count(api, include=[seg["all"]], include_unsubscribed=True) == 20
    assert _count(api, include=[seg["even"], seg["block"]]) == 12
    assert _count(api, include=[seg["all"]], require=[seg["even"]], exclude=[seg["block"]]) == 8
    assert _count(api, include=[seg["all"]], channel=A.CHANNEL_EMAIL) == 10
    assert _count(api, include=[seg["all"]], channel=A.CHANNEL_PHONE) == 7
    assert _count(api, include=[seg["all"]], channel=A.CHANNEL_DEVICE) == 1
    assert (
        _count(api, include=[seg["all"]], channel=A.CHANNEL_DEVICE, device_platform="android") == 0
    )


def test_audience_errors(api):
    seg = _crowd(api)
    code, _ = status_of(lambda: _count(api, include=[seg["all"]], exclude=[404]))
    assert code == grpc.StatusCode.NOT_FOUND
    error = rpc_error(lambda: _count(api))
    assert [f for f, _ in violations(error)] == ["audience.include"]
    api.segments.ArchiveSegments(segments_pb2.ArchiveSegmentsRequest(segment_ids=[seg["block"]]))
    code, message = status_of(lambda: _count(api, include=[seg["block"]]))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "archived" in message
    error = rpc_error(
        lambda: list(api.audiences.ResolveAudience(A.ResolveAudienceRequest(cursor="%%%")))
    )
    assert [f for f, _ in violations(error)] == ["cursor"]


def _resolve(api, **request):
    return list(api.audiences.ResolveAudience(A.ResolveAudienceRequest(**request)))


def test_resolve_streams_chunks_with_requested_fields(api):
    seg = _crowd(api)
    chunks = _resolve(
        api,
        audience=A.AudienceSpec(include=[seg["even"]]),
        fields=["email", "tier", "n", "missing"],
        chunk_size=4,
    )
    assert [len(c.members) for c in chunks] == [4, 4, 2]
    assert [c.last for c in chunks] == [False, False, True]
    assert {c.total for c in chunks} == {10}
    members = [m for c in chunks for m in c.members]
    assert [m.id for m in members] == [f"p{i:02}" for i in range(0, 20, 2)]
    first = members[0]
    assert (first.email, first.phone) == ("p0@example.com", "")  # phone was not asked for
    assert dict(first.attributes) == {"tier": value("silver"), "n": value(0)}

    empty = _resolve(
        api,
        audience=A.AudienceSpec(
            include=[seg["all"]], channel=A.CHANNEL_DEVICE, device_platform="web"
        ),
    )
    assert [(len(c.members), c.total, c.last) for c in empty] == [(0, 0, True)]


def test_resume_from_a_cursor_sees_the_frozen_snapshot(api_servers):
    api = api_servers.start()
    seg = _crowd(api)
    stream = api.audiences.ResolveAudience(
        A.ResolveAudienceRequest(
            audience=A.AudienceSpec(include=[seg["block"]]), chunk_size=2, fields=["phone"]
        )
    )
    first = next(stream)
    stream.cancel()
    assert [m.id for m in first.members] == ["p00", "p01"]
    # Membership moves on; the snapshot does not. A deleted person is never sent.
    add_members(api, seg["block"], "p19")
    api.people.DeletePeople(people_pb2.DeletePeopleRequest(people=[by_id("p03")]))
    api = api_servers.restart(api)
    rest = _resolve(api, cursor=first.cursor, chunk_size=2, fields=["phone"])
    assert [[m.id for m in c.members] for c in rest] == [["p02"]]
    assert rest[-1].last and rest[-1].total == 4
    # A cursor of the last chunk resumes to an empty last chunk, not to a repeat.
    again = _resolve(api, cursor=rest[-1].cursor)
    assert [(len(c.members), c.last) for c in again] == [(0, True)]
