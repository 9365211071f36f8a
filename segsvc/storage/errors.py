"""Storage errors the engine turns into domain errors."""


class StorageFullError(Exception):
    """The LMDB map is full: the write was aborted and nothing of it was stored."""


class StoreLockedError(Exception):
    """Another process has the data directory open."""
