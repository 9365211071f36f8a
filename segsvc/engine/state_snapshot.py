"""A workspace's state as a checkpoint stores it, packed off the write lock: taken by
`WorkspaceState.snapshot` under the lock, packed into bytes here on any thread, in pieces, so
that a writer never waits for one long msgpack call."""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np

from segsvc.engine.index import KeyColumn
from segsvc.storage.records import frame

# Packing a checkpoint lets the GIL go for PACK_PAUSE seconds after each PACK_TURN seconds.
PACK_TURN = 0.002
PACK_PAUSE = 0.0005


class StateSnapshot:
    """A state as one checkpoint stores it (`WorkspaceState.snapshot`): packed into bytes
    on any thread, as often as needed, whatever the state does meanwhile."""

    def __init__(self, op_seq: int, body: list[Any]) -> None:
        # The last operation the snapshot includes: what its checkpoint covers.
        self.op_seq = op_seq
        self._body = body

    def pieces(self) -> list[bytes]:
        """The stored bytes in pieces: the frame, then the payload packed value by value.
        One `msgpack.packb` of the whole state holds the GIL for its whole run (about 0.4 s
        at 1M people), and a writer waits as long. Between pieces this thread also lets the
        GIL go now and then: a writer that waited on I/O would otherwise wait a whole
        switch interval (5 ms) for it, several times per write. The pieces joined are
        `to_bytes`."""
        packer = msgpack.Packer(use_bin_type=True, default=_stored_form)
        payload: list[bytes] = []
        crc = 0
        turn = time.perf_counter()
        for piece in _pack_in_pieces(self._body, packer):
            payload.append(piece)
            crc = zlib.crc32(piece, crc)
            if time.perf_counter() - turn > PACK_TURN:
                time.sleep(PACK_PAUSE)
                turn = time.perf_counter()
        return [frame(crc), *payload]

    def to_bytes(self) -> bytes:
        return b"".join(self.pieces())


def _pack_in_pieces(value: Any, packer: msgpack.Packer) -> Iterator[bytes]:
    """msgpack's bytes for `value`: containers as their header and then their items, each
    packed on its own (reads the same as packing the whole at once)."""
    if isinstance(value, KeyColumn):
        yield from value.stored()
    elif isinstance(value, list | tuple):
        yield packer.pack_array_header(len(value))
        for item in value:
            yield from _pack_in_pieces(item, packer)
    elif isinstance(value, dict):
        yield packer.pack_map_header(len(value))
        for key, item in value.items():
            yield packer.pack(key)
            yield from _pack_in_pieces(item, packer)
    else:
        yield packer.pack(value)


def _stored_form(value: object) -> Any:
    """What msgpack stores for the parts a snapshot leaves unpacked."""
    if isinstance(value, np.ndarray):
        return value.tobytes()
    raise TypeError(f"a checkpoint cannot store a {type(value).__name__}")
