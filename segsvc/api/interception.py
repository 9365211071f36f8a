"""The one way our server interceptors wrap a method's behaviour, for all four call shapes.

A server interceptor gets the RpcMethodHandler grpc found and returns another one whose
behaviour function is wrapped. What the wrapper must do differs only by the response shape:
a unary response is a return value, a streamed response is a generator that runs after the
behaviour returned, so errors and per-call state must be handled while it is iterated.
`rewrap_requests` is the request-side twin: it differs only by the request shape (one
message, or an iterator of them).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import grpc

Behaviour = Callable[[Any, grpc.ServicerContext], Any]
Request = Callable[[Any], Any]
StreamBehaviour = Callable[[Any, grpc.ServicerContext], Iterator[Any]]


class HandlerInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """A server interceptor that replaces the handler grpc found for a call by another
    (`wrap`); a method grpc knows no handler for stays unknown."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return self.wrap(handler, handler_call_details)

    def wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], call: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        raise NotImplementedError


def rewrap(
    handler: grpc.RpcMethodHandler[Any, Any],
    unary: Callable[[Behaviour], Behaviour],
    streaming: Callable[[StreamBehaviour], StreamBehaviour],
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with its behaviour wrapped by `unary` (unary response) or `streaming`
    (streamed response). The request side (one message or an iterator) passes through."""
    common: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **common)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **common)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **common)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **common)
    raise AssertionError("a method handler without a behaviour")


def rewrap_requests(
    handler: grpc.RpcMethodHandler[Any, Any],
    single: Request,
    stream: Callable[[Iterator[Any]], Iterator[Any]],
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` taking grpc's raw request bytes (no request_deserializer): the behaviour
    gets `single(bytes)` for a unary request, `stream(iterator of bytes)` for a stream."""

    def wrap(behaviour: Behaviour, convert: Request) -> Behaviour:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            return behaviour(convert(request), context)

        return run

    common: dict[str, Any] = {
        "request_deserializer": None,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, single), **common)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, stream), **common)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, single), **common)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, stream), **common)
    raise AssertionError("a method handler without a behaviour")


def steps_in(scope: contextvars.Context, responses: Iterator[Any]) -> Iterator[Any]:
    """`responses` with each step (and the close) run in `scope`: a streamed response's
    handler code runs at every step, so a per-call context must be entered at every step."""
    try:
        while True:
            try:
                response = scope.run(next, responses)
            except StopIteration:
                return
            yield response
    finally:
        close = getattr(responses, "close", None)
        if close is not None:
            scope.run(close)
