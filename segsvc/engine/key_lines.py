"""Many emails or phones checked at once: the values joined by newlines (which no valid value
contains) and tested with numpy over the bytes, for the common case where every one is
already in plain stored form. Each test answers what its one-value check, applied line by
line, answers (the tests hold them to it): the email regular expression, and
values.is_stored_phone; those cost about 10 ns per character or 1 µs per value, these a few
ns per value.

Both take ASCII text only (the caller checks `str.isascii` first) and `count` lines.
"""

from __future__ import annotations

import re

import numpy as np

from segsvc.engine.values import E164_MAX_DIGITS, EMAIL_ADDRESS, NATIONAL_LENGTHS

# What the test means, as the regular expression it replaces: the email pattern is the one
# normalize_email applies, so a change to it fails the tests of plain_emails.
EMAIL_LINES = re.compile(EMAIL_ADDRESS.pattern, re.MULTILINE)


def _length_masks(size: int) -> np.ndarray:
    """For each number of `size` digits, the national lengths possible after it as a calling
    code, one bit per length (0 where it is no calling code: 0 is no code's first digit)."""
    masks = np.zeros(10**size, dtype=np.int64)
    for code, lengths in NATIONAL_LENGTHS.items():
        if len(code) == size:
            masks[int(code)] = sum(1 << length for length in lengths)
    return masks


_CODE_LENGTH_MASKS = [(size, _length_masks(size)) for size in (1, 2, 3)]

_NEWLINE, _AT, _DOT, _PLUS, _ZERO, _NINE = b"\n@.+09"


def ascii_controls(joined: str) -> bool:
    """Whether ASCII text holds a control character (below 32, or 127)."""
    data = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
    return bool(((data < 32) | (data == 127)).any())


def _lines(joined: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bytes, and where each line starts and ends (exclusive)."""
    data = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
    newlines = np.flatnonzero(data == _NEWLINE)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [len(data)]))
    return data, starts, ends


def plain_emails(joined: str, count: int) -> bool:
    """Whether each of the `count` lines is `local@domain` with one @, something before it,
    and a dot inside the domain with a character on each side. Stricter than the regular
    expression in one way: no control characters at all (the caller then goes value by
    value, through the exact check)."""
    data, starts, ends = _lines(joined)
    # Below 33: spaces, control characters and the count - 1 newlines.
    if len(starts) != count or np.count_nonzero(data < 33) != count - 1:
        return False
    ats = np.flatnonzero(data == _AT)
    # One @ per line, not first: the k-th @ lies inside line k, after its first character.
    if len(ats) != count or not ((ats > starts) & (ats < ends)).all():
        return False
    # A dot qualifies at p when at + 2 <= p < end - 1.
    dots = np.flatnonzero(data == _DOT)
    low, high = ats + 2, ends - 1
    return bool((np.searchsorted(dots, high) > np.searchsorted(dots, low)).all())


def plain_phones(joined: str, count: int) -> bool:
    """Whether each of the `count` lines is a phone in stored form (values.is_stored_phone):
    `+` and 2 to 15 digits, a calling code, then a national number of a possible length."""
    data, starts, ends = _lines(joined)
    lengths = ends - starts
    if len(starts) != count or ((lengths < 3) | (lengths > E164_MAX_DIGITS + 1)).any():
        return False
    plus = data == _PLUS
    digits = (data >= _ZERO) & (data <= _NINE)
    # Every line starts with the only + it holds, and the rest are digits.
    if not (
        plus[starts].all()
        and int(plus.sum()) == count
        and (digits | plus | (data == _NEWLINE)).all()
    ):
        return False
    # The first 1, 2 and 3 digits of each line as numbers: one of them is the calling code
    # (codes are prefix-free), and what follows it must have a length possible there.
    code = np.zeros(count, dtype=np.int64)
    possible = np.zeros(count, dtype=bool)
    for size, masks in _CODE_LENGTH_MASKS:
        # Every line has at least 2 digits; a third is read only where there is one.
        has_size = lengths > size
        digit = data[np.minimum(starts + size, len(data) - 1)].astype(np.int64) - _ZERO
        code = code * 10 + np.where(has_size, digit, 0)
        national = lengths - 1 - size
        possible |= has_size & (((masks[code] >> np.maximum(national, 0)) & 1) == 1)
    return bool(possible.all())
