"""Plain result types the engine hands to its callers (the API layer converts them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from segsvc.engine.conditions import Node
from segsvc.engine.people import PersonRecord

KeyKind = Literal["id", "email", "phone"]


@dataclass(frozen=True)
class PersonKey:
    """Names one person by id, email or phone."""

    kind: KeyKind
    value: str

    def __str__(self) -> str:
        return self.value if self.kind == "id" else f"{self.kind} {self.value}"


@dataclass(frozen=True)
class ItemResult:
    index: int
    key: str
    outcome: str  # created, updated, unchanged, deleted, added, already_member, removed,
    # not_a_member, archived, unarchived, tracked, not_found, invalid, conflict,
    # failed_precondition
    error: str = ""
    field: str = ""

    @property
    def rejected(self) -> bool:
        return self.outcome in ("not_found", "invalid", "conflict", "failed_precondition")


@dataclass(frozen=True)
class SegmentRef:
    id: int
    name: str


@dataclass(frozen=True)
class SegmentInfo:
    id: int
    name: str
    description: str
    dynamic: bool
    created_at: int
    updated_at: int
    archived: bool
    member_count: int
    definition: Node | None = None
    references: tuple[SegmentRef, ...] = ()
    referenced_by: tuple[SegmentRef, ...] = ()


@dataclass(frozen=True)
class PersonView:
    record: PersonRecord
    segment_ids: tuple[int, ...]


@dataclass(frozen=True)
class Member:
    id: str
    email: str | None
    phone: str | None


@dataclass(frozen=True)
class ExplainNode:
    path: str
    description: str
    matched: bool
    children: tuple[ExplainNode, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Change:
    seq: int
    segment_id: int
    person_id: str
    entered: bool
    cause: int
    at: int


@dataclass(frozen=True)
class AudienceSpec:
    include: tuple[int, ...]
    require: tuple[int, ...] = ()
    exclude: tuple[int, ...] = ()
    include_unsubscribed: bool = False
    channel: str = ""  # "", email, phone, device
    device_platform: str = ""
