"""Domain errors. They know nothing of gRPC; segsvc/api maps each class to a status code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segsvc.storage.errors import (
    CorruptRecordError,
    StorageError,
    StorageFullError,
    StorageIOError,
)


class SegsvcError(Exception):
    """Base of every error the engine raises on purpose; the message says what to fix."""


class NotFound(SegsvcError):
    pass


class AlreadyExists(SegsvcError):
    pass


class FailedPrecondition(SegsvcError):
    pass


class ResourceExhausted(SegsvcError):
    pass


class OutOfRange(SegsvcError):
    pass


class Unimplemented(SegsvcError):
    pass


class PermissionDenied(SegsvcError):
    pass


class Unauthenticated(SegsvcError):
    pass


class Unavailable(SegsvcError):
    """Storage failed a write for a reason other than space (an I/O error): nothing was
    written, and the call may be retried."""


class ConcurrentWrite(SegsvcError):
    """Another node appended to the workspace's replicated log after the last record this
    node applied, so the write, validated against older state, was refused and nothing was
    applied: the caller may retry."""


class DataLoss(SegsvcError):
    """A stored record the call needs is damaged: the rest of the store still serves."""


def from_storage(exc: StorageError, data_dir: Path) -> SegsvcError:
    """The domain error a storage failure stands for, saying what to do about it."""
    if isinstance(exc, StorageFullError):
        remedy = (
            "restart the server with a larger --map-size"
            if exc.where == "map"
            else f"free or add space on the disk holding {data_dir}"
        )
        return ResourceExhausted(f"storage is full: {exc}; nothing was written: {remedy}")
    if isinstance(exc, StorageIOError):
        return Unavailable(f"storage failed: {exc}; nothing was written: retry, and check the disk")
    if isinstance(exc, CorruptRecordError):
        return data_loss(exc, data_dir)
    return Unavailable(f"storage failed: {exc}")


def data_loss(exc: CorruptRecordError, data_dir: Path) -> DataLoss:
    return DataLoss(
        f"{exc}: stop the server and run `segsvc check --data {data_dir}` to list all damage"
    )


@dataclass(frozen=True)
class Violation:
    """One bad field: its path in the request (e.g. `conditions.group.children[2].attribute`)
    and what is wrong with it."""

    field: str
    description: str


class InvalidArgument(SegsvcError):
    """The request is malformed; `violations` name every bad field found."""

    def __init__(self, violations: list[Violation] | Violation | str, field: str = "") -> None:
        if isinstance(violations, str):
            violations = [Violation(field, violations)]
        elif isinstance(violations, Violation):
            violations = [violations]
        self.violations = violations
        super().__init__(
            "; ".join(
                f"{v.field}: {v.description}" if v.field else v.description for v in violations
            )
        )
