"""Typed values and the normalisation of people's keys.

A value is a `str`, a `float` (numbers are 64-bit floats), a `bool` or a `Timestamp` (whole UTC
seconds). Comparisons match only values of their own type, so the type is always checked with
`kind_of`, never with `==` (in Python `True == 1.0 == Timestamp(1)`).
"""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import UTC, datetime
from typing import Literal

from segsvc.engine.errors import InvalidArgument

Kind = Literal["string", "number", "bool", "timestamp"]

# The datetime range: years 1 to 9999.
MIN_TIMESTAMP = -62_135_596_800
MAX_TIMESTAMP = 253_402_300_799


class Timestamp(int):
    """Whole seconds since the Unix epoch, UTC. A distinct type so that a timestamp is never
    mistaken for a number."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Timestamp({int(self)})"


Value = str | float | bool | Timestamp


_KINDS: dict[type, Kind] = {str: "string", float: "number", bool: "bool", Timestamp: "timestamp"}


def kind_of(value: Value) -> Kind:
    kind = _KINDS.get(type(value))
    if kind is not None:
        return kind
    # Subclasses (e.g. a str subclass from a library); bool before number as bool is an int.
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Timestamp):
        return "timestamp"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    raise TypeError(f"not a segsvc value: {value!r}")


def check_value(value: Value, field: str, max_string: int) -> Value:
    """Validates a value from a request; returns it in canonical form."""
    kind = kind_of(value)
    if kind == "number":
        assert isinstance(value, float)
        if not math.isfinite(value):
            raise InvalidArgument("numbers must be finite (no NaN or infinity)", field)
        return value + 0.0  # folds -0.0 into 0.0
    if kind == "string":
        assert isinstance(value, str)
        if len(value) > max_string:
            raise InvalidArgument(f"string longer than {max_string} characters", field)
    if kind == "timestamp" and not MIN_TIMESTAMP <= int(value) <= MAX_TIMESTAMP:
        raise InvalidArgument("timestamp outside the years 1 to 9999", field)
    return value


def fold(text: str) -> str:
    """The case-insensitive form used by contains / starts with / ends with."""
    return text.casefold()


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(value: Value) -> str:
    if isinstance(value, Timestamp):
        return iso(value)
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}"


# Unicode category Cc: the C0 and C1 control characters and DEL.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")
EMAIL_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE_PUNCTUATION = re.compile(r"[\s().\-/]")


# Ids and emails are parts of LMDB keys, which hold at most 511 bytes with the workspace's
# prefix (up to 66 bytes): 256 characters of emoji would not fit.
MAX_KEY_BYTES = 400


def _too_many_bytes(text: str) -> bool:
    # The length in characters first: a character is at most 4 bytes, and this runs per row
    # of a bulk load.
    return len(text) * 4 > MAX_KEY_BYTES and len(text.encode("utf-8", "replace")) > MAX_KEY_BYTES


def normalize_email(raw: str, field: str) -> str:
    email = unicodedata.normalize("NFC", raw.strip()).casefold()
    if (
        len(email) > 254
        or _too_many_bytes(email)
        or CONTROL_CHARACTERS.search(email)
        or not EMAIL_ADDRESS.match(email)
    ):
        raise InvalidArgument(f"{raw!r} is not an email address (expected name@domain.tld)", field)
    return email


def normalize_phone(raw: str, field: str) -> str:
    """+ and digits (E.164): punctuation and spaces are dropped, a leading 00 becomes +."""
    text = _PHONE_PUNCTUATION.sub("", raw.strip())
    if text.startswith("00"):
        text = "+" + text[2:]
    digits = text[1:] if text.startswith("+") else text
    if not digits.isdigit() or not 7 <= len(digits) <= 15 or not digits.isascii():
        raise InvalidArgument(
            f"{raw!r} is not a phone number (expected 7 to 15 digits, optionally after +)", field
        )
    return "+" + digits


def check_key(raw: str, what: str, field: str, max_length: int = 256) -> str:
    """Validates an external id, tag, device id or platform, segment name: non-empty,
    bounded, printable."""
    if not raw or not raw.strip():
        raise InvalidArgument(f"{what} is empty", field)
    if len(raw) > max_length:
        raise InvalidArgument(f"{what} is longer than {max_length} characters", field)
    if _too_many_bytes(raw):
        raise InvalidArgument(f"{what} is longer than {MAX_KEY_BYTES} bytes in UTF-8", field)
    if CONTROL_CHARACTERS.search(raw):
        raise InvalidArgument(f"{what} {raw!r} contains control characters", field)
    return raw
