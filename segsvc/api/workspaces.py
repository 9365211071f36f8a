"""segsvc.v1.WorkspacesService: which workspaces the server holds (admin tokens only), so a
mistyped `workspace` header shows up as a name that is not there."""

from __future__ import annotations

import grpc

from segsvc.api.base import EngineServicer
from segsvc.v1 import workspaces_pb2, workspaces_pb2_grpc


class WorkspacesServicer(EngineServicer, workspaces_pb2_grpc.WorkspacesServiceServicer):
    def ListWorkspaces(
        self, request: workspaces_pb2.ListWorkspacesRequest, context: grpc.ServicerContext
    ) -> workspaces_pb2.ListWorkspacesResponse:
        return workspaces_pb2.ListWorkspacesResponse(
            workspaces=[
                workspaces_pb2.WorkspaceSummary(
                    name=summary.name,
                    people=summary.people,
                    segments=summary.segments,
                    last_change_seq=summary.last_change_seq,
                )
                for summary in self._engine.summaries()
            ]
        )
