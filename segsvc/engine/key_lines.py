"""Many emails or phones checked at once: the values joined by newlines (which no valid value
contains) and tested with numpy over the bytes, for the common case where every one is
already in plain stored form. Each test answers what its regular expression, applied
line by line, answers (the tests hold them to it); a regular expression costs about 10 ns
per character, these a few per value.

Both take ASCII text only (the caller checks `str.isascii` first) and `count` lines.
"""

from __future__ import annotations

import re

import numpy as np

from segsvc.engine.values import EMAIL_ADDRESS

# What the tests mean, as the regular expressions they replace: the email pattern is the
# one normalize_email applies, so a change to it fails the tests of plain_emails.
EMAIL_LINES = re.compile(EMAIL_ADDRESS.pattern, re.MULTILINE)
PHONE_LINES = re.compile(r"^\+[0-9]{7,15}$", re.MULTILINE)

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
    """Whether each of the `count` lines is `+` and 7 to 15 digits."""
    data, starts, ends = _lines(joined)
    lengths = ends - starts
    if len(starts) != count or ((lengths < 8) | (lengths > 16)).any():
        return False
    plus = data == _PLUS
    digits = (data >= _ZERO) & (data <= _NINE)
    # Every line starts with the only + it holds, and the rest are digits.
    return bool(
        plus[starts].all()
        and int(plus.sum()) == count
        and (digits | plus | (data == _NEWLINE)).all()
    )
