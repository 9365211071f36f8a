"""Byte sizes in the words operators write them: `64GiB`, `512MiB`, `1TB`, or plain bytes.

Used where a size is read (the `--map-size` option) and where one is shown (the startup
line, messages), so both speak the same units. No dependencies: the client install has it.
"""

from __future__ import annotations

import re

# Binary units are powers of 1024, decimal ones powers of 1000, as IEC and SI define them
# (and as df -h / du --si tell them apart). A bare K, M, G, T is taken as binary: that is
# what LMDB's and most databases' documentation mean by it.
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "kb": 1000,
    "m": 1 << 20,
    "mib": 1 << 20,
    "mb": 1000**2,
    "g": 1 << 30,
    "gib": 1 << 30,
    "gb": 1000**3,
    "t": 1 << 40,
    "tib": 1 << 40,
    "tb": 1000**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")
# Largest first, so a size is shown in the largest unit that divides it.
_SHOWN = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def parse_size(text: str) -> int:
    """The number of bytes `text` names; ValueError saying what is accepted otherwise."""
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"{text!r} is not a size: give bytes or a number with a unit "
            "(KiB, MiB, GiB, TiB; KB, MB, GB, TB), e.g. 64GiB"
        )
    number = float(match.group(1)) if "." in match.group(1) else int(match.group(1))
    size = number * _UNITS[unit]
    if size != int(size):
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(size)


def format_size(size: int) -> str:
    """`size` bytes in the largest binary unit that divides it exactly (64GiB, 1536MiB),
    so the text reads back to the same number; otherwise plain bytes."""
    for unit, factor in _SHOWN:
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def approximate_size(size: int) -> str:
    """`size` bytes to three significant figures in the largest unit that fits (1.21GiB),
    for figures read by people rather than fed back."""
    for unit, factor in _SHOWN:
        if size >= factor:
            return f"{size / factor:.3g}{unit}"
    return f"{size}B"
