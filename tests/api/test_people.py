"""People over gRPC: batch upserts with per-item results, bulk streams, lookups, deletes,
events."""

from __future__ import annotations

import grpc
from api_harness import (
    add_members,
    by_id,
    dynamic_segment,
    equals,
    manual_segment,
    members_of,
    person,
    rpc_error,
    status_of,
    stored_changes,
    upsert,
    value,
    violations,
)
from google.protobuf import timestamp_pb2

from segsvc.config import Limits
from segsvc.v1 import changes_pb2, people_pb2, types_pb2
from segsvc.v1 import conditions_pb2 as C

OUTCOME = types_pb2.Outcome


def test_upsert_reports_each_item_and_applies_the_valid_ones(api):
    upsert(api, person("taken", plan="free"))
    api.people.UpsertPeople(
        people_pb2.UpsertPeopleRequest(
            people=[people_pb2.PersonUpsert(id="taken", email="dup@example.com")]
        )
    )
    response = api.people.UpsertPeople(
        people_pb2.UpsertPeopleRequest(
            people=[
                person("u1", plan="pro", seats=3, trial=True),
                people_pb2.PersonUpsert(id=""),
                people_pb2.PersonUpsert(id="u2", email="not-an-email"),
                people_pb2.PersonUpsert(id="u3", email="dup@example.com"),
                person("taken", plan="free"),
                person("taken", plan="pro"),
                # A Value with no kind cannot even be decoded: rejected alone, by the API.
                people_pb2.PersonUpsert(id="u4", attributes={"x": types_pb2.Value()}),
            ]
        )
    )
    outcomes = [(r.index, OUTCOME.Name(r.outcome), r.field) for r in response.results]
    assert outcomes == [
        (0, "OUTCOME_CREATED", ""),
        (1, "OUTCOME_INVALID", "people[1].id"),
        (2, "OUTCOME_INVALID", "people[2].email"),
        (3, "OUTCOME_CONFLICT", "people[3].email"),
        (4, "OUTCOME_UNCHANGED", ""),
        (5, "OUTCOME_UPDATED", ""),
        (6, "OUTCOME_INVALID", "people[6].attributes['x']"),
    ]
    assert "not an email address" in response.results[2].error
    assert "already belongs to another person" in response.results[3].error
    assert (response.created, response.updated, response.unchanged, response.rejected) == (
        1,
        1,
        1,
        4,
    )
    got = api.people.GetPerson(people_pb2.GetPersonRequest(person=by_id("u1"))).person
    assert got.attributes["plan"].string_value == "pro"
    assert got.attributes["seats"].number_value == 3.0
    assert got.attributes["trial"].bool_value is True
    assert (
        status_of(lambda: api.people.GetPerson(people_pb2.GetPersonRequest(person=by_id("u4"))))[0]
        == grpc.StatusCode.NOT_FOUND
    )


def test_partial_updates_keep_what_is_not_sent(api):
    api.people.UpsertPeople(
        people_pb2.UpsertPeopleRequest(
            people=[
                people_pb2.PersonUpsert(
                    id="u1",
                    email="  Alice@Example.COM ",
                    phone="+1 (555) 000-1234",
                    attributes={"plan": value("pro"), "city": value("Oslo")},
                    add_tags=["vip", "beta"],
                    devices=[people_pb2.Device(id="d1", platform="ios")],
                    created_at=timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=999),
                )
            ]
        )
    )
    upsert(
        api,
        people_pb2.PersonUpsert(
            id="u1", remove_attributes=["city"], remove_tags=["beta"], unsubscribed=True
        ),
    )
    got = api.people.GetPerson(
        people_pb2.GetPersonRequest(person=types_pb2.PersonRef(phone="+15550001234"))
    ).person
    assert got.id == "u1"
    assert got.email == "alice@example.com"
    assert got.phone == "+15550001234"
    assert dict(got.attributes) == {"plan": value("pro")}
    assert list(got.tags) == ["vip"]
    assert [(d.id, d.platform) for d in got.devices] == [("d1", "ios")]
    assert got.unsubscribed is True
    assert got.created_at.seconds == 1_700_000_000  # sub-second precision dropped
    assert got.updated_at.seconds == api.clock.now()

    # An empty string removes the email; unset fields stay.
    upsert(api, people_pb2.PersonUpsert(id="u1", email=""))
    got = api.people.GetPerson(people_pb2.GetPersonRequest(person=by_id("u1"))).person
    assert (got.email, got.phone) == ("", "+15550001234")


def test_get_person_lists_the_segments_they_are_in(api):
    upsert(api, person("u1", plan="pro"), person("u2", plan="free"))
    pro = dynamic_segment(api, "Pro", equals("plan", "pro"))
    vip = manual_segment(api, "VIP")
    add_members(api, vip, "u1")
    got = api.people.GetPerson(people_pb2.GetPersonRequest(person=by_id("u1"))).person
    assert list(got.segment_ids) == [pro, vip]
    got = api.people.GetPerson(people_pb2.GetPersonRequest(person=by_id("u2"))).person
    assert list(got.segment_ids) == []


def test_get_person_errors(api):
    code, message = status_of(
        lambda: api.people.GetPerson(people_pb2.GetPersonRequest(person=by_id("nobody")))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert "nobody" in message
    error = rpc_error(lambda: api.people.GetPerson(people_pb2.GetPersonRequest()))
    assert violations(error) == [("person", "name the person by one of id, email or phone")]
    error = rpc_error(
        lambda: api.people.GetPerson(
            people_pb2.GetPersonRequest(person=types_pb2.PersonRef(email="nope"))
        )
    )
    assert [f for f, _ in violations(error)] == ["person"]


def test_delete_people_leaves_segments_with_deleted_changes(api):
    upsert(api, person("u1", plan="pro"), person("u2", plan="pro"))
    pro = dynamic_segment(api, "Pro", equals("plan", "pro"))
    response = api.people.DeletePeople(
        people_pb2.DeletePeopleRequest(
            people=[by_id("u1"), by_id("ghost"), types_pb2.PersonRef(), by_id("u1")]
        )
    )
    outcomes = [(r.index, OUTCOME.Name(r.outcome), r.field) for r in response.results]
    assert outcomes == [
        (0, "OUTCOME_DELETED", ""),
        (1, "OUTCOME_NOT_FOUND", ""),
        (2, "OUTCOME_INVALID", "people[2]"),
        (3, "OUTCOME_NOT_FOUND", ""),
    ]
    assert response.deleted == 1
    assert (
        status_of(lambda: api.people.GetPerson(people_pb2.GetPersonRequest(person=by_id("u1"))))[0]
        == grpc.StatusCode.NOT_FOUND
    )
    exits = [
        (c.person_id, c.kind, c.cause)
        for c in stored_changes(api, segment_ids=[pro])
        if c.kind == changes_pb2.CHANGE_KIND_EXITED
    ]
    assert exits == [("u1", changes_pb2.CHANGE_KIND_EXITED, changes_pb2.CHANGE_CAUSE_DELETED)]


def test_stream_upsert_numbers_items_across_the_whole_stream(api):
    def batches():
        yield people_pb2.StreamUpsertPeopleRequest(people=[person(f"p{i}") for i in range(3)])
        yield people_pb2.StreamUpsertPeopleRequest(
            people=[person("p3"), people_pb2.PersonUpsert(id=""), person("p0")]
        )
        yield people_pb2.StreamUpsertPeopleRequest(
            people=[people_pb2.PersonUpsert(id="p9", phone="12"), person("p0", x=1)]
        )

    summary = api.people.StreamUpsertPeople(batches())
    assert summary.received == 8
    assert (summary.created, summary.updated, summary.unchanged, summary.rejected) == (4, 1, 1, 2)
    assert [(e.index, e.field, OUTCOME.Name(e.outcome)) for e in summary.errors] == [
        (4, "people[4].id", "OUTCOME_INVALID"),
        (6, "people[6].phone", "OUTCOME_INVALID"),
    ]


def test_stream_upsert_cuts_messages_larger_than_an_engine_batch(api_servers):
    api = api_servers.start(api_servers.config(limits=Limits(max_batch_items=10)))
    request = people_pb2.StreamUpsertPeopleRequest(
        people=[person(f"p{i}") for i in range(24)] + [people_pb2.PersonUpsert(id="")]
    )
    summary = api.people.StreamUpsertPeople(iter([request]))
    assert (summary.received, summary.created, summary.rejected) == (25, 24, 1)
    assert [(e.index, e.field) for e in summary.errors] == [(24, "people[24].id")]
    # The unary call keeps the engine's limit: the client is told to split.
    error = rpc_error(lambda: api.people.UpsertPeople(request))
    assert violations(error)[0][0] == "people"


def test_track_events_feed_event_segments(api):
    upsert(api, person("u1"), person("u2"))
    buyers = dynamic_segment(
        api,
        "Buyers",
        C.Condition(
            event=C.EventCondition(
                name="purchase",
                filters=[
                    C.AttributeCondition(
                        attribute="plan", operator=C.OPERATOR_EQUALS, value=value("pro")
                    )
                ],
            )
        ),
    )
    response = api.people.TrackEvents(
        people_pb2.TrackEventsRequest(
            events=[
                people_pb2.Event(
                    person=by_id("u1"), name="purchase", properties={"plan": value("pro")}
                ),
                people_pb2.Event(
                    person=by_id("u2"), name="purchase", properties={"plan": value("free")}
                ),
                people_pb2.Event(person=by_id("ghost"), name="purchase"),
                people_pb2.Event(name="purchase"),
            ]
        )
    )
    assert [OUTCOME.Name(r.outcome) for r in response.results] == [
        "OUTCOME_TRACKED",
        "OUTCOME_TRACKED",
        "OUTCOME_NOT_FOUND",
        "OUTCOME_INVALID",
    ]
    assert response.results[3].field == "events[3].person"
    assert (response.tracked, response.rejected) == (2, 2)
    assert members_of(api, buyers) == {"u1"}

    summary = api.people.StreamTrackEvents(
        iter(
            [
                people_pb2.StreamTrackEventsRequest(
                    events=[people_pb2.Event(person=by_id("new"), name="purchase")],
                    create_missing_people=True,
                )
            ]
        )
    )
    assert (summary.received, summary.tracked, summary.rejected) == (1, 1, 0)
    assert api.people.GetPerson(people_pb2.GetPersonRequest(person=by_id("new"))).person.id == "new"
