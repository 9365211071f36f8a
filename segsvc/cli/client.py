"""The gRPC channel the CLI talks through, with the token and workspace on every call.

Commands use `Client.segments`, `.people`, `.changes` and `.audiences` (the generated stubs)
without passing metadata: an interceptor adds it, so no call can forget the workspace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import grpc

from segsvc.v1 import audiences_pb2_grpc, changes_pb2_grpc, people_pb2_grpc, segments_pb2_grpc

# The server accepts messages up to 64 MiB (config.Limits); a page of members with attributes
# can pass gRPC's 4 MiB default, so the client accepts as much as the server may send.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Reconnect quickly after a dropped connection (gRPC's default backoff starts at 1 s and
    # grows to 2 min): a call on a channel still backing off fails at once, so `audience
    # export` must find the channel connected again within its few, short retries.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


@dataclass(frozen=True)
class ClientSettings:
    """What the global options say about the connection."""

    server: str
    token: str | None = None
    workspace: str | None = None
    # TLS: on with system roots when `tls` is set, or with this CA bundle.
    tls: bool = False
    ca_cert: Path | None = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        pairs: list[tuple[str, str]] = []
        if self.token:
            pairs.append(("authorization", f"Bearer {self.token}"))
        if self.workspace:
            pairs.append(("workspace", self.workspace))
        return tuple(pairs)


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
    """Appends fixed metadata (authorization, workspace) to every call of every kind."""

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
    """One lazily opened channel to the server, and the service stubs over it.

    Opening is deferred to the first call so `--help` and argument errors never touch the
    network. Close it when the command ends (the CLI group does).
    """

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self._channel: grpc.Channel | None = None

    def _open(self) -> grpc.Channel:
        if self._channel is None:
            if self.settings.tls or self.settings.ca_cert:
                roots = self.settings.ca_cert.read_bytes() if self.settings.ca_cert else None
                credentials = grpc.ssl_channel_credentials(root_certificates=roots)
                raw = grpc.secure_channel(
                    self.settings.server, credentials, options=_CHANNEL_OPTIONS
                )
            else:
                raw = grpc.insecure_channel(self.settings.server, options=_CHANNEL_OPTIONS)
            self._channel = grpc.intercept_channel(
                raw, _MetadataInterceptor(self.settings.metadata())
            )
        return self._channel

    @cached_property
    def segments(self) -> segments_pb2_grpc.SegmentsServiceStub:
        return segments_pb2_grpc.SegmentsServiceStub(self._open())

    @cached_property
    def people(self) -> people_pb2_grpc.PeopleServiceStub:
        return people_pb2_grpc.PeopleServiceStub(self._open())

    @cached_property
    def changes(self) -> changes_pb2_grpc.ChangesServiceStub:
        return changes_pb2_grpc.ChangesServiceStub(self._open())

    @cached_property
    def audiences(self) -> audiences_pb2_grpc.AudiencesServiceStub:
        return audiences_pb2_grpc.AudiencesServiceStub(self._open())

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = None
