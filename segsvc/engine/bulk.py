"""Bulk loads: many people as columns, checked and resolved column by column.

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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain, pairwise, repeat
from typing import Any, cast

import msgpack
import numpy as np

from segsvc.config import Limits
from segsvc.engine.errors import InvalidArgument
from segsvc.engine.index import KIND_DTYPES, FieldValues, IndexDelta, u32s
from segsvc.engine.key_lines import ascii_controls, plain_emails, plain_phones
from segsvc.engine.model import ItemResult
from segsvc.engine.people import PersonUpsert, check_name, unpack_value
from segsvc.engine.values import (
    CONTROL_CHARACTERS,
    MAX_TIMESTAMP,
    MIN_TIMESTAMP,
    Kind,
    Timestamp,
    Value,
    check_key,
    kind_of,
    normalize_email,
    normalize_phone,
)
from segsvc.storage.records import seal

# Row outcomes, as codes: `BulkResult.outcomes[i]` for row i.
REJECTED, CREATED, UPDATED, UNCHANGED = 0, 1, 2, 3
OUTCOME_WORDS = {CREATED: "created", UPDATED: "updated", UNCHANGED: "unchanged"}
OUTCOME_CODES = {word: code for code, word in OUTCOME_WORDS.items()}

# How the wire form names an attribute column's values, per kind.
ATTRIBUTE_VALUES: dict[Kind, str] = {
    "string": "strings.values",
    "number": "numbers.values",
    "bool": "bools.values",
    "timestamp": "timestamps.seconds",
}
_FILLERS: dict[Kind, Any] = {"string": "", "number": 0.0, "bool": False, "timestamp": 0}


@dataclass(frozen=True)
class Column:
    """One field of many people: `values[i]` is row i's value where `present[i]` (None:
    every row has one). Strings are a list; numbers, bools and timestamps (seconds) numpy
    arrays. `path` names the values for errors: row i is `path[i]`."""

    kind: Kind
    values: Any
    present: np.ndarray | None
    path: str

    def rows(self, n: int) -> np.ndarray:
        """The rows that carry a value."""
        return np.arange(n) if self.present is None else np.flatnonzero(self.present)

    def slice(self, start: int, stop: int) -> Column:
        present = None if self.present is None else self.present[start:stop]
        return Column(self.kind, self.values[start:stop], present, self.path)

    def value(self, row: int) -> Value | None:
        if self.present is not None and not self.present[row]:
            return None
        return _typed(self.kind, self.values[row])


@dataclass(frozen=True)
class AttributeColumn:
    name: str
    column: Column
    name_path: str


@dataclass(frozen=True)
class PeopleColumns:
    """Many upserts as columns. `tags` holds the tags of row 0, then row 1, ...: row i adds
    `tag_counts[i]` of them (None: no tags). `path` names the whole for errors."""

    ids: list[str]
    path: str = "columns"
    emails: Column | None = None
    phones: Column | None = None
    unsubscribed: Column | None = None
    created_at: Column | None = None
    attributes: tuple[AttributeColumn, ...] = ()
    tags: list[str] = field(default_factory=list)
    tag_counts: np.ndarray | None = None
    # Where `tags` starts in the message's tags (after slicing), for error paths.
    tag_offset: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def from_upserts(rows: Sequence[PersonUpsert], path: str = "columns") -> PeopleColumns:
        """Upserts (of the fields columns carry) as columns, named as the wire form names
        them: one column per attribute and kind, so an attribute holding values of two
        kinds gets two."""
        n = len(rows)

        def column(kind: Kind, cells: list[Any], name: str) -> Column | None:
            if all(c is None for c in cells):
                return None
            present = np.array([c is not None for c in cells], dtype=bool)
            filler = _FILLERS[kind]
            values: Any = [filler if c is None else c for c in cells]
            if kind != "string":
                values = np.array(values, dtype=KIND_DTYPES[kind])
            return Column(kind, values, None if present.all() else present, f"{path}.{name}")

        cells: dict[tuple[str, Kind], list[Any]] = {}
        for i, row in enumerate(rows):
            for name, value in row.attributes.items():
                key = (name, kind_of(value))
                if key not in cells:
                    cells[key] = [None] * n
                cells[key][i] = value
        attributes = []
        for k, ((name, kind), values) in enumerate(cells.items()):
            here = f"attributes[{k}]"
            made = column(kind, values, f"{here}.{ATTRIBUTE_VALUES[kind]}")
            assert made is not None
            attributes.append(AttributeColumn(name, made, f"{path}.{here}.name"))
        created = [None if r.created_at is None else int(r.created_at) for r in rows]
        counts = [len(r.add_tags) for r in rows]
        return PeopleColumns(
            ids=[row.id for row in rows],
            path=path,
            emails=column("string", [r.email for r in rows], "emails.values"),
            phones=column("string", [r.phone for r in rows], "phones.values"),
            unsubscribed=column("bool", [r.unsubscribed for r in rows], "unsubscribed.values"),
            created_at=column("timestamp", created, "created_at.seconds"),
            attributes=tuple(attributes),
            tags=[tag for row in rows for tag in row.add_tags],
            tag_counts=np.array(counts, dtype=np.int64) if any(counts) else None,
        )

    def tag_starts(self) -> np.ndarray:
        """Where each row's tags start in `tags` (one more entry: the end)."""
        assert self.tag_counts is not None
        return np.concatenate(([0], np.cumsum(self.tag_counts)))

    def slice(self, start: int, stop: int) -> PeopleColumns:
        def cut(column: Column | None) -> Column | None:
            return None if column is None else column.slice(start, stop)

        tags, counts, offset = self.tags, self.tag_counts, self.tag_offset
        if counts is not None:
            starts = self.tag_starts()
            tags = tags[int(starts[start]) : int(starts[min(stop, len(self))])]
            counts = counts[start:stop]
            offset += int(starts[start])
        return PeopleColumns(
            ids=self.ids[start:stop],
            path=self.path,
            emails=cut(self.emails),
            phones=cut(self.phones),
            unsubscribed=cut(self.unsubscribed),
            created_at=cut(self.created_at),
            attributes=tuple(
                replace(a, column=a.column.slice(start, stop)) for a in self.attributes
            ),
            tags=tags,
            tag_counts=counts,
            tag_offset=offset,
        )

    def row_tags(self) -> list[tuple[str, ...]]:
        if self.tag_counts is None:
            return [()] * len(self)
        starts = self.tag_starts().tolist()
        return [tuple(self.tags[a:b]) for a, b in pairwise(starts)]

    def upserts(self) -> list[PersonUpsert]:
        """Row by row, the PersonUpsert each row stands for."""

        def one(column: Column | None, row: int) -> Any:
            return None if column is None else column.value(row)

        tags = self.row_tags()
        out = []
        for row, pid in enumerate(self.ids):
            attributes: dict[str, Value] = {}
            for attribute in self.attributes:
                value = attribute.column.value(row)
                if value is not None:
                    attributes[attribute.name] = value
            created = one(self.created_at, row)
            out.append(
                PersonUpsert(
                    id=pid,
                    email=one(self.emails, row),
                    phone=one(self.phones, row),
                    unsubscribed=one(self.unsubscribed, row),
                    attributes=attributes,
                    add_tags=tags[row],
                    created_at=None if created is None else Timestamp(created),
                )
            )
        return out


def _typed(kind: Kind, raw: Any) -> Value:
    if kind == "string":
        return str(raw)
    if kind == "number":
        return float(raw)
    if kind == "bool":
        return bool(raw)
    return Timestamp(int(raw))


@dataclass
class BulkResult:
    """Per row an outcome code (REJECTED, CREATED, UPDATED, UNCHANGED); the rejected rows
    as results, in row order."""

    outcomes: np.ndarray
    errors: list[ItemResult]

    def counts(self) -> dict[str, int]:
        tally = np.bincount(self.outcomes, minlength=4).tolist()
        return {
            "created": tally[CREATED],
            "updated": tally[UPDATED],
            "unchanged": tally[UNCHANGED],
            "rejected": tally[REJECTED],
        }

    def results(self, ids: Sequence[str], first_index: int) -> list[ItemResult]:
        """Every row as an ItemResult (for calls that answer per item)."""
        errors = {e.index: e for e in self.errors}
        out = []
        for row, code in enumerate(self.outcomes.tolist()):
            index = first_index + row
            if code == REJECTED:
                out.append(errors[index])
            else:
                out.append(ItemResult(index, ids[row], OUTCOME_WORDS[code]))
        return out


# -- validation --------------------------------------------------------------------------------


@dataclass
class Checked:
    """The rows that failed validation (row -> (what is wrong, field path)), and the emails
    and phones in stored form (per row; None where the row sets none, "" removes)."""

    errors: dict[int, tuple[str, str]]
    emails: list[str | None] | None
    phones: list[str | None] | None
    # Attribute values with -0.0 folded into 0.0, per column.
    attributes: list[Column]


def check_columns(
    cols: PeopleColumns, limits: Limits, first_index: int, default_region: str | None
) -> Checked:
    """Validates every row as `validate_upsert` would, column by column; the first problem
    of a row (in the order id, email, phone, attributes, tags, created_at) is its error."""
    n = len(cols)
    errors: dict[int, tuple[str, str]] = {}

    def fail(row: int, description: str, path: str) -> None:
        errors.setdefault(row, (description, path))

    def at(path: str, row: int) -> str:
        return f"{path}[{first_index + row}]"

    ids = cols.ids
    if not _all_keys(ids, 256):
        for row, pid in enumerate(ids):
            try:
                check_key(pid, "the person id", at(f"{cols.path}.ids", row))
            except InvalidArgument as exc:
                fail(row, exc.violations[0].description, exc.violations[0].field)
    emails = _normalized(cols.emails, plain_emails, 254, normalize_email, fail, at, True)
    phones = _normalized(
        cols.phones,
        plain_phones,
        16,
        lambda raw, field: normalize_phone(raw, field, default_region),
        fail,
        at,
        False,
    )
    attributes = []
    if len(cols.attributes) > limits.max_attributes_per_person:
        per_row = np.zeros(n, dtype=np.int64)
        for attribute in cols.attributes:
            per_row[attribute.column.rows(n)] += 1
        for row in np.flatnonzero(per_row > limits.max_attributes_per_person).tolist():
            fail(
                row,
                f"more than {limits.max_attributes_per_person} attributes",
                f"{cols.path}.attributes",
            )
    seen: dict[str, np.ndarray] = {}
    for attribute in cols.attributes:
        column = attribute.column
        rows = column.rows(n)
        try:
            check_name(attribute.name, "the attribute name", attribute.name_path)
        except InvalidArgument as exc:
            for row in rows.tolist():
                fail(row, exc.violations[0].description, attribute.name_path)
        taken = seen.get(attribute.name)
        if taken is not None:
            for row in rows[taken[rows]].tolist():
                fail(row, f"attribute {attribute.name!r} has a value in two columns", column.path)
            taken[rows] = True
        else:
            seen[attribute.name] = np.zeros(n, dtype=bool)
            seen[attribute.name][rows] = True
        attributes.append(_check_values(column, rows, limits, fail, at))
    if cols.tag_counts is not None:
        _check_tags(cols, limits, fail, at)
    if cols.created_at is not None:
        _check_values(cols.created_at, cols.created_at.rows(n), limits, fail, at)
    return Checked(errors, emails, phones, attributes)


def _all_keys(values: Sequence[str], max_length: int) -> bool:
    """Whether every value passes check_key (non-empty, bounded, printable)."""
    if not values:
        return True
    if max(map(len, values)) > max_length or not all(map(str.strip, values)):
        return False
    joined = "".join(values)
    if joined.isascii():
        return not ascii_controls(joined)
    return CONTROL_CHARACTERS.search(joined) is None


def _normalized(
    column: Column | None,
    plain: Callable[[str, int], bool],
    max_length: int,
    normalize: Callable[[str, str], str],
    fail: Callable[[int, str, str], None],
    at: Callable[[str, int], str],
    fold: bool,
) -> list[str | None] | None:
    """Emails or phones in stored form: checked in one pass when all are already ASCII and
    plain (the usual case), else one by one with the normalizer and its messages."""
    if column is None:
        return None
    # Object arrays: masks and gathers over the strings without a Python loop per value.
    cells = np.array(column.values, dtype=object)
    if column.present is not None:
        cells[~column.present] = None
    given = cells.astype(bool)
    everyone = bool(given.all())
    raw: list[str] = cells.tolist() if everyone else cells[given].tolist()
    if not raw:
        return cast("list[str | None]", cells.tolist())
    stripped = list(map(str.strip, raw))
    joined = "\n".join(stripped)
    if fold:
        # ASCII only: NFC changes nothing and casefold is lower.
        joined = joined.lower()
    fast = (
        joined.isascii()
        and joined.count("\n") == len(raw) - 1
        and max(map(len, stripped)) <= max_length
        and plain(joined, len(raw))
    )
    if fast:
        if everyone:
            return cast("list[str | None]", joined.split("\n"))
        cells[given] = np.array(joined.split("\n"), dtype=object)
        return cast("list[str | None]", cells.tolist())
    values: list[str | None] = cells.tolist()
    rows = np.flatnonzero(given).tolist()
    for row in rows:
        try:
            values[row] = normalize(values[row] or "", at(column.path, row))
        except InvalidArgument as exc:
            fail(row, exc.violations[0].description, exc.violations[0].field)
    return values


def _check_values(
    column: Column,
    rows: np.ndarray,
    limits: Limits,
    fail: Callable[[int, str, str], None],
    at: Callable[[str, int], str],
) -> Column:
    """check_value over a column: the column back in canonical form (-0.0 is 0.0)."""
    kind = column.kind
    values = column.values
    if kind == "string":
        limit = limits.max_string_length
        if values and max(map(len, values)) > limit:
            for row in rows.tolist():
                if len(values[row]) > limit:
                    fail(row, f"string longer than {limit} characters", at(column.path, row))
    elif kind == "number":
        bad = rows[~np.isfinite(values[rows])]
        for row in bad.tolist():
            fail(row, "numbers must be finite (no NaN or infinity)", at(column.path, row))
        return replace(column, values=values + 0.0)
    elif kind == "timestamp":
        picked = values[rows]
        bad = rows[(picked < MIN_TIMESTAMP) | (picked > MAX_TIMESTAMP)]
        for row in bad.tolist():
            fail(row, "timestamp outside the years 1 to 9999", at(column.path, row))
    return column


def _check_tags(
    cols: PeopleColumns,
    limits: Limits,
    fail: Callable[[int, str, str], None],
    at: Callable[[str, int], str],
) -> None:
    assert cols.tag_counts is not None
    counts = cols.tag_counts
    owners = np.repeat(np.arange(len(cols)), counts)
    for tag in set(cols.tags):
        try:
            check_name(tag, "the tag", "")
        except InvalidArgument as exc:
            bad = [j for j, t in enumerate(cols.tags) if t == tag]
            for j in bad:
                row = int(owners[j])
                # The tag's place in the flat list, counted as the client sees the stream.
                fail(row, exc.violations[0].description, f"{cols.path}.tags[{cols.tag_offset + j}]")
    for row in np.flatnonzero(counts > limits.max_tags_per_person).tolist():
        fail(
            row, f"more than {limits.max_tags_per_person} tags", at(f"{cols.path}.tag_counts", row)
        )


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
    return Plan(result, delta, record_ordinals, records, lookups, frees)


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
