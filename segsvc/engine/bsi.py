"""Bit-sliced index (as in Pilosa and O'Neil & Quass): one bitmap per bit of an unsigned
encoding of the value, so a range over a million people is a few dozen bitmap operations,
never a loop over people."""

from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence

import numpy as np
from pyroaring import BitMap

_DOUBLE = struct.Struct(">d")
_U64 = struct.Struct(">Q")
_SIGN = 1 << 63
_MASK = (1 << 64) - 1

NUMBER_BITS = 64
# Below this many people a group is updated person by person: a bit loop per person costs
# less than building a bitmap per bit.
SMALL = 32
# Timestamps of the years 1..9999 shifted to be non-negative fit in 39 bits.
TIMESTAMP_OFFSET = 1 << 38
TIMESTAMP_BITS = 39


def encode_number(value: float) -> int:
    """An unsigned integer that sorts like the float: flip all bits of negatives, set the sign
    bit of non-negatives."""
    bits: int = _U64.unpack(_DOUBLE.pack(value + 0.0))[0]
    return (~bits & _MASK) if bits & _SIGN else bits | _SIGN


def encode_timestamp(value: int) -> int:
    return value + TIMESTAMP_OFFSET


class BitSlicedIndex:
    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.slices = [BitMap() for _ in range(bits)]
        self.exists = BitMap()

    def add(self, ordinal: int, code: int) -> None:
        self.exists.add(ordinal)
        for i in range(self.bits):
            if code >> i & 1:
                self.slices[i].add(ordinal)

    def remove(self, ordinal: int, code: int) -> None:
        self.exists.discard(ordinal)
        for i in range(self.bits):
            if code >> i & 1:
                self.slices[i].discard(ordinal)

    def add_many(self, ordinals: Sequence[int], codes: Sequence[int]) -> None:
        """Bulk insert of people that have no value here yet."""
        if len(ordinals) < SMALL:
            for ordinal, code in zip(ordinals, codes, strict=True):
                self.add(ordinal, code)
            return
        self.exists.update(array("I", ordinals))
        for i, chosen in self._by_bit(ordinals, codes):
            self.slices[i] |= chosen

    def remove_many(self, ordinals: Sequence[int], codes: Sequence[int]) -> None:
        """Bulk removal of people's current values."""
        if len(ordinals) < SMALL:
            for ordinal, code in zip(ordinals, codes, strict=True):
                self.remove(ordinal, code)
            return
        self.exists -= BitMap(array("I", ordinals))
        for i, chosen in self._by_bit(ordinals, codes):
            self.slices[i] -= chosen

    def _by_bit(self, ordinals: Sequence[int], codes: Sequence[int]) -> list[tuple[int, BitMap]]:
        """For each bit, the people whose code has it set: one vectorised mask per bit
        instead of a Python loop per person and bit. Bits that every code has (or none has)
        need no mask: a group's values often share their high bits (dates of one season,
        whole numbers as doubles, one creation time)."""
        people = np.asarray(ordinals, dtype=np.uint32)
        values = np.asarray(codes, dtype=np.uint64)
        if not values.size:
            return []
        every = int(np.bitwise_and.reduce(values))
        some = int(np.bitwise_or.reduce(values))
        everyone: BitMap | None = None
        out = []
        for i in range(self.bits):
            if not some >> i & 1:
                continue
            if every >> i & 1:
                everyone = everyone or BitMap(array("I", people.tobytes()))
                out.append((i, everyone))
                continue
            chosen = people[values & np.uint64(1 << i) != 0]
            out.append((i, BitMap(array("I", chosen.tobytes()))))
        return out

    def compare(self, code: int, within: BitMap | None = None) -> tuple[BitMap, BitMap, BitMap]:
        """(less than, equal to, greater than) `code`, among people with a value (and in
        `within`, when given: then the cost follows the size of `within`)."""
        less, greater = BitMap(), BitMap()
        equal = self.exists & within if within is not None else BitMap(self.exists)
        for i in reversed(range(self.bits)):
            if not equal:
                break
            bit_slice = self.slices[i]
            if code >> i & 1:
                less |= equal - bit_slice
                equal &= bit_slice
            else:
                greater |= equal & bit_slice
                equal -= bit_slice
        return less, equal, greater

    def range(
        self,
        low: int | None,
        low_inclusive: bool,
        high: int | None,
        high_inclusive: bool,
        within: BitMap | None = None,
    ) -> BitMap:
        result = self.exists & within if within is not None else BitMap(self.exists)
        if low is not None:
            _, equal, greater = self.compare(low, within)
            result = greater | equal if low_inclusive else greater
        if high is not None:
            less, equal, _ = self.compare(high, within)
            result &= less | equal if high_inclusive else less
        return result

    def equal(self, code: int, within: BitMap | None = None) -> BitMap:
        return self.compare(code, within)[1]

    def serialize(self) -> list[bytes]:
        return [self.exists.serialize(), *(s.serialize() for s in self.slices)]

    @classmethod
    def deserialize(cls, bits: int, parts: list[bytes]) -> BitSlicedIndex:
        index = cls(bits)
        index.exists = BitMap.deserialize(parts[0])
        index.slices = [BitMap.deserialize(p) for p in parts[1:]]
        return index
