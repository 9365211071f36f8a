"""The engine: every workspace over one store, and the ticker that moves time-dependent
segments."""

from __future__ import annotations

import gc
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from segsvc.config import Config, name_problem
from segsvc.engine.clock import Clock, SystemClock
from segsvc.engine.errors import InvalidArgument, SegsvcError, from_storage
from segsvc.engine.follower import LogFollower
from segsvc.engine.jetstream_log import JetStreamLogs, node_name
from segsvc.engine.observer import NO_OBSERVER, EngineObserver
from segsvc.engine.stats import EngineStats, process_memory
from segsvc.engine.workspace import Workspace
from segsvc.storage.errors import CorruptRecordError, StorageError, StoreDamagedError
from segsvc.storage.store import Store

log = logging.getLogger(__name__)


def check_workspace_name(name: str) -> None:
    """Raises InvalidArgument unless `name` can name a workspace. The tokens file is checked
    by the same rule, so a token can never be bound to a workspace no call could reach."""
    problem = name_problem("workspace", name)
    if problem is not None:
        raise InvalidArgument(problem, "workspace")


@dataclass(frozen=True)
class WorkspaceSummary:
    """A workspace by name, with its size now."""

    name: str
    people: int
    segments: int
    last_change_seq: int


class Engine:
    """Raises StorageError (StoreDamagedError, StoreLockedError, ...) when the store cannot
    be opened whole: a damaged store is refused, never served in part or replaced."""

    def __init__(
        self, config: Config, clock: Clock | None = None, observer: EngineObserver = NO_OBSERVER
    ) -> None:
        # The state is millions of long-lived objects (index lists, bitmaps) and writes
        # allocate millions of short-lived ones: at the default thresholds the cyclic GC
        # rescans the whole heap many times per batch (a third of the load time, and most of
        # a crash replay at a million people). Raise the thresholds before anything loads.
        gc.set_threshold(200_000, 50, 1000)
        self.config = config
        self.clock = clock or SystemClock()
        self.observer = observer
        # For uptime: a monotonic start, unmoved by clock changes (and by a test's clock).
        self.started = time.monotonic()
        self.store = Store(config.data_dir, config.map_size)
        # With --nats, every workspace's log is on JetStream and LMDB is this node's
        # materialisation of it.
        self._logs: JetStreamLogs | None = None
        self._follower: LogFollower | None = None
        self._workspaces: dict[str, Workspace] = {}
        self._lock = threading.Lock()
        # Notified whenever a workspace is created, for wait_for_workspace.
        self._created = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        try:
            with self.store.read() as txn:
                names = [k[len(b"ws:") :].decode() for k, _ in txn.scan("meta", b"ws:")]
            if config.replication is not None:
                self._logs = JetStreamLogs(config.replication)
                # A node with an empty data directory learns the workspaces from the stream.
                names = sorted(set(names) | set(self._logs.workspace_names()))
            for name in names:
                self.workspace(name)
            if self._logs is not None:
                # Other nodes' records (and this node's own) are applied as they come.
                self._follower = LogFollower(self._logs, self.workspace, self.workspaces)
                self._follower.start()
        except CorruptRecordError as exc:
            self._close_storage()
            raise StoreDamagedError(
                f"workspace data cannot be rebuilt: {exc}; restore {config.data_dir} from a "
                f"backup (`segsvc check --data {config.data_dir}` lists all damage)"
            ) from exc
        except BaseException:
            self._close_storage()
            raise

    def workspace(self, name: str) -> Workspace:
        """The named workspace, created on first use: for writes."""
        ws = self._workspaces.get(name)
        if ws is not None:
            return ws
        check_workspace_name(name)
        with self._lock:
            ws = self._workspaces.get(name)
            if ws is None:
                try:
                    with self.store.write() as txn:
                        if txn.get("meta", b"ws:" + name.encode()) is None:
                            txn.put("meta", b"ws:" + name.encode(), b"")
                except StorageError as exc:
                    raise from_storage(exc, self.config.data_dir) from exc
                # Loading builds the long-lived state and no garbage cycles: collect nothing
                # meanwhile, then move it all where the collector never rescans it.
                gc.disable()
                try:
                    oplog = None if self._logs is None else self._logs.log_for(name)
                    ws = Workspace(
                        name,
                        self.store,
                        self.clock,
                        self.config,
                        oplog,
                        observer=self.observer.workspace(name),
                    )
                finally:
                    gc.enable()
                gc.freeze()
                self._workspaces[name] = ws
                self._created.notify_all()
            return ws

    def workspace_to_read(self, name: str) -> Workspace:
        """The named workspace for a read. One that does not exist reads as empty: a fresh
        stand-in, neither stored nor kept, so reads never create workspaces."""
        ws = self._workspaces.get(name)
        if ws is not None:
            return ws
        check_workspace_name(name)
        return Workspace(name, self.store, self.clock, self.config)

    def wait_for_workspace(self, name: str, stop: Callable[[], bool]) -> Workspace | None:
        """The named workspace once a write has created it (None if `stop()` first): a
        follower of an empty workspace's change feed waits here for its first change."""
        check_workspace_name(name)
        with self._created:
            while name not in self._workspaces:
                if stop():
                    return None
                self._created.wait(timeout=0.5)
            return self._workspaces[name]

    def secret(self, name: str) -> bytes:
        """A random 32-byte key kept in the store under `name`, made on first use: it stays
        the same across restarts (page tokens signed with it stay good) and never leaves the
        server."""
        key = b"secret:" + name.encode()
        with self.store.read() as txn:
            found = txn.get("meta", key)
        if found is not None:
            return found
        with self._lock, self.store.write() as txn:
            found = txn.get("meta", key)
            if found is None:
                found = secrets.token_bytes(32)
                txn.put("meta", key, found)
        return found

    def summaries(self) -> list[WorkspaceSummary]:
        """Every workspace a write created, by name, with its size."""
        return [
            WorkspaceSummary(
                ws.name, len(ws.state.index.live), len(ws.state.segments), ws.head_seq()
            )
            for ws in sorted(self.workspaces(), key=lambda ws: ws.name)
        ]

    def stats(self) -> EngineStats:
        """Every workspace's stats (by name), the LMDB map and the process memory, now."""
        room = self.store.room()
        return EngineStats(
            workspaces=[ws.stats() for ws in sorted(self.workspaces(), key=lambda ws: ws.name)],
            map_used_bytes=self.store.map_size() - room.map_left,
            map_size_bytes=self.store.map_size(),
            memory=process_memory(),
            node_name=self.node_name(),
        )

    def node_name(self) -> str:
        """With a shared log: the name this node goes by (--node-name, else the host name);
        "" without one."""
        replication = self.config.replication
        return "" if replication is None else node_name(replication)

    def uptime_seconds(self) -> float:
        return time.monotonic() - self.started

    def replica_lag(self) -> int:
        """With a shared log: how many records other nodes announced that this node has
        not applied yet, in the workspace furthest behind (0 without one)."""
        return 0 if self._follower is None else self._follower.lag()

    def applied_seq(self, name: str) -> int:
        """The last operation record of workspace `name` this node applied (0: none)."""
        ws = self._workspaces.get(name)
        return 0 if ws is None else ws.state.op_seq

    def workspaces(self) -> list[Workspace]:
        return list(self._workspaces.values())

    def tick(self) -> None:
        for ws in self.workspaces():
            try:
                ws.tick()
            except SegsvcError as exc:  # refused (storage full, ...): said in one line
                log.warning("tick refused for workspace %s: %s", ws.name, exc)
            except Exception:
                log.exception("tick failed for workspace %s", ws.name)

    def start_ticker(self) -> None:
        def run() -> None:
            while not self._stop.wait(self.config.tick_seconds):
                self.tick()

        self._ticker = threading.Thread(target=run, name="segsvc-ticker", daemon=True)
        self._ticker.start()

    def close(self, checkpoint: bool = True) -> bool:
        """Stops the ticker, writes a checkpoint of each workspace (fast next start) and
        closes LMDB; says whether every workspace was checkpointed. A checkpoint storage
        refuses is logged and skipped (the log keeps what it would have covered): stopping
        never fails for want of space."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        if self._follower is not None:
            self._follower.stop()
        try:
            # A list, not all(generator): one refused checkpoint must not skip the others.
            written = [ws.checkpoint() for ws in self.workspaces()] if checkpoint else [False]
        finally:
            # A checkpoint still being stored in the background needs the storage open.
            for ws in self.workspaces():
                ws.core.finish_checkpoint()
            self._close_storage()
        return all(written)

    def _close_storage(self) -> None:
        if self._follower is not None:
            self._follower.stop()
        if self._logs is not None:
            # A checkpoint being published reads the store: it finishes before the store
            # closes.
            self._logs.wait_for_shared_checkpoints()
        self.store.close()
        if self._logs is not None:
            self._logs.close()
