"""The engine: every workspace over one store, and the ticker that moves time-dependent
segments."""

from __future__ import annotations

import gc
import logging
import re
import threading

from segsvc.config import Config
from segsvc.engine.clock import Clock, SystemClock
from segsvc.engine.errors import InvalidArgument, SegsvcError, from_storage
from segsvc.engine.workspace import Workspace
from segsvc.storage.errors import CorruptRecordError, StorageError, StoreDamagedError
from segsvc.storage.store import Store

log = logging.getLogger(__name__)
_WORKSPACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Engine:
    """Raises StorageError (StoreDamagedError, StoreLockedError, ...) when the store cannot
    be opened whole: a damaged store is refused, never served in part or replaced."""

    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        # The state is millions of long-lived objects (index lists, bitmaps) and writes
        # allocate millions of short-lived ones: at the default thresholds the cyclic GC
        # rescans the whole heap many times per batch (a third of the load time, and most of
        # a crash replay at a million people). Raise the thresholds before anything loads.
        gc.set_threshold(200_000, 50, 1000)
        self.config = config
        self.clock = clock or SystemClock()
        self.store = Store(config.data_dir, config.map_size)
        self._workspaces: dict[str, Workspace] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        try:
            with self.store.read() as txn:
                names = [k[len(b"ws:") :].decode() for k, _ in txn.scan("meta", b"ws:")]
            for name in names:
                self.workspace(name)
        except CorruptRecordError as exc:
            self.store.close()
            raise StoreDamagedError(
                f"workspace data cannot be rebuilt: {exc}; restore {config.data_dir} from a "
                f"backup (`segsvc check --data {config.data_dir}` lists all damage)"
            ) from exc
        except BaseException:
            self.store.close()
            raise

    def workspace(self, name: str) -> Workspace:
        """The named workspace, created on first use."""
        ws = self._workspaces.get(name)
        if ws is not None:
            return ws
        if not _WORKSPACE_NAME.match(name):
            raise InvalidArgument(
                f"workspace name {name!r} must be 1-64 letters, digits, '_', '.' or '-'",
                "workspace",
            )
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
                    ws = Workspace(name, self.store, self.clock, self.config)
                finally:
                    gc.enable()
                gc.freeze()
                self._workspaces[name] = ws
            return ws

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

    def close(self, checkpoint: bool = True) -> None:
        """Stops the ticker, writes a checkpoint of each workspace (fast next start) and
        closes LMDB. A checkpoint storage refuses is logged and skipped (the log keeps what
        it would have covered): stopping never fails for want of space."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        try:
            if checkpoint:
                for ws in self.workspaces():
                    ws.checkpoint()
        finally:
            self.store.close()
