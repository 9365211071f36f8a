"""Events as columns (`Workspace.track_columns`) against the event-by-event path
(`Workspace.track_events`) on the same rows: two workspaces with the same people and
segments (event conditions among them) get the same batches, one as events and one as
columns, and must end with the same outcomes and errors (the field paths naming the same
field in each form), the same people, event logs, memberships and change feed, also after a
restart that replays the log."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from engine_harness import harness
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import EVENT_NAMES, ID_POOL, event_properties, event_times, trees, upserts
from test_bulk_people import expressible, snapshot

from segsvc.engine.event_columns import EventColumns
from segsvc.engine.events import EventInput, EventStore
from segsvc.engine.model import ItemResult, PersonKey
from segsvc.engine.people import PersonUpsert
from segsvc.engine.values import Timestamp, kind_of


@st.composite
def event_rows(draw: st.DrawFn, now: int) -> EventInput:
    """An event naming its person by id: known, unknown or not a valid id; a name that may
    be invalid; a time that may be too far ahead or past retention."""
    person = draw(
        st.one_of(st.sampled_from(ID_POOL), st.sampled_from(("new1", "new2", "", "a\x00")))
    )
    name = draw(st.one_of(st.sampled_from(EVENT_NAMES), st.sampled_from(("", " ", "x" * 257))))
    when = draw(st.one_of(event_times(now), st.sampled_from((now + 7200, now - 10**9))))
    return EventInput(
        PersonKey("id", person),
        name,
        None if when is None else Timestamp(when),
        draw(event_properties(now)),
    )


def column_field(field: str, cols: EventColumns, rows: Sequence[EventInput]) -> str:
    """The columns' name for a field path of the event-by-event path."""
    found = re.fullmatch(r"events\[(\d+)\]\.(\w+)(.*)", field)
    assert found, field
    i, name, rest = int(found.group(1)), found.group(2), found.group(3)
    if name == "person":
        return f"columns.person_ids[{i}]"
    if name == "name":
        return f"columns.names[{i}]"
    if name == "timestamp":
        return f"columns.timestamps.seconds[{i}]"
    if name == "properties" and rest:
        key = rest[2:-2]
        kind = kind_of(rows[i].properties[key])
        for p in cols.properties:
            if p.name == key and p.column.kind == kind:
                return f"{p.column.path}[{i}]"
    return field


def comparable(result: ItemResult) -> Any:
    # Unknown people: the event-by-event path names no field, the columns name the row's id.
    return (result.index, result.key, result.outcome, result.error)


def logs(store: EventStore) -> dict[str, Any]:
    """Every stored event, per name, with its properties as values (not vocabulary codes)."""
    out = {}
    for name, log in store.logs.items():
        n = log.size
        columns = {}
        for key, col in log.columns.items():
            strings = None
            if col.codes is not None:
                strings = [None if c < 0 else col.vocabulary[c] for c in col.codes[:n].tolist()]
            columns[key] = (
                strings,
                None if col.numbers is None else col.numbers[:n].tobytes(),
                None if col.bools is None else col.bools[:n].tolist(),
                None
                if col.times is None
                else np.where(col.has_time[:n], col.times[:n], 0).tolist(),
            )
        days = {day: log.day(day).tolist() for day in log.day_rows}
        out[name] = (log.ordinals[:n].tolist(), log.times[:n].tolist(), columns, days)
    return out


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_columns_agree_with_events(data: st.DataObject) -> None:
    now = 1_767_225_600
    with (
        harness(now, change_retention_seconds=10**10) as a,
        harness(now, change_retention_seconds=10**10) as b,
    ):
        people = [PersonUpsert(pid) for pid in ID_POOL[:5]]
        people += [expressible(u) for u in data.draw(st.lists(upserts(now), max_size=4))]
        for h in (a, b):
            h.ws.upsert_people(people)
        for _ in range(data.draw(st.integers(1, 3))):
            tree = data.draw(trees(now, tuple(a.ws.state.segments), events=True))
            for h in (a, b):
                h.ws.create_segment(f"s{len(h.ws.state.segments)}", "", True, tree)
        for step in range(data.draw(st.integers(1, 3))):
            batch = data.draw(st.lists(event_rows(now + 61 * step), min_size=1, max_size=12))
            create = data.draw(st.booleans())
            cols = EventColumns.from_events(batch)
            expected = a.ws.track_events(batch, create)
            got = b.ws.track_columns(cols, create)
            assert [comparable(r) for r in got.results(cols.person_ids, 0)] == [
                comparable(r) for r in expected
            ]
            fields = [r.field for r in got.results(cols.person_ids, 0) if r.outcome == "invalid"]
            assert fields == [
                column_field(r.field, cols, batch) for r in expected if r.outcome == "invalid"
            ]
            assert logs(b.ws.state.events) == logs(a.ws.state.events)
            assert snapshot(b) == snapshot(a)
            for h in (a, b):
                h.clock.advance(61)
                h.ws.tick()
            assert snapshot(b) == snapshot(a)
        before = (snapshot(b), logs(b.ws.state.events))
        b.reopen(checkpoint=False)
        assert (snapshot(b), logs(b.ws.state.events)) == before


def test_columns_round_trip_to_events() -> None:
    events = [
        EventInput(PersonKey("id", "u1"), "purchase", Timestamp(5), {"plan": "pro", "n": 2.0}),
        EventInput(PersonKey("id", "u2"), "page", None, {"url": "/x", "n": True}),
    ]
    assert EventColumns.from_events(events).events() == events


def test_rows_in_error_name_their_column_and_row() -> None:
    with harness() as h:
        h.ws.upsert_people([PersonUpsert("u1")])
        now = h.clock.now()
        events = [
            EventInput(PersonKey("id", "u1"), "ok", Timestamp(now), {"n": 1.0}),
            EventInput(PersonKey("id", "u1"), "", None),
            EventInput(PersonKey("id", "u1"), "bad", None, {"n": float("nan")}),
            EventInput(PersonKey("id", "u1"), "late", Timestamp(now + 10**6)),
            EventInput(PersonKey("id", "ghost"), "x", None),
            EventInput(PersonKey("id", "u1"), "ok", None, {"n": 2.0}),
        ]
        result = h.ws.track_columns(EventColumns.from_events(events), first_index=40)
        outcomes = [(r.index, r.outcome, r.field) for r in result.results(["k"] * 6, 40)]
        assert outcomes == [
            (40, "tracked", ""),
            (41, "invalid", "columns.names[41]"),
            (42, "invalid", "columns.properties[0].numbers.values[42]"),
            (43, "invalid", "columns.timestamps.seconds[43]"),
            (44, "not_found", "columns.person_ids[44]"),
            (45, "tracked", ""),
        ]
        assert result.counts()["tracked"] == 2
        assert h.ws.state.events.logs["ok"].size == 2


def test_two_columns_of_one_property_share_its_log_column() -> None:
    """A property with string values in two columns (on different rows) is stored as one
    column, in row order, as the event-by-event path stores it."""
    events = [EventInput(PersonKey("id", "u1"), "e", None, {"p": f"v{i}"}) for i in range(4)]
    cols = EventColumns.from_events(events)
    first = cols.properties[0]
    odd = np.array([i % 2 == 1 for i in range(4)])
    split = (
        type(first)(first.name, type(first.column)("string", first.column.values, ~odd, "a"), "n"),
        type(first)(first.name, type(first.column)("string", first.column.values, odd, "b"), "n"),
    )
    with harness() as a, harness() as b:
        for h in (a, b):
            h.ws.upsert_people([PersonUpsert("u1")])
        a.ws.track_events(events)
        b.ws.track_columns(EventColumns(cols.person_ids, cols.names, properties=split))
        assert logs(b.ws.state.events) == logs(a.ws.state.events)


@pytest.mark.parametrize("create", [False, True])
def test_unknown_people_are_rejected_or_created(create: bool) -> None:
    events = [EventInput(PersonKey("id", pid), "e") for pid in ("n1", "n2", "n1")]
    with harness() as h:
        result = h.ws.track_columns(EventColumns.from_events(events), create)
        if create:
            assert result.counts()["tracked"] == 3
            assert h.ws.get_person(PersonKey("id", "n2")).record.id == "n2"
            assert h.ws.state.events.logs["e"].ordinals[:3].tolist() == [0, 1, 0]
        else:
            assert [e.outcome for e in result.errors] == ["not_found"] * 3
            assert "e" not in h.ws.state.events.logs
