"""segsvc.v1.Audiences: who a campaign reaches, counted or streamed in resumable chunks."""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import grpc

from segsvc.api import convert
from segsvc.api.base import EngineServicer
from segsvc.engine.engine import Engine
from segsvc.engine.errors import InvalidArgument
from segsvc.engine.model import AudienceSpec
from segsvc.v1 import audiences_pb2, audiences_pb2_grpc

DEFAULT_CHUNK = 1000
MAX_CHUNK = 10_000
_CURSOR_VERSION = 1


@dataclass(frozen=True)
class Cursor:
    """Where a resolve stopped: the audience, and the last ordinal sent (-1: none yet).

    Ordinals never change for a person, and chunks go in ordinal order, so "after this
    ordinal" is exact however the audience changed meanwhile: nobody is sent twice. (Until
    audience snapshots are stored, a resumed resolve recomputes the audience: people who
    joined since with a higher ordinal are included, people who left are not.)
    """

    workspace: str
    spec: AudienceSpec
    after: int

    def encode(self) -> str:
        document = {
            "v": _CURSOR_VERSION,
            "ws": self.workspace,
            "spec": asdict(self.spec),
            "after": self.after,
        }
        raw = json.dumps(document, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode()

    @staticmethod
    def decode(text: str, workspace: str) -> Cursor:
        try:
            document = json.loads(base64.urlsafe_b64decode(text.encode()))
            if document["v"] != _CURSOR_VERSION:
                raise ValueError("version")
            spec = document["spec"]
            cursor = Cursor(
                document["ws"],
                AudienceSpec(
                    include=tuple(int(s) for s in spec["include"]),
                    require=tuple(int(s) for s in spec["require"]),
                    exclude=tuple(int(s) for s in spec["exclude"]),
                    include_unsubscribed=bool(spec["include_unsubscribed"]),
                    channel=str(spec["channel"]),
                    device_platform=str(spec["device_platform"]),
                ),
                int(document["after"]),
            )
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise InvalidArgument(
                "not a cursor from a previous chunk: pass AudienceChunk.cursor unchanged",
                "cursor",
            ) from None
        if cursor.workspace != workspace:
            raise InvalidArgument("the cursor belongs to another workspace", "cursor")
        return cursor


class AudiencesServicer(EngineServicer, audiences_pb2_grpc.AudiencesServicer):
    def __init__(self, engine: Engine, stopping: threading.Event) -> None:
        super().__init__(engine)
        self._stopping = stopping

    def CountAudience(
        self, request: audiences_pb2.CountAudienceRequest, context: grpc.ServicerContext
    ) -> audiences_pb2.CountAudienceResponse:
        audience = self._workspace().audience(convert.audience_spec(request.audience))
        return audiences_pb2.CountAudienceResponse(count=len(audience))

    def ResolveAudience(
        self, request: audiences_pb2.ResolveAudienceRequest, context: grpc.ServicerContext
    ) -> Iterator[audiences_pb2.AudienceChunk]:
        workspace = self._workspace()
        if request.cursor:
            cursor = Cursor.decode(request.cursor, workspace.name)
        else:
            cursor = Cursor(workspace.name, convert.audience_spec(request.audience), -1)
        want_email, want_phone = _check_fields(list(request.fields))
        chunk_size = min(request.chunk_size or DEFAULT_CHUNK, MAX_CHUNK)
        # A frozen snapshot: the engine hands out a bitmap nobody else changes.
        audience = workspace.audience(cursor.spec)
        total = len(audience)
        start = audience.rank(cursor.after) if cursor.after >= 0 else 0
        while True:
            if self._stopping.is_set():
                context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "the server is shutting down: reconnect and resume with the last cursor",
                )
            ordinals = audience[start : start + chunk_size]
            start += len(ordinals)
            # Read the lists each chunk: a failed write may replace the engine's state.
            index = workspace.state.index
            members = []
            for ordinal in ordinals:
                person_id = index.ids[ordinal]
                if person_id is None:
                    continue  # deleted since the snapshot: never send to a deleted person
                members.append(
                    audiences_pb2.AudienceMember(
                        id=person_id,
                        email=(index.emails[ordinal] or "") if want_email else "",
                        phone=(index.phones[ordinal] or "") if want_phone else "",
                    )
                )
            after = ordinals[-1] if len(ordinals) else cursor.after
            last = start >= total
            yield audiences_pb2.AudienceChunk(
                members=members,
                cursor=Cursor(cursor.workspace, cursor.spec, after).encode(),
                total=total,
                last=last,
            )
            if last:
                return


def _check_fields(fields: list[str]) -> tuple[bool, bool]:
    """(email wanted, phone wanted). Other names are attributes; they are accepted but not
    filled yet (the engine has no bulk attribute read)."""
    for i, name in enumerate(fields):
        if not name.strip():
            raise InvalidArgument("a field name is empty", f"fields[{i}]")
    return "email" in fields, "phone" in fields
