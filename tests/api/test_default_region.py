"""Phones through the API: numbers without a country code are placed in the server's default
region (`--default-region`, US unless told), in upserts, bulk loads, lookups and condition
operands alike; a number that cannot be placed is refused with the reason and the field."""

from __future__ import annotations

from typing import Any

import grpc
from api_harness import rpc_error, status_of, violations
from server_harness import Stubs

from segsvc.api.convert import people_columns_to_proto
from segsvc.engine.bulk import PeopleColumns
from segsvc.engine.people import PersonUpsert
from segsvc.v1 import conditions_pb2 as C
from segsvc.v1 import people_pb2, segments_pb2, types_pb2


def by_phone(phone: str) -> people_pb2.GetPersonRequest:
    return people_pb2.GetPersonRequest(person=types_pb2.PersonRef(phone=phone))


def phone_equals(operand: str) -> C.Condition:
    condition = C.AttributeCondition(field=C.BUILTIN_FIELD_PHONE, operator=C.OPERATOR_EQUALS)
    condition.value.string_value = operand
    return C.Condition(attribute=condition)


def create_dynamic(api: Any, name: str, conditions: C.Condition) -> segments_pb2.Segment:
    return api.segments.CreateSegment(
        segments_pb2.CreateSegmentRequest(
            name=name, type=segments_pb2.SEGMENT_TYPE_DYNAMIC, conditions=conditions
        )
    ).segment


def test_a_phone_without_country_code_matches_its_e164_form(api: Any) -> None:
    upserts = [
        people_pb2.PersonUpsert(id="a", phone="(555) 010-0004"),
        people_pb2.PersonUpsert(id="b", phone="12"),
    ]
    response = api.people.UpsertPeople(people_pb2.UpsertPeopleRequest(people=upserts))
    assert response.created == 1 and response.rejected == 1
    bad = response.results[1]
    assert bad.field == "people[1].phone"
    assert bad.error.startswith("'12' is too short for +1 (US)")
    # Stored in E.164, found by any spelling of the number.
    assert api.people.GetPerson(by_phone("+15550100004")).person.phone == "+15550100004"
    assert api.people.GetPerson(by_phone("555.010.0004")).person.id == "a"
    segment = create_dynamic(api, "Four", phone_equals("+1 555 010 0004"))
    assert api.people.GetPerson(by_phone("+15550100004")).person.segment_ids == [segment.id]
    # A bulk load places numbers the same way.
    columns = PeopleColumns.from_upserts(
        [PersonUpsert("c", phone="(555) 010-0005"), PersonUpsert("d", phone="5550100")]
    )
    summary = api.people.StreamUpsertPeople(
        iter([people_pb2.StreamUpsertPeopleRequest(columns=people_columns_to_proto(columns))])
    )
    assert (summary.created, summary.rejected) == (1, 1)
    assert summary.errors[0].field == "columns.phones.values[1]"
    assert "a local number, add its area code" in summary.errors[0].error
    assert api.people.GetPerson(by_phone("+15550100005")).person.id == "c"


def test_unplaceable_phones_in_lookups_and_conditions_are_invalid_arguments(api: Any) -> None:
    error = rpc_error(lambda: api.people.GetPerson(by_phone("+999 123 4567")))
    ((field, description),) = violations(error)
    assert field == "person"
    assert "does not start with a known country code" in description
    error = rpc_error(lambda: create_dynamic(api, "Bad", phone_equals("555-010-0004 x12")))
    ((field, description),) = violations(error)
    assert field == "conditions.attribute.value"
    assert "has an extension (12)" in description


def test_the_server_option_sets_the_region(server_processes: Any, tmp_path: Any) -> None:
    server = server_processes(tmp_path / "gb", "--default-region", "gb")
    client = Stubs.connect(server.address)
    upsert = people_pb2.PersonUpsert(id="ann", phone="020 7946 0958")
    client.people.UpsertPeople(people_pb2.UpsertPeopleRequest(people=[upsert]))
    assert client.people.GetPerson(by_phone("+44 20 7946 0958")).person.phone == "+442079460958"
    # Ten digits are a possible British number too: placed in GB, nobody has it.
    code, _ = status_of(lambda: client.people.GetPerson(by_phone("(555) 010-0004")))
    assert code == grpc.StatusCode.NOT_FOUND
    code, message = status_of(lambda: client.people.GetPerson(by_phone("1234")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'1234' is too short for +44 (GB)" in message
    client.channel.close()

    strict = server_processes(tmp_path / "none", "--default-region", "none")
    client = Stubs.connect(strict.address)
    response = client.people.UpsertPeople(people_pb2.UpsertPeopleRequest(people=[upsert]))
    assert response.rejected == 1
    assert "has no country code and this server has no default region" in (
        response.results[0].error
    )
    client.channel.close()
