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

import phonenumbers

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


# E.164 allows 15 digits, the country calling code included.
E164_MAX_DIGITS = 15


def _national_lengths() -> dict[str, frozenset[int]]:
    """Country calling code -> the national number lengths that phonenumbers calls possible
    for it (its is_possible_number, local-only lengths excluded), within E.164's 15 digits.
    Asked of the library itself, so the table follows its metadata."""
    table: dict[str, frozenset[int]] = {}
    for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
        prefix = str(code)
        lengths = frozenset(
            length
            for length in range(1, E164_MAX_DIGITS - len(prefix) + 1)
            if phonenumbers.is_possible_number_with_reason(
                phonenumbers.PhoneNumber(country_code=code, national_number=int("1" * length))
            )
            == _POSSIBLE
        )
        if lengths:
            table[prefix] = lengths
    return table


_POSSIBLE = phonenumbers.ValidationResult.IS_POSSIBLE
# Calling codes are prefix-free (ITU-T E.164), so at most one prefix of a number is one.
NATIONAL_LENGTHS = _national_lengths()
_PLUS_DIGITS = re.compile(r"\+[0-9]{2,15}")


def is_stored_phone(text: str) -> bool:
    """Whether `text` is a phone in stored form: + and at most 15 ASCII digits, a country
    calling code phonenumbers knows, then a national number of a length possible there."""
    if not _PLUS_DIGITS.fullmatch(text):
        return False
    for size in (1, 2, 3):
        lengths = NATIONAL_LENGTHS.get(text[1 : 1 + size])
        if lengths is not None:
            return len(text) - 1 - size in lengths
    return False


def check_region(region: str) -> str:
    """A default region as phonenumbers knows it (ISO 3166 alpha-2, e.g. US, GB), upper-cased;
    ValueError naming the problem otherwise."""
    code = region.strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(
            f"{region!r} is not a region phonenumbers knows: give an ISO 3166 two-letter "
            "country code such as US, GB or DE"
        )
    return code


def normalize_phone(raw: str, field: str, default_region: str | None) -> str:
    """The E.164 form of a phone (`+15550100004`).

    Punctuation and spaces are dropped and a leading 00 becomes +. A number already in stored
    form (`is_stored_phone`) is kept as it is: the bulk loads check whole columns of those at
    once (key_lines.plain_phones), so this path must not read them differently. Anything else
    is parsed by phonenumbers, a number without a country code as one of `default_region`
    (ISO 3166 code; None: such numbers are refused), and must come out possible there.
    """
    text = _phone_text(raw)
    if is_stored_phone(text):
        return text
    international = text.startswith("+")
    if not international and default_region is None:
        raise InvalidArgument(
            f"{raw!r} has no country code and this server has no default region: "
            "write it as + and the country code, then the number",
            field,
        )
    try:
        number = phonenumbers.parse(text, None if international else default_region)
    except phonenumbers.NumberParseException as exc:
        reason = _PARSE_ERRORS.get(exc.error_type, "is not a phone number")
        raise InvalidArgument(f"{raw!r} {reason}", field) from None
    if number.extension:
        raise InvalidArgument(
            f"{raw!r} has an extension ({number.extension}), which a stored phone cannot "
            "hold: give the number without it",
            field,
        )
    stored = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    result = phonenumbers.is_possible_number_with_reason(number)
    if result == _POSSIBLE and is_stored_phone(stored):
        return stored
    if result == _POSSIBLE:
        problem = f"has more digits than E.164's {E164_MAX_DIGITS}"
    else:
        problem = _LENGTH_ERRORS.get(result, "is not a possible number for {where}")
    message = f"{raw!r} " + problem.format(where=_country_of(number.country_code or 0))
    if not international:
        message += (
            f". Without a country code it is read as a number of {default_region}, "
            "the server's default region"
        )
    raise InvalidArgument(message, field)


def plain_phone(operand: str) -> str:
    """+ and the digits of a phone operand, punctuation dropped and a leading 00 read as +,
    nothing checked. Definitions hold their phone operands in stored form, which this keeps
    as they are; one saved before phones were placed by a default region keeps the meaning
    it had then (its operands were read this way), so replaying an old log changes nothing."""
    return "+" + _phone_text(operand).removeprefix("+")


def _phone_text(raw: str) -> str:
    """A phone as written, without punctuation and spaces, a leading 00 (the international
    prefix of most countries) read as +."""
    text = _PHONE_PUNCTUATION.sub("", raw.strip())
    return "+" + text[2:] if text.startswith("00") else text


def _country_of(code: int) -> str:
    region = phonenumbers.region_code_for_country_code(code)
    # Non-geographic codes (+800, +882, ...) have the region "001".
    return f"+{code} ({region})" if region.isalpha() else f"+{code}"


_PARSE_ERRORS = {
    phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: (
        "does not start with a known country code after the +"
    ),
    phonenumbers.NumberParseException.NOT_A_NUMBER: (
        "is not a phone number (expected digits, optionally after + and the country code)"
    ),
    phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: (
        "is too short after the international prefix"
    ),
    phonenumbers.NumberParseException.TOO_SHORT_NSN: "is too short for a phone number",
    phonenumbers.NumberParseException.TOO_LONG: "is too long for a phone number",
}
_LENGTH_ERRORS = {
    phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: "has an unknown country code",
    phonenumbers.ValidationResult.TOO_SHORT: "is too short for {where}",
    phonenumbers.ValidationResult.TOO_LONG: "is too long for {where}",
    phonenumbers.ValidationResult.INVALID_LENGTH: "has a length no number of {where} has",
    phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY: (
        "is too short for {where}: a local number, add its area code"
    ),
}


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
