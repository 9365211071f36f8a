"""Who is calling, and in which workspace: bearer tokens, roles, and the call's workspace.

Tokens file (config.tokens_file): see segsvc.tokens_file for its format. The server reads it
at start and again on SIGHUP (`replace_tokens`): calls in flight keep the tokens they started with.

Roles: `read` (queries, the change feed, audiences), `write` (read + every change), `admin`
(write, in any workspace: it may name another workspace in the `workspace` metadata). A read
or write token works in its own workspace only.

Without a tokens file every call is accepted (the server then listens on loopback only) and
the workspace is the `workspace` metadata, `default` when absent.

Servicers learn the caller from `current_caller()`: the interceptor runs each call (and each
step of a streamed response) inside a contextvars scope that holds it.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from segsvc.api.calls import note_workspace
from segsvc.api.interception import Behaviour, StreamBehaviour, rewrap, steps_in
from segsvc.config import DEFAULT_WORKSPACE
from segsvc.engine.errors import PermissionDenied, Unauthenticated
from segsvc.tokens_file import Role, Token

_RANK: dict[str, int] = {"read": 0, "write": 1, "admin": 2}

# Calls that change nothing. Every other method needs a write token: a method added to the
# API later is protected until someone decides it is a read.
READ_METHODS = frozenset(
    {
        "/segsvc.v1.PeopleService/GetPerson",
        "/segsvc.v1.SegmentsService/GetSegment",
        "/segsvc.v1.SegmentsService/ListSegments",
        "/segsvc.v1.SegmentsService/PreviewSegment",
        "/segsvc.v1.SegmentsService/ExplainMembership",
        "/segsvc.v1.SegmentsService/GetSegmentHistory",
        "/segsvc.v1.SegmentsService/ListMembers",
        "/segsvc.v1.SegmentsService/CheckMembership",
        "/segsvc.v1.ChangesService/WatchChanges",
        "/segsvc.v1.AudiencesService/CountAudience",
        "/segsvc.v1.AudiencesService/ResolveAudience",
    }
)
# Calls about the whole server rather than one workspace: admin tokens only.
ADMIN_METHODS = frozenset(
    {
        "/segsvc.v1.WorkspacesService/ListWorkspaces",
        "/segsvc.v1.WorkspacesService/GetServerStatus",
    }
)
# Load balancers and grpcurl-style tools use these without credentials.
PUBLIC_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


@dataclass(frozen=True)
class Caller:
    workspace: str
    role: Role
    # Whether the call may change data, and so create its workspace: reads never do.
    writes: bool = True


_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("segsvc_caller")


def current_caller() -> Caller:
    """The caller of the RPC being served (set by AuthInterceptor)."""
    try:
        return _caller.get()
    except LookupError:
        raise RuntimeError("no caller: the server was built without AuthInterceptor") from None


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Decides the caller of every call and makes it `current_caller()` while it runs.

    Authentication runs inside the wrapped behaviour, not in intercept_service, so that its
    errors are domain errors that ErrorInterceptor maps like any other.
    """

    def __init__(self, tokens: list[Token] | None) -> None:
        self._tokens = tokens

    def replace_tokens(self, tokens: list[Token]) -> None:
        """Accepts `tokens` from now on (a reloaded tokens file). One reference swap: a call
        is checked against the old list or the new one, never a mix, and none waits."""
        if self._tokens is None:
            raise ValueError("this server was started without tokens: restart it with some")
        self._tokens = tokens

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(PUBLIC_SERVICES):
            return handler
        metadata = handler_call_details.invocation_metadata

        def scope() -> contextvars.Context:
            caller = self.authorize(method, metadata)
            note_workspace(caller.workspace)
            context = contextvars.copy_context()
            context.run(_caller.set, caller)
            return context

        def unary(behaviour: Behaviour) -> Behaviour:
            def run(request: Any, context: grpc.ServicerContext) -> Any:
                return scope().run(behaviour, request, context)

            return run

        def streaming(behaviour: StreamBehaviour) -> StreamBehaviour:
            def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                call_scope = scope()
                yield from steps_in(call_scope, call_scope.run(behaviour, request, context))

            return run

        return rewrap(handler, unary, streaming)

    def authorize(self, method: str, metadata: Any) -> Caller:
        """The caller for `method`, or Unauthenticated / PermissionDenied."""
        values = _metadata_values(metadata)
        requested = values.get("workspace", "")
        writes = method not in READ_METHODS and method not in ADMIN_METHODS
        if self._tokens is None:
            return Caller(requested or DEFAULT_WORKSPACE, "admin", writes)
        # For the access log, also of calls refused below: the workspace they were after.
        note_workspace(requested)
        token = self._find(values.get("authorization", ""))
        note_workspace(requested or token.workspace)
        needed = "admin" if method in ADMIN_METHODS else "write" if writes else "read"
        if _RANK[token.role] < _RANK[needed]:
            raise PermissionDenied(
                f"this token is {token.role}-only: {method.rsplit('/', 1)[-1]} needs "
                f"{'an' if needed == 'admin' else 'a'} {needed} token"
            )
        if requested and requested != token.workspace and token.role != "admin":
            raise PermissionDenied(
                f"this token is for workspace {token.workspace!r}, not {requested!r}"
            )
        return Caller(requested or token.workspace, token.role, writes)

    def _find(self, authorization: str) -> Token:
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthenticated(
                "missing bearer token: send the metadata `authorization: Bearer <token>`"
            )
        digest = hashlib.sha256(secret.strip().encode()).digest()
        found: Token | None = None
        # Read once: a reload may swap the list while this call looks through it.
        tokens = self._tokens
        assert tokens is not None
        # Every entry is compared, in constant time, so timing tells nothing about which
        # entry (if any) came close.
        for token in tokens:
            if hmac.compare_digest(digest, token.sha256) and found is None:
                found = token
        if found is None:
            raise Unauthenticated("unknown or revoked token")
        return found


def _metadata_values(metadata: Any) -> dict[str, str]:
    values: dict[str, str] = {}
    for key, value in metadata or ():
        if isinstance(value, str):
            values.setdefault(key.lower(), value)
    return values
