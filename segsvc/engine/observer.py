"""What the engine reports about its own work as it happens: commit latency, checkpoints,
replays, ticks. Everything else an operator sees (sizes, followers, memory) is read when it
is asked for (segsvc.engine.stats), so it costs the writes nothing.

The engine knows no metrics library: it calls a `WorkspaceObserver` that the server fills
with Prometheus objects (segsvc.api.metrics). The defaults here do nothing, so an engine
without metrics (tests, `segsvc check`, tools) pays one empty call per event.
"""

from __future__ import annotations


class WorkspaceObserver:
    """Told about one workspace's work, where it happens."""

    def committed(self, seconds: float) -> None:
        """A write's LMDB transaction (log append, apply, rows, commit) took `seconds`."""

    def checkpointed(self, seconds: float) -> None:
        """A checkpoint was stored in `seconds`."""

    def replayed(self, operations: int, seconds: float) -> None:
        """Loading the workspace (checkpoint + `operations` log records) took `seconds`."""

    def ticked(self, seconds: float, changes: int) -> None:
        """A tick took `seconds` and moved people in or out of segments `changes` times."""


class EngineObserver:
    """Hands out the observer of each workspace as the engine opens it."""

    def workspace(self, name: str) -> WorkspaceObserver:
        return NO_WORKSPACE_OBSERVER


NO_WORKSPACE_OBSERVER = WorkspaceObserver()
NO_OBSERVER = EngineObserver()
