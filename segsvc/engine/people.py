"""People: the stored record, the partial update a client sends, and how one is applied to
the other."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import msgpack

from segsvc.config import Limits
from segsvc.engine.errors import InvalidArgument
from segsvc.engine.values import (
    Timestamp,
    Value,
    check_key,
    check_value,
    normalize_email,
    normalize_phone,
)
from segsvc.storage.records import seal, unseal


@dataclass(frozen=True)
class PersonRecord:
    id: str
    created_at: Timestamp
    updated_at: Timestamp
    email: str | None = None
    phone: str | None = None
    unsubscribed: bool = False
    attributes: dict[str, Value] = field(default_factory=dict)
    tags: frozenset[str] = frozenset()
    # device id -> platform
    devices: dict[str, str] = field(default_factory=dict)

    def same_data(self, other: PersonRecord) -> bool:
        """Equal but for updated_at, with types compared too (1.0 is not True)."""
        return (
            self.id == other.id
            and self.created_at == other.created_at
            and self.email == other.email
            and self.phone == other.phone
            and self.unsubscribed == other.unsubscribed
            and self.tags == other.tags
            and self.devices == other.devices
            and _typed(self.attributes) == _typed(other.attributes)
        )

    def encode(self) -> bytes:
        return self.encoded

    @cached_property
    def encoded(self) -> bytes:
        """The stored form, checksummed and computed once: the log record and the people
        table share it."""
        return seal(msgpack.packb(self.to_plain(), use_bin_type=True))

    @staticmethod
    def decode(data: bytes) -> PersonRecord:
        """The record of a stored form (DamagedRecord when its checksum fails)."""
        return PersonRecord.from_plain(unpack_record(data))

    def to_plain(self) -> list[Any]:
        """The msgpack-ready form, for embedding in operation records."""
        return [
            self.id,
            int(self.created_at),
            int(self.updated_at),
            self.email,
            self.phone,
            self.unsubscribed,
            {k: int(v) if type(v) is Timestamp else v for k, v in self.attributes.items()},
            sorted(self.tags),
            self.devices,
        ]

    @staticmethod
    def from_plain(row: list[Any]) -> PersonRecord:
        pid, created, updated, email, phone, unsub, attrs, tags, devices = row
        return PersonRecord(
            id=pid,
            created_at=Timestamp(created),
            updated_at=Timestamp(updated),
            email=email,
            phone=phone,
            unsubscribed=unsub,
            attributes={k: unpack_value(v) for k, v in attrs.items()},
            tags=frozenset(tags),
            devices=dict(devices),
        )


def unpack_record(data: bytes) -> list[Any]:
    """The plain form of a stored record, its checksum verified."""
    row: list[Any] = msgpack.unpackb(unseal(data), raw=False)
    if not isinstance(row, list) or len(row) != 9:
        raise ValueError("not a person record")
    return row


def _typed(attrs: dict[str, Value]) -> dict[str, tuple[str, Value]]:
    return {k: (type(v).__name__, v) for k, v in attrs.items()}


def pack_value(v: Value) -> Any:
    # msgpack keeps int and float apart, and numbers are always floats: an int is a timestamp.
    return int(v) if isinstance(v, Timestamp) else v


def unpack_value(v: Any) -> Value:
    if isinstance(v, bool | float | str):
        return v
    if isinstance(v, int):
        return Timestamp(v)
    raise ValueError(f"bad stored value {v!r}")


@dataclass(frozen=True)
class PersonUpsert:
    """A create-or-update of one person: unset fields (None, empty) keep what is stored."""

    id: str
    email: str | None = None  # "" removes
    phone: str | None = None  # "" removes
    unsubscribed: bool | None = None
    attributes: dict[str, Value] = field(default_factory=dict)
    remove_attributes: tuple[str, ...] = ()
    add_tags: tuple[str, ...] = ()
    remove_tags: tuple[str, ...] = ()
    devices: tuple[tuple[str, str], ...] = ()  # (device id, platform)
    remove_device_ids: tuple[str, ...] = ()
    created_at: Timestamp | None = None
    replace: bool = False


# Names already checked: attribute names, tags and platforms repeat across millions of people,
# so each distinct one is validated once. Bounded so that junk cannot grow it without limit.
_KNOWN_NAMES: set[tuple[str, int]] = set()
_KNOWN_NAMES_MAX = 100_000


def check_name(name: str, what: str, path: str, max_length: int = 256) -> None:
    if (name, max_length) in _KNOWN_NAMES:
        return
    check_key(name, what, path, max_length)
    if len(_KNOWN_NAMES) < _KNOWN_NAMES_MAX:
        _KNOWN_NAMES.add((name, max_length))


def validate_upsert(
    upsert: PersonUpsert, path: str, limits: Limits, default_region: str | None
) -> PersonUpsert:
    """Checks one upsert and returns it with email and phone normalised (a phone without a
    country code as one of `default_region`); raises InvalidArgument naming the field
    (e.g. `people[3].email`)."""
    check_key(upsert.id, "the person id", f"{path}.id")
    email = upsert.email
    if email:
        email = normalize_email(email, f"{path}.email")
    phone = upsert.phone
    if phone:
        phone = normalize_phone(phone, f"{path}.phone", default_region)
    attrs = upsert.attributes
    if len(attrs) > limits.max_attributes_per_person:
        raise InvalidArgument(
            f"more than {limits.max_attributes_per_person} attributes", f"{path}.attributes"
        )
    max_string = limits.max_string_length
    for key, value in attrs.items():
        check_name(key, "the attribute name", f"{path}.attributes[{key!r}]")
        kind = type(value)
        # Fast paths for the common, valid cases; check_value says what is wrong otherwise.
        if (kind is str and len(value) <= max_string) or kind is bool:  # type: ignore[arg-type]
            continue
        if kind is float and math.isfinite(value) and value != 0.0:  # type: ignore[arg-type]
            continue
        fixed = check_value(value, f"{path}.attributes[{key!r}]", max_string)
        if fixed is not value:
            attrs = {**attrs, key: fixed}
    if upsert.remove_attributes:
        both = set(attrs) & set(upsert.remove_attributes)
        if both:
            raise InvalidArgument(
                f"attribute {sorted(both)[0]!r} is both set and removed",
                f"{path}.remove_attributes",
            )
    for i, tag in enumerate(upsert.add_tags):
        check_name(tag, "the tag", f"{path}.add_tags[{i}]")
    if len(upsert.add_tags) > limits.max_tags_per_person:
        raise InvalidArgument(f"more than {limits.max_tags_per_person} tags", f"{path}.add_tags")
    if upsert.remove_tags:
        both = set(upsert.add_tags) & set(upsert.remove_tags)
        if both:
            raise InvalidArgument(
                f"tag {sorted(both)[0]!r} is both added and removed", f"{path}.remove_tags"
            )
    for i, (device_id, platform) in enumerate(upsert.devices):
        check_key(device_id, "the device id", f"{path}.devices[{i}].id")
        check_name(platform, "the device platform", f"{path}.devices[{i}].platform", 64)
    if len(upsert.devices) > limits.max_devices_per_person:
        raise InvalidArgument(
            f"more than {limits.max_devices_per_person} devices", f"{path}.devices"
        )
    if upsert.created_at is not None:
        check_value(upsert.created_at, f"{path}.created_at", 0)
    if email == upsert.email and phone == upsert.phone and attrs is upsert.attributes:
        return upsert
    return replace(upsert, email=email, phone=phone, attributes=attrs)


def apply_upsert(old: PersonRecord | None, upsert: PersonUpsert, now: Timestamp) -> PersonRecord:
    """The record after `upsert` (already validated) is applied to `old`."""
    if old is None or upsert.replace:
        base = PersonRecord(
            id=upsert.id,
            created_at=old.created_at if old is not None else now,
            updated_at=now,
            email=old.email if old is not None else None,
            phone=old.phone if old is not None else None,
            unsubscribed=old.unsubscribed if old is not None else False,
        )
    else:
        base = old
    attributes = dict(base.attributes)
    attributes.update(upsert.attributes)
    for key in upsert.remove_attributes:
        attributes.pop(key, None)
    tags = (set(base.tags) | set(upsert.add_tags)) - set(upsert.remove_tags)
    devices = dict(base.devices)
    devices.update(upsert.devices)
    for device_id in upsert.remove_device_ids:
        devices.pop(device_id, None)
    return PersonRecord(
        id=upsert.id,
        created_at=upsert.created_at if upsert.created_at is not None else base.created_at,
        updated_at=now,
        email=base.email if upsert.email is None else (upsert.email or None),
        phone=base.phone if upsert.phone is None else (upsert.phone or None),
        unsubscribed=base.unsubscribed if upsert.unsubscribed is None else upsert.unsubscribed,
        attributes=attributes,
        tags=frozenset(tags),
        devices=devices,
    )
