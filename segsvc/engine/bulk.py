"""Bulk loads: many people as columns, resolved against storage column by column (the
columns and their checks: segsvc.engine.bulk_columns).

A row of `PeopleColumns` means exactly what the `PersonUpsert` it stands for means
(`PeopleColumns.upserts()` gives them), and a batch of rows ends exactly as the same upserts
would through `Workspace.upsert_people`: the same people, outcomes, errors, index and
membership changes. The difference is the cost: validation is one pass per column (joined
strings and regular expressions, numpy masks), lookups are batched, and the index changes
are built per column (`IndexDelta`) rather than diffed record by record.

Rows that depend on each other in one batch (the same id twice; two rows claiming one email
or phone; a row claiming a key another row of the batch holds) make the order of the rows
matter; such a batch is resolved by the person-by-person path, row after row, instead.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain, repeat
from typing import Any, cast

import msgpack
import numpy as np

from segsvc.engine.bulk_columns import (
    ATTRIBUTE_VALUES,
    CREATED,
    OUTCOME_CODES,
    OUTCOME_WORDS,
    REJECTED,
    UNCHANGED,
    UPDATED,
    AttributeColumn,
    BulkResult,
    Checked,
    Column,
    PeopleColumns,
    check_columns,
)
from segsvc.engine.index import FieldValues, IndexDelta, u32s
from segsvc.engine.model import ItemResult
from segsvc.engine.people import PersonUpsert, unpack_value
from segsvc.engine.values import (
    Timestamp,
    Value,
)
from segsvc.storage.records import seal

# The columns and their checks live in segsvc.engine.bulk_columns; they are named here too,
# so that a bulk load is one import for its callers (the API, the workspace).
__all__ = [
    "ATTRIBUTE_VALUES",
    "CREATED",
    "OUTCOME_CODES",
    "OUTCOME_WORDS",
    "REJECTED",
    "UNCHANGED",
    "UPDATED",
    "AttributeColumn",
    "BulkResult",
    "Checked",
    "Column",
    "PeopleColumns",
    "Plan",
    "Reader",
    "check_columns",
    "plan_columns",
    "upserts_for_rows",
]

# -- resolution --------------------------------------------------------------------------------


class Reader:
    """What resolving a batch reads from storage, in batches."""

    def ordinals(self, kind: str, values: Sequence[str]) -> list[int | None]:
        raise NotImplementedError

    def keys(self, kind: str, values: Sequence[str]) -> list[bytes]:
        """The lookup keys of `values`."""
        raise NotImplementedError

    def records(self, ordinals: Sequence[int]) -> list[list[Any]]:
        """The stored records (their plain msgpack form) of existing people."""
        raise NotImplementedError

    def claim_new(self, claims: Mapping[str, tuple[Sequence[str], Sequence[int]]]) -> bool:
        """Gives each key (kind -> keys and the ordinals taking them) to its ordinal when
        none of them is held yet, and says so; when one is, claims nothing."""
        raise NotImplementedError


@dataclass
class Plan:
    """What a batch writes: the index delta for the log, the people records and lookup
    rows for the tables, and the answer."""

    result: BulkResult
    delta: IndexDelta | None
    # ordinal -> stored record, as two lists
    ordinals: list[int]
    records: Iterable[bytes]  # packed as they are written (see _records)
    # kind (id, email, phone) -> the keys people take, and whose they become
    claims: dict[str, tuple[list[str], list[int]]]
    frees: list[tuple[str, str]]  # (kind, key)
    # What a load of new people claimed while it planned (Reader.claim_new): already in
    # this node's lookup table, but part of the rows the batch stores all the same.
    claimed_early: dict[str, tuple[list[str], list[int]]] = field(default_factory=dict)


def plan_columns(
    cols: PeopleColumns,
    checked: Checked,
    first_index: int,
    now: int,
    next_ordinal: int,
    reader: Reader,
) -> Plan | None:
    """The batch resolved against storage, or None when its rows depend on each other
    (the caller then takes the person-by-person path)."""
    n = len(cols)
    ids = cols.ids
    outcomes = np.zeros(n, dtype=np.uint8)
    errors: dict[int, ItemResult] = {
        row: ItemResult(first_index + row, ids[row], "invalid", d, f)
        for row, (d, f) in checked.errors.items()
    }
    # Most batches have no invalid rows and (a load) nobody who exists yet: the lists below
    # are then the columns themselves, without a loop per row.
    valid = [row for row in range(n) if row not in errors] if errors else list(range(n))
    valid_ids = [ids[row] for row in valid] if errors else ids
    if len(set(valid_ids)) != len(valid_ids):
        return None
    # A load of new people, each with keys of their own, claims every id, email and phone
    # at once: no read first (the write finds a taken key, and then nothing is claimed).
    fresh_keys = {
        kind: _given_keys(column, valid, errors) for kind, column in _key_columns(checked)
    }
    # kind -> keys, and the ordinals of the new people giving them
    new_claims: dict[str, tuple[list[str], list[int]]] = {}
    if not errors and None not in fresh_keys.values():
        new_claims["id"] = (ids, list(range(next_ordinal, next_ordinal + n)))
        for kind, got in fresh_keys.items():
            assert got is not None
            new_claims[kind] = (got[1], (np.asarray(got[2], np.int64) + next_ordinal).tolist())
    claimed_all = bool(new_claims) and reader.claim_new(new_claims)
    found = [None] * n if claimed_all else reader.ordinals("id", valid_ids)
    existing: dict[int, int] = {}
    if found.count(None) != len(found):
        existing = {row: o for row, o in zip(valid, found, strict=True) if o is not None}
    old: dict[int, list[Any]] = {}
    if existing:
        old = dict(zip(existing, reader.records(list(existing.values())), strict=True))
    in_batch = set(existing.values())

    # Emails and phones each row ends with, and those it newly claims.
    keys: dict[str, list[str | None]] = {}
    # kind -> the keys claimed and the rows claiming them, in row order
    claims: dict[str, tuple[list[str], list[int]]] = {}
    for (kind, column), slot in zip(_key_columns(checked), (3, 4), strict=True):
        if not old:
            # Only new people (the usual bulk load): every key given is claimed.
            got = fresh_keys[kind]
            if got is None:
                return None
            ends, claims[kind] = got[0], (got[1], got[2])
        else:
            ends, claimed = [], {}
            for row in valid:
                before = old[row][slot] if row in old else None
                given = None if column is None else column[row]
                after = before if given is None else (given or None)
                ends.append(after)
                if after and after != before:
                    if after in claimed:
                        return None
                    claimed[after] = row
            claims[kind] = (list(claimed), list(claimed.values()))
        # Per row of the batch (None for rows that failed validation).
        by_row = ends
        if len(valid) != n:
            by_row = [None] * n
            for row, end in zip(valid, ends, strict=True):
                by_row[row] = end
        keys[kind] = by_row
    for kind in ("email", "phone"):
        if claimed_all:
            break
        values, rows = claims[kind]
        holders = reader.ordinals(kind, values)
        if holders.count(None) == len(holders):
            continue
        for value, row, holder in zip(values, rows, holders, strict=True):
            if holder is None or holder == existing.get(row):
                continue
            if holder in in_batch:
                return None
            if row not in errors:
                errors[row] = ItemResult(
                    first_index + row,
                    ids[row],
                    "conflict",
                    f"{kind} {value!r} already belongs to another person",
                    _key_path(cols, kind, first_index + row),
                )
    for row in errors:
        outcomes[row] = REJECTED

    builder = _DeltaBuilder(now)
    frees: list[tuple[str, str]] = []
    tags = cols.row_tags() if cols.tag_counts is not None else None
    new_rows = valid
    if errors or existing:
        new_rows = [row for row in valid if row not in errors and row not in existing]
    _created(cols, checked, new_rows, next_ordinal, now, keys, tags, builder)
    outcomes[new_rows] = CREATED
    new_ordinals = list(range(next_ordinal, next_ordinal + len(new_rows)))
    record_ordinals = list(new_ordinals)
    # The keys the created people take (a load's claim has written them already).
    lookups: dict[str, tuple[list[str], list[int]]] = {}
    if not claimed_all:
        lookups["id"] = ([ids[row] for row in new_rows], new_ordinals)
        for kind in ("email", "phone"):
            ends = keys[kind]
            taken: list[tuple[str, int]] = []
            for row, o in zip(new_rows, new_ordinals, strict=True):
                end = ends[row]
                if end:
                    taken.append((end, o))
            lookups[kind] = ([v for v, _ in taken], [o for _, o in taken])
    for row, ordinal in existing.items():
        if row in errors:
            continue
        email, phone = keys["email"][row], keys["phone"][row]
        record = builder.update(
            ordinal, old[row], cols, checked, row, email, phone, tags[row] if tags else ()
        )
        if record is None:
            outcomes[row] = UNCHANGED
            continue
        outcomes[row] = UPDATED
        record_ordinals.append(ordinal)
        builder.records.append(record)
        for kind, after, before in (("email", email, old[row][3]), ("phone", phone, old[row][4])):
            if after != before:
                if before:
                    frees.append((kind, before))
                if after:
                    lookups[kind][0].append(after)
                    lookups[kind][1].append(ordinal)
    result = BulkResult(outcomes, [errors[row] for row in sorted(errors)])
    delta = builder.delta() if record_ordinals else None
    records = chain(builder.created, builder.records)
    early = new_claims if claimed_all else {}
    return Plan(result, delta, record_ordinals, records, lookups, frees, early)


def _key_columns(checked: Checked) -> tuple[tuple[str, list[str | None] | None], ...]:
    return (("email", checked.emails), ("phone", checked.phones))


def _given_keys(
    column: list[str | None] | None, valid: list[int], errors: dict[int, ItemResult]
) -> tuple[list[str | None], list[str], list[int]] | None:
    """For a batch of new people: the key each valid row ends with (None: none), and the
    keys given with the rows giving them; None when two rows give the same key."""
    if column is None:
        ends: list[str | None] = [None] * len(valid)
    elif errors:
        ends = [column[row] or None for row in valid]
    else:
        ends = column if "" not in column else [v or None for v in column]
    if ends.count(None):
        values = list(filter(None, ends))
        rows = [row for v, row in zip(ends, valid, strict=True) if v]
    else:
        values, rows = cast(list[str], ends), valid  # no None in it
    if len(set(values)) != len(values):
        return None
    return ends, values, rows


def _key_path(cols: PeopleColumns, kind: str, position: int) -> str:
    column = cols.emails if kind == "email" else cols.phones
    assert column is not None
    return f"{column.path}[{position}]"


class _DeltaBuilder:
    """Collects a batch's index changes: whole columns for the people it creates, value
    pairs for the people it updates."""

    def __init__(self, now: int) -> None:
        self.now = now
        self.adds: dict[str, list[FieldValues]] = defaultdict(list)
        self.removes: dict[str, list[FieldValues]] = defaultdict(list)
        self.add_pairs: dict[str, list[tuple[int, Value]]] = defaultdict(list)
        self.remove_pairs: dict[str, list[tuple[int, Value]]] = defaultdict(list)
        self.tag_gains: dict[str, list[int]] = defaultdict(list)
        self.born: np.ndarray = np.zeros(0, dtype=np.uint32)
        self.created: Iterable[bytes] = ()
        self.records: list[bytes] = []

    def update(
        self,
        ordinal: int,
        old: list[Any],
        cols: PeopleColumns,
        checked: Checked,
        row: int,
        email: str | None,
        phone: str | None,
        tags: tuple[str, ...],
    ) -> bytes | None:
        """An existing person's new stored record, or None when nothing changes; records
        their index moves."""
        pid, created, _updated, old_email, old_phone, unsub, old_attrs, old_tags, devices = old
        attrs = old_attrs
        moves: list[tuple[str, Value | None, Value | None]] = []
        for attribute, column in zip(cols.attributes, checked.attributes, strict=True):
            value = column.value(row)
            if value is None:
                continue
            stored = int(value) if type(value) is Timestamp else value
            before = old_attrs.get(attribute.name)
            if before is not None and type(before) is type(stored) and before == stored:
                continue
            if attrs is old_attrs:
                attrs = dict(old_attrs)
            attrs[attribute.name] = stored
            moves.append(
                ("a:" + attribute.name, None if before is None else unpack_value(before), value)
            )
        new_unsub = unsub
        if cols.unsubscribed is not None:
            given = cols.unsubscribed.value(row)
            if given is not None and given != unsub:
                new_unsub = bool(given)
                moves.append(("$unsubscribed", unsub, new_unsub))
        new_created = created
        if cols.created_at is not None:
            given = cols.created_at.value(row)
            if given is not None and int(given) != created:
                new_created = int(given)
                moves.append(("$created_at", Timestamp(created), Timestamp(new_created)))
        if email != old_email:
            moves.append(("$email", old_email, email))
        if phone != old_phone:
            moves.append(("$phone", old_phone, phone))
        gained = sorted(set(tags) - set(old_tags))
        if not moves and not gained:
            return None
        for key, before_value, after_value in moves:
            if before_value is not None:
                self.remove_pairs[key].append((ordinal, before_value))
            if after_value is not None:
                self.add_pairs[key].append((ordinal, after_value))
        for tag in gained:
            self.tag_gains[tag].append(ordinal)
        new_tags = sorted(set(old_tags) | set(tags)) if gained else old_tags
        plain = [pid, new_created, self.now, email, phone, new_unsub, attrs, new_tags, devices]
        return seal(msgpack.packb(plain, use_bin_type=True))

    def delta(self) -> IndexDelta:
        adds = {k: list(v) for k, v in self.adds.items()}
        removes = {k: list(v) for k, v in self.removes.items()}
        for table, pairs in ((adds, self.add_pairs), (removes, self.remove_pairs)):
            for key, items in pairs.items():
                table.setdefault(key, []).extend(FieldValues.split(items))
        empty = u32s([])
        return IndexDelta(
            born=u32s(self.born),
            removes=removes,
            adds=adds,
            tags={tag: (u32s(people), empty) for tag, people in self.tag_gains.items()},
        )


def _created(
    cols: PeopleColumns,
    checked: Checked,
    rows: list[int],
    first_ordinal: int,
    now: int,
    keys: dict[str, list[str | None]],
    tags: list[tuple[str, ...]] | None,
    builder: _DeltaBuilder,
) -> None:
    """The people a batch creates, column by column: their index columns and records."""
    count = len(rows)
    if not count:
        return
    n = len(cols)
    picked = np.asarray(rows, dtype=np.int64)
    ordinals = np.arange(first_ordinal, first_ordinal + count, dtype=np.uint32)
    # row -> place among the created rows (-1: not created)
    place = np.full(n, -1, dtype=np.int64)
    place[picked] = np.arange(count)
    builder.born = ordinals
    # Every row (a load of new people): the columns as they are.
    everyone = count == n

    def picked_of(values: list[Any]) -> list[Any]:
        return values if everyone else list(map(values.__getitem__, rows))

    ids = picked_of(cols.ids)
    emails = picked_of(keys["email"])
    phones = picked_of(keys["phone"])
    # name -> the places (ascending) of the created people with a value, and the values
    attr_columns: list[tuple[str, np.ndarray, Any]] = []
    for attribute, column in zip(cols.attributes, checked.attributes, strict=True):
        selected = column.rows(n)
        selected = selected[place[selected] >= 0]
        if not len(selected):
            continue
        where = place[selected]
        if column.kind == "string":
            values: Any = list(map(column.values.__getitem__, selected.tolist()))
        else:
            values = column.values[selected]
        builder.adds["a:" + attribute.name].append(
            FieldValues(column.kind, ordinals[where], values)
        )
        attr_columns.append((attribute.name, where, values))
    created = np.full(count, now, dtype=np.int64)
    if cols.created_at is not None:
        given = cols.created_at.rows(n)
        given = given[place[given] >= 0]
        created[place[given]] = cols.created_at.values[given]
    unsub = np.zeros(count, dtype=bool)
    if cols.unsubscribed is not None:
        given = cols.unsubscribed.rows(n)
        given = given[place[given] >= 0]
        unsub[place[given]] = cols.unsubscribed.values[given]
    builder.adds["$id"].append(FieldValues("string", ordinals, ids))
    for key, values_of in (("$email", emails), ("$phone", phones)):
        chosen = np.fromiter(map(bool, values_of), bool, count)
        if chosen.any():
            builder.adds[key].append(
                FieldValues("string", ordinals[chosen], list(filter(None, values_of)))
            )
    builder.adds["$created_at"].append(FieldValues("timestamp", ordinals, created))
    builder.adds["$unsubscribed"].append(FieldValues("bool", ordinals, unsub))
    row_tags: list[Any] = [()] * count
    if tags is not None:
        assert cols.tag_counts is not None
        row_tags = picked_of(tags)
        if everyone:
            row_tags = list(row_tags)
        # Stored tags are sorted and distinct.
        for k in np.flatnonzero(cols.tag_counts[picked] > 1).tolist():
            row_tags[k] = sorted(set(row_tags[k]))
        for tag, places in _tag_places(cols, place).items():
            builder.tag_gains[tag].extend((places + first_ordinal).tolist())
    builder.created = _records(now, attr_columns, ids, created, emails, phones, unsub, row_tags)


# People whose stored records are built at a time (see _records).
RECORDS_CHUNK = 4096


def _records(
    now: int,
    attr_columns: list[tuple[str, np.ndarray, Any]],
    ids: list[str],
    created: np.ndarray,
    emails: list[str | None],
    phones: list[str | None],
    unsub: np.ndarray,
    row_tags: list[Any],
) -> Iterator[bytes]:
    """The stored records of the people a batch creates, built a chunk at a time as LMDB
    takes them: a chunk's attribute dicts and records are freed before the next is built,
    so the memory of one chunk serves them all instead of a batch's worth of fresh pages
    (page faults cost more than building lazily)."""
    count = len(ids)
    # One packer per batch (a packer is not thread-safe; msgpack.packb makes one per call).
    pack = msgpack.Packer(use_bin_type=True).pack
    for low in range(0, count, RECORDS_CHUNK):
        high = min(low + RECORDS_CHUNK, count)
        attrs: list[dict[str, Any]] = [{} for _ in range(high - low)]
        for name, where, values in attr_columns:
            start, stop = np.searchsorted(where, (low, high)).tolist()
            chunk = values[start:stop]
            plain = chunk if isinstance(chunk, list) else chunk.tolist()
            if stop - start == high - low:
                # `where` ascends: as long as the chunk, it is everyone in it, in order.
                for person, value in zip(attrs, plain, strict=True):
                    person[name] = value
                continue
            for k, value in zip((where[start:stop] - low).tolist(), plain, strict=True):
                attrs[k][name] = value
        # Each record checksummed as PersonRecord.encode does.
        yield from map(
            seal,
            map(
                pack,
                map(
                    list,
                    zip(
                        ids[low:high],
                        created[low:high].tolist(),
                        repeat(now),
                        emails[low:high],
                        phones[low:high],
                        unsub[low:high].tolist(),
                        attrs,
                        row_tags[low:high],
                        repeat({}),
                    ),
                ),
            ),
        )


def _tag_places(cols: PeopleColumns, place: np.ndarray) -> dict[str, np.ndarray]:
    """Per tag, the places (in `place`) of the rows given it, each once."""
    assert cols.tag_counts is not None
    owners = place[np.repeat(np.arange(len(cols)), cols.tag_counts)].tolist()
    places: dict[str, list[int]] = defaultdict(list)
    for owner, tag in zip(owners, cols.tags, strict=True):
        if owner >= 0:
            places[tag].append(owner)
    return {tag: np.unique(mine) for tag, mine in places.items()}


def upserts_for_rows(cols: PeopleColumns, checked: Checked) -> list[tuple[int, PersonUpsert]]:
    """The rows that passed validation as (row, PersonUpsert) in stored form, for the
    person-by-person path."""
    canonical = replace(
        cols,
        attributes=tuple(
            replace(a, column=c) for a, c in zip(cols.attributes, checked.attributes, strict=True)
        ),
    )
    out = []
    for row, upsert in enumerate(canonical.upserts()):
        if row in checked.errors:
            continue
        email = None if checked.emails is None else checked.emails[row]
        phone = None if checked.phones is None else checked.phones[row]
        out.append((row, replace(upsert, email=email, phone=phone)))
    return out
