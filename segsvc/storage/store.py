"""LMDB behind a small interface: named tables, workspace-prefixed keys, one write
transaction per unit of work.

Every table key starts with the workspace name and a NUL byte, so a workspace's rows are one
contiguous key range and nothing crosses workspaces.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, NamedTuple

import lmdb

from segsvc.storage.errors import (
    StorageError,
    StorageFullError,
    StorageIOError,
    StoreDamagedError,
    StoreLockedError,
)

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
DATA_FILE = "data.mdb"
# Created with the store and kept for its life: a directory that has it held a store, so a
# missing or empty data file there is a loss to report, never a new store to start.
LOCK_FILE = "segsvc.lock"
MiB = 1 << 20


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

    def __init__(
        self,
        txn: Any,
        dbs: dict[str, Any],
        failure: Callable[[lmdb.Error], StorageError] | None = None,
    ) -> None:
        self._txn = txn
        self._dbs = dbs
        self._failure = failure or _unexpected

    def get(self, table: str, key: bytes) -> bytes | None:
        value = self._txn.get(key, db=self._dbs[table])
        return None if value is None else bytes(value)

    def put(self, table: str, key: bytes, value: bytes) -> None:
        try:
            self._txn.put(key, value, db=self._dbs[table])
        except lmdb.Error as exc:
            raise self._failure(exc) from exc

    def get_many(self, table: str, keys: list[bytes]) -> dict[bytes, bytes]:
        """The rows that exist among `keys`, read with one cursor (much less per key than
        `get`; sorted keys read fastest)."""
        with self._txn.cursor(db=self._dbs[table]) as cursor:
            return {bytes(k): bytes(v) for k, v in cursor.getmulti(keys)}

    def values_of(self, table: str, sorted_keys: list[bytes]) -> list[bytes] | None:
        """The values of `sorted_keys` (ascending), in that order, when every one exists;
        None when some do not (then `get_many` says which)."""
        with self._txn.cursor(db=self._dbs[table]) as cursor:
            found = cursor.getmulti(sorted_keys)
        if len(found) != len(sorted_keys):
            return None
        return [bytes(v) for _, v in found]

    def put_many(self, table: str, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Writes many rows with one cursor (sorted keys write fastest)."""
        try:
            with self._txn.cursor(db=self._dbs[table]) as cursor:
                cursor.putmulti(items)
        except lmdb.Error as exc:
            raise self._failure(exc) from exc

    def insert_many(self, table: str, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Writes the rows whose keys are absent (the others keep their values); returns how
        many it wrote."""
        try:
            with self._txn.cursor(db=self._dbs[table]) as cursor:
                return int(cursor.putmulti(items, overwrite=False)[1])
        except lmdb.Error as exc:
            raise self._failure(exc) from exc

    def delete(self, table: str, key: bytes) -> bool:
        try:
            return bool(self._txn.delete(key, db=self._dbs[table]))
        except lmdb.Error as exc:  # a delete copies pages too: it can find the map full
            raise self._failure(exc) from exc

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
        try:
            with self._txn.cursor(db=self._dbs[table]) as cursor:
                if not cursor.set_range(start):
                    return 0
                while cursor.key() < stop:
                    if not cursor.delete():
                        break
                    deleted += 1
                    if cursor.key() == b"":
                        break
        except lmdb.Error as exc:
            raise self._failure(exc) from exc
        return deleted


def prefix_end(start: bytes) -> bytes | None:
    """The smallest key greater than every key that starts with `start`; None when there is
    none (an empty or all-0xff prefix reaches to the end of the table)."""
    stripped = start.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _unexpected(exc: lmdb.Error) -> StorageError:
    return StorageIOError(str(exc))


def describe_key(table: str, key: bytes) -> str:
    """A stored key in words, for messages about damage: the workspace and what the key
    names (`ordinal 17 of workspace 'default'`)."""
    workspace, sep, rest = key.partition(b"\x00")
    if not sep:
        return repr(key)
    where = f"of workspace {workspace.decode(errors='replace')!r}"
    if table == "people" and len(rest) == U32.size:
        return f"ordinal {read_u32(rest)} {where}"
    if table in ("ops", "changes") and len(rest) == U64.size:
        return f"seq {read_u64(rest)} {where}"
    if table == "checkpoints" and not rest:
        return where
    if table == "lookup" and rest:
        kind = {b"i": "id", b"e": "email", b"p": "phone"}.get(rest[:1], repr(rest[:1]))
        return f"{kind} {rest[1:].decode(errors='replace')!r} {where}"
    if table == "history" and len(rest) == 2 * U64.size:
        return f"segment {read_u64(rest)} at {read_u64(rest, U64.size)} {where}"
    return f"{rest.decode(errors='replace')!r} {where}"


class Room(NamedTuple):
    """Space left for writes, in bytes: in the LMDB map, and on the disk holding the data
    file (with what the file already holds past its last page). `reserve` is what the
    engine keeps free: it refuses writes up front once less is left."""

    map_left: int
    disk_left: int
    reserve: int

    @property
    def left(self) -> int:
        return min(self.map_left, self.disk_left)

    @property
    def where(self) -> str:
        return "map" if self.map_left <= self.disk_left else "disk"


def reserve_for(capacity: int) -> int:
    """The room a store of `capacity` bytes (its map, or its disk when smaller) keeps free
    for deletions and checkpoints: see Store.reserve."""
    return min(max(capacity // 32, min(MiB, capacity // 8)), 64 * MiB)


class Store:
    """One LMDB environment holding every workspace.

    Writes are serialised by the engine; `write()` is the one way to change anything and
    commits only when its block finishes without an exception.

    Opening refuses a store that is not whole (StoreDamagedError): a data file that is
    missing or empty where a store was, one truncated short of its last committed page (LMDB
    would map the missing pages and die of SIGBUS on the first read), one LMDB cannot read.
    `readonly` opens an existing store for `segsvc check`: nothing is created or written, and
    a store a server has open is refused.
    """

    def __init__(self, path: Path, map_size: int = 64 * 1024**3, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._lock_file = _lock(path, readonly)
        try:
            self._env = _open_environment(path, map_size, readonly)
        except BaseException:
            _unlock(self._lock_file)
            raise
        self._map_size = int(self._env.info()["map_size"])
        self._page_size = int(self._env.stat()["psize"])
        # Held open for `room`: fstat and fstatvfs on it cost a fraction of a path lookup.
        self._data_fd = os.open(path / DATA_FILE, os.O_RDONLY)
        disk = os.fstatvfs(self._data_fd)
        # As ext4 keeps blocks for root: a share of the space (a 32nd; at least 1 MiB, or an
        # eighth of a tiny store; at most 64 MiB) that ordinary writes cannot use up, so that
        # a write let through does not fail half-way for want of room, and deletions still
        # find some when everything else is refused.
        self.reserve = reserve_for(min(self._map_size, disk.f_blocks * disk.f_frsize))
        self._write_lock = threading.Lock()
        try:
            self._dbs = {
                name: self._env.open_db(name.encode(), create=not readonly) for name in TABLES
            }
            self._check_schema()
        except BaseException:
            self.close()
            raise

    def _check_schema(self) -> None:
        with self.read() as txn:
            version = txn.get("meta", b"schema")
        if version is None and not self.readonly:
            with self.write() as txn:
                txn.put("meta", b"schema", SCHEMA_VERSION)
        elif version is not None and version != SCHEMA_VERSION:
            raise StorageError(
                f"{self.path} holds schema version {version.decode(errors='replace')}, this "
                f"segsvc reads {SCHEMA_VERSION.decode()}"
            )

    @contextmanager
    def write(self) -> Iterator[Txn]:
        """One unit of work: commits on success, aborts on any exception. A failure of
        LMDB or the disk raises StorageFullError or StorageIOError, and nothing of the
        unit was stored."""
        if self.readonly:
            raise StorageError(f"{self.path} is open read-only")
        with self._write_lock:
            try:
                txn = self._env.begin(write=True)
            except lmdb.Error as exc:
                raise self._write_failure(exc) from exc
            try:
                yield Txn(txn, self._dbs, self._write_failure)
            except BaseException:
                txn.abort()
                raise
            try:
                txn.commit()
            except lmdb.Error as exc:
                raise self._write_failure(exc) from exc

    @contextmanager
    def read(self) -> Iterator[Txn]:
        txn = self._env.begin(write=False, buffers=False)
        try:
            yield Txn(txn, self._dbs)
        finally:
            txn.abort()

    def map_size(self) -> int:
        return self._map_size

    def room(self) -> Room:
        """The space left now: two system calls and an LMDB call (a few µs), so the
        engine asks before every write."""
        used = (int(self._env.info()["last_pgno"]) + 1) * self._page_size
        disk = os.fstatvfs(self._data_fd)
        slack = max(0, os.lseek(self._data_fd, 0, os.SEEK_END) - used)  # the file's size
        return Room(self._map_size - used, disk.f_bavail * disk.f_frsize + slack, self.reserve)

    def _write_failure(self, exc: lmdb.Error) -> StorageError:
        """The storage error an LMDB failure during a write stands for. A full disk shows
        as ENOSPC, or as EIO when LMDB's write was short: the space left tells them from a
        failing disk."""
        if isinstance(exc, lmdb.MapFullError):
            return StorageFullError(
                "map", f"the LMDB map of {self._map_size // MiB} MiB is full ({exc})"
            )
        # The filesystem's own free space: what a failed commit wrote past the last page
        # is room for the next one, but says nothing of why this one failed.
        disk = os.fstatvfs(self._data_fd)
        free = disk.f_bavail * disk.f_frsize
        if isinstance(exc, lmdb.DiskError) or free < self.reserve:
            return StorageFullError(
                "disk", f"the disk holding {self.path} is full ({free // MiB} MiB free; {exc})"
            )
        return StorageIOError(f"the disk failed a write to {self.path} ({exc})")

    def close(self) -> None:
        self._env.close()
        os.close(self._data_fd)
        _unlock(self._lock_file)


@contextmanager
def at_rest(path: Path) -> Iterator[None]:
    """A store held still for an offline look (`segsvc check`): its lock taken shared, so a
    running server is refused, and its data file checked present as opening it would."""
    lock_file = _lock(path, readonly=True)
    try:
        yield
    finally:
        _unlock(lock_file)


def _lock(path: Path, readonly: bool) -> IO[str] | None:
    """Takes the directory's lock file, after checking that its data file is whole where a
    store was: exclusive for a server (LMDB itself lets two processes write one environment,
    but each would replay and extend the log from its own memory), shared for a check (which
    a running server thus excludes)."""
    lock_path = path / LOCK_FILE
    held_a_store = lock_path.exists() or (path / "lock.mdb").exists()
    if readonly:
        if not path.is_dir():
            raise StorageError(f"{path} is not a directory")
        if not held_a_store and not (path / DATA_FILE).exists():
            raise StorageError(f"{path} holds no segsvc store")
        lock_file = open(lock_path) if lock_path.exists() else None  # noqa: SIM115
    else:
        path.mkdir(parents=True, exist_ok=True)
        lock_file = open(lock_path, "a+")  # noqa: SIM115
    if lock_file is not None:
        try:
            fcntl.flock(lock_file, (fcntl.LOCK_SH if readonly else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise _in_use(path, readonly) from None
    try:
        _check_data_file(path, held_a_store)
    except BaseException:
        _unlock(lock_file)
        raise
    return lock_file


def _in_use(path: Path, readonly: bool) -> StoreLockedError:
    what = (
        "stop it first, so that the check sees the store at rest"
        if readonly
        else "stop it, or choose another --data"
    )
    return StoreLockedError(f"{path} is in use by another segsvc process: {what}")


def check_not_in_use(path: Path) -> None:
    """Raises StoreLockedError when a server holds the store in `path`. Creates nothing: for
    the checks before a start, which must leave the disk as they found it. The lock is taken
    and let go at once; opening the store takes it for good (and still decides)."""
    try:
        lock_file = open(path / LOCK_FILE)  # noqa: SIM115
    except (FileNotFoundError, NotADirectoryError):
        return
    with lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(path, readonly=False) from None
        fcntl.flock(lock_file, fcntl.LOCK_UN)


def _unlock(lock_file: IO[str] | None) -> None:
    if lock_file is not None:
        fcntl.flock(lock_file, fcntl.LOCK_UN)
        lock_file.close()


def _check_data_file(path: Path, held_a_store: bool) -> None:
    data = path / DATA_FILE
    try:
        size: int | None = data.stat().st_size
    except FileNotFoundError:
        size = None
    if held_a_store and not size:
        state = "missing" if size is None else "empty (0 bytes)"
        raise StoreDamagedError(
            f"{data} is {state}, but {path} held a segsvc store ({LOCK_FILE} is there): "
            f"segsvc will not start an empty database in place of a lost one; restore "
            f"{DATA_FILE} from a backup, or give a new --data directory to start afresh"
        )


# LMDB's answers to a data file that is not one it can read.
_UNREADABLE = (
    lmdb.InvalidError,
    lmdb.VersionMismatchError,
    lmdb.CorruptedError,
    lmdb.PageNotFoundError,
    lmdb.PanicError,
)


def _open_environment(path: Path, map_size: int, readonly: bool, lock: bool | None = None) -> Any:
    """The LMDB environment in `path`, checked whole. `lock` (default: not `readonly`) is
    LMDB's own reader table: a reader beside a live writer must take part in it, or the
    writer may reuse pages it is still reading."""
    data = path / DATA_FILE
    try:
        env = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=len(TABLES) + 1,
            max_readers=512,
            # Fsync on every commit: an acknowledged write survives a crash or power loss.
            sync=True,
            metasync=True,
            readahead=False,
            readonly=readonly,
            # A check holds segsvc.lock shared, which keeps every writer out.
            lock=not readonly if lock is None else lock,
            create=not readonly,
        )
    except _UNREADABLE as exc:
        raise StoreDamagedError(
            f"{data} is not a readable LMDB data file ({exc}): restore it from a backup"
        ) from exc
    except lmdb.Error as exc:
        raise StorageError(f"cannot open the store in {path}: {exc}") from exc
    try:
        # Only the two meta pages have been read so far: compare where they say the last
        # page is with the file before anything maps a page the file no longer has.
        last = (int(env.info()["last_pgno"]) + 1) * int(env.stat()["psize"])
        size = os.stat(data).st_size
    except BaseException:
        env.close()
        raise
    if size < last:
        env.close()
        raise StoreDamagedError(
            f"{data} is truncated: {size} bytes, but its last committed page ends at byte "
            f"{last}; restore it from a backup"
        )
    return env


def backup(source: Path, dest: Path) -> int:
    """Copies the store in `source` to `dest`, which must not exist or be empty; returns the
    size of the copy in bytes. Works while a server has the store open: LMDB copies inside
    one read transaction (a snapshot of the last commit when the copy began, so every write
    acknowledged before then is in it), and this process registers that reader in LMDB's
    lock file like any other, so the server never reuses a page being copied. segsvc.lock
    is left alone: the server holds it, and the copy needs no more than LMDB's locking.
    Free pages are left out (compaction). The copy is a store a server starts on as is,
    replaying its log as after a crash.

    Must not run in a process that has the store open itself (LMDB forbids opening one
    environment twice in a process). On failure nothing is left in `dest`."""
    if not (source / DATA_FILE).is_file():
        raise StorageError(f"{source} holds no segsvc store (no {DATA_FILE})")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        what = "is not a directory" if not dest.is_dir() else "is not empty"
        raise StorageError(f"the backup destination {dest} {what}: give a new or empty directory")
    if not dest.parent.is_dir():
        raise StorageError(f"the backup destination's folder {dest.parent} does not exist")
    created = not dest.exists()
    env = _open_environment(source, 0, readonly=True, lock=True)
    try:
        dest.mkdir(exist_ok=True)
        env.copy(str(dest), compact=True)
        copy = dest / DATA_FILE
        # LMDB writes the copy without fsync: make it durable before calling it a backup.
        with open(copy, "rb") as written:
            os.fsync(written.fileno())
        (dest / LOCK_FILE).touch()
        directory = os.open(dest, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return copy.stat().st_size
    except BaseException as exc:
        for name in (DATA_FILE, LOCK_FILE):
            (dest / name).unlink(missing_ok=True)
        if created and dest.exists():
            dest.rmdir()
        if isinstance(exc, lmdb.Error | OSError):
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise StorageError(f"cannot back up {source} to {dest}: {reason}") from exc
        raise
    finally:
        env.close()
