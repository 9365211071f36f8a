"""A small typed client for segsvc: the connection, and the loops every caller would otherwise
write (paging, resuming an audience or the change feed after a dropped connection).

It needs only grpcio, protobuf and grpcio-status (`pip install segsvc`, no server
dependencies). The generated stubs are typed (segsvc.v1.*_pb2_grpc), and so is everything here:

    with Client("segsvc.internal:50051", token=TOKEN, tls=True) as client:
        client.people.UpsertPeople(people_pb2.UpsertPeopleRequest(people=[...]))
        for member in client.iter_members(segment_id=7):
            ...
        spec = audiences_pb2.AudienceSpec(include=[7], exclude=[9])
        for chunk in client.resolve_audience(audiences_pb2.ResolveAudienceRequest(audience=spec)):
            send(chunk.members)  # after a reconnect it goes on after the last chunk

Token and workspace travel as metadata on every call (`authorization: Bearer …` and the
`workspace` header). Calls that are safe to repeat are retried on UNAVAILABLE by gRPC itself,
configured with the standard service config (`RETRY_POLICY`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from segsvc.v1 import (
    audiences_pb2,
    audiences_pb2_grpc,
    changes_pb2,
    changes_pb2_grpc,
    people_pb2_grpc,
    segments_pb2,
    segments_pb2_grpc,
    workspaces_pb2_grpc,
)

# The server accepts messages up to 64 MiB; a page of members with attributes can pass gRPC's
# 4 MiB default, so the client accepts as much as the server may send.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Calls that change nothing, or give the same result when repeated: gRPC may retry them when
# the server is unavailable. TrackEvents (an event twice counts twice), CreateSegment and the
# client streams are not among them: their caller decides.
_IDEMPOTENT = {
    "segsvc.v1.PeopleService": ["GetPerson", "UpsertPeople", "DeletePeople"],
    "segsvc.v1.SegmentsService": [
        "GetSegment",
        "ListSegments",
        "PreviewSegment",
        "ExplainMembership",
        "GetSegmentHistory",
        "ListMembers",
        "CheckMembership",
        "UpdateSegment",
        "ArchiveSegments",
        "AddMembers",
        "RemoveMembers",
    ],
    "segsvc.v1.AudiencesService": ["CountAudience"],
    "segsvc.v1.WorkspacesService": ["ListWorkspaces"],
}
RETRY_POLICY = {
    "methodConfig": [
        {
            "name": [
                {"service": service, "method": method}
                for service, methods in _IDEMPOTENT.items()
                for method in methods
            ],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", json.dumps(RETRY_POLICY)),
    # Reconnect quickly after a dropped connection (gRPC's default backoff starts at 1 s and
    # grows to 2 min): a resumed audience or feed must find the channel connected again
    # within its few, short waits.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

# Waits between reconnects of a resumed stream: RECONNECT_DELAY, doubled each time.
RECONNECT_DELAY = 0.2
MAX_RECONNECTS = 5


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _MetadataInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Appends fixed metadata (authorization, workspace) to every call of every kind, so no
    call can forget the workspace."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(
            method=details.method,
            timeout=details.timeout,
            metadata=tuple(details.metadata or ()) + self._metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
            compression=details.compression,
        )

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(
        self,
        continuation: Callable[..., Any],
        details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> Any:
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(
        self,
        continuation: Callable[..., Any],
        details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> Any:
        return continuation(self._details(details), request_iterator)


class Client:
    """One channel to a segsvc server and its service stubs.

    The channel opens on the first call, so building a Client never touches the network.
    Use it as a context manager, or call `close()`.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        workspace: str | None = None,
        tls: bool = False,
        ca_cert: Path | None = None,
    ) -> None:
        """`target` is HOST:PORT. TLS is on with `tls` (system roots) or with `ca_cert` (a PEM
        CA bundle); `token` is a bearer token; `workspace` names the workspace to work in (an
        admin token may name any; other tokens work in their own)."""
        self.target = target
        self.token = token
        self.workspace = workspace
        self.tls = tls or ca_cert is not None
        self.ca_cert = ca_cert
        self._channel: grpc.Channel | None = None
        self._stubs: dict[str, Any] = {}

    def metadata(self) -> tuple[tuple[str, str], ...]:
        pairs: list[tuple[str, str]] = []
        if self.token:
            pairs.append(("authorization", f"Bearer {self.token}"))
        if self.workspace:
            pairs.append(("workspace", self.workspace))
        return tuple(pairs)

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            if self.tls:
                roots = self.ca_cert.read_bytes() if self.ca_cert else None
                credentials = grpc.ssl_channel_credentials(root_certificates=roots)
                raw = grpc.secure_channel(self.target, credentials, options=_CHANNEL_OPTIONS)
            else:
                raw = grpc.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
            self._channel = grpc.intercept_channel(raw, _MetadataInterceptor(self.metadata()))
        return self._channel

    def _stub(self, stub_class: Callable[[grpc.Channel], Any]) -> Any:
        name = getattr(stub_class, "__name__", str(stub_class))
        if name not in self._stubs:
            self._stubs[name] = stub_class(self.channel)
        return self._stubs[name]

    @property
    def people(self) -> people_pb2_grpc.PeopleServiceStub:
        return self._stub(people_pb2_grpc.PeopleServiceStub)  # type: ignore[no-any-return]

    @property
    def segments(self) -> segments_pb2_grpc.SegmentsServiceStub:
        return self._stub(segments_pb2_grpc.SegmentsServiceStub)  # type: ignore[no-any-return]

    @property
    def changes(self) -> changes_pb2_grpc.ChangesServiceStub:
        return self._stub(changes_pb2_grpc.ChangesServiceStub)  # type: ignore[no-any-return]

    @property
    def audiences(self) -> audiences_pb2_grpc.AudiencesServiceStub:
        return self._stub(audiences_pb2_grpc.AudiencesServiceStub)  # type: ignore[no-any-return]

    @property
    def workspaces(self) -> workspaces_pb2_grpc.WorkspacesServiceStub:
        return self._stub(workspaces_pb2_grpc.WorkspacesServiceStub)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._stubs.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- paging ---------------------------------------------------------------------------

    def iter_segments(
        self, request: segments_pb2.ListSegmentsRequest | None = None
    ) -> Iterator[segments_pb2.Segment]:
        """Every segment ListSegments returns for `request`'s filters, page after page."""
        page_request = segments_pb2.ListSegmentsRequest()
        if request is not None:
            page_request.CopyFrom(request)
        while True:
            page = self.segments.ListSegments(page_request)
            yield from page.segments
            if not page.next_page_token:
                return
            page_request.page_token = page.next_page_token

    def iter_members(self, segment_id: int, page_size: int = 0) -> Iterator[segments_pb2.Member]:
        """Every member of a segment, page after page (`page_size` 0: the server's default)."""
        request = segments_pb2.ListMembersRequest(segment_id=segment_id, page_size=page_size)
        while True:
            page = self.segments.ListMembers(request)
            yield from page.members
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    # -- resumable streams ----------------------------------------------------------------

    def resolve_audience(
        self,
        request: audiences_pb2.ResolveAudienceRequest,
        *,
        max_reconnects: int = MAX_RECONNECTS,
        on_reconnect: Callable[[int, grpc.RpcError], None] | None = None,
    ) -> Iterator[audiences_pb2.ResolveAudienceResponse]:
        """The audience's chunks, in order. If the connection drops (UNAVAILABLE), the call is
        made again with the cursor of the last chunk yielded, so every person comes exactly
        once; after `max_reconnects` failures in a row the error is raised. `on_reconnect`
        (attempt, error) is told before each new attempt."""
        resumed = audiences_pb2.ResolveAudienceRequest()
        resumed.CopyFrom(request)

        def call() -> Iterator[audiences_pb2.ResolveAudienceResponse]:
            for chunk in self.audiences.ResolveAudience(resumed):
                # From now on a new call goes on after this chunk.
                resumed.cursor = chunk.cursor
                yield chunk
                if chunk.last:
                    return

        yield from _resumed(call, max_reconnects, on_reconnect)

    def watch_changes(
        self,
        request: changes_pb2.WatchChangesRequest,
        *,
        max_reconnects: int = MAX_RECONNECTS,
        on_reconnect: Callable[[int, grpc.RpcError], None] | None = None,
    ) -> Iterator[changes_pb2.Change]:
        """The change feed, one change at a time, in order. If the connection drops
        (UNAVAILABLE, e.g. the server restarts), it follows again after the last `seq`
        yielded, so nothing is missed or seen twice."""
        resumed = changes_pb2.WatchChangesRequest()
        resumed.CopyFrom(request)

        def call() -> Iterator[changes_pb2.Change]:
            for response in self.changes.WatchChanges(resumed):
                for change in response.changes:
                    resumed.after_seq = change.seq
                    resumed.from_now = False
                    yield change

        yield from _resumed(call, max_reconnects, on_reconnect)


def _resumed(
    call: Callable[[], Iterator[Any]],
    max_reconnects: int,
    on_reconnect: Callable[[int, grpc.RpcError], None] | None,
) -> Iterator[Any]:
    failures = 0
    while True:
        try:
            for item in call():
                failures = 0
                yield item
            return
        except grpc.RpcError as error:
            if not isinstance(error, grpc.Call) or error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            failures += 1
            if failures > max_reconnects:
                raise
            if on_reconnect is not None:
                on_reconnect(failures, error)
            time.sleep(RECONNECT_DELAY * 2 ** (failures - 1))


# What a failed call raises, for callers that handle errors without importing grpc.
RpcError = grpc.RpcError


def call_status(error: BaseException | None) -> tuple[str, str] | None:
    """The status code's name (`UNAVAILABLE`, ...) and the details of a failed call; None
    when `error` is not a call's error."""
    if isinstance(error, grpc.Call):
        return error.code().name, error.details() or ""
    return None


def field_violations(error: grpc.RpcError) -> Sequence[tuple[str, str]]:
    """The (field path, what to fix) pairs of an INVALID_ARGUMENT error, from its
    google.rpc.BadRequest detail; empty when the error carries none."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return []
    out: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            out += [(v.field, v.description) for v in bad_request.field_violations]
    return out
