"""Small builders for requests and readers for errors, shared by the API tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from segsvc.v1 import (
    changes_pb2,
    conditions_pb2,
    people_pb2,
    segments_pb2,
    types_pb2,
)

C = conditions_pb2


def value(v: Any) -> types_pb2.Value:
    if isinstance(v, bool):
        return types_pb2.Value(bool_value=v)
    if isinstance(v, int | float):
        return types_pb2.Value(number_value=float(v))
    return types_pb2.Value(string_value=v)


def attr(name: str, operator: int, operand: Any = None, **fields: Any) -> C.Condition:
    condition = C.AttributeCondition(attribute=name, operator=operator, **fields)
    if operand is not None:
        condition.value.CopyFrom(value(operand))
    return C.Condition(attribute=condition)


def equals(name: str, operand: Any) -> C.Condition:
    return attr(name, C.OPERATOR_EQUALS, operand)


def all_of(*children: C.Condition, negate: bool = False) -> C.Condition:
    return C.Condition(group=C.Group(combinator=C.COMBINATOR_ALL, children=children, negate=negate))


def any_of(*children: C.Condition) -> C.Condition:
    return C.Condition(group=C.Group(combinator=C.COMBINATOR_ANY, children=children))


def in_segment(segment_id: int, negate: bool = False) -> C.Condition:
    return C.Condition(segment=C.SegmentCondition(segment_id=segment_id, negate=negate))


def by_id(person_id: str) -> types_pb2.PersonRef:
    return types_pb2.PersonRef(id=person_id)


def person(person_id: str, **attributes: Any) -> people_pb2.PersonUpsert:
    return people_pb2.PersonUpsert(
        id=person_id, attributes={k: value(v) for k, v in attributes.items()}
    )


def upsert(api: Any, *people: people_pb2.PersonUpsert) -> people_pb2.UpsertPeopleResponse:
    response = api.people.UpsertPeople(people_pb2.UpsertPeopleRequest(people=people))
    assert response.rejected == 0, response
    return response


def manual_segment(api: Any, name: str) -> int:
    request = segments_pb2.CreateSegmentRequest(name=name, type=segments_pb2.SEGMENT_TYPE_MANUAL)
    return int(api.segments.CreateSegment(request).segment.id)


def dynamic_segment(api: Any, name: str, conditions: C.Condition) -> int:
    request = segments_pb2.CreateSegmentRequest(
        name=name, type=segments_pb2.SEGMENT_TYPE_DYNAMIC, conditions=conditions
    )
    return int(api.segments.CreateSegment(request).segment.id)


def add_members(api: Any, segment_id: int, *ids: str) -> segments_pb2.MembersResponse:
    return api.segments.AddMembers(
        segments_pb2.AddMembersRequest(segment_id=segment_id, people=[by_id(i) for i in ids])
    )


def members_of(api: Any, segment_id: int) -> set[str]:
    page = api.segments.ListMembers(
        segments_pb2.ListMembersRequest(segment_id=segment_id, page_size=10_000)
    )
    return {m.id for m in page.members}


def stored_changes(
    api: Any, after_seq: int = 0, segment_ids: Iterable[int] = ()
) -> list[changes_pb2.Change]:
    request = changes_pb2.WatchChangesRequest(
        after_seq=after_seq, segment_ids=list(segment_ids), no_follow=True
    )
    return [c for r in api.changes.WatchChanges(request, timeout=10) for c in r.changes]


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def status_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    error = rpc_error(call)
    return error.code(), error.details() or ""


def violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The google.rpc.BadRequest field violations of an INVALID_ARGUMENT error."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    status = rpc_status.from_call(error)
    assert status is not None, "INVALID_ARGUMENT without rich status details"
    found: list[tuple[str, str]] = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            found.extend((v.field, v.description) for v in bad_request.field_violations)
    return found


def violation_fields(call: Callable[[], Any]) -> list[str]:
    return [field for field, _ in violations(rpc_error(call))]


class WritesUntilFailure:
    """A client thread that upserts people five at a time (attribute n) and adds each batch
    to a manual segment, until a call fails: what was acknowledged is kept, for a test that
    kills the server mid-stream and then looks for every acknowledged write."""

    def __init__(self, api: Any, manual_segment_id: int, id_prefix: str = "c") -> None:
        self.api = api
        self.segment_id = manual_segment_id
        self.id_prefix = id_prefix
        self.people: list[str] = []
        self.members: list[str] = []
        self.failures: list[grpc.RpcError] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        batch = 0
        while True:
            ids = [f"{self.id_prefix}{batch}-{j}" for j in range(5)]
            try:
                response = self.api.people.UpsertPeople(
                    people_pb2.UpsertPeopleRequest(people=[person(i, n=batch) for i in ids]),
                    timeout=10,
                )
                assert response.created == len(ids), response
                self.people.extend(ids)
                added = add_members(self.api, self.segment_id, *ids)
                assert added.added == len(ids), added
                self.members.extend(ids)
            except grpc.RpcError as error:
                self.failures.append(error)
                return
            batch += 1

    def wait_for_members(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.members) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.members) >= count, "the writer made no progress"

    def join_failed(self) -> grpc.RpcError:
        """The failure that stopped the writer (after the server died)."""
        self.thread.join(15)
        assert not self.thread.is_alive()
        assert self.failures
        return self.failures[0]
