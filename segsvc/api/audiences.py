"""segsvc.v1.AudiencesService: who a campaign reaches, counted, or streamed from a frozen
resumable chunks."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from segsvc.api import convert
from segsvc.api.base import EngineServicer
from segsvc.engine.engine import Engine
from segsvc.engine.errors import InvalidArgument
from segsvc.engine.workspace import MAX_U32
from segsvc.v1 import audiences_pb2, audiences_pb2_grpc

DEFAULT_CHUNK = 1000
MAX_CHUNK = 10_000
# Fields every member carries or may carry; any other requested field is an attribute.
_ID_FIELDS = frozenset({"id", "email", "phone"})
_SNAPSHOT_ID = re.compile(r"[0-9a-f]{1,64}")
_AFTER = re.compile(r"-1|0|[1-9][0-9]{0,9}")


@dataclass(frozen=True)
class Cursor:
    """Where a resolve stopped: the stored snapshot and the last ordinal sent (-1: none).

    The snapshot is frozen and chunks go in ordinal order, so "after this ordinal" resumes
    exactly, after a reconnect or a server restart alike: nobody twice, nobody skipped. On the
    wire it is sealed (segsvc/api/tokens.py): a client cannot edit it or use another
    workspace's.
    """

    snapshot: str
    after: int

    def position(self) -> str:
        return f"{self.snapshot}.{self.after}"

    @staticmethod
    def from_position(text: str) -> Cursor:
        """The cursor `position` wrote. Only the server seals positions, so anything else is
        a server bug; it is still refused as INVALID_ARGUMENT, never passed to storage."""
        snapshot, _, after = text.partition(".")
        # An ordinal is a u32, -1 before the first; a snapshot id is what
        # Workspace.snapshot_audience made (hex).
        if not _SNAPSHOT_ID.fullmatch(snapshot) or not _AFTER.fullmatch(after):
            raise InvalidArgument(
                "not a cursor from a previous chunk: pass ResolveAudienceResponse.cursor unchanged",
                "cursor",
            )
        value = int(after)
        if value > MAX_U32:
            raise InvalidArgument("not a cursor from a previous chunk", "cursor")
        return Cursor(snapshot, value)


class AudiencesServicer(EngineServicer, audiences_pb2_grpc.AudiencesServiceServicer):
    def __init__(self, engine: Engine, stopping: threading.Event) -> None:
        super().__init__(engine)
        # Set when the server begins to shut down: a stream ends with UNAVAILABLE between
        # chunks, and the client resumes from its last cursor elsewhere or later.
        self._stopping = stopping

    def CountAudience(
        self, request: audiences_pb2.CountAudienceRequest, context: grpc.ServicerContext
    ) -> audiences_pb2.CountAudienceResponse:
        audience = self._workspace().audience(convert.audience_spec(request.audience))
        return audiences_pb2.CountAudienceResponse(count=len(audience))

    def ResolveAudience(
        self, request: audiences_pb2.ResolveAudienceRequest, context: grpc.ServicerContext
    ) -> Iterator[audiences_pb2.ResolveAudienceResponse]:
        workspace = self._workspace()
        fields = _check_fields(list(request.fields))
        attribute_names = [f for f in fields if f not in _ID_FIELDS]
        chunk_size = min(request.chunk_size or DEFAULT_CHUNK, MAX_CHUNK)
        if request.cursor:
            cursor = Cursor.from_position(self._open("audience", request.cursor, "cursor"))
        else:
            snapshot, _ = workspace.snapshot_audience(convert.audience_spec(request.audience))
            cursor = Cursor(snapshot, -1)
        while True:
            if self._stopping.is_set():
                context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "the server is shutting down: reconnect and resume with the last cursor",
                )
            rows, total, remaining, next_after = workspace.snapshot_page(
                cursor.snapshot, cursor.after, chunk_size
            )
            attributes = (
                workspace.attributes_of([row[0] for row in rows], attribute_names)
                if attribute_names
                else [{} for _ in rows]
            )
            members = []
            for (_ordinal, person_id, email, phone), values in zip(rows, attributes, strict=True):
                member = audiences_pb2.AudienceMember(
                    id=person_id,
                    email=(email or "") if "email" in fields else "",
                    phone=(phone or "") if "phone" in fields else "",
                )
                for name, value in values.items():
                    member.attributes[name].CopyFrom(convert.value_to_proto(value))
                members.append(member)
            cursor = Cursor(cursor.snapshot, next_after)
            yield audiences_pb2.ResolveAudienceResponse(
                members=members,
                cursor=self._seal("audience", cursor.position()),
                total=total,
                last=remaining == 0,
            )
            if remaining == 0:
                return


def _check_fields(fields: list[str]) -> frozenset[str]:
    for i, name in enumerate(fields):
        if not name.strip():
            raise InvalidArgument("a field name is empty", f"fields[{i}]")
    return frozenset(fields)
