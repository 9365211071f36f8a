"""Leaf conditions: canonical, hashable, each answered two ways that must always agree:
`full` over the whole index (bitmap operations, used when a segment is defined and on ticks)
and `match` for one person's record (used when that person changes)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pyroaring import BitMap

from segsvc.engine.bsi import encode_number, encode_timestamp
from segsvc.engine.index import (
    DEVICES_KEY,
    UNIQUE_FIELDS,
    PeopleIndex,
    anniversary_days,
    field_value,
    tag_key,
)
from segsvc.engine.people import PersonRecord
from segsvc.engine.values import MIN_TIMESTAMP, Kind, Timestamp, Value, kind_of

_BUILTIN_KINDS: dict[str, Kind] = {
    "id": "string",
    "email": "string",
    "phone": "string",
    "created_at": "timestamp",
    "unsubscribed": "bool",
}


def builtin_kind(field: str | None) -> Kind | None:
    return None if field is None else _BUILTIN_KINDS.get(field)


def field_key(attribute: str | None, builtin: str | None) -> str:
    return "$" + builtin if builtin is not None else "a:" + (attribute or "")


def _encode(kind: Kind, value: Value) -> int:
    return encode_number(float(value)) if kind == "number" else encode_timestamp(int(value))


def _limit(bitmap: BitMap | None, within: BitMap | None) -> BitMap:
    """A new bitmap: `bitmap` (None: nobody) restricted to `within` (None: everyone)."""
    if bitmap is None:
        return BitMap()
    return bitmap & within if within is not None else BitMap(bitmap)


def _people(exists: BitMap, within: BitMap | None) -> BitMap:
    return exists & within if within is not None else exists


def _text_match(op: str, needle: str, value: str) -> bool:
    folded = value.casefold()
    if op == "contains":
        return needle in folded
    if op == "starts_with":
        return folded.startswith(needle)
    return folded.endswith(needle)


class _OnField:
    """What every condition on one field shares: it depends on that field, and a person
    matches when their value of it does."""

    key: str
    time_dependent = False

    @property
    def dep(self) -> str:
        return self.key

    def match(self, record: PersonRecord, now: int) -> bool:
        return self.matches_value(field_value(record, self.key), now)

    def matches_value(self, v: Value | None, now: int) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class AttrEquals(_OnField):
    key: str
    # Part of the identity: in Python True == 1.0, but a bool never equals a number here.
    kind: Kind
    value: Value

    def matches_value(self, v: Value | None, now: int) -> bool:
        return v is not None and kind_of(v) == self.kind and v == self.value

    def full(self, index: PeopleIndex, now: int, within: BitMap | None = None) -> BitMap:
        fi = index.field(self.key)
        if fi is None:
            return BitMap()
        if self.key in UNIQUE_FIELDS:
            values = index.unique_values(self.key)
            return BitMap(i for i in _people(fi.exists, within) if values[i] == self.value)
        if self.kind == "string":
            assert isinstance(self.value, str)
            return _limit(fi.strings.get(self.value), within)
        if self.kind == "bool":
            return _limit(fi.bools.get(bool(self.value)), within)
        bsi = fi.numbers if self.kind == "number" else fi.times
        return BitMap() if bsi is None else bsi.equal(_encode(self.kind, self.value), within)


@dataclass(frozen=True)
class AttrText(_OnField):
    key: str
    op: str  # contains, starts_with, ends_with
    needle: str  # case-folded

    def matches_value(self, v: Value | None, now: int) -> bool:
        return isinstance(v, str) and _text_match(self.op, self.needle, v)

    def full(self, index: PeopleIndex, now: int, within: BitMap | None = None) -> BitMap:
        fi = index.field(self.key)
        if fi is None:
            return BitMap()
        if self.key in UNIQUE_FIELDS:
            values = index.unique_values(self.key)
            return BitMap(
                i
                for i in _people(fi.exists, within)
                if _text_match(self.op, self.needle, values[i] or "")
            )
        matched = [bm for v, bm in fi.strings.items() if _text_match(self.op, self.needle, v)]
        return _limit(BitMap.union(*matched) if matched else None, within)


@dataclass(frozen=True)
class AttrExists(_OnField):
    key: str

    def matches_value(self, v: Value | None, now: int) -> bool:
        return v is not None

    def full(self, index: PeopleIndex, now: int, within: BitMap | None = None) -> BitMap:
        fi = index.field(self.key)
        return _limit(None if fi is None else fi.exists, within)


@dataclass(frozen=True)
class AttrRange(_OnField):
    key: str
    kind: Kind  # number or timestamp
    low: Value | None
    low_inclusive: bool
    high: Value | None
    high_inclusive: bool

    def matches_value(self, v: Value | None, now: int) -> bool:
        if v is None or kind_of(v) != self.kind:
            return False
        return _in_range(v, self.low, self.low_inclusive, self.high, self.high_inclusive)

    def full(self, index: PeopleIndex, now: int, within: BitMap | None = None) -> BitMap:
        fi = index.field(self.key)
        bsi = None if fi is None else (fi.numbers if self.kind == "number" else fi.times)
        if bsi is None:
            return BitMap()
        low = None if self.low is None else _encode(self.kind, self.low)
        high = None if self.high is None else _encode(self.kind, self.high)
        return bsi.range(low, self.low_inclusive, high, self.high_inclusive, within)


def _in_range(v: Any, low: Any, low_inc: bool, high: Any, high_inc: bool) -> bool:
    if low is not None and (v < low or (v == low and not low_inc)):
        return False
    return not (high is not None and (v > high or (v == high and not high_inc)))


@dataclass(frozen=True)
class AttrRelative(_OnField):
    """A timestamp within the last `seconds` (now - s <= t <= now) or more than `seconds` ago
    (t < now - s): its answer moves with the clock."""

    key: str
    op: str  # within_last, more_than_ago
    seconds: int

    time_dependent = True

    def bounds(self, now: int) -> tuple[int | None, bool, int | None, bool]:
        # Clamped to the calendar: every stored time is within it, so the answer is the same
        # and the bit-sliced index never sees a time it cannot encode.
        edge = max(now - self.seconds, MIN_TIMESTAMP)
        if self.op == "within_last":
            return edge, True, now, True
        return None, False, edge, False

    def matches_value(self, v: Value | None, now: int) -> bool:
        return isinstance(v, Timestamp) and _in_range(v, *self.bounds(now))

    def full(self, index: PeopleIndex, now: int, within: BitMap | None = None) -> BitMap:
        fi = index.field(self.key)
        if fi is None or fi.times is None:
            return BitMap()
        low, low_inc, high, high_inc = self.bounds(now)
        return fi.times.range(
            None if low is None else encode_timestamp(low),
            low_inc,
            None if high is None else encode_timestamp(high),
            high_inc,
            within,
        )


@dataclass(frozen=True)
class AttrAnniversary(_OnField):
    key: str
    granularity: str  # day, month

    time_dependent = True

    def matches_value(self, v: Value | None, now: int) -> bool:
        if not isinstance(v, Timestamp):
            return False
        date = datetime.fromtimestamp(int(v), UTC)
        return date.month * 100 + date.day in anniversary_days(now, self.granularity)

    def full(self, index: PeopleIndex, now: int, within: BitMap | None = None) -> BitMap:
        fi = index.field(self.key)
        if fi is None:
            return BitMap()
        parts = [
            fi.month_days[d] for d in anniversary_days(now, self.granularity) if d in fi.month_days
        ]
        return _limit(BitMap.union(*parts) if parts else None, within)


@dataclass(frozen=True)
class TagLeaf:
    tag: str

    @property
    def dep(self) -> str:
        return tag_key(self.tag)

    time_dependent = False

    def match(self, record: PersonRecord, now: int) -> bool:
        return self.tag in record.tags

    def full(self, index: PeopleIndex, now: int, within: BitMap | None = None) -> BitMap:
        return _limit(index.tags.get(self.tag), within)


@dataclass(frozen=True)
class DeviceLeaf:
    platform: str  # "" for any device

    @property
    def dep(self) -> str:
        return DEVICES_KEY

    time_dependent = False

    def match(self, record: PersonRecord, now: int) -> bool:
        if not self.platform:
            return bool(record.devices)
        return self.platform in record.devices.values()

    def full(self, index: PeopleIndex, now: int, within: BitMap | None = None) -> BitMap:
        if not self.platform:
            return _limit(index.any_device, within)
        return _limit(index.platforms.get(self.platform), within)


@dataclass(frozen=True)
class SegmentLeaf:
    """Membership of another segment: its bitmap is that segment's, kept by the segments."""

    segment_id: int

    @property
    def dep(self) -> str:
        return f"s:{self.segment_id}"

    time_dependent = False


@dataclass(frozen=True)
class EventLeaf:
    """Did the event `name` (with properties matching every filter) at least `min_count`
    times in the window."""

    name: str
    filters: frozenset[Any]
    min_count: int
    within_last_seconds: int | None
    start: Timestamp | None
    end: Timestamp | None

    @property
    def dep(self) -> str:
        return "e:" + self.name

    @property
    def filters_move_with_time(self) -> bool:
        """True when a property filter compares with now ("within the last D" on a time
        property, anniversaries): which events count then changes as time passes."""
        return any(_moves_with_time(f) for f in self.filters)

    @property
    def time_dependent(self) -> bool:
        return self.within_last_seconds is not None or self.filters_move_with_time


def _moves_with_time(expr: Any) -> bool:
    # Filters are leaves or the groups of conditions.py (children / child), walked by shape
    # because conditions.py imports this module.
    if hasattr(expr, "children"):
        return any(_moves_with_time(c) for c in expr.children)
    if hasattr(expr, "child"):
        return _moves_with_time(expr.child)
    return bool(expr.time_dependent)


IndexLeaf = (
    AttrEquals
    | AttrText
    | AttrExists
    | AttrRange
    | AttrRelative
    | AttrAnniversary
    | TagLeaf
    | DeviceLeaf
)
Leaf = IndexLeaf | SegmentLeaf | EventLeaf
