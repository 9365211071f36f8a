"""StreamTrackEvents and TrackEvents with columns (EventColumns) against a real server: the
same events, people, memberships and change feed as the same rows sent as Event messages,
per-row errors naming the column and the row's position in the stream, unreadable columns,
and a SIGKILL after the summary losing nothing."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from api_harness import attr as condition
from api_harness import by_id, dynamic_segment, members_of, stored_changes, violation_fields
from google.protobuf import duration_pb2
from server_harness import Stubs

from segsvc.api.convert import event_columns_to_proto, value_to_proto
from segsvc.engine.event_columns import EventColumns
from segsvc.engine.events import EventInput
from segsvc.engine.model import PersonKey
from segsvc.engine.values import Timestamp, Value
from segsvc.v1 import conditions_pb2 as C
from segsvc.v1 import people_pb2

NAMES = ("purchase", "page", "signup")


def random_events(rng: random.Random, count: int, ids: int) -> list[EventInput]:
    """Events of a pool of `ids` people (some unknown), with the odd invalid row."""
    out = []
    for _ in range(count):
        props: dict[str, Value] = {}
        if rng.random() < 0.7:
            props["plan"] = rng.choice(("free", "pro"))
        if rng.random() < 0.5:
            props["amount"] = float(rng.randrange(100))
        if rng.random() < 0.02:
            props["amount"] = float("nan")
        stamp = None if rng.random() < 0.3 else Timestamp(_now() - rng.randrange(30 * 86400))
        name = rng.choice(NAMES) if rng.random() > 0.02 else ""
        out.append(EventInput(PersonKey("id", f"p{rng.randrange(ids)}"), name, stamp, props))
    return out


def _now() -> int:
    return int(time.time())


def as_messages(events: list[EventInput], create: bool) -> people_pb2.StreamTrackEventsRequest:
    request = people_pb2.StreamTrackEventsRequest(create_missing_people=create)
    for event in events:
        msg = request.events.add(name=event.name)
        msg.person.id = event.person.value
        if event.timestamp is not None:
            msg.timestamp.seconds = int(event.timestamp)
        for key, value in event.properties.items():
            msg.properties[key].CopyFrom(value_to_proto(value))
    return request


def as_columns(events: list[EventInput], create: bool) -> people_pb2.StreamTrackEventsRequest:
    return people_pb2.StreamTrackEventsRequest(
        columns=event_columns_to_proto(EventColumns.from_events(events)),
        create_missing_people=create,
    )


def event_segments(api: Any) -> list[int]:
    week = C.TimeWindow(within_last=duration_pb2.Duration(seconds=7 * 86400))
    pro = condition("plan", C.OPERATOR_EQUALS, "pro")
    return [
        dynamic_segment(api, "bought", C.Condition(event=C.EventCondition(name="purchase"))),
        dynamic_segment(
            api,
            "pro twice this week",
            C.Condition(
                event=C.EventCondition(
                    name="purchase",
                    filters=[pro.attribute],
                    count_operator=C.COUNT_OPERATOR_AT_LEAST,
                    count=2,
                    window=week,
                )
            ),
        ),
        dynamic_segment(
            api,
            "big spender",
            C.Condition(
                event=C.EventCondition(
                    name="purchase",
                    filters=[condition("amount", C.OPERATOR_GREATER_THAN, 50.0).attribute],
                )
            ),
        ),
    ]


def end_state(api: Any, ids: list[int], people: int) -> Any:
    found = []
    for i in range(people):
        try:
            person = api.people.GetPerson(people_pb2.GetPersonRequest(person=by_id(f"p{i}")))
            found.append(sorted(person.person.segment_ids))
        except Exception:
            found.append(None)
    changes = [(c.seq, c.segment_id, c.person_id, c.kind, c.cause) for c in stored_changes(api)]
    return found, [sorted(members_of(api, sid)) for sid in ids], changes


def test_columns_and_messages_end_the_same(api_servers: Any) -> None:
    rng = random.Random(7)
    batches = [(random_events(rng, 200, 80), i % 2 == 1) for i in range(4)]
    summaries, ends = [], []
    for form in (as_messages, as_columns):
        api = api_servers.start(api_servers.config(data_dir=api_servers._tmp_path / form.__name__))
        api.people.UpsertPeople(
            people_pb2.UpsertPeopleRequest(
                people=[people_pb2.PersonUpsert(id=f"p{i}") for i in range(0, 80, 2)]
            )
        )
        ids = event_segments(api)
        summaries.append(api.people.StreamTrackEvents(iter([form(*b) for b in batches])))
        ends.append(end_state(api, ids, 80))
    messages, columns = summaries
    assert (columns.received, columns.tracked, columns.rejected) == (
        messages.received,
        messages.tracked,
        messages.rejected,
    )
    assert [(e.index, e.key, e.outcome, e.error) for e in columns.errors] == [
        (e.index, e.key, e.outcome, e.error) for e in messages.errors
    ]
    assert columns.rejected > 0 and columns.tracked > 0
    assert ends[1] == ends[0]
    assert any(ends[0][1])  # the segments have members: the comparison means something


def test_row_errors_count_across_the_stream(api: Any) -> None:
    api.people.UpsertPeople(
        people_pb2.UpsertPeopleRequest(people=[people_pb2.PersonUpsert(id="u")])
    )
    first = [EventInput(PersonKey("id", "u"), "e") for _ in range(3)]
    second = [
        EventInput(PersonKey("id", "u"), "e", None, {"n": 1.0}),
        EventInput(PersonKey("id", "u"), "e", None, {"n": float("inf")}),
        EventInput(PersonKey("id", "ghost"), "e"),
        EventInput(PersonKey("id", "u"), "e", Timestamp(_now() + 10**6)),
    ]
    summary = api.people.StreamTrackEvents(
        iter([as_columns(first, False), as_columns(second, False)])
    )
    assert (summary.received, summary.tracked, summary.rejected) == (7, 4, 3)
    assert [(e.index, e.key, e.outcome, e.field) for e in summary.errors] == [
        (4, "u", 21, "columns.properties[0].numbers.values[4]"),
        (5, "ghost", 20, "columns.person_ids[5]"),
        (6, "u", 21, "columns.timestamps.seconds[6]"),
    ]


def test_unreadable_columns_reject_their_rows(api: Any) -> None:
    api.people.UpsertPeople(
        people_pb2.UpsertPeopleRequest(people=[people_pb2.PersonUpsert(id="u")])
    )
    good = as_columns([EventInput(PersonKey("id", "u"), "e")], False)
    bad = as_columns([EventInput(PersonKey("id", "u"), "e") for _ in range(2)], False)
    bad.columns.names.pop()
    summary = api.people.StreamTrackEvents(iter([bad, good]))
    assert (summary.received, summary.tracked, summary.rejected) == (3, 1, 2)
    assert {e.field for e in summary.errors} == {"columns.names"}
    batch = people_pb2.TrackEventsRequest(columns=bad.columns)
    assert violation_fields(lambda: api.people.TrackEvents(batch)) == ["columns.names"]


def test_track_events_answers_per_row_for_columns(api: Any) -> None:
    events = [EventInput(PersonKey("id", "c"), ""), EventInput(PersonKey("id", "z"), "e")]
    columns = as_columns(events, True)
    request = people_pb2.TrackEventsRequest(columns=columns.columns, create_missing_people=True)
    request.events.add(name="m").person.id = "m"
    response = api.people.TrackEvents(request)
    assert [(r.index, r.key, r.outcome, r.field) for r in response.results] == [
        (0, "m", 11, ""),
        (1, "c", 21, "columns.names[1]"),
        (2, "z", 11, ""),
    ]
    assert response.tracked == 2


@pytest.mark.timeout(120)
def test_acknowledged_event_columns_survive_sigkill(server_processes: Any, tmp_path: Any) -> None:
    rng = random.Random(3)
    batches = [random_events(rng, 500, 300) for _ in range(3)]
    server = server_processes(tmp_path / "data")
    client = Stubs.connect(server.address)
    ids = event_segments(client)
    client.people.StreamTrackEvents(iter([as_columns(b, True) for b in batches]))
    before = end_state(client, ids, 300)
    client.channel.close()
    server.kill()
    server = server_processes(tmp_path / "data")
    client = Stubs.connect(server.address)
    assert end_state(client, ids, 300) == before
    assert any(before[1])
