"""Checksummed records: every record the engine stores (people, operations, checkpoints,
change batches, audience snapshots) is framed with a CRC-32 of its payload, and verified on
every read, so that damage on disk is named instead of decoded into wrong answers.

The frame is one mark byte, 0xC1, then the CRC-32 (big-endian) and the payload. msgpack never
uses 0xC1, so a record written before checksums existed (a bare msgpack payload) is told apart
by its first byte and read as before.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

from segsvc.storage.errors import CorruptRecordError

MARK = 0xC1
_HEAD = struct.Struct(">BI")
HEAD_SIZE = _HEAD.size
_pack_head = _HEAD.pack
_crc32 = zlib.crc32


class DamagedRecord(ValueError):
    """A record's checksum does not match its payload (where it is is added by `reading`)."""


def seal(payload: bytes) -> bytes:
    """The stored form of `payload`: the frame and the payload."""
    return frame(_crc32(payload)) + payload


def frame(payload_crc: int) -> bytes:
    """The frame that goes before a payload with this CRC-32 (`zlib.crc32`) in its stored
    form: for a payload written in pieces, too large to join once more."""
    return _pack_head(MARK, payload_crc)


def unseal(data: bytes) -> memoryview | bytes:
    """The payload of a stored record, its checksum verified (DamagedRecord when it does not
    match); an unframed record of the first schema comes back as it is."""
    if not data or data[0] != MARK:
        return data
    if len(data) < HEAD_SIZE:
        raise DamagedRecord(f"{len(data)} bytes, shorter than its checksum")
    _, expected = _HEAD.unpack_from(data)
    payload = memoryview(data)[HEAD_SIZE:]
    if _crc32(payload) != expected:
        raise DamagedRecord("checksum mismatch")
    return payload


def reason(exc: BaseException) -> str:
    """What is wrong with a record whose decoding raised `exc`, in a few words."""
    if isinstance(exc, DamagedRecord):
        return str(exc)
    text = str(exc)
    if len(text) > 120:
        text = text[:117] + "..."
    return f"cannot be decoded: {type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def reading(table: str, key: str) -> Iterator[None]:
    """Decoding a stored record inside this block: any failure (checksum, decoding) becomes a
    CorruptRecordError naming the table and the key (`key` already described for people)."""
    try:
        yield
    except CorruptRecordError:
        raise
    except Exception as exc:
        raise CorruptRecordError(table, key, reason(exc)) from exc
