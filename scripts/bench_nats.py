"""The operation log on NATS JetStream beside the embedded LMDB log, in the same run, on
loopback: one person's update (p50, p99), and a bulk load of new people (people/s), each
through the engine of one node, for the embedded log, JetStream with one replica (one
nats-server) and JetStream with three (a cluster of three nats-servers).

    .venv/bin/python scripts/bench_nats.py                  # 200k people, 2000 updates
    .venv/bin/python scripts/bench_nats.py --people 1000000 --updates 5000

nats-server 2.9 or newer must be on PATH (or in /usr/sbin): `apt install nats-server`.
Targets (DESIGN.md): one update p99 under 5 ms with R=3; bulk load at least 50k people/s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from nats_harness import start_nats, start_nats_cluster

from segsvc.config import Config, Replication
from segsvc.engine.bulk import PeopleColumns
from segsvc.engine.engine import Engine
from segsvc.engine.people import PersonUpsert

BATCH = 10_000


@contextmanager
def nats(root: Path, servers: int) -> Iterator[Replication | None]:
    """No NATS (the embedded log), one server (R=1) or a cluster of three (R=3)."""
    if servers == 0:
        yield None
        return
    if servers == 1:
        single = start_nats(root / "nats")
        try:
            yield Replication(servers=(single.url,), replicas=1)
        finally:
            single.stop()
        return
    cluster = start_nats_cluster(root / "nats")
    try:
        yield Replication(servers=tuple(cluster.urls.split(",")), replicas=3)
    finally:
        cluster.stop()


def profile(i: int) -> PersonUpsert:
    return PersonUpsert(
        f"u{i}",
        email=f"u{i}@example.com",
        attributes={"n": float(i % 97), "plan": "pro" if i % 3 else "free"},
        add_tags=("t",),
    )


def measure(label: str, servers: int, people: int, updates: int) -> str:
    with (
        tempfile.TemporaryDirectory(prefix="segsvc-bench-nats-") as tmp,
        nats(Path(tmp), servers) as replication,
    ):
        config = Config(data_dir=Path(tmp) / "data", map_size=8 << 30, replication=replication)
        engine = Engine(config)
        try:
            ws = engine.workspace("default")
            batches = [
                PeopleColumns.from_upserts([profile(i) for i in range(s, min(s + BATCH, people))])
                for s in range(0, people, BATCH)
            ]
            started = time.perf_counter()
            for batch in batches:
                ws.upsert_columns(batch)
            load = time.perf_counter() - started
            latencies = []
            for i in range(updates):
                one = [PersonUpsert(f"u{(i * 7919) % people}", attributes={"n": float(i)})]
                started = time.perf_counter()
                ws.upsert_people(one)
                latencies.append(time.perf_counter() - started)
            latencies.sort()
            p50 = latencies[len(latencies) // 2] * 1e3
            p99 = latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)] * 1e3
        finally:
            engine.close(checkpoint=False)
    return (
        f"{label:<22} update p50 {p50:6.2f} ms  p99 {p99:6.2f} ms   "
        f"bulk load {people / load:>9,.0f} people/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=200_000)
    parser.add_argument("--updates", type=int, default=2000)
    args = parser.parse_args()
    print(f"{args.people:,} people in batches of {BATCH:,}; {args.updates:,} single updates")
    for label, servers in (("embedded LMDB log", 0), ("JetStream R=1", 1), ("JetStream R=3", 3)):
        print(measure(label, servers, args.people, args.updates), flush=True)


if __name__ == "__main__":
    main()
