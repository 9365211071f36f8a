"""segsvc.v1.ChangesService: the change feed, replayed from storage and then followed live."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc

from segsvc.api import convert
from segsvc.api.base import EngineServicer
from segsvc.engine.engine import Engine
from segsvc.v1 import changes_pb2, changes_pb2_grpc


class ChangesServicer(EngineServicer, changes_pb2_grpc.ChangesServiceServicer):
    def __init__(self, engine: Engine, stopping: threading.Event) -> None:
        super().__init__(engine)
        # Set when the server begins to shut down: followers end at once (UNAVAILABLE, so
        # they reconnect elsewhere or later) instead of holding the shutdown for the grace.
        # A follower occupies one worker thread for as long as it follows: StreamAdmission
        # (segsvc/api/admission.py) bounds followers together with every other stream.
        self._stopping = stopping

    def WatchChanges(
        self, request: changes_pb2.WatchChangesRequest, context: grpc.ServicerContext
    ) -> Iterator[changes_pb2.WatchChangesResponse]:
        workspace = self._workspace()
        follow = not request.no_follow

        def stop() -> bool:
            return self._stopping.is_set() or not context.is_active()

        after_seq = workspace.head_seq() if request.from_now else request.after_seq
        # A workspace nobody has written to yet has no feed to replay: a follower waits for
        # the write that creates it, then follows it from its first change.
        if follow:
            created = self._engine.wait_for_workspace(workspace.name, stop)
            workspace = created if created is not None else workspace
        runs = workspace.watch(after_seq, frozenset(request.segment_ids), stop=stop, follow=follow)
        for run in runs:
            yield changes_pb2.WatchChangesResponse(
                changes=[convert.change_to_proto(change) for change in run]
            )
        if self._stopping.is_set() and follow:
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the server is shutting down: reconnect and resume after the last seq received",
            )
