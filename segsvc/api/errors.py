"""Domain errors -> gRPC status codes: the one interceptor that does it, for every call shape.

Servicers and the engine raise segsvc.engine.errors exceptions and never touch a status code.
INVALID_ARGUMENT carries a google.rpc.BadRequest with one field violation per bad field (the
standard rich error model, readable with grpc_status.rpc_status.from_call). Anything that is
not a domain error is a bug: the client gets INTERNAL with an error id, the log gets the
traceback under the same id, and nothing of the exception text leaves the server.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from segsvc.api.interception import Behaviour, HandlerInterceptor, StreamBehaviour, rewrap
from segsvc.engine import errors

log = logging.getLogger(__name__)

STATUS_OF: dict[type[errors.SegsvcError], grpc.StatusCode] = {
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
    errors.ConcurrentWrite: grpc.StatusCode.ABORTED,
}

# Status details travel in a trailer, and clients refuse trailers above 8 KiB by default: a
# tree with hundreds of bad nodes must still produce an error the client can read.
_MAX_MESSAGE_CHARS = 1500
_MAX_DETAILS_BYTES = 3000


class ErrorInterceptor(HandlerInterceptor):
    """Maps exceptions raised by any handler (streams included) to status codes."""

    def wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], call: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        def unary(behaviour: Behaviour) -> Behaviour:
            def run(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    return behaviour(request, context)
                except Exception as exc:
                    abort_for(exc, context, call.method)

            return run

        def streaming(behaviour: StreamBehaviour) -> StreamBehaviour:
            def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    yield from behaviour(request, context)
                except Exception as exc:
                    abort_for(exc, context, call.method)

            return run

        return rewrap(handler, unary, streaming)


def abort_for(exc: Exception, context: grpc.ServicerContext, method: str) -> NoReturn:
    """Ends the call with the status that `exc` stands for."""
    if isinstance(exc, grpc.RpcError) or _already_aborted(context):
        # The call was cancelled by the client (grpc raises RpcError from the request
        # iterator) or ended on purpose with context.abort: grpc knows what to send.
        raise exc
    if isinstance(exc, errors.InvalidArgument):
        context.abort_with_status(rpc_status.to_status(bad_request_status(exc)))
    code = _code_of(exc)
    if code is not None:
        context.abort(code, _bounded(str(exc)))
    error_id = uuid.uuid4().hex[:12]
    log.error(
        "internal error %s in %s",
        error_id,
        method,
        exc_info=exc,
        extra={"error_id": error_id, "rpc": method},
    )
    context.abort(grpc.StatusCode.INTERNAL, _INTERNAL_MESSAGE.format(error_id=error_id))


_INTERNAL_MESSAGE = "internal error; see the server log (error id {error_id})"
_INTERNAL_ID = re.compile(r"\(error id ([0-9a-f]{12})\)$")


def internal_error_id(details: str) -> str | None:
    """The error id in the message of an INTERNAL this interceptor sent (None in another)."""
    found = _INTERNAL_ID.search(details)
    return found.group(1) if found else None


def bad_request_status(exc: errors.InvalidArgument) -> status_pb2.Status:
    """INVALID_ARGUMENT with the violations as a google.rpc.BadRequest detail."""
    bad_request = error_details_pb2.BadRequest()
    for violation in exc.violations:
        bad_request.field_violations.add(field=violation.field, description=violation.description)
        if bad_request.ByteSize() > _MAX_DETAILS_BYTES:
            del bad_request.field_violations[-1]
            break
    detail = any_pb2.Any()
    detail.Pack(bad_request)
    return status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message=_bounded(str(exc)), details=[detail]
    )


def _code_of(exc: Exception) -> grpc.StatusCode | None:
    for cls in type(exc).__mro__:
        code = STATUS_OF.get(cls)
        if code is not None:
            return code
    return None


def _bounded(message: str) -> str:
    if len(message) <= _MAX_MESSAGE_CHARS:
        return message
    return message[: _MAX_MESSAGE_CHARS - 20].rstrip() + " … (truncated)"


def _already_aborted(context: grpc.ServicerContext) -> bool:
    # context.code() exists on grpc's server context though the stubs omit it.
    code = getattr(context, "code", None)
    return callable(code) and code() not in (None, grpc.StatusCode.OK)
