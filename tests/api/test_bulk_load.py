"""StreamUpsertPeople with columns (the bulk-load form) against a real server: the same
people, memberships and change feed as the same rows sent as PersonUpsert messages, per-row
errors with their position in the stream, unreadable columns, and a SIGKILL after the
summary losing nothing."""

from __future__ import annotations

import random
from typing import Any

import grpc
import pytest
from api_harness import attr as condition
from api_harness import (
    by_id,
    dynamic_segment,
    equals,
    members_of,
    stored_changes,
    violation_fields,
)
from server_harness import Stubs

from segsvc.api.convert import people_columns_to_proto, person_upsert, value_to_proto
from segsvc.engine.bulk import PeopleColumns
from segsvc.engine.people import PersonUpsert
from segsvc.engine.values import Timestamp
from segsvc.v1 import conditions_pb2 as C
from segsvc.v1 import people_pb2


def random_rows(rng: random.Random, count: int, ids: int) -> list[PersonUpsert]:
    """Rows over a pool of `ids` people, with the odd invalid value and repeated key."""
    plans = ("free", "pro", "team")
    out = []
    for _ in range(count):
        i = rng.randrange(ids)
        attributes: dict[str, Any] = {"plan": rng.choice(plans)}
        if rng.random() < 0.7:
            attributes["age"] = float(rng.randrange(18, 80))
        if rng.random() < 0.5:
            attributes["vip"] = rng.random() < 0.3
        if rng.random() < 0.5:
            attributes["seen"] = Timestamp(1_767_225_600 - rng.randrange(10**7))
        if rng.random() < 0.03:
            attributes["age"] = float("nan")
        email = rng.choice((None, f"P{i}@Example.com", f"shared{rng.randrange(3)}@x.io", "bad"))
        out.append(
            PersonUpsert(
                id=f"p{i}",
                email=email,
                phone=rng.choice((None, f"+1 555 {i:07d}", "")),
                attributes=attributes,
                add_tags=tuple(rng.sample(("a", "b", "c"), rng.randrange(3))),
            )
        )
    return out


def as_messages(rows: list[PersonUpsert]) -> people_pb2.StreamUpsertPeopleRequest:
    people = []
    for row in rows:
        msg = people_pb2.PersonUpsert(id=row.id, add_tags=row.add_tags)
        if row.email is not None:
            msg.email = row.email
        if row.phone is not None:
            msg.phone = row.phone
        for name, value in row.attributes.items():
            msg.attributes[name].CopyFrom(value_to_proto(value))
        people.append(msg)
    return people_pb2.StreamUpsertPeopleRequest(people=people)


def as_columns(rows: list[PersonUpsert]) -> people_pb2.StreamUpsertPeopleRequest:
    return people_pb2.StreamUpsertPeopleRequest(
        columns=people_columns_to_proto(PeopleColumns.from_upserts(rows))
    )


def as_batch(request: people_pb2.StreamUpsertPeopleRequest) -> people_pb2.UpsertPeopleRequest:
    """The same rows for UpsertPeople."""
    return people_pb2.UpsertPeopleRequest(people=request.people, columns=request.columns)


def segments(api: Any) -> list[int]:
    return [
        dynamic_segment(api, "pro", equals("plan", "pro")),
        dynamic_segment(api, "adult", condition("age", C.OPERATOR_GREATER_OR_EQUAL, 30.0)),
        dynamic_segment(api, "has email", condition("email", C.OPERATOR_EXISTS)),
    ]


def person_state(api: Any, pid: str) -> Any:
    try:
        p = api.people.GetPerson(people_pb2.GetPersonRequest(person=by_id(pid))).person
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND
        return None
    return (
        p.email,
        p.phone,
        sorted((k, v.SerializeToString()) for k, v in p.attributes.items()),
        sorted(p.tags),
        sorted(p.segment_ids),
    )


def changes(api: Any) -> list[Any]:
    return [(c.seq, c.segment_id, c.person_id, c.kind, c.cause) for c in stored_changes(api)]


def test_columns_and_messages_end_the_same(api_servers: Any) -> None:
    rng = random.Random(5)
    batches = [random_rows(rng, 40, 60) for _ in range(4)]
    ends = []
    summaries = []
    for form in (as_messages, as_columns):
        api = api_servers.start(api_servers.config(data_dir=api_servers._tmp_path / form.__name__))
        ids = segments(api)
        summary = api.people.StreamUpsertPeople(iter([form(b) for b in batches]))
        summaries.append(summary)
        ends.append(
            (
                [person_state(api, f"p{i}") for i in range(60)],
                [sorted(members_of(api, sid)) for sid in ids],
                changes(api),
            )
        )
    messages, columns = summaries
    assert (columns.received, columns.created, columns.updated, columns.unchanged) == (
        messages.received,
        messages.created,
        messages.updated,
        messages.unchanged,
    )
    assert [(e.index, e.outcome, e.error) for e in columns.errors] == [
        (e.index, e.outcome, e.error) for e in messages.errors
    ]
    assert columns.rejected > 0 and columns.created > 0 and columns.updated > 0
    assert ends[1] == ends[0]


def test_row_errors_count_across_the_stream(api: Any) -> None:
    first = [PersonUpsert(f"a{i}", attributes={"n": float(i)}) for i in range(3)]
    second = [
        PersonUpsert("b0", email="ok@x.io"),
        PersonUpsert("b1", email="not an email"),
        PersonUpsert("b2", attributes={"n": float("inf")}),
        PersonUpsert("b3", email="OK@x.io "),  # the same email as b0, stored form
    ]
    summary = api.people.StreamUpsertPeople(iter([as_columns(first), as_columns(second)]))
    assert (summary.received, summary.created, summary.rejected) == (7, 4, 3)
    assert [(e.index, e.key, e.outcome, e.field) for e in summary.errors] == [
        (4, "b1", 21, "columns.emails.values[4]"),
        (5, "b2", 21, "columns.attributes[0].numbers.values[5]"),
        (6, "b3", 22, "columns.emails.values[6]"),
    ]


def test_unreadable_columns_reject_their_rows(api: Any) -> None:
    good = as_columns([PersonUpsert("g0"), PersonUpsert("g1")])
    bad = as_columns([PersonUpsert("x0", attributes={"n": 1.0}), PersonUpsert("x1")])
    del bad.columns.attributes[0].numbers.values[1:]
    bad.columns.attributes[0].numbers.values.append(2.0)
    bad.columns.attributes[0].numbers.values.append(3.0)
    summary = api.people.StreamUpsertPeople(iter([bad, good]))
    assert (summary.received, summary.created, summary.rejected) == (4, 2, 2)
    assert {e.field for e in summary.errors} == {"columns.attributes[0].numbers.values"}
    # UpsertPeople answers such a request with INVALID_ARGUMENT naming the column.
    assert violation_fields(lambda: api.people.UpsertPeople(as_batch(bad))) == [
        "columns.attributes[0].numbers.values"
    ]


def test_upsert_people_answers_per_row_for_columns(api: Any) -> None:
    request = as_batch(as_columns([PersonUpsert("c0"), PersonUpsert("c1", email="nope")]))
    request.people.append(person_upsert_proto("m0"))
    response = api.people.UpsertPeople(request)
    assert [(r.index, r.key, r.outcome) for r in response.results] == [
        (0, "m0", 1),
        (1, "c0", 1),
        (2, "c1", 21),
    ]
    assert response.results[2].field == "columns.emails.values[2]"


def person_upsert_proto(pid: str) -> people_pb2.PersonUpsert:
    msg = people_pb2.PersonUpsert(id=pid)
    assert person_upsert(msg, "people[0]").id == pid
    return msg


@pytest.mark.timeout(120)
def test_an_acknowledged_bulk_load_survives_sigkill(server_processes: Any, tmp_path: Any) -> None:
    rng = random.Random(11)
    batches = [random_rows(rng, 300, 500) for _ in range(3)]
    server = server_processes(tmp_path / "data")
    client = Stubs.connect(server.address)
    ids = segments(client)
    client.people.StreamUpsertPeople(iter([as_columns(b) for b in batches]))
    before = (
        [person_state(client, f"p{i}") for i in range(500)],
        [sorted(members_of(client, sid)) for sid in ids],
        changes(client),
    )
    client.channel.close()
    server.kill()
    server = server_processes(tmp_path / "data")
    client = Stubs.connect(server.address)
    after = (
        [person_state(client, f"p{i}") for i in range(500)],
        [sorted(members_of(client, sid)) for sid in ids],
        changes(client),
    )
    assert after == before
