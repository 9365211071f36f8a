"""scripts/bench_nats.py runs end to end on a tiny load, through the embedded log and a real
nats-server (R=1), and loads what it says it loads. No timings are asserted."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import bench_nats


def test_the_benchmark_runs_on_both_logs(monkeypatch) -> None:
    loaded: list[int] = []
    real = bench_nats.Engine

    class CountingEngine(real):  # type: ignore[misc, valid-type]
        def close(self, checkpoint: bool = True) -> None:
            loaded.append(len(self.workspace("default").state.index.live))
            super().close(checkpoint)

    monkeypatch.setattr(bench_nats, "Engine", CountingEngine)
    for servers in (0, 1):
        line = bench_nats.measure("log", servers, people=3000, updates=5)
        assert "update p50" in line and "people/s" in line
    assert loaded == [3000, 3000]


def test_the_replication_figures_run_end_to_end() -> None:
    figures = bench_nats.replication(people=3000, read_seconds=0.5)
    # Both joined nodes hold everyone; the second came from the checkpoint after a purge
    # (replication() checks its log says so) that covers the whole load.
    assert figures.joined_people == (3000, 3000)
    assert figures.checkpoint_op == 2  # the segment, then the one batch of 3000
    assert figures.reads_one_node > 0 and figures.reads_two_nodes > 0
    assert len(figures.lines()) == 6
