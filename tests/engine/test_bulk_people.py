"""Bulk loads as columns (`Workspace.upsert_columns`) against the person-by-person path
(`Workspace.upsert_people`) on the same rows: two workspaces with the same segments get the
same batches, one as upserts and one as columns, and must end with the same people, the same
row outcomes and errors (the field paths naming the same field in each form), the same
memberships and the same change feed, also after a restart that replays the log."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from engine_harness import Harness, harness
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import EMAILS, PHONES, STARTS, trees, upserts

from segsvc.engine import bulk
from segsvc.engine.bulk import PeopleColumns
from segsvc.engine.errors import NotFound
from segsvc.engine.model import ItemResult, PersonKey
from segsvc.engine.people import PersonRecord, PersonUpsert
from segsvc.engine.record_rows import lookup_keys
from segsvc.engine.values import Timestamp, kind_of


def column_path(field: str, cols: PeopleColumns, rows: Sequence[PersonUpsert]) -> str:
    """The columns' name for a field path of the person-by-person path."""
    found = re.fullmatch(r"people\[(\d+)\]\.(\w+)(.*)", field)
    assert found, field
    i, name, rest = int(found.group(1)), found.group(2), found.group(3)
    if name == "id":
        return f"columns.ids[{i}]"
    if name in ("email", "phone"):
        return f"columns.{name}s.values[{i}]"
    if name == "created_at":
        return f"columns.created_at.seconds[{i}]"
    if name == "add_tags":
        j = int(rest.strip("[]"))
        return f"columns.tags[{sum(len(r.add_tags) for r in rows[:i]) + j}]"
    if name == "attributes" and rest:
        attribute = rest[2:-2]
        kind = kind_of(rows[i].attributes[attribute])
        for a in cols.attributes:
            if a.name == attribute and a.column.kind == kind:
                return f"{a.column.path}[{i}]"
    return field


def expressible(upsert: PersonUpsert) -> PersonUpsert:
    """What a row of columns can say: no removals, devices or replace."""
    return replace(
        upsert,
        remove_attributes=(),
        remove_tags=(),
        devices=(),
        remove_device_ids=(),
        replace=False,
    )


@st.composite
def rows(draw: st.DrawFn, now: int) -> PersonUpsert:
    upsert = expressible(draw(upserts(now)))
    # Many distinct ids and keys besides the shared pools, so that most batches have no
    # rows that depend on each other (the column-wise path) and some do (row by row).
    how = draw(st.integers(0, 9))
    if how < 5:
        n = draw(st.integers(0, 60))
        upsert = replace(
            upsert,
            id=f"q{n}",
            email=draw(st.sampled_from((None, f"Q{n}@Example.com ", ""))),
            phone=draw(st.sampled_from((None, f"+1 555 {n:07d}", f"+1555{n:07d}"))),
        )
    elif how == 5:
        upsert = replace(upsert, id=draw(st.sampled_from(("", " ", "a\x00b", "x" * 257))))
    elif how == 6:
        upsert = replace(
            upsert,
            email=draw(st.sampled_from(EMAILS)),
            phone=draw(st.sampled_from(PHONES)),
        )
    return upsert


def comparable(result: ItemResult) -> Any:
    return (result.index, result.key, result.outcome, result.error, result.field)


def people(h: Harness) -> dict[int, tuple[Any, ...]]:
    out = {}
    with h.ws.store.read() as txn:
        for key, value in txn.scan("people", h.ws.core.prefix):
            record = PersonRecord.decode(value)
            out[int.from_bytes(key[-4:], "big")] = (
                record.id,
                record.email,
                record.phone,
                int(record.created_at),
                int(record.updated_at),
                record.unsubscribed,
                sorted((k, type(v).__name__, v) for k, v in record.attributes.items()),
                sorted(record.tags),
            )
    return out


def lookups(h: Harness) -> dict[bytes, bytes]:
    """The id, email and phone lookup rows: who holds which key."""
    with h.ws.store.read() as txn:
        return dict(txn.scan("lookup", h.ws.core.prefix))


def snapshot(h: Harness) -> Any:
    state = h.ws.state
    changes, _ = h.ws.read_changes(0, frozenset(), limit=10**6)
    index = state.index
    return (
        people(h),
        lookups(h),
        {sid: list(seg.members) for sid, seg in state.segments.items()},
        changes,
        {leaf: list(bm) for leaf, bm in state.leaves.items()},
        list(index.live),
        index.ids,
        index.emails,
        index.phones,
        {
            k: (list(f.exists), {v: list(b) for v, b in f.strings.items()})
            for k, f in index.fields.items()
        },
        {t: list(b) for t, b in index.tags.items()},
        state.next_ordinal,
    )


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_columns_agree_with_upserts(data: st.DataObject) -> None:
    now = STARTS[0]
    with (
        harness(now, change_retention_seconds=10**10) as a,
        harness(now, change_retention_seconds=10**10) as b,
    ):
        existing = data.draw(st.lists(rows(now), max_size=6))
        for h in (a, b):
            h.ws.upsert_people(existing)
        for _ in range(data.draw(st.integers(1, 3))):
            tree = data.draw(trees(now, tuple(a.ws.state.segments)))
            for h in (a, b):
                h.ws.create_segment(f"s{len(h.ws.state.segments)}", "", True, tree)
        for step in range(data.draw(st.integers(1, 3))):
            batch = data.draw(st.lists(rows(now), min_size=1, max_size=10))
            cols = PeopleColumns.from_upserts(batch)
            expected = a.ws.upsert_people(batch)
            got = b.ws.upsert_columns(cols)
            want = [
                comparable(replace(r, field=column_path(r.field, cols, batch) if r.field else ""))
                for r in expected
            ]
            have = [comparable(r) for r in got.results(cols.ids, 0)]
            assert have == want
            assert snapshot(b) == snapshot(a)
            for h in (a, b):
                h.clock.advance(61 * (step + 1))
        before = snapshot(b)
        b.reopen(checkpoint=False)
        assert snapshot(b) == before


def test_a_plain_batch_is_resolved_column_by_column(monkeypatch: pytest.MonkeyPatch) -> None:
    """Distinct ids and keys: the batch takes the column-wise plan (not the row-by-row
    fallback), and creates, then updates, then leaves unchanged."""
    calls: list[bool] = []
    real = bulk.plan_columns

    def spy(*args: Any) -> Any:
        plan = real(*args)
        calls.append(plan is not None)
        return plan

    monkeypatch.setattr("segsvc.engine.people_writes.plan_columns", spy)
    batch = [
        PersonUpsert(f"u{i}", email=f"U{i}@x.io", attributes={"n": float(i)}, add_tags=("t",))
        for i in range(5)
    ]
    with harness() as h:
        first = h.ws.upsert_columns(PeopleColumns.from_upserts(batch))
        assert first.counts() == {"created": 5, "updated": 0, "unchanged": 0, "rejected": 0}
        changed = [replace(u, attributes={"n": -float(i)}) for i, u in enumerate(batch)]
        second = h.ws.upsert_columns(PeopleColumns.from_upserts(changed))
        # -0.0 is 0.0: person 0 does not change.
        assert second.counts() == {"created": 0, "updated": 4, "unchanged": 1, "rejected": 0}
        third = h.ws.upsert_columns(PeopleColumns.from_upserts(changed))
        assert third.counts()["unchanged"] == 5
        assert calls == [True, True, True]
        assert h.ws.get_person(PersonKey("id", "u3")).record.attributes == {"n": -3.0}


def test_records_built_in_chunks_hold_each_persons_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stored records are built a few people at a time: with chunks of two, attributes
    some people lack land on the right person across chunk boundaries."""
    monkeypatch.setattr(bulk, "RECORDS_CHUNK", 2)
    batch = [
        PersonUpsert(
            f"u{i}",
            email=f"u{i}@x.io" if i % 3 else None,
            attributes={"n": float(i), **({"s": f"v{i}"} if i % 2 else {})},
            add_tags=("t",) if i > 3 else (),
        )
        for i in range(7)
    ]
    with harness() as a, harness() as b:
        a.ws.upsert_people(batch)
        b.ws.upsert_columns(PeopleColumns.from_upserts(batch))
        assert people(b) == people(a)
        assert b.ws.get_person(PersonKey("id", "u5")).record.attributes == {"n": 5.0, "s": "v5"}


def test_rows_that_depend_on_each_other_keep_their_order() -> None:
    """The same id twice, and an email one row gives up and a later row takes: resolved
    row after row, as the person-by-person path does."""
    with harness() as h:
        h.ws.upsert_people([PersonUpsert("a", email="k@x.io"), PersonUpsert("b")])
        batch = [
            PersonUpsert("b", email="k@x.io"),  # a still holds it: conflict
            PersonUpsert("a", email="other@x.io"),
            PersonUpsert("b", email="k@x.io"),  # now free
            PersonUpsert("c", attributes={"x": True}),
            PersonUpsert("c", attributes={"x": True}),
        ]
        result = h.ws.upsert_columns(PeopleColumns.from_upserts(batch), first_index=100)
        outcomes = [
            (r.index, r.outcome, r.field)
            for r in result.results(PeopleColumns.from_upserts(batch).ids, 100)
        ]
        assert outcomes == [
            (100, "conflict", "columns.emails.values[100]"),
            (101, "updated", ""),
            (102, "updated", ""),
            (103, "created", ""),
            (104, "unchanged", ""),
        ]


def test_invalid_rows_name_their_column_and_row() -> None:
    batch = [
        PersonUpsert("ok", attributes={"n": 1.0}),
        PersonUpsert("bad-email", email="nope"),
        PersonUpsert("bad-number", attributes={"n": float("nan")}),
        PersonUpsert("bad-time", created_at=Timestamp(10**13)),
        PersonUpsert("bad\x01id"),
        PersonUpsert("bad-tag", add_tags=("ok", " ")),
        PersonUpsert("bad-phone", phone="12"),
        PersonUpsert("control-email", email="a\x7fb@x.io"),
    ]
    with harness() as h:
        result = h.ws.upsert_columns(PeopleColumns.from_upserts(batch), first_index=10)
    assert [(e.index, e.key, e.field) for e in result.errors] == [
        (11, "bad-email", "columns.emails.values[11]"),
        (12, "bad-number", "columns.attributes[0].numbers.values[12]"),
        (13, "bad-time", "columns.created_at.seconds[13]"),
        (14, "bad\x01id", "columns.ids[14]"),
        (15, "bad-tag", "columns.tags[1]"),
        (16, "bad-phone", "columns.phones.values[16]"),
        (17, "control-email", "columns.emails.values[17]"),
    ]
    assert result.errors[0].error.startswith("'nope' is not an email address")
    assert result.counts()["created"] == 1


def test_a_key_given_up_earlier_in_the_batch_can_be_taken() -> None:
    """Distinct ids, but row 1 takes the email row 0 gives up: allowed, as row by row."""
    with harness() as h:
        h.ws.upsert_people([PersonUpsert("a", email="k@x.io"), PersonUpsert("b")])
        batch = [PersonUpsert("a", email="new@x.io"), PersonUpsert("b", email="K@x.io")]
        result = h.ws.upsert_columns(PeopleColumns.from_upserts(batch))
        assert result.counts()["updated"] == 2
        assert h.ws.get_person(PersonKey("email", "k@x.io")).record.id == "b"
        # The other way round, the taker comes first and finds the email still held.
        batch = [PersonUpsert("a", email="k@x.io"), PersonUpsert("b", email="b@x.io")]
        result = h.ws.upsert_columns(PeopleColumns.from_upserts(batch))
        assert [e.outcome for e in result.errors] == ["conflict"]


def test_a_load_meeting_a_held_key_claims_nothing_of_it() -> None:
    """New people are claimed whole before anything is read; a key someone holds (here the
    last row's phone) gives that row a conflict and leaves no key of it behind."""
    with harness() as h:
        h.ws.upsert_people([PersonUpsert("held", phone="+15550000009")])
        batch = [
            PersonUpsert(f"n{i}", email=f"n{i}@x.io", phone=f"+1555000000{i}") for i in range(10)
        ]
        result = h.ws.upsert_columns(PeopleColumns.from_upserts(batch))
        assert result.counts() == {"created": 9, "updated": 0, "unchanged": 0, "rejected": 1}
        assert [(e.index, e.outcome) for e in result.errors] == [(9, "conflict")]
        with pytest.raises(NotFound):
            h.ws.get_person(PersonKey("id", "n9"))
        with pytest.raises(NotFound):
            h.ws.get_person(PersonKey("email", "n9@x.io"))
        assert h.ws.get_person(PersonKey("phone", "+15550000009")).record.id == "held"
        assert h.ws.get_person(PersonKey("email", "n8@x.io")).record.id == "n8"
        # "held" has an id and a phone, the nine others an id, an email and a phone.
        assert sorted(Counter(lookups(h).values()).values()) == [2] + [3] * 9
        # Nothing of n9 is held: another load takes its id and email.
        again = h.ws.upsert_columns(
            PeopleColumns.from_upserts([PersonUpsert("n9", email="n9@x.io")])
        )
        assert again.counts()["created"] == 1


@pytest.mark.parametrize(
    ("head", "values"),
    [
        (b"default\x00i", []),
        (b"default\x00e", ["a@b.co", "\u00e9t\u00e9@b.co"]),
        # The keys are split on \x01 when built together; a head or value holding one is
        # built one by one.
        (b"w\x01\x00i", ["a", "b"]),
        (b"default\x00i", ["a\x01", "b"]),
    ],
)
def test_lookup_keys_are_the_head_and_the_utf8_value(head: bytes, values: list[str]) -> None:
    assert lookup_keys(head, values) == [head + v.encode() for v in values]
