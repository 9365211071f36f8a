"""Admission of long calls: every streaming call shares one budget of worker threads, so that
streams can never take the threads that unary calls and health checks need.

grpcio's sync server runs each call on a thread of one pool (config.workers) for as long as
the call lasts. A streaming call lasts as long as its client wants: a ResolveAudience or
WatchChanges reader that reads slowly holds its thread while grpc waits on flow control, and
a client-streaming upload (StreamUpsertPeople, StreamTrackEvents, ImportMembers) holds one
while the client dribbles its messages. Without a bound, enough of them leave no thread for
anything else, Health included. grpc's own `maximum_concurrent_rpcs` refuses every kind of
call alike once full, so it cannot keep threads for the short calls; this budget can.

A call is long when its request or its response is a stream; that covers our streaming
methods, health's Watch and reflection's stream alike, without a list to keep up to date.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from segsvc.api.interception import Behaviour, StreamBehaviour, rewrap
from segsvc.engine.errors import ResourceExhausted

# Threads never given to streams. Four answer health checks and a burst of unary calls while
# every stream slot is held by a reader that does not read.
MIN_RESERVED_WORKERS = 4


def stream_budget(workers: int) -> int:
    """How many long calls a pool of `workers` threads admits at once: all but a reserve of
    a quarter of the threads, at least MIN_RESERVED_WORKERS (and at least one stream)."""
    reserved = max(MIN_RESERVED_WORKERS, workers // 4)
    return max(1, workers - reserved)


class StreamAdmission(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Admits at most `budget` long calls at a time; the next one ends at once with
    RESOURCE_EXHAUSTED. Place it after authentication, so callers who are refused anyway
    take no slot."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._slots = threading.BoundedSemaphore(budget)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or not (handler.request_streaming or handler.response_streaming):
            return handler

        def unary(behaviour: Behaviour) -> Behaviour:
            def run(request: Any, context: grpc.ServicerContext) -> Any:
                self._admit()
                try:
                    return behaviour(request, context)
                finally:
                    self._slots.release()

            return run

        def streaming(behaviour: StreamBehaviour) -> StreamBehaviour:
            def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                # Runs on the first step of the generator, on the worker thread that serves
                # the call; grpc closes the generator when the call ends however it ends.
                self._admit()
                try:
                    yield from behaviour(request, context)
                finally:
                    self._slots.release()

            return run

        return rewrap(handler, unary, streaming)

    def _admit(self) -> None:
        if not self._slots.acquire(blocking=False):
            raise ResourceExhausted(
                f"too many open streams ({self.budget}, the server's limit): retry later, "
                "read streams promptly, or raise --workers"
            )
