"""The people index of one workspace: who is live, and for every attribute, built-in field,
tag and device platform, which people have which value, as bitmaps."""

from __future__ import annotations

from collections.abc import Iterable
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

    def apply(self, ordinal: int, old: PersonRecord | None, new: PersonRecord | None) -> set[str]:
        """Moves one person from `old` to `new` (None: absent); returns the dependency keys
        whose answer may have changed for them."""
        touched: set[str] = set()
        if new is not None and old is None:
            self.live.add(ordinal)
            while len(self.ids) <= ordinal:
                self.ids.append(None)
                self.emails.append(None)
                self.phones.append(None)
        elif new is None:
            self.live.discard(ordinal)
        self._apply_fields(ordinal, old, new, touched)
        old_tags = old.tags if old is not None else frozenset()
        new_tags = new.tags if new is not None else frozenset()
        for tag in old_tags - new_tags:
            _discard(self.tags, tag, ordinal)
            touched.add(tag_key(tag))
        for tag in new_tags - old_tags:
            self.tags.setdefault(tag, BitMap()).add(ordinal)
            touched.add(tag_key(tag))
        old_platforms = set(old.devices.values()) if old is not None else set()
        new_platforms = set(new.devices.values()) if new is not None else set()
        if old_platforms != new_platforms:
            touched.add(DEVICES_KEY)
            for platform in old_platforms - new_platforms:
                _discard(self.platforms, platform, ordinal)
            for platform in new_platforms - old_platforms:
                self.platforms.setdefault(platform, BitMap()).add(ordinal)
            if new_platforms:
                self.any_device.add(ordinal)
            else:
                self.any_device.discard(ordinal)
        if new is not None:
            self.ids[ordinal] = new.id
        self.emails[ordinal] = new.email if new is not None else None
        self.phones[ordinal] = new.phone if new is not None else None
        return touched

    def _apply_fields(
        self, ordinal: int, old: PersonRecord | None, new: PersonRecord | None, touched: set[str]
    ) -> None:
        for key in _field_keys(old, new):
            before = field_value(old, key) if old is not None else None
            after = field_value(new, key) if new is not None else None
            if _same(before, after):
                continue
            touched.add(key)
            if before is not None:
                self._field_for_write(key).remove(ordinal, before)
            if after is not None:
                self._field_for_write(key).add(ordinal, after)

    def to_plain(self) -> Any:
        return [
            self.live.serialize(),
            {k: v.to_plain() for k, v in self.fields.items()},
            {k: v.serialize() for k, v in self.tags.items()},
            {k: v.serialize() for k, v in self.platforms.items()},
            self.any_device.serialize(),
            # NUL never occurs in ids, emails or phones (they are checked for control
            # characters), so one joined string per list is compact and fast to load.
            "\x00".join("" if x is None else x for x in self.ids),
            "\x00".join("" if x is None else x for x in self.emails),
            "\x00".join("" if x is None else x for x in self.phones),
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


def _split(joined: str) -> list[str | None]:
    if not joined:
        return []
    return [x or None for x in joined.split("\x00")]


def _field_keys(old: PersonRecord | None, new: PersonRecord | None) -> Iterable[str]:
    keys: set[str] = set(BUILTIN_FIELDS)
    for record in (old, new):
        if record is not None:
            keys.update("a:" + k for k in record.attributes)
    return keys


def _same(a: Value | None, b: Value | None) -> bool:
    if a is None or b is None:
        return a is b
    return kind_of(a) == kind_of(b) and a == b


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
