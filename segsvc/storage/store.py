"""LMDB behind a small interface: named tables, workspace-prefixed keys, one write
transaction per unit of work.

Every table key starts with the workspace name and a NUL byte, so a workspace's rows are one
contiguous key range and nothing crosses workspaces.
"""

from __future__ import annotations

import fcntl
import struct
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb

from segsvc.storage.errors import StorageFullError, StoreLockedError

TABLES = (
    "meta",  # schema version and per-workspace settings
    "ops",  # the operation log: seq -> operation record
    "people",  # ordinal -> person record
    "lookup",  # kind + key (id, email, phone) -> ordinal
    "segments",  # segment id -> segment record
    "changes",  # first change seq -> batch of membership changes
    "history",  # segment id + time -> member count
    "checkpoints",  # workspace -> serialized in-memory state
    "events",  # ordinal + time + n -> event
    "snapshots",  # audience snapshot id -> frozen audience
)

U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
SCHEMA_VERSION = b"1"


def prefix(workspace: str) -> bytes:
    return workspace.encode() + b"\x00"


def u32(n: int) -> bytes:
    return U32.pack(n)


def u64(n: int) -> bytes:
    return U64.pack(n)


def read_u32(b: bytes, offset: int = 0) -> int:
    return int(U32.unpack_from(b, offset)[0])


def read_u64(b: bytes, offset: int = 0) -> int:
    return int(U64.unpack_from(b, offset)[0])


class Txn:
    """A transaction over the named tables; keys and values are bytes."""

    def __init__(self, txn: Any, dbs: dict[str, Any]) -> None:
        self._txn = txn
        self._dbs = dbs

    def get(self, table: str, key: bytes) -> bytes | None:
        value = self._txn.get(key, db=self._dbs[table])
        return None if value is None else bytes(value)

    def put(self, table: str, key: bytes, value: bytes) -> None:
        try:
            self._txn.put(key, value, db=self._dbs[table])
        except lmdb.MapFullError as exc:
            raise StorageFullError(str(exc)) from exc

    def get_many(self, table: str, keys: list[bytes]) -> dict[bytes, bytes]:
        """The rows that exist among `keys`, read with one cursor (much less per key than
        `get`; sorted keys read fastest)."""
        with self._txn.cursor(db=self._dbs[table]) as cursor:
            return {bytes(k): bytes(v) for k, v in cursor.getmulti(keys)}

    def put_many(self, table: str, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Writes many rows with one cursor (sorted keys write fastest)."""
        try:
            with self._txn.cursor(db=self._dbs[table]) as cursor:
                cursor.putmulti(items)
        except lmdb.MapFullError as exc:
            raise StorageFullError(str(exc)) from exc

    def insert_many(self, table: str, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Writes the rows whose keys are absent (the others keep their values); returns how
        many it wrote."""
        try:
            with self._txn.cursor(db=self._dbs[table]) as cursor:
                return int(cursor.putmulti(items, overwrite=False)[1])
        except lmdb.MapFullError as exc:
            raise StorageFullError(str(exc)) from exc

    def delete(self, table: str, key: bytes) -> bool:
        return bool(self._txn.delete(key, db=self._dbs[table]))

    def scan(
        self,
        table: str,
        within: bytes,
        start: bytes | None = None,
        stop: bytes | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:
        """Rows whose key starts with `within`, with start <= key < stop (both default to the
        whole prefix range), in key order, or backwards from the last one when `reverse`."""
        low = max(start, within) if start is not None else within
        end = prefix_end(within)
        if stop is not None:
            end = stop if end is None else min(end, stop)
        with self._txn.cursor(db=self._dbs[table]) as cursor:
            if not reverse:
                if not cursor.set_range(low):
                    return
                for key, value in cursor:
                    if end is not None and key >= end:
                        return
                    yield bytes(key), bytes(value)
                return
            positioned = (
                cursor.last() if end is None or not cursor.set_range(end) else cursor.prev()
            )
            while positioned:
                key = cursor.key()
                if key < low:
                    return
                if end is None or key < end:
                    yield bytes(key), bytes(cursor.value())
                positioned = cursor.prev()

    def delete_range(self, table: str, start: bytes, stop: bytes) -> int:
        """Deletes rows with start <= key < stop; returns how many."""
        deleted = 0
        with self._txn.cursor(db=self._dbs[table]) as cursor:
            if not cursor.set_range(start):
                return 0
            while cursor.key() < stop:
                if not cursor.delete():
                    break
                deleted += 1
                if cursor.key() == b"":
                    break
        return deleted


def prefix_end(start: bytes) -> bytes | None:
    """The smallest key greater than every key that starts with `start`; None when there is
    none (an empty or all-0xff prefix reaches to the end of the table)."""
    stripped = start.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


class Store:
    """One LMDB environment holding every workspace.

    Writes are serialised by the engine; `write()` is the one way to change anything and
    commits only when its block finishes without an exception.
    """

    def __init__(self, path: Path, map_size: int = 64 * 1024**3) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        # LMDB itself lets two processes write one environment, but each would replay and
        # extend the log from its own memory: hold an exclusive lock for the store's life.
        self._lock_file = open(path / "segsvc.lock", "a+")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise StoreLockedError(
                f"{path} is in use by another segsvc process: stop it, or choose another --data"
            ) from None
        self._env = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=len(TABLES) + 1,
            max_readers=512,
            # Fsync on every commit: an acknowledged write survives a crash or power loss.
            sync=True,
            metasync=True,
            readahead=False,
        )
        self._dbs = {name: self._env.open_db(name.encode()) for name in TABLES}
        self._write_lock = threading.Lock()
        with self.write() as txn:
            version = txn.get("meta", b"schema")
            if version is None:
                txn.put("meta", b"schema", SCHEMA_VERSION)
            elif version != SCHEMA_VERSION:
                raise RuntimeError(
                    f"{path} holds schema version {version.decode()}, this segsvc reads "
                    f"{SCHEMA_VERSION.decode()}"
                )

    @contextmanager
    def write(self) -> Iterator[Txn]:
        """One unit of work: commits on success, aborts on any exception."""
        with self._write_lock:
            txn = self._env.begin(write=True)
            try:
                yield Txn(txn, self._dbs)
            except BaseException:
                txn.abort()
                raise
            try:
                txn.commit()
            except lmdb.MapFullError as exc:
                raise StorageFullError(str(exc)) from exc

    @contextmanager
    def read(self) -> Iterator[Txn]:
        txn = self._env.begin(write=False, buffers=False)
        try:
            yield Txn(txn, self._dbs)
        finally:
            txn.abort()

    def map_size(self) -> int:
        return int(self._env.info()["map_size"])

    def close(self) -> None:
        self._env.close()
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()
