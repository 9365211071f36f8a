"""Following a shared operation log: every node applies every workspace's records, its own
and other nodes', through the same path (WorkspaceCore.catch_up -> materialise), so all
nodes hold the same memberships and change-feed sequence numbers.

A plain NATS subscription on the log's subjects says which workspace moved and to which
record (the Segsvc-Op-Seq header); one thread catches those workspaces up, and every
`poll_seconds` all of them, in case a notice was missed while NATS was away. A workspace
another node created is opened on its first record."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from segsvc.engine.jetstream_log import OP_SEQ, SUBJECT_ROOT, JetStreamLogs, workspace_of
from segsvc.engine.workspace import Workspace

log = logging.getLogger(__name__)


class LogFollower:
    def __init__(
        self,
        logs: JetStreamLogs,
        workspace: Callable[[str], Workspace],
        workspaces: Callable[[], list[Workspace]],
        poll_seconds: float = 2.0,
    ) -> None:
        self._logs = logs
        self._workspace = workspace
        self._workspaces = workspaces
        self._poll_seconds = poll_seconds
        self._lock = threading.Lock()
        # workspace -> the highest record sequence announced and not yet caught up on
        self._announced: dict[str, int] = {}
        # workspace -> the highest record sequence ever announced (for the lag)
        self._heads: dict[str, int] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="segsvc-follower", daemon=True)

    def start(self) -> None:
        self._logs.js.watch(f"{SUBJECT_ROOT}.>", self._on_record)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(10)

    def lag(self) -> int:
        """How many announced records the workspace furthest behind has not applied."""
        with self._lock:
            heads = dict(self._heads)
        behind = 0
        for ws in self._workspaces():
            behind = max(behind, heads.get(ws.name, 0) - ws.state.op_seq)
        for name in heads.keys() - {ws.name for ws in self._workspaces()}:
            behind = max(behind, heads[name])  # a workspace not opened yet
        return behind

    def _on_record(self, subject: str, headers: dict[str, str]) -> None:
        try:
            workspace = workspace_of(subject[len(SUBJECT_ROOT) + 1 :])
            seq = int(headers.get(OP_SEQ, "0"))
        except ValueError:
            return
        with self._lock:
            if seq > self._announced.get(workspace, 0):
                self._announced[workspace] = seq
            if seq > self._heads.get(workspace, 0):
                self._heads[workspace] = seq
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            polled = not self._wake.wait(self._poll_seconds)
            self._wake.clear()
            with self._lock:
                announced, self._announced = self._announced, {}
            if polled:
                for ws in self._workspaces():
                    announced.setdefault(ws.name, ws.state.op_seq + 1)
            for name, seq in announced.items():
                if self._stop.is_set():
                    return
                self._catch_up(name, seq)

    def _catch_up(self, name: str, seq: int) -> None:
        try:
            ws = self._workspace(name)
            if ws.state.op_seq < seq:
                ws.core.catch_up(seq)
        except Exception:
            # Logged and retried at the next notice or poll: NATS away, storage full, ...
            log.exception("catching up workspace %s failed", name)
