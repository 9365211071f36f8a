"""Helpers shared by the engine tests: an engine over a temporary directory with a fixed
clock, and ways to read memberships and the change feed back as plain sets of ids."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segsvc.config import Config
from segsvc.engine.clock import FakeClock
from segsvc.engine.engine import Engine
from segsvc.engine.model import PersonKey
from segsvc.engine.workspace import Workspace

MAP_SIZE = 64 * 1024 * 1024


@dataclass
class Harness:
    """One engine on one directory; `reopen` closes it and starts a new one on the same
    files, as a restart would."""

    data_dir: Path
    clock: FakeClock
    config: Config
    engine: Engine = field(init=False)

    def __post_init__(self) -> None:
        self.engine = Engine(self.config, self.clock)

    @property
    def ws(self) -> Workspace:
        return self.engine.workspace("default")

    def reopen(self, checkpoint: bool = True) -> None:
        self.engine.close(checkpoint=checkpoint)
        self.engine = Engine(self.config, self.clock)

    def close(self) -> None:
        self.engine.close(checkpoint=False)


def make_config(data_dir: Path, **overrides: Any) -> Config:
    return Config(data_dir=data_dir, map_size=overrides.pop("map_size", MAP_SIZE), **overrides)


@contextmanager
def harness(start: int = 1_767_225_600, **config: Any) -> Iterator[Harness]:
    with tempfile.TemporaryDirectory(prefix="segsvc-test-") as tmp:
        h = Harness(Path(tmp), FakeClock(start), make_config(Path(tmp) / "data", **config))
        try:
            yield h
        finally:
            h.close()


def members(ws: Workspace, segment_id: int, page_size: int = 10_000) -> frozenset[str]:
    """Every member id of a segment, through the public paging API."""
    out: list[str] = []
    token = ""
    while True:
        rows, token, _total = ws.list_members(segment_id, page_size=page_size, page_token=token)
        out.extend(m.id for m in rows)
        if not token:
            break
    assert len(out) == len(set(out)), f"duplicate members in segment {segment_id}: {out}"
    return frozenset(out)


def all_members(ws: Workspace) -> dict[int, frozenset[str]]:
    return {sid: members(ws, sid) for sid in sorted(ws.state.segments)}


def replay_feed(ws: Workspace, after: int = 0) -> tuple[dict[int, set[str]], list[Any]]:
    """Memberships rebuilt from the change feed alone (ENTERED adds, EXITED removes, in seq
    order), and the changes read."""
    changes, _last = ws.read_changes(after, frozenset(), limit=10**9)
    rebuilt: dict[int, set[str]] = {}
    for change in changes:
        people = rebuilt.setdefault(change.segment_id, set())
        if change.entered:
            people.add(change.person_id)
        else:
            people.discard(change.person_id)
    return rebuilt, changes


def ids_of(ws: Workspace, ordinals: Iterable[int]) -> frozenset[str]:
    """Person ids of ordinals (for the APIs that answer with a bitmap, like audience)."""
    return frozenset(ws.state.index.ids[o] or "" for o in ordinals)


def key(kind: str, value: str) -> PersonKey:
    return PersonKey(kind, value)  # type: ignore[arg-type]
