"""segsvc.v1.WorkspacesService: which workspaces the server holds and the server's status
(admin tokens only), so a mistyped `workspace` header shows up as a name that is not there."""

from __future__ import annotations

from importlib import metadata

import grpc
from google.protobuf import duration_pb2

from segsvc.api.base import EngineServicer
from segsvc.engine.stats import WorkspaceStats
from segsvc.v1 import workspaces_pb2, workspaces_pb2_grpc


def segsvc_version() -> str:
    """The installed segsvc release ("unknown" when run from a tree that was not installed)."""
    try:
        return metadata.version("segsvc")
    except metadata.PackageNotFoundError:
        return "unknown"


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

    def GetServerStatus(
        self, request: workspaces_pb2.GetServerStatusRequest, context: grpc.ServicerContext
    ) -> workspaces_pb2.GetServerStatusResponse:
        stats = self._engine.stats()
        uptime = duration_pb2.Duration()
        uptime.FromNanoseconds(int(self._engine.uptime_seconds() * 1e9))
        return workspaces_pb2.GetServerStatusResponse(
            version=segsvc_version(),
            uptime=uptime,
            rss_bytes=stats.memory.rss_bytes,
            rss_anon_bytes=stats.memory.rss_anon_bytes,
            map_used_bytes=stats.map_used_bytes,
            map_size_bytes=stats.map_size_bytes,
            workspaces=[_workspace_status(ws) for ws in stats.workspaces],
            node_name=stats.node_name,
        )


def _workspace_status(ws: WorkspaceStats) -> workspaces_pb2.WorkspaceStatus:
    status = workspaces_pb2.WorkspaceStatus(
        name=ws.name,
        people=ws.people,
        segments=ws.segments,
        events=ws.events,
        last_change_seq=ws.last_change_seq,
        last_op_seq=ws.last_op_seq,
        records_since_checkpoint=ws.records_since_checkpoint,
        change_feed_followers=ws.followers,
        max_follower_lag=ws.max_follower_lag,
        audience_snapshots=ws.audience_snapshots,
    )
    if ws.checkpoint_age_seconds is not None:
        status.last_checkpoint_age.FromSeconds(ws.checkpoint_age_seconds)
    if ws.replica is not None:
        status.replica.CopyFrom(
            workspaces_pb2.ReplicaStatus(
                applied_op_seq=ws.replica.applied_op_seq,
                stream_last_seq=ws.replica.stream_last_seq,
                stream_last_op_seq=ws.replica.stream_last_op_seq,
                lag_ops=ws.replica.lag_ops,
                stream_error=ws.replica.stream_error,
            )
        )
    return status
