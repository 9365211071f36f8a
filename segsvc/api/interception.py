"""The one way our server interceptors wrap a method's behaviour, for all four call shapes.

A server interceptor gets the RpcMethodHandler grpc found and returns another one whose
behaviour function is wrapped. What the wrapper must do differs only by the response shape:
a unary response is a return value, a streamed response is a generator that runs after the
behaviour returned, so errors and per-call state must be handled while it is iterated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

Behaviour = Callable[[Any, grpc.ServicerContext], Any]
StreamBehaviour = Callable[[Any, grpc.ServicerContext], Iterator[Any]]


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
