"""The people index of one workspace: who is live, and for every attribute, built-in field,
tag and device platform, which people have which value, as bitmaps."""

from __future__ import annotations

from array import array
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgpack
import numpy as np
from pyroaring import BitMap

from segsvc.engine import bsi
from segsvc.engine.bsi import (
    NUMBER_BITS,
    TIMESTAMP_BITS,
    TIMESTAMP_OFFSET,
    BitSlicedIndex,
    encode_number,
    encode_timestamp,
)
from segsvc.engine.people import PersonRecord
from segsvc.engine.values import Kind, Timestamp, Value, kind_of

# Field keys: "a:<name>" for a custom attribute, "$<name>" for a built-in field.
UNIQUE_FIELDS = ("$id", "$email", "$phone")
BUILTIN_FIELDS = ("$id", "$email", "$phone", "$created_at", "$unsubscribed")
DEVICES_KEY = "devices"


def tag_key(tag: str) -> str:
    return "t:" + tag


def field_value(record: PersonRecord, key: str) -> Value | None:
    if key.startswith("a:"):
        return record.attributes.get(key[2:])
    if key == "$email":
        return record.email
    if key == "$phone":
        return record.phone
    if key == "$id":
        return record.id
    if key == "$created_at":
        return record.created_at
    if key == "$unsubscribed":
        return record.unsubscribed
    raise KeyError(key)


def month_day(ts: int) -> int:
    """month * 100 + day of the UTC date."""
    date = datetime.fromtimestamp(ts, UTC)
    return date.month * 100 + date.day


def month_days(seconds: np.ndarray) -> np.ndarray:
    """`month_day` of many timestamps at once (numpy's calendar is proleptic Gregorian
    like datetime's, and floors negative times to the day before, as datetime does)."""
    days = seconds.astype("datetime64[s]").astype("datetime64[D]")
    months = days.astype("datetime64[M]")
    day_of_month = (days - months.astype("datetime64[D]")).astype(np.int64) + 1
    out: np.ndarray = (months.astype(np.int64) % 12 + 1) * 100 + day_of_month
    return out


def encode_numbers(values: np.ndarray) -> np.ndarray:
    """`bsi.encode_number` of many floats at once (-0.0 folds into 0.0 first, as there)."""
    bits = (np.asarray(values, dtype=np.float64) + 0.0).view(np.uint64)
    sign = np.uint64(1 << 63)
    return np.where(bits & sign, ~bits, bits | sign)


def u32s(ordinals: Any) -> array[int]:
    """An array('I') of ordinals: what BitMap() and BitMap.update() read fastest."""
    if isinstance(ordinals, np.ndarray):
        return array("I", ordinals.astype(np.uint32, copy=False).tobytes())
    return ordinals if isinstance(ordinals, array) else array("I", ordinals)


def grouped(keys: np.ndarray, ordinals: np.ndarray) -> Iterator[tuple[Any, np.ndarray]]:
    """(key, the ordinals with that key) for each distinct key, without a loop per person."""
    if not len(keys):
        return
    order = np.argsort(keys, kind="stable")
    keys, ordinals = keys[order], ordinals[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    for start, stop in zip(starts.tolist(), [*starts[1:].tolist(), len(keys)], strict=True):
        yield keys[start].item(), ordinals[start:stop]


@dataclass(frozen=True)
class FieldValues:
    """Values of one field for some people, all of one kind: the unit of bulk index updates.
    `values` is a list of str for strings, else a numpy array (float64 numbers, bool, int64
    seconds for timestamps); `ordinals` a uint32 array of the same length."""

    kind: Kind
    ordinals: np.ndarray
    values: Any

    @staticmethod
    def split(pairs: Sequence[tuple[int, Value]]) -> list[FieldValues]:
        """(ordinal, value) pairs of any kinds, as one FieldValues per kind."""
        by_kind: dict[Kind, tuple[list[int], list[Any]]] = {}
        for ordinal, value in pairs:
            ordinals, values = by_kind.setdefault(kind_of(value), ([], []))
            ordinals.append(ordinal)
            values.append(value)
        out = []
        for kind, (ordinals, values) in by_kind.items():
            column: Any = values if kind == "string" else np.array(values, dtype=KIND_DTYPES[kind])
            out.append(FieldValues(kind, np.array(ordinals, dtype=np.uint32), column))
        return out

    def to_plain(self) -> list[Any]:
        values = self.values if self.kind == "string" else self.values.astype(_WIRE[self.kind])
        return [self.kind, self.ordinals.astype("<u4").tobytes(), _bytes_or_list(values)]

    @staticmethod
    def from_plain(data: list[Any]) -> FieldValues:
        kind, ordinals, values = data
        if kind != "string":
            values = np.frombuffer(values, dtype=_WIRE[kind]).astype(KIND_DTYPES[kind])
        return FieldValues(kind, np.frombuffer(ordinals, dtype="<u4").astype(np.uint32), values)

    def items(self) -> list[tuple[int, Value]]:
        """Back to (ordinal, value) pairs (for tests and the record form)."""
        ordinals = self.ordinals.tolist()
        if self.kind == "timestamp":
            return [(o, Timestamp(v)) for o, v in zip(ordinals, self.values.tolist(), strict=True)]
        values = self.values if self.kind == "string" else self.values.tolist()
        return list(zip(ordinals, values, strict=True))


# The numpy type of each kind of value but strings (lists of str).
KIND_DTYPES: dict[Kind, Any] = {"number": np.float64, "bool": np.bool_, "timestamp": np.int64}
# The stored form is little-endian whatever the machine.
_WIRE: dict[Kind, str] = {"number": "<f8", "bool": "u1", "timestamp": "<i8"}


def _bytes_or_list(values: Any) -> Any:
    return values.tobytes() if isinstance(values, np.ndarray) else list(values)


def _u32_bytes(ordinals: array[int]) -> bytes:
    return np.frombuffer(ordinals, dtype=np.uint32).astype("<u4").tobytes()


def _u32_array(data: bytes) -> array[int]:
    return u32s(np.frombuffer(data, dtype="<u4"))


class FieldIndex:
    """Every value one field holds, by type. Unique fields (id, email, phone) keep no value
    map: their values live in the ordinal-indexed lists of PeopleIndex."""

    def __init__(self, keep_values: bool = True) -> None:
        self.keep_values = keep_values
        self.exists = BitMap()
        self.strings: dict[str, BitMap] = {}
        self.bools: dict[bool, BitMap] = {}
        self.numbers: BitSlicedIndex | None = None
        self.times: BitSlicedIndex | None = None
        self.month_days: dict[int, BitMap] = {}

    def add(self, ordinal: int, value: Value) -> None:
        self.exists.add(ordinal)
        kind = kind_of(value)
        if kind == "string":
            if self.keep_values:
                assert isinstance(value, str)
                self.strings.setdefault(value, BitMap()).add(ordinal)
        elif kind == "bool":
            self.bools.setdefault(bool(value), BitMap()).add(ordinal)
        elif kind == "number":
            if self.numbers is None:
                self.numbers = BitSlicedIndex(NUMBER_BITS)
            self.numbers.add(ordinal, encode_number(float(value)))
        else:
            if self.times is None:
                self.times = BitSlicedIndex(TIMESTAMP_BITS)
            self.times.add(ordinal, encode_timestamp(int(value)))
            self.month_days.setdefault(month_day(int(value)), BitMap()).add(ordinal)

    def remove(self, ordinal: int, value: Value) -> None:
        self.exists.discard(ordinal)
        kind = kind_of(value)
        if kind == "string":
            if self.keep_values:
                assert isinstance(value, str)
                _discard(self.strings, value, ordinal)
        elif kind == "bool":
            _discard(self.bools, bool(value), ordinal)
        elif kind == "number":
            assert self.numbers is not None
            self.numbers.remove(ordinal, encode_number(float(value)))
        else:
            assert self.times is not None
            self.times.remove(ordinal, encode_timestamp(int(value)))
            _discard(self.month_days, month_day(int(value)), ordinal)

    def change(self, fv: FieldValues, adding: bool) -> None:
        """Adds (people with no value here yet) or removes (their current values) one kind
        of values in bulk: a bitmap operation per distinct value or bit, no loop per person
        but for grouping strings."""
        if len(fv.ordinals) < bsi.SMALL:
            # A handful of people (one person's update): a bitmap operation per value costs
            # less than building arrays, dates and groups for them.
            step = self.add if adding else self.remove
            for ordinal, value in fv.items():
                step(ordinal, value)
            return
        people = BitMap(u32s(fv.ordinals))
        if adding:
            self.exists |= people
        else:
            self.exists -= people
        kind = fv.kind
        if kind == "string":
            if self.keep_values:
                # A plain loop: faster here than numbering the strings to group them with
                # numpy (measured: 77 against 137 ms per 1M values).
                strings: dict[str, list[int]] = defaultdict(list)
                for ordinal, value in zip(fv.ordinals.tolist(), fv.values, strict=True):
                    strings[value].append(ordinal)
                for value, ordinals in strings.items():
                    _bulk_set(self.strings, value, ordinals, adding)
        elif kind == "bool":
            for flag in (True, False):
                chosen = fv.ordinals[fv.values == flag]
                if chosen.size:
                    _bulk_set(self.bools, flag, u32s(chosen), adding)
        elif kind == "number":
            if self.numbers is None:
                self.numbers = BitSlicedIndex(NUMBER_BITS)
            _bsi_change(self.numbers, fv.ordinals, encode_numbers(fv.values), adding)
        else:
            if self.times is None:
                self.times = BitSlicedIndex(TIMESTAMP_BITS)
            seconds = np.asarray(fv.values, dtype=np.int64)
            codes = (seconds + TIMESTAMP_OFFSET).astype(np.uint64)
            _bsi_change(self.times, fv.ordinals, codes, adding)
            for day, people_then in grouped(month_days(seconds), fv.ordinals):
                _bulk_set(self.month_days, day, u32s(people_then), adding)

    def to_plain(self) -> Any:
        return [
            self.keep_values,
            self.exists.serialize(),
            {k: v.serialize() for k, v in self.strings.items()},
            {k: v.serialize() for k, v in self.bools.items()},
            None if self.numbers is None else self.numbers.serialize(),
            None if self.times is None else self.times.serialize(),
            {k: v.serialize() for k, v in self.month_days.items()},
        ]

    @classmethod
    def from_plain(cls, data: Any) -> FieldIndex:
        index = cls(data[0])
        index.exists = BitMap.deserialize(data[1])
        index.strings = {k: BitMap.deserialize(v) for k, v in data[2].items()}
        index.bools = {k: BitMap.deserialize(v) for k, v in data[3].items()}
        if data[4] is not None:
            index.numbers = BitSlicedIndex.deserialize(NUMBER_BITS, data[4])
        if data[5] is not None:
            index.times = BitSlicedIndex.deserialize(TIMESTAMP_BITS, data[5])
        index.month_days = {k: BitMap.deserialize(v) for k, v in data[6].items()}
        return index


def _bsi_change(
    index: BitSlicedIndex, ordinals: np.ndarray, codes: np.ndarray, adding: bool
) -> None:
    if len(ordinals) < bsi.SMALL:
        # The person-by-person branch takes Python ints.
        args: tuple[Any, Any] = (ordinals.tolist(), codes.tolist())
    else:
        args = (u32s(ordinals), codes)
    (index.add_many if adding else index.remove_many)(*args)


def _bulk_set(
    table: dict[Any, BitMap], key: Any, people: Sequence[int] | array[int], adding: bool
) -> None:
    if adding:
        table.setdefault(key, BitMap()).update(u32s(people))
        return
    bitmap = table.get(key)
    if bitmap is not None and people:
        bitmap -= BitMap(u32s(people))
        if not bitmap:
            del table[key]


def _discard(table: dict[Any, BitMap], key: Any, ordinal: int) -> None:
    bitmap = table.get(key)
    if bitmap is not None:
        bitmap.discard(ordinal)
        if not bitmap:
            del table[key]


class PeopleIndex:
    def __init__(self) -> None:
        self.live = BitMap()
        self.fields: dict[str, FieldIndex] = {}
        self.tags: dict[str, BitMap] = {}
        self.platforms: dict[str, BitMap] = {}
        self.any_device = BitMap()
        # Ordinal -> id / email / phone: unique per person, so a list beats a bitmap per value,
        # and it answers "who is ordinal n" for member lists and audiences. A deleted person's
        # id stays (the change feed names them); their email and phone are cleared.
        self.ids: list[str | None] = []
        self.emails: list[str | None] = []
        self.phones: list[str | None] = []

    def field(self, key: str) -> FieldIndex | None:
        return self.fields.get(key)

    def unique_values(self, key: str) -> list[str | None]:
        return {"$id": self.ids, "$email": self.emails, "$phone": self.phones}[key]

    def _field_for_write(self, key: str) -> FieldIndex:
        index = self.fields.get(key)
        if index is None:
            index = self.fields[key] = FieldIndex(keep_values=key not in UNIQUE_FIELDS)
        return index

    def apply_delta(self, delta: IndexDelta) -> dict[str, Sequence[int]]:
        """Applies a batch's changes, grouped per value so that it costs a few bulk
        operations per distinct value. Returns, per dependency key, the people whose answer
        on it may have changed."""
        self._grow(max(delta.born, default=-1))
        self.live |= BitMap(delta.born)
        self.live -= BitMap(delta.died)
        for key, columns in delta.removes.items():
            for values in columns:
                self.fields[key].change(values, adding=False)
        for key, columns in delta.adds.items():
            for values in columns:
                self._field_for_write(key).change(values, adding=True)
        for table, moves in ((self.tags, delta.tags), (self.platforms, delta.platforms)):
            for key, (gained, lost) in moves.items():
                _bulk_set(table, key, lost, adding=False)
                _bulk_set(table, key, gained, adding=True)
        self.any_device |= BitMap(delta.got_device)
        self.any_device -= BitMap(delta.lost_device)
        self._set_keys(delta)
        return delta.touched()

    def _set_keys(self, delta: IndexDelta) -> None:
        """The lists of ids, emails and phones follow the moves of those fields. A deleted
        person keeps their id there: the change feed still names who left."""
        for key, keys in (("$email", self.emails), ("$phone", self.phones)):
            for values in delta.removes.get(key, ()):
                for ordinal in values.ordinals.tolist():
                    keys[ordinal] = None
        for key, keys in (("$id", self.ids), ("$email", self.emails), ("$phone", self.phones)):
            for values in delta.adds.get(key, ()):
                ordinals = values.ordinals
                if len(ordinals) and bool((np.diff(ordinals.astype(np.int64)) == 1).all()):
                    # Consecutive ordinals, ascending (new people in a bulk load): a slice.
                    keys[int(ordinals[0]) : int(ordinals[-1]) + 1] = values.values
                    continue
                for ordinal, key_value in zip(ordinals.tolist(), values.values, strict=True):
                    keys[ordinal] = key_value

    def _grow(self, ordinal: int) -> None:
        missing = ordinal + 1 - len(self.ids)
        if missing > 0:
            self.ids.extend([None] * missing)
            self.emails.extend([None] * missing)
            self.phones.extend([None] * missing)

    def to_plain(self) -> Any:
        return [
            self.live.serialize(),
            {k: v.to_plain() for k, v in self.fields.items()},
            {k: v.serialize() for k, v in self.tags.items()},
            {k: v.serialize() for k, v in self.platforms.items()},
            self.any_device.serialize(),
            # Copies, joined when the checkpoint is packed (off the workspace lock).
            KeyColumn(list(self.ids)),
            KeyColumn(list(self.emails)),
            KeyColumn(list(self.phones)),
        ]

    @classmethod
    def from_plain(cls, data: Any) -> PeopleIndex:
        index = cls()
        index.live = BitMap.deserialize(data[0])
        index.fields = {k: FieldIndex.from_plain(v) for k, v in data[1].items()}
        index.tags = {k: BitMap.deserialize(v) for k, v in data[2].items()}
        index.platforms = {k: BitMap.deserialize(v) for k, v in data[3].items()}
        index.any_device = BitMap.deserialize(data[4])
        index.ids = _split(data[5])
        index.emails = _split(data[6])
        index.phones = _split(data[7])
        return index


@dataclass
class IndexDelta:
    """What one batch changes in the index, grouped for bulk application. Person-by-person
    writes build it from records (`of_records`); bulk loads build it from columns and log it
    as it is, so that replaying them costs no more than applying them did."""

    born: array[int] = field(default_factory=lambda: array("I"))
    died: array[int] = field(default_factory=lambda: array("I"))
    # field key -> the values people lose / gain there (a changed value is in both)
    removes: dict[str, list[FieldValues]] = field(default_factory=dict)
    adds: dict[str, list[FieldValues]] = field(default_factory=dict)
    # tag / device platform -> (people who gain it, people who lose it)
    tags: dict[str, tuple[array[int], array[int]]] = field(default_factory=dict)
    platforms: dict[str, tuple[array[int], array[int]]] = field(default_factory=dict)
    got_device: array[int] = field(default_factory=lambda: array("I"))
    lost_device: array[int] = field(default_factory=lambda: array("I"))

    def size(self) -> int:
        """How many values it moves (what applying it costs, roughly)."""
        moved = 0
        for table in (self.removes, self.adds):
            moved += sum(len(values.ordinals) for columns in table.values() for values in columns)
        for sets in (self.tags, self.platforms):
            moved += sum(len(gained) + len(lost) for gained, lost in sets.values())
        return moved

    def to_plain(self) -> list[Any]:
        """The msgpack-ready form, for the operation log."""

        def moves(table: dict[str, tuple[array[int], array[int]]]) -> dict[str, list[bytes]]:
            return {k: [_u32_bytes(g), _u32_bytes(lo)] for k, (g, lo) in table.items()}

        return [
            _u32_bytes(self.born),
            _u32_bytes(self.died),
            {k: [v.to_plain() for v in cols] for k, cols in self.removes.items()},
            {k: [v.to_plain() for v in cols] for k, cols in self.adds.items()},
            moves(self.tags),
            moves(self.platforms),
            _u32_bytes(self.got_device),
            _u32_bytes(self.lost_device),
        ]

    @staticmethod
    def from_plain(data: list[Any]) -> IndexDelta:
        def moves(table: dict[str, list[bytes]]) -> dict[str, tuple[array[int], array[int]]]:
            return {k: (_u32_array(g), _u32_array(lo)) for k, (g, lo) in table.items()}

        # Older logs carry four more entries (each person's keys), which the moves of $id,
        # $email and $phone hold too.
        born, died, removes, adds, tags, platforms, got, lost = data[:8]
        return IndexDelta(
            born=_u32_array(born),
            died=_u32_array(died),
            removes={k: [FieldValues.from_plain(v) for v in cols] for k, cols in removes.items()},
            adds={k: [FieldValues.from_plain(v) for v in cols] for k, cols in adds.items()},
            tags=moves(tags),
            platforms=moves(platforms),
            got_device=_u32_array(got),
            lost_device=_u32_array(lost),
        )

    def touched(self) -> dict[str, Sequence[int]]:
        """Per dependency key, the people whose value there moved."""
        parts: dict[str, list[array[int]]] = defaultdict(list)
        for moves in (self.removes, self.adds):
            for key, columns in moves.items():
                parts[key].extend(u32s(values.ordinals) for values in columns)
        for tag, (gained, lost) in self.tags.items():
            parts[tag_key(tag)] += [gained, lost]
        for gained, lost in self.platforms.values():
            parts[DEVICES_KEY] += [gained, lost]
        out: dict[str, Sequence[int]] = {}
        for key, arrays in parts.items():
            arrays = [a for a in arrays if len(a)]
            if len(arrays) == 1:
                out[key] = arrays[0]
            elif arrays:
                out[key] = u32s(BitMap.union(*(BitMap(a) for a in arrays)).to_array())
        return out

    @staticmethod
    def of_records(
        people: Sequence[tuple[int, PersonRecord | None, PersonRecord | None]],
    ) -> IndexDelta:
        """The delta that moves each person from `old` to `new` (None: absent)."""
        removes: dict[str, list[tuple[int, Value]]] = defaultdict(list)
        adds: dict[str, list[tuple[int, Value]]] = defaultdict(list)
        tag_moves: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
        platform_moves: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
        delta = IndexDelta()
        for ordinal, old, new in people:
            if old is None:
                delta.born.append(ordinal)
            if new is None:
                delta.died.append(ordinal)
            _diff_fields(ordinal, old, new, removes, adds)
            old_tags = old.tags if old is not None else frozenset()
            new_tags = new.tags if new is not None else frozenset()
            if old_tags != new_tags:
                for tag in old_tags - new_tags:
                    tag_moves[tag][1].append(ordinal)
                for tag in new_tags - old_tags:
                    tag_moves[tag][0].append(ordinal)
            old_platforms = set(old.devices.values()) if old is not None else set()
            new_platforms = set(new.devices.values()) if new is not None else set()
            if old_platforms != new_platforms:
                for platform in old_platforms - new_platforms:
                    platform_moves[platform][1].append(ordinal)
                for platform in new_platforms - old_platforms:
                    platform_moves[platform][0].append(ordinal)
                (delta.got_device if new_platforms else delta.lost_device).append(ordinal)
        delta.removes = {k: FieldValues.split(pairs) for k, pairs in removes.items()}
        delta.adds = {k: FieldValues.split(pairs) for k, pairs in adds.items()}
        for table, moves in ((delta.tags, tag_moves), (delta.platforms, platform_moves)):
            for key, (gained, lost) in moves.items():
                table[key] = (array("I", gained), array("I", lost))
        return delta


def _diff_fields(
    ordinal: int,
    old: PersonRecord | None,
    new: PersonRecord | None,
    removes: dict[str, list[tuple[int, Value]]],
    adds: dict[str, list[tuple[int, Value]]],
) -> None:
    def move(key: str, before: Value | None, after: Value | None) -> None:
        if before is not None:
            removes[key].append((ordinal, before))
        if after is not None:
            adds[key].append((ordinal, after))

    empty: dict[str, Value] = {}
    old_attrs = old.attributes if old is not None else empty
    new_attrs = new.attributes if new is not None else empty
    for name, value in new_attrs.items():
        before = old_attrs.get(name)
        # Same type and value: nothing to move (type first, as True == 1.0 in Python).
        if before is not None and type(before) is type(value) and before == value:
            continue
        # Inlined move(): this loop runs once per attribute per person.
        key = "a:" + name
        if before is not None:
            removes[key].append((ordinal, before))
        adds[key].append((ordinal, value))
    for name, value in old_attrs.items():
        if name not in new_attrs:
            move("a:" + name, value, None)
    if old is not None and new is not None:
        if old.email != new.email:
            move("$email", old.email, new.email)
        if old.phone != new.phone:
            move("$phone", old.phone, new.phone)
        if old.created_at != new.created_at:
            move("$created_at", old.created_at, new.created_at)
        if old.unsubscribed != new.unsubscribed:
            move("$unsubscribed", old.unsubscribed, new.unsubscribed)
        return
    # Created or deleted: every built-in field that has a value moves.
    record = new if new is not None else old
    assert record is not None
    for key in BUILTIN_FIELDS:
        builtin = field_value(record, key)
        if builtin is not None:
            move(key, None if new is record else builtin, builtin if new is record else None)


@dataclass(frozen=True)
class KeyColumn:
    """One of the ordinal -> id / email / phone lists as a checkpoint took it, put in its
    stored form (`stored`) when the checkpoint is packed."""

    values: list[str | None]

    def stored(self, run: int = 50_000) -> Iterator[bytes]:
        """The stored form, msgpack's bytes of [length, joined], a run of `run` values at
        a time: one join of a million ids holds the GIL for 30 ms. NUL never occurs in ids,
        emails or phones (they are checked for control characters), so one joined string
        per list is compact and fast to load. The length is stored too: "" is both the
        empty list and a list of one None."""
        values = self.values
        runs = [
            "\x00".join([x or "" for x in values[start : start + run]]).encode()
            for start in range(0, len(values), run)
        ]
        size = sum(len(r) for r in runs) + max(0, len(runs) - 1)
        # A fixarray of two, the length, then the string with a str32 header (any header
        # that fits reads the same).
        yield b"\x92" + msgpack.packb(len(values)) + b"\xdb" + size.to_bytes(4, "big")
        for number, joined in enumerate(runs):
            yield b"\x00" + joined if number else joined


def _split(stored: list[Any]) -> list[str | None]:
    length, joined = stored
    if length == 0:
        return []
    return [x or None for x in joined.split("\x00")]


def is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def anniversary_days(now: int, granularity: str) -> list[int]:
    """The month_day keys that match an anniversary condition on the UTC date of `now`."""
    today = datetime.fromtimestamp(now, UTC)
    if granularity == "month":
        return [today.month * 100 + d for d in range(1, 32)]
    days = [today.month * 100 + today.day]
    # 29 February falls on 28 February in years without one.
    if today.month == 2 and today.day == 28 and not is_leap(today.year):
        days.append(229)
    return days
