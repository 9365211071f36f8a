"""Domain errors. They know nothing of gRPC; segsvc/api maps each class to a status code."""

from __future__ import annotations

from dataclasses import dataclass


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
