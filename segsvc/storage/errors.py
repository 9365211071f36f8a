"""Storage errors the engine turns into domain errors (or, at startup, into a refusal)."""

from __future__ import annotations


class StorageError(Exception):
    """Base of every error the storage layer raises on purpose."""


class StorageFullError(StorageError):
    """No room for a write, in the LMDB map (`where` "map") or on the disk ("disk"): the
    write was aborted and nothing of it was stored."""

    def __init__(self, where: str, detail: str) -> None:
        self.where = where
        super().__init__(detail)


class StorageIOError(StorageError):
    """The disk failed a write (an I/O error with space left): the write was aborted and
    nothing of it was stored."""


class StoreLockedError(StorageError):
    """Another process has the data directory open."""


class StoreDamagedError(StorageError):
    """The store cannot be opened as it is (truncated, vanished, not an LMDB file, or a
    record that startup needs is damaged). The message is one line saying what and where."""


class CorruptRecordError(StorageError):
    """A stored record failed its checksum or could not be decoded."""

    def __init__(self, table: str, key: str, reason: str) -> None:
        self.table = table
        self.key = key
        self.reason = reason
        super().__init__(f"the {table} record {key} is damaged ({reason})")
