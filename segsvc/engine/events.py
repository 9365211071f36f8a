"""Events: what people did, when, with typed properties.

Per event name an append-only columnar log in memory (numpy: who, when, one typed column per
property). An event condition ("did X with these properties at least N times in this window")
is one vectorised mask over the log and a `bincount` per person, exact to the second, never a
loop over events in Python. Between full counts (segment definition, ticks) each leaf keeps
its per-person counts and new events increment them. Durability comes from the operation log
and checkpoints, like every other part of the state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyroaring import BitMap

from segsvc.config import Limits
from segsvc.engine.conditions import All, Any_, Expr, Not
from segsvc.engine.errors import InvalidArgument
from segsvc.engine.index import anniversary_days
from segsvc.engine.leaves import (
    AttrAnniversary,
    AttrEquals,
    AttrExists,
    AttrRange,
    AttrRelative,
    AttrText,
    EventLeaf,
    _text_match,
)
from segsvc.engine.model import PersonKey
from segsvc.engine.values import Timestamp, Value, check_key, check_value

MAX_PROPERTIES = 100


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

    def store(self, kind: type, rows: np.ndarray, values: list[Any], size: int) -> None:
        """Sets `values` (all of one Python type) at `rows`."""
        if kind is str:
            self.codes = _grow(self.codes, size, -1, np.int32)
            code_of, vocabulary = self.code_of, self.vocabulary
            codes = []
            for value in values:
                code = code_of.get(value)
                if code is None:
                    code = code_of[value] = len(vocabulary)
                    vocabulary.append(value)
                codes.append(code)
            self.codes[rows] = codes
        elif kind is bool:
            self.bools = _grow(self.bools, size, -1, np.int8)
            self.bools[rows] = values
        elif kind is float:
            self.numbers = _grow(self.numbers, size, np.nan, np.float64)
            self.numbers[rows] = values
        else:
            self.times = _grow(self.times, size, 0, np.int64)
            self.has_time = _grow(self.has_time, size, False, np.bool_)
            self.times[rows] = [int(v) for v in values]
            self.has_time[rows] = True

    def grow_to(self, size: int) -> None:
        """Keeps every array as long as the log, rows this property is absent from included."""
        if self.codes is not None:
            self.codes = _grow(self.codes, size, -1, np.int32)
        if self.numbers is not None:
            self.numbers = _grow(self.numbers, size, np.nan, np.float64)
        if self.bools is not None:
            self.bools = _grow(self.bools, size, -1, np.int8)
        if self.times is not None:
            self.times = _grow(self.times, size, 0, np.int64)
        if self.has_time is not None:
            self.has_time = _grow(self.has_time, size, False, np.bool_)


def _grow(array: np.ndarray | None, size: int, fill: Any, dtype: Any) -> np.ndarray:
    if array is None:
        return np.full(max(size, 16), fill, dtype=dtype)
    if len(array) >= size:
        return array
    grown = np.full(max(size, len(array) * 2), fill, dtype=dtype)
    grown[: len(array)] = array
    return grown


class EventLog:
    """Every stored event of one name, in arrival order."""

    def __init__(self) -> None:
        self.size = 0
        self.ordinals = np.zeros(16, dtype=np.uint32)
        self.times = np.zeros(16, dtype=np.int64)
        self.columns: dict[str, _Column] = {}

    def append(self, rows: list[tuple[int, int, dict[str, Value]]]) -> tuple[int, int]:
        """Appends events column by column; returns the range of rows they now occupy."""
        start, end = self.size, self.size + len(rows)
        self.ordinals = _grow(self.ordinals, end, 0, np.uint32)
        self.times = _grow(self.times, end, 0, np.int64)
        self.ordinals[start:end] = np.fromiter((r[0] for r in rows), np.uint32, len(rows))
        self.times[start:end] = np.fromiter((r[1] for r in rows), np.int64, len(rows))
        # property -> value type -> (rows, values): one vectorised store per group.
        groups: dict[str, dict[type, tuple[list[int], list[Any]]]] = {}
        for row, (_, _, props) in enumerate(rows, start):
            for key, value in props.items():
                by_type = groups.get(key)
                if by_type is None:
                    by_type = groups[key] = {}
                group = by_type.get(type(value))
                if group is None:
                    group = by_type[type(value)] = ([], [])
                group[0].append(row)
                group[1].append(value)
        for key, by_type in groups.items():
            col = self.columns.get(key)
            if col is None:
                col = self.columns[key] = _Column()
            for kind, (where, values) in by_type.items():
                col.store(kind, np.asarray(where, dtype=np.int64), values, end)
        for col in self.columns.values():
            col.grow_to(end)
        self.size = end
        return start, end

    def keep(self, rows: np.ndarray) -> None:
        """Keeps only the rows where `rows` is True (retention, deleted people)."""
        n = self.size
        self.ordinals = self.ordinals[:n][rows].copy()
        self.times = self.times[:n][rows].copy()
        for col in self.columns.values():
            for name in ("codes", "numbers", "bools", "times", "has_time"):
                array = getattr(col, name)
                if array is not None:
                    setattr(col, name, array[:n][rows].copy())
        self.size = len(self.ordinals)

    # -- evaluation ---------------------------------------------------------------------------

    def mask(self, leaf: EventLeaf, now: int, start: int = 0, end: int | None = None) -> np.ndarray:
        """Which events of rows [start, end) count for the leaf: in its window and matching
        every filter."""
        end = self.size if end is None else end
        n = end - start
        times = self.times[start:end]
        if leaf.within_last_seconds is not None:
            rows = (times >= now - leaf.within_last_seconds) & (times <= now)
        elif leaf.start is not None and leaf.end is not None:
            rows = (times >= int(leaf.start)) & (times <= int(leaf.end))
        else:
            rows = np.ones(n, dtype=np.bool_)
        for expr in leaf.filters:
            rows &= self._filter(expr, now, start, end)
        return rows

    def counts(self, leaf: EventLeaf, now: int, people: int) -> np.ndarray:
        """How many counting events each ordinal below `people` has."""
        chosen = self.ordinals[: self.size][self.mask(leaf, now)]
        return np.bincount(chosen, minlength=people)[:people].astype(np.int32)

    def _filter(self, expr: Expr, now: int, start: int, end: int) -> np.ndarray:
        n = end - start
        if isinstance(expr, All):
            out = np.ones(n, dtype=np.bool_)
            for child in expr.children:
                out &= self._filter(child, now, start, end)
            return out
        if isinstance(expr, Any_):
            out = np.zeros(n, dtype=np.bool_)
            for child in expr.children:
                out |= self._filter(child, now, start, end)
            return out
        if isinstance(expr, Not):
            return ~self._filter(expr.child, now, start, end)
        col = self.columns.get(expr.key[2:])  # type: ignore[union-attr]
        if col is None:
            return np.zeros(n, dtype=np.bool_)
        return _column_mask(col, expr, start, end, now)


def _column_mask(col: _Column, leaf: Any, start: int, end: int, now: int) -> np.ndarray:
    none = np.zeros(end - start, dtype=np.bool_)
    codes = None if col.codes is None else col.codes[start:end]
    numbers = None if col.numbers is None else col.numbers[start:end]
    bools = None if col.bools is None else col.bools[start:end]
    times = None if col.times is None else col.times[start:end]
    has_time = None if col.has_time is None else col.has_time[start:end]
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


class EventStore:
    """Every event log of one workspace."""

    def __init__(self) -> None:
        self.logs: dict[str, EventLog] = {}

    def append(
        self, rows: Iterable[tuple[int, str, int, dict[str, Value]]]
    ) -> dict[str, tuple[int, int]]:
        """Appends events; returns, per event name, the rows they occupy in its log."""
        by_name: dict[str, list[tuple[int, int, dict[str, Value]]]] = {}
        for ordinal, name, ts, props in rows:
            by_name.setdefault(name, []).append((ordinal, ts, props))
        ranges = {}
        for name, chosen in by_name.items():
            log = self.logs.get(name)
            if log is None:
                log = self.logs[name] = EventLog()
            ranges[name] = log.append(chosen)
        return ranges

    def counts(self, leaf: EventLeaf, now: int, people: int) -> np.ndarray:
        log = self.logs.get(leaf.name)
        if log is None:
            return np.zeros(people, dtype=np.int32)
        return log.counts(leaf, now, people)

    def prune(self, before: int, dead: BitMap) -> int:
        """Drops events older than `before` and those of deleted people; returns how many."""
        dropped = 0
        dead_array = np.asarray(list(dead), dtype=np.uint32)
        for name in list(self.logs):
            log = self.logs[name]
            n = log.size
            keep = log.times[:n] >= before
            if len(dead_array):
                keep &= ~np.isin(log.ordinals[:n], dead_array)
            if keep.all():
                continue
            dropped += int(n - keep.sum())
            log.keep(keep)
            if log.size == 0:
                del self.logs[name]
        return dropped

    def oldest(self) -> int:
        """The time of the oldest stored event (a large number when there are none)."""
        return min(
            (int(log.times[: log.size].min()) for log in self.logs.values() if log.size),
            default=2**62,
        )

    def total(self) -> int:
        return sum(log.size for log in self.logs.values())

    # -- checkpoints ----------------------------------------------------------------------------

    def to_plain(self) -> Any:
        out = {}
        for name, log in self.logs.items():
            n = log.size
            columns = {}
            for key, col in log.columns.items():
                columns[key] = [
                    None if col.codes is None else col.codes[:n].tobytes(),
                    col.vocabulary,
                    None if col.numbers is None else col.numbers[:n].tobytes(),
                    None if col.bools is None else col.bools[:n].tobytes(),
                    None if col.times is None else col.times[:n].tobytes(),
                    None if col.has_time is None else col.has_time[:n].tobytes(),
                ]
            out[name] = [n, log.ordinals[:n].tobytes(), log.times[:n].tobytes(), columns]
        return out

    @classmethod
    def from_plain(cls, data: Any) -> EventStore:
        store = cls()
        for name, (n, ordinals, times, columns) in data.items():
            log = EventLog()
            log.size = n
            log.ordinals = np.frombuffer(ordinals, dtype=np.uint32).copy()
            log.times = np.frombuffer(times, dtype=np.int64).copy()
            for key, (codes, vocab, numbers, bools, ts, has_time) in columns.items():
                col = _Column()
                col.vocabulary = list(vocab)
                col.code_of = {v: i for i, v in enumerate(vocab)}
                if codes is not None:
                    col.codes = np.frombuffer(codes, dtype=np.int32).copy()
                if numbers is not None:
                    col.numbers = np.frombuffer(numbers, dtype=np.float64).copy()
                if bools is not None:
                    col.bools = np.frombuffer(bools, dtype=np.int8).copy()
                if ts is not None:
                    col.times = np.frombuffer(ts, dtype=np.int64).copy()
                if has_time is not None:
                    col.has_time = np.frombuffer(has_time, dtype=np.bool_).copy()
                log.columns[key] = col
            store.logs[name] = log
        return store
