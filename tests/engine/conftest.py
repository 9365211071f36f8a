"""Fixtures for the engine tests: a workspace over a temporary directory with a fixed clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_harness import Harness, make_config

from segsvc.engine.clock import FakeClock
from segsvc.engine.workspace import Workspace

START = 1_767_225_600  # 2026-01-01T00:00:00Z


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path / "data", FakeClock(START), make_config(tmp_path / "data"))
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def ws(h: Harness) -> Workspace:
    return h.ws
