"""The people index of one workspace: who is live, and for every attribute, built-in field,
tag and device platform, which people have which value, as bitmaps."""

from __future__ import annotations

from array import array
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pyroaring import BitMap

from segsvc.engine.bsi import (
    NUMBER_BITS,
    TIMESTAMP_BITS,
    BitSlicedIndex,
    encode_number,
    encode_timestamp,
)
from segsvc.engine.people import PersonRecord
from segsvc.engine.values import Value, kind_of

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

    def add_many(self, pairs: list[tuple[int, Value]]) -> None:
        """Adds values for people that have none here yet, grouped per value."""
        self._bulk(pairs, adding=True)

    def remove_many(self, pairs: list[tuple[int, Value]]) -> None:
        """Removes people's current values, grouped per value."""
        self._bulk(pairs, adding=False)

    def _bulk(self, pairs: list[tuple[int, Value]], adding: bool) -> None:
        ordinals = array("I", (o for o, _ in pairs))
        if adding:
            self.exists |= BitMap(ordinals)
        else:
            self.exists -= BitMap(ordinals)
        strings: dict[str, list[int]] = defaultdict(list)
        bools: dict[bool, list[int]] = defaultdict(list)
        numbers: tuple[list[int], list[int]] = ([], [])
        times: tuple[list[int], list[int]] = ([], [])
        days: dict[int, list[int]] = defaultdict(list)
        for ordinal, value in pairs:
            kind = type(value)
            if kind is str:
                if self.keep_values:
                    strings[value].append(ordinal)  # type: ignore[index]
            elif kind is bool:
                bools[value].append(ordinal)  # type: ignore[index]
            elif kind is float:
                numbers[0].append(ordinal)
                numbers[1].append(encode_number(value))  # type: ignore[arg-type]
            else:
                times[0].append(ordinal)
                times[1].append(encode_timestamp(int(value)))
                days[month_day(int(value))].append(ordinal)
        for table, groups in (
            (self.strings, strings),
            (self.bools, bools),
            (self.month_days, days),
        ):
            for key, people in groups.items():
                _bulk_set(table, key, people, adding)
        if numbers[0]:
            if self.numbers is None:
                self.numbers = BitSlicedIndex(NUMBER_BITS)
            (self.numbers.add_many if adding else self.numbers.remove_many)(*numbers)
        if times[0]:
            if self.times is None:
                self.times = BitSlicedIndex(TIMESTAMP_BITS)
            (self.times.add_many if adding else self.times.remove_many)(*times)

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


def _bulk_set(table: dict[Any, BitMap], key: Any, people: list[int], adding: bool) -> None:
    if adding:
        table.setdefault(key, BitMap()).update(array("I", people))
        return
    bitmap = table.get(key)
    if bitmap is not None and people:
        bitmap -= BitMap(array("I", people))
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

    def apply(
        self, people: Sequence[tuple[int, PersonRecord | None, PersonRecord | None]]
    ) -> dict[str, list[int]]:
        """Moves each person from `old` to `new` (None: absent), grouping the bitmap updates
        per value so that a batch costs a few bulk operations per distinct value. Returns,
        per dependency key, the people whose answer on it may have changed. Each ordinal
        appears at most once in `people`."""
        touched: dict[str, list[int]] = defaultdict(list)
        removes: dict[str, list[tuple[int, Value]]] = defaultdict(list)
        adds: dict[str, list[tuple[int, Value]]] = defaultdict(list)
        tag_moves: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
        platform_moves: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
        born: list[int] = []
        died: list[int] = []
        got_device: list[int] = []
        lost_device: list[int] = []
        for ordinal, old, new in people:
            if old is None:
                born.append(ordinal)
            if new is None:
                died.append(ordinal)
            self._diff_fields(ordinal, old, new, touched, removes, adds)
            old_tags = old.tags if old is not None else frozenset()
            new_tags = new.tags if new is not None else frozenset()
            if old_tags != new_tags:
                for tag in old_tags - new_tags:
                    tag_moves[tag][1].append(ordinal)
                    touched[tag_key(tag)].append(ordinal)
                for tag in new_tags - old_tags:
                    tag_moves[tag][0].append(ordinal)
                    touched[tag_key(tag)].append(ordinal)
            old_platforms = set(old.devices.values()) if old is not None else set()
            new_platforms = set(new.devices.values()) if new is not None else set()
            if old_platforms != new_platforms:
                touched[DEVICES_KEY].append(ordinal)
                for platform in old_platforms - new_platforms:
                    platform_moves[platform][1].append(ordinal)
                for platform in new_platforms - old_platforms:
                    platform_moves[platform][0].append(ordinal)
                (got_device if new_platforms else lost_device).append(ordinal)
        self._grow(max((o for o, _, _ in people), default=-1))
        self.live |= BitMap(array("I", born))
        self.live -= BitMap(array("I", died))
        for key, pairs in removes.items():
            self.fields[key].remove_many(pairs)
        for key, pairs in adds.items():
            self._field_for_write(key).add_many(pairs)
        for table, moves in ((self.tags, tag_moves), (self.platforms, platform_moves)):
            for key, (gained, lost) in moves.items():
                _bulk_set(table, key, lost, adding=False)
                _bulk_set(table, key, gained, adding=True)
        self.any_device |= BitMap(array("I", got_device))
        self.any_device -= BitMap(array("I", lost_device))
        for ordinal, _old, new in people:
            if new is not None:
                self.ids[ordinal] = new.id
            self.emails[ordinal] = new.email if new is not None else None
            self.phones[ordinal] = new.phone if new is not None else None
        return touched

    def _grow(self, ordinal: int) -> None:
        missing = ordinal + 1 - len(self.ids)
        if missing > 0:
            self.ids.extend([None] * missing)
            self.emails.extend([None] * missing)
            self.phones.extend([None] * missing)

    @staticmethod
    def _diff_fields(
        ordinal: int,
        old: PersonRecord | None,
        new: PersonRecord | None,
        touched: dict[str, list[int]],
        removes: dict[str, list[tuple[int, Value]]],
        adds: dict[str, list[tuple[int, Value]]],
    ) -> None:
        def move(key: str, before: Value | None, after: Value | None) -> None:
            touched[key].append(ordinal)
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
            # Inlined move(): this loop runs once per attribute per person in bulk loads.
            key = "a:" + name
            touched[key].append(ordinal)
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

    def to_plain(self) -> Any:
        return [
            self.live.serialize(),
            {k: v.to_plain() for k, v in self.fields.items()},
            {k: v.serialize() for k, v in self.tags.items()},
            {k: v.serialize() for k, v in self.platforms.items()},
            self.any_device.serialize(),
            # NUL never occurs in ids, emails or phones (they are checked for control
            # characters), so one joined string per list is compact and fast to load.
            _join(self.ids),
            _join(self.emails),
            _join(self.phones),
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


def _join(values: list[str | None]) -> list[Any]:
    # The length is stored too: "" is both the empty list and a list of one None.
    return [len(values), "\x00".join("" if x is None else x for x in values)]


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
