"""Read-your-writes across nodes: every answer carries the `segsvc-seq` trailer, the last
record of the call's workspace this node had applied when it answered (after a write: that
write's record or a later one); a call may send it back as the `segsvc-min-seq` header, to
any node, which then waits, within the call's deadline, until it has applied that record.

With one node (or the embedded log) the wait never happens: its own writes are applied
before they are answered."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc

from segsvc.api.auth import current_caller
from segsvc.api.interception import Behaviour, HandlerInterceptor, StreamBehaviour, rewrap
from segsvc.engine import errors
from segsvc.engine.engine import Engine

MIN_SEQ_HEADER = "segsvc-min-seq"
SEQ_TRAILER = "segsvc-seq"
# Without a deadline on the call, a wait for a record is bounded all the same.
MAX_WAIT_SECONDS = 30.0
_POLL_SECONDS = 0.005
_ANSWER_MARGIN_SECONDS = 0.1


class AppliedSeqInterceptor(HandlerInterceptor):
    """Waits for `segsvc-min-seq` before a call runs and reports `segsvc-seq` after it."""

    def __init__(self, engine: Engine | None = None) -> None:
        # Set once the engine is open: the port is bound (with this interceptor) before.
        self.engine = engine

    def wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], call: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if not call.method.startswith("/segsvc."):
            return handler  # health, reflection: no workspace

        def unary(behaviour: Behaviour) -> Behaviour:
            def run(request: Any, context: grpc.ServicerContext) -> Any:
                workspace = current_caller().workspace
                self._wait(workspace, _min_seq(call), context)
                answer = behaviour(request, context)
                context.set_trailing_metadata(((SEQ_TRAILER, str(self._applied(workspace))),))
                return answer

            return run

        def streaming(behaviour: StreamBehaviour) -> StreamBehaviour:
            def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                workspace = current_caller().workspace
                self._wait(workspace, _min_seq(call), context)
                yield from behaviour(request, context)

            return run

        return rewrap(handler, unary, streaming)

    def _applied(self, workspace: str) -> int:
        return 0 if self.engine is None else self.engine.applied_seq(workspace)

    def _wait(self, workspace: str, min_seq: int, context: grpc.ServicerContext) -> None:
        if not min_seq:
            return
        remaining = context.time_remaining()
        # Answered a little before the deadline, so the caller reads why rather than a bare
        # DEADLINE_EXCEEDED.
        limit = (
            MAX_WAIT_SECONDS
            if remaining is None
            else min(remaining - _ANSWER_MARGIN_SECONDS, MAX_WAIT_SECONDS)
        )
        deadline = time.monotonic() + limit
        while (applied := self._applied(workspace)) < min_seq:
            if time.monotonic() >= deadline:
                raise errors.Unavailable(
                    f"this node has applied workspace {workspace!r} up to record {applied}, "
                    f"not yet {min_seq} ({MIN_SEQ_HEADER}): retry, or ask another node"
                )
            time.sleep(_POLL_SECONDS)


def _min_seq(call: grpc.HandlerCallDetails) -> int:
    for key, value in call.invocation_metadata or ():
        if key == MIN_SEQ_HEADER:
            text = value.decode() if isinstance(value, bytes) else value
            if not text.isdigit():
                raise errors.InvalidArgument(
                    f"{text!r} is not a record sequence number (send back a segsvc-seq trailer)",
                    f"{MIN_SEQ_HEADER} header",
                )
            return int(text)
    return 0
