"""Events: what people did, when, with typed properties.

Per event name an append-only columnar log in memory (numpy: who, when, one typed column per
property). An event condition ("did X with these properties at least N times in this window")
is one vectorised mask over the log and a `bincount` per person, exact to the second, never a
loop over events in Python. Between full counts (segment definition, ticks) each leaf keeps
its per-person counts and new events increment them. Durability comes from the operation log
and checkpoints, like every other part of the state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segsvc.config import Limits
from segsvc.engine.conditions import All, Any_, Expr, Not
from segsvc.engine.errors import InvalidArgument
from segsvc.engine.index import FieldValues, anniversary_days
from segsvc.engine.leaves import (
    AttrAnniversary,
    AttrEquals,
    AttrExists,
    AttrRange,
    AttrRelative,
    AttrText,
    _text_match,
)
from segsvc.engine.model import PersonKey
from segsvc.engine.values import Kind, Timestamp, Value, check_key, check_value

MAX_PROPERTIES = 100
DAY = 86_400
MIN_TIME = -(2**62)
# A day's rows are merged into one array once they are spread over more chunks than this.
MAX_DAY_CHUNKS = 16
_NO_ROWS = np.zeros(0, dtype=np.uint32)
# A selection of a log's rows: a slice of them or an array of row numbers.
Rows = slice | np.ndarray


@dataclass(frozen=True)
class EventInput:
    """One event as a client sends it; `timestamp` None means now."""

    person: PersonKey
    name: str
    timestamp: Timestamp | None = None
    properties: dict[str, Value] = field(default_factory=dict)


def validate_event(event: EventInput, path: str, limits: Limits) -> dict[str, Value]:
    """Checks name and properties; returns the properties in canonical form."""
    check_key(event.name, "the event name", f"{path}.name")
    if len(event.properties) > MAX_PROPERTIES:
        raise InvalidArgument(f"more than {MAX_PROPERTIES} properties", f"{path}.properties")
    props: dict[str, Value] = {}
    for key, value in event.properties.items():
        check_key(key, "the property name", f"{path}.properties[{key!r}]")
        props[key] = check_value(value, f"{path}.properties[{key!r}]", limits.max_string_length)
    return props


@dataclass(frozen=True)
class PropertyValues:
    """One property of a batch of events, of one kind. In `values` (the columnar form the
    people index takes its bulk updates in) the ordinals are the batch's row numbers that
    have the property, ascending."""

    key: str
    values: FieldValues


@dataclass(frozen=True)
class EventRows:
    """Events of one name as columns, in the order they are appended: who, when, and each
    property's values on the rows that have it. What the operation log records and the
    event logs take in; the events of a call are one EventRows per name."""

    name: str
    ordinals: np.ndarray  # uint32
    times: np.ndarray  # int64
    properties: tuple[PropertyValues, ...] = ()

    def __len__(self) -> int:
        return len(self.ordinals)

    @staticmethod
    def of_events(name: str, rows: Sequence[tuple[int, int, dict[str, Value]]]) -> EventRows:
        """Events given one by one, (ordinal, time, properties), as columns."""
        n = len(rows)
        # property -> (row, value) pairs, properties in order of first appearance.
        pairs: dict[str, list[tuple[int, Value]]] = {}
        for row, (_, _, props) in enumerate(rows):
            for key, value in props.items():
                found = pairs.get(key)
                if found is None:
                    found = pairs[key] = []
                found.append((row, value))
        properties = [
            PropertyValues(key, values)
            for key, found in pairs.items()
            for values in FieldValues.split(found)
        ]
        return EventRows(
            name,
            np.fromiter((r[0] for r in rows), np.uint32, n),
            np.fromiter((r[1] for r in rows), np.int64, n),
            tuple(properties),
        )

    @staticmethod
    def group(events: Sequence[tuple[int, str, int, dict[str, Value]]]) -> list[EventRows]:
        """Events given one by one, (ordinal, name, time, properties), one EventRows per
        name in order of first appearance."""
        by_name: dict[str, list[tuple[int, int, dict[str, Value]]]] = {}
        for ordinal, name, ts, props in events:
            by_name.setdefault(name, []).append((ordinal, ts, props))
        return [EventRows.of_events(name, rows) for name, rows in by_name.items()]

    def to_plain(self) -> list[Any]:
        return [
            self.name,
            self.ordinals.astype("<u4").tobytes(),
            self.times.astype("<i8").tobytes(),
            [[prop.key, prop.values.to_plain()] for prop in self.properties],
        ]

    @classmethod
    def from_plain(cls, data: Any) -> EventRows:
        name, ordinals, times, properties = data
        return cls(
            name,
            np.frombuffer(ordinals, dtype="<u4").astype(np.uint32),
            np.frombuffer(times, dtype="<i8").astype(np.int64),
            tuple(PropertyValues(key, FieldValues.from_plain(v)) for key, v in properties),
        )


class _Column:
    """One property across a log's events, one typed array per value type (an event's
    property has one value, so at most one of them is set per row)."""

    def __init__(self) -> None:
        self.codes: np.ndarray | None = None  # strings: vocabulary code, -1 absent
        self.vocabulary: list[str] = []
        self.code_of: dict[str, int] = {}
        self.numbers: np.ndarray | None = None  # float64, NaN absent
        self.bools: np.ndarray | None = None  # int8: -1 absent, 0, 1
        self.times: np.ndarray | None = None  # int64 with `has_time`
        self.has_time: np.ndarray | None = None

    def store(self, kind: Kind, rows: np.ndarray, values: Any, size: int) -> None:
        """Sets `values` (of one kind: a list of strings, else a numpy array) at `rows`."""
        if kind == "string":
            self.codes = _grow(self.codes, size, -1, np.int32)
            code_of, vocabulary = self.code_of, self.vocabulary
            # New values get codes in order of first appearance (dict.fromkeys keeps it), and
            # the lookup runs in C (map over a dict method): no Python loop per event.
            for value in dict.fromkeys(values):
                if value not in code_of:
                    code_of[value] = len(vocabulary)
                    vocabulary.append(value)
            self.codes[rows] = np.fromiter(map(code_of.__getitem__, values), np.int32, len(rows))
        elif kind == "bool":
            self.bools = _grow(self.bools, size, -1, np.int8)
            self.bools[rows] = values
        elif kind == "number":
            self.numbers = _grow(self.numbers, size, np.nan, np.float64)
            self.numbers[rows] = values
        else:
            self.times = _grow(self.times, size, 0, np.int64)
            self.has_time = _grow(self.has_time, size, False, np.bool_)
            self.times[rows] = values
            self.has_time[rows] = True

    def grow_to(self, size: int) -> None:
        """Keeps every array as long as the log, rows this property is absent from included."""
        for name, fill, dtype in _ARRAYS:
            array = getattr(self, name)
            if array is not None:
                setattr(self, name, _grow(array, size, fill, dtype))

    def take(self, rows: Rows, order: np.ndarray) -> _Column:
        """A column of `order` within `rows`; the vocabulary is shared, so codes stay valid
        while writers keep adding to it."""
        out = _Column()
        out.vocabulary, out.code_of = self.vocabulary, self.code_of
        for name, _, _ in _ARRAYS:
            array = getattr(self, name)
            if array is not None:
                setattr(out, name, array[rows][order])
        return out

    def extend(self, at: int, source: _Column, start: int, end: int) -> None:
        """Copies `source`'s rows [start, end) to this column's rows from `at` on."""
        size = at + end - start
        for name, fill, dtype in _ARRAYS:
            theirs = getattr(source, name)
            if theirs is not None:
                mine = _grow(getattr(self, name), size, fill, dtype)
                mine[at:size] = theirs[start:end]
                setattr(self, name, mine)


# The typed arrays of a column: attribute, value meaning "absent", dtype.
_ARRAYS: tuple[tuple[str, Any, Any], ...] = (
    ("codes", -1, np.int32),
    ("numbers", np.nan, np.float64),
    ("bools", -1, np.int8),
    ("times", 0, np.int64),
    ("has_time", False, np.bool_),
)


def _grow(array: np.ndarray | None, size: int, fill: Any, dtype: Any) -> np.ndarray:
    if array is None:
        return np.full(max(size, 16), fill, dtype=dtype)
    if len(array) >= size:
        return array
    grown = np.full(max(size, len(array) * 2), fill, dtype=dtype)
    grown[: len(array)] = array
    return grown


class EventLog:
    """Every stored event of one name: columns in arrival order, and per UTC day the rows of
    that day's events, so a time range costs the events in it, not the whole log."""

    def __init__(self) -> None:
        self.size = 0
        self.ordinals = np.zeros(16, dtype=np.uint32)
        self.times = np.zeros(16, dtype=np.int64)
        self.columns: dict[str, _Column] = {}
        # day number -> chunks of row numbers (uint32), in arrival order
        self.day_rows: dict[int, list[np.ndarray]] = {}
        self.max_time = MIN_TIME
        self.max_time_before_append = MIN_TIME

    def append(self, rows: list[tuple[int, int, dict[str, Value]]]) -> tuple[int, int]:
        """Appends events given one by one (ordinal, time, properties); returns the range of
        rows they now occupy."""
        return self.append_rows(EventRows.of_events("", rows))

    def append_rows(self, batch: EventRows) -> tuple[int, int]:
        """Appends events column by column; returns the range of rows they now occupy."""
        start, end = self.size, self.size + len(batch)
        self.ordinals = _grow(self.ordinals, end, 0, np.uint32)
        self.times = _grow(self.times, end, 0, np.int64)
        self.ordinals[start:end] = batch.ordinals
        self.times[start:end] = batch.times
        for prop in batch.properties:
            col = self.columns.get(prop.key)
            if col is None:
                col = self.columns[prop.key] = _Column()
            values = prop.values
            rows = values.ordinals.astype(np.int64) + start
            col.store(values.kind, rows, values.values, end)
        for col in self.columns.values():
            col.grow_to(end)
        self.size = end
        # Which earlier events may have been ahead of the clock: see EventLeafIndex.
        self.max_time_before_append = self.max_time
        self._index_days(start, end)
        return start, end

    def _index_days(self, start: int, end: int) -> None:
        if start == end:
            return
        times = self.times[start:end]
        self.max_time = max(self.max_time, int(times.max()))
        days = times // DAY
        for day, rows in group_by_day(days, np.arange(start, end, dtype=np.uint32)):
            chunks = self.day_rows.setdefault(day, [])
            chunks.append(rows)
            if len(chunks) > MAX_DAY_CHUNKS:
                # Many small writes: one array per day keeps range queries to a few copies.
                self.day_rows[day] = [np.concatenate(chunks)]

    def day(self, day: int) -> np.ndarray:
        """The rows of the events of one UTC day."""
        chunks = self.day_rows.get(day)
        if not chunks:
            return _NO_ROWS
        if len(chunks) > 1:
            chunks[:] = [np.concatenate(chunks)]
        return chunks[0]

    def rows_in(self, lo: int, hi: int | None) -> np.ndarray:
        """The rows of the events with lo <= time <= hi (None: no upper bound)."""
        first, last = lo // DAY, None if hi is None else hi // DAY
        parts = []
        for day in self.day_rows:
            if day < first or (last is not None and day > last):
                continue
            rows = self.day(day)
            if day in (first, last):
                times = self.times[rows]
                inside = times >= lo
                if hi is not None:
                    inside &= times <= hi
                rows = rows[inside]
            parts.append(rows)
        if not parts:
            return _NO_ROWS
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def matching(self, filters: frozenset[Any], now: int, lo: int, hi: int | None) -> np.ndarray:
        """The ordinals of the events with lo <= time <= hi that pass every filter, one per
        event (a person appears as often as they count)."""
        first, last = lo // DAY, None if hi is None else hi // DAY
        covered = sum(1 for d in self.day_rows if d >= first and (last is None or d <= last))
        if covered * 2 > len(self.day_rows):
            # Most of the log: one vectorised pass over the columns beats gathering rows.
            n = self.size
            times = self.times[:n]
            keep = times >= lo
            if hi is not None:
                keep &= times <= hi
            keep &= self.passes(filters, now, slice(0, n), n)
            chosen: np.ndarray = self.ordinals[:n][keep]
            return chosen
        return self.ordinals_passing(filters, now, self.rows_in(lo, hi))

    def ordinals_passing(self, filters: frozenset[Any], now: int, rows: np.ndarray) -> np.ndarray:
        """The ordinals of `rows` whose events pass every filter."""
        if not len(rows):
            return _NO_ROWS
        chosen: np.ndarray = self.ordinals[rows]
        if filters:
            chosen = chosen[self.passes(filters, now, rows, len(rows))]
        return chosen

    def passes(self, filters: frozenset[Any], now: int, rows: Rows, n: int) -> np.ndarray:
        """Which of the `n` selected rows pass every filter."""
        out = np.ones(n, dtype=np.bool_)
        for expr in filters:
            out &= self._filter(expr, now, rows, n)
        return out

    def _filter(self, expr: Expr, now: int, rows: Rows, n: int) -> np.ndarray:
        if isinstance(expr, All):
            out = np.ones(n, dtype=np.bool_)
            for child in expr.children:
                out &= self._filter(child, now, rows, n)
            return out
        if isinstance(expr, Any_):
            out = np.zeros(n, dtype=np.bool_)
            for child in expr.children:
                out |= self._filter(child, now, rows, n)
            return out
        if isinstance(expr, Not):
            return ~self._filter(expr.child, now, rows, n)
        col = self.columns.get(expr.key[2:])  # type: ignore[union-attr]
        if col is None:
            return np.zeros(n, dtype=np.bool_)
        return _column_mask(col, expr, rows, n, now)

    # -- compaction ---------------------------------------------------------------------------

    def keep_mask(self, size: int, floor: int, alive: np.ndarray) -> np.ndarray:
        """Which of the first `size` rows any condition may still count: at or after the
        retention floor, of a person alive (`alive` is indexed by ordinal)."""
        keep: np.ndarray = self.times[:size] >= floor
        keep &= alive[self.ordinals[:size]]
        return keep

    def compacted(self, size: int, keep: np.ndarray) -> EventLog:
        """A new log of the first `size` rows where `keep` holds, sorted by time (a day's
        events then sit together). Reads only rows below `size`, which never change, so it
        may run while writers append."""
        order = np.flatnonzero(keep)
        order = order[np.argsort(self.times[:size][order], kind="stable")]
        log = EventLog()
        log.size = len(order)
        log.ordinals = self.ordinals[:size][order]
        log.times = self.times[:size][order]
        for key, col in self.columns.items():
            log.columns[key] = col.take(slice(0, size), order)
        log._index_days(0, log.size)
        return log

    def absorb_tail(self, source: EventLog, start: int) -> None:
        """Appends `source`'s rows from `start` on (the events written during a compaction)."""
        end = source.size
        if end > start:
            n = self.size + end - start
            self.ordinals = np.concatenate([self.ordinals[: self.size], source.ordinals[start:end]])
            self.times = np.concatenate([self.times[: self.size], source.times[start:end]])
            for key, col in source.columns.items():
                mine = self.columns.get(key)
                if mine is None:
                    mine = self.columns[key] = col.take(slice(0, 0), _NO_ROWS)
                    mine.grow_to(self.size)
                mine.extend(self.size, col, start, end)
            for col in self.columns.values():
                col.grow_to(n)
            first, self.size = self.size, n
            self._index_days(first, n)


def _column_mask(col: _Column, leaf: Any, rows: Rows, n: int, now: int) -> np.ndarray:
    none = np.zeros(n, dtype=np.bool_)
    codes = None if col.codes is None else col.codes[rows]
    numbers = None if col.numbers is None else col.numbers[rows]
    bools = None if col.bools is None else col.bools[rows]
    times = None if col.times is None else col.times[rows]
    has_time = None if col.has_time is None else col.has_time[rows]
    if isinstance(leaf, AttrExists):
        out = none.copy()
        if codes is not None:
            out |= codes >= 0
        if numbers is not None:
            out |= ~np.isnan(numbers)
        if bools is not None:
            out |= bools >= 0
        if has_time is not None:
            out |= has_time
        return out
    if isinstance(leaf, AttrEquals):
        if leaf.kind == "string":
            code = col.code_of.get(leaf.value)  # type: ignore[arg-type]
            return none if codes is None or code is None else codes == code
        if leaf.kind == "bool":
            return none if bools is None else bools == int(leaf.value)
        if leaf.kind == "number":
            return none if numbers is None else numbers == float(leaf.value)
        return none if times is None or has_time is None else has_time & (times == int(leaf.value))
    if isinstance(leaf, AttrText):
        if codes is None:
            return none
        # The text test runs once per distinct value; each row then looks its code up. The
        # False appended last answers code -1 (property absent).
        matches = np.fromiter(
            (_text_match(leaf.op, leaf.needle, v) for v in col.vocabulary),
            dtype=np.bool_,
            count=len(col.vocabulary),
        )
        looked_up: np.ndarray = np.append(matches, False)[codes]
        return looked_up
    if isinstance(leaf, AttrRange | AttrRelative):
        if isinstance(leaf, AttrRange):
            kind, low, low_inc, high, high_inc = (
                leaf.kind,
                leaf.low,
                leaf.low_inclusive,
                leaf.high,
                leaf.high_inclusive,
            )
        else:
            kind = "timestamp"
            low, low_inc, high, high_inc = leaf.bounds(now)
        if kind == "number":
            if numbers is None:
                return none
            values: np.ndarray = numbers
            out = ~np.isnan(numbers)
        else:
            if times is None or has_time is None:
                return none
            values, out = times, has_time.copy()
        if low is not None:
            out &= (values >= float(low)) if low_inc else (values > float(low))
        if high is not None:
            out &= (values <= float(high)) if high_inc else (values < float(high))
        return out
    if isinstance(leaf, AttrAnniversary):
        if times is None or has_time is None:
            return none
        days = times.astype("datetime64[s]").astype("datetime64[D]")
        months = days.astype("datetime64[M]")
        month = months.astype(np.int64) % 12 + 1
        day = (days - months.astype("datetime64[D]")).astype(np.int64) + 1
        return has_time & np.isin(month * 100 + day, anniversary_keys(now, leaf.granularity))
    raise TypeError(f"not a property filter: {leaf!r}")


def anniversary_keys(now: int, granularity: str) -> np.ndarray:
    return np.asarray(anniversary_days(now, granularity), dtype=np.int64)


def group_by_day(days: np.ndarray, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(day, rows of that day) for rows whose days are `days`, in arrival order per day."""
    first = days[0]
    if (days == first).all():
        yield int(first), rows
        return
    order = np.argsort(days, kind="stable")
    ordered = days[order]
    cuts = np.flatnonzero(np.diff(ordered)) + 1
    for day, chunk in zip(ordered[np.r_[0, cuts]], np.split(rows[order], cuts), strict=True):
        yield int(day), chunk


class EventStore:
    """Every event log of one workspace."""

    def __init__(self) -> None:
        self.logs: dict[str, EventLog] = {}

    def append(self, batches: Iterable[EventRows]) -> dict[str, tuple[int, int]]:
        """Appends events; returns, per event name, the rows they occupy in its log."""
        ranges = {}
        for batch in batches:
            log = self.logs.get(batch.name)
            if log is None:
                log = self.logs[batch.name] = EventLog()
            ranges[batch.name] = log.append_rows(batch)
        return ranges

    def oldest(self) -> int:
        """The time of the oldest stored event (a large number when there are none)."""
        oldest = 2**62
        for log in self.logs.values():
            if log.day_rows:
                first = log.day(min(log.day_rows))
                oldest = min(oldest, int(log.times[first].min()))
        return oldest

    def total(self) -> int:
        return sum(log.size for log in self.logs.values())

    def stale_rows(self, floor: int) -> int:
        """How many stored events lie in whole days before `floor` (past retention)."""
        first = floor // DAY
        return sum(
            sum(len(chunk) for chunk in chunks)
            for log in self.logs.values()
            for day, chunks in log.day_rows.items()
            if day < first
        )

    # -- checkpoints ----------------------------------------------------------------------------

    def to_plain(self) -> Any:
        """The stored form, but for the arrays: views of the rows so far, turned into bytes
        when the checkpoint is packed (`tobytes`), off the workspace lock. Rows below a
        log's size never change and a growing array is a new one, so the views keep
        showing the rows as they are now."""
        out = {}
        for name, log in self.logs.items():
            n = log.size
            columns = {}
            for key, col in log.columns.items():
                columns[key] = [list(col.vocabulary)] + [
                    None if getattr(col, attr) is None else getattr(col, attr)[:n]
                    for attr, _, _ in _ARRAYS
                ]
            days = [[day, log.day(day)] for day in sorted(log.day_rows)]
            out[name] = [n, log.ordinals[:n], log.times[:n], columns, days, log.max_time]
        return out

    @classmethod
    def from_plain(cls, data: Any) -> EventStore:
        store = cls()
        for name, (n, ordinals, times, columns, days, max_time) in data.items():
            log = EventLog()
            log.size = n
            log.ordinals = np.frombuffer(ordinals, dtype=np.uint32).copy()
            log.times = np.frombuffer(times, dtype=np.int64).copy()
            log.max_time = max_time
            for key, (vocabulary, *arrays) in columns.items():
                col = _Column()
                col.vocabulary = list(vocabulary)
                col.code_of = {v: i for i, v in enumerate(vocabulary)}
                for (attr, _, dtype), raw in zip(_ARRAYS, arrays, strict=True):
                    if raw is not None:
                        setattr(col, attr, np.frombuffer(raw, dtype=dtype).copy())
                log.columns[key] = col
            log.day_rows = {
                day: [np.frombuffer(rows, dtype=np.uint32).copy()] for day, rows in days
            }
            store.logs[name] = log
        return store
