"""A bulk load's input and output: people as columns (`PeopleColumns`, each row standing
for one `PersonUpsert`), the checks of every column in one pass each (`check_columns`: joined
strings and regular expressions, numpy masks, with the errors `upsert_people` would give),
and the per-row outcomes (`BulkResult`).

Apart from segsvc.engine.bulk, which resolves checked columns against storage into a plan,
because the shape of the data and its validation are read and changed on their own (the API
builds these columns straight from the wire).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Any, cast

import numpy as np

from segsvc.config import Limits
from segsvc.engine.errors import InvalidArgument
from segsvc.engine.index import KIND_DTYPES
from segsvc.engine.key_lines import ascii_controls, plain_emails, plain_phones
from segsvc.engine.model import ItemResult
from segsvc.engine.people import PersonUpsert, check_name
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

# Row outcomes, as codes: `BulkResult.outcomes[i]` for row i.
REJECTED, CREATED, UPDATED, UNCHANGED, TRACKED = 0, 1, 2, 3, 4
OUTCOME_WORDS = {CREATED: "created", UPDATED: "updated", UNCHANGED: "unchanged", TRACKED: "tracked"}
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

        def column(kind: Kind, cells: list[Any], name: str) -> Column | None:
            return column_of(kind, cells, f"{path}.{name}")

        attributes = typed_columns_of([row.attributes for row in rows], path, "attributes")
        created = [None if r.created_at is None else int(r.created_at) for r in rows]
        counts = [len(r.add_tags) for r in rows]
        return PeopleColumns(
            ids=[row.id for row in rows],
            path=path,
            emails=column("string", [r.email for r in rows], "emails.values"),
            phones=column("string", [r.phone for r in rows], "phones.values"),
            unsubscribed=column("bool", [r.unsubscribed for r in rows], "unsubscribed.values"),
            created_at=column("timestamp", created, "created_at.seconds"),
            attributes=attributes,
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
            attributes = values_at(self.attributes, row)
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


def column_of(kind: Kind, cells: Sequence[Any], path: str) -> Column | None:
    """A column of one value per row (None: the row has none); None when no row has one."""
    if all(c is None for c in cells):
        return None
    present = np.array([c is not None for c in cells], dtype=bool)
    filler = _FILLERS[kind]
    values: Any = [filler if c is None else c for c in cells]
    if kind != "string":
        values = np.array(values, dtype=KIND_DTYPES[kind])
    return Column(kind, values, None if present.all() else present, path)


def typed_columns_of(
    rows: Sequence[Mapping[str, Value]], path: str, field: str
) -> tuple[AttributeColumn, ...]:
    """Named values row by row (attributes, properties) as typed columns, named as the wire
    form names them (`path.field[k]`): one column per name and kind, so a name holding
    values of two kinds gets two."""
    n = len(rows)
    cells: dict[tuple[str, Kind], list[Any]] = {}
    for i, row in enumerate(rows):
        for name, value in row.items():
            key = (name, kind_of(value))
            if key not in cells:
                cells[key] = [None] * n
            cells[key][i] = value
    out = []
    for k, ((name, kind), values) in enumerate(cells.items()):
        here = f"{field}[{k}]"
        made = column_of(kind, values, f"{path}.{here}.{ATTRIBUTE_VALUES[kind]}")
        assert made is not None
        out.append(AttributeColumn(name, made, f"{path}.{here}.name"))
    return tuple(out)


def values_at(columns: Sequence[AttributeColumn], row: int) -> dict[str, Value]:
    """Row `row` of named typed columns, as the map of values it stands for."""
    values: dict[str, Value] = {}
    for typed in columns:
        value = typed.column.value(row)
        if value is not None:
            values[typed.name] = value
    return values


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
    """Per row an outcome code (REJECTED, or one of `reported`); the rejected rows as
    results, in row order."""

    outcomes: np.ndarray
    errors: list[ItemResult]
    # The outcomes rows of this kind of write can have: people are created, updated or
    # unchanged; events tracked.
    reported: tuple[int, ...] = (CREATED, UPDATED, UNCHANGED)

    def counts(self) -> dict[str, int]:
        tally = np.bincount(self.outcomes, minlength=len(OUTCOME_WORDS) + 1).tolist()
        counted = {OUTCOME_WORDS[code]: tally[code] for code in self.reported}
        return counted | {"rejected": tally[REJECTED]}

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

    check_keys(cols.ids, "the person id", f"{cols.path}.ids", fail, at)
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
    attributes = check_typed_columns(
        cols.attributes,
        n,
        TypedRules("attribute", "attributes", limits.max_attributes_per_person, check_name),
        f"{cols.path}.attributes",
        limits,
        fail,
        at,
    )
    if cols.tag_counts is not None:
        _check_tags(cols, limits, fail, at)
    if cols.created_at is not None:
        _check_values(cols.created_at, cols.created_at.rows(n), limits, fail, at)
    return Checked(errors, emails, phones, attributes)


Fail = Callable[[int, str, str], None]
At = Callable[[str, int], str]


def check_keys(values: Sequence[str], what: str, path: str, fail: Fail, at: At) -> None:
    """check_key over a column of keys (ids, event names): one pass over the joined strings
    when all pass, else value by value for the messages."""
    if _all_keys(values, 256):
        return
    for row, value in enumerate(values):
        try:
            check_key(value, what, at(path, row))
        except InvalidArgument as exc:
            fail(row, exc.violations[0].description, exc.violations[0].field)


@dataclass(frozen=True)
class TypedRules:
    """What typed columns hold (a person's attributes, an event's properties): the word for
    one, how many a row may have, and the check of a name."""

    noun: str
    plural: str
    max_per_row: int
    check_name: Callable[[str, str, str], object]


def check_typed_columns(
    columns: Sequence[AttributeColumn],
    n: int,
    rules: TypedRules,
    path: str,
    limits: Limits,
    fail: Fail,
    at: At,
) -> list[Column]:
    """Checks named typed columns of `n` rows as the one-by-one path checks a map of values:
    at most `rules.max_per_row` per row, valid names, one value per name and row, valid
    values. Returns the columns in canonical form."""
    if len(columns) > rules.max_per_row:
        per_row = np.zeros(n, dtype=np.int64)
        for typed in columns:
            per_row[typed.column.rows(n)] += 1
        for row in np.flatnonzero(per_row > rules.max_per_row).tolist():
            fail(row, f"more than {rules.max_per_row} {rules.plural}", path)
    checked = []
    seen: dict[str, np.ndarray] = {}
    for typed in columns:
        column = typed.column
        rows = column.rows(n)
        try:
            rules.check_name(typed.name, f"the {rules.noun} name", typed.name_path)
        except InvalidArgument as exc:
            for row in rows.tolist():
                fail(row, exc.violations[0].description, typed.name_path)
        taken = seen.get(typed.name)
        if taken is not None:
            for row in rows[taken[rows]].tolist():
                fail(row, f"{rules.noun} {typed.name!r} has a value in two columns", column.path)
            taken[rows] = True
        else:
            seen[typed.name] = np.zeros(n, dtype=bool)
            seen[typed.name][rows] = True
        checked.append(_check_values(column, rows, limits, fail, at))
    return checked


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
