"""The operation log on NATS JetStream beside the embedded LMDB log, in the same run, on
loopback: one person's update (p50, p99), and a bulk load of new people (people/s), each
through the engine of one node, for the embedded log, JetStream with one replica (one
nats-server) and JetStream with three (a cluster of three nats-servers).

Then the replication figures, on one nats-server: a writer node (in this process) bulk-loads
the people while a follower node (`segsvc serve --nats`, a process of its own) applies them:
its lag in seconds is sampled during and after the load (the age of the oldest record the
writer acknowledged that the follower has not applied). Then an empty node joins and catches
up from the stream alone, and another from the checkpoint published to the object store after
the stream was purged below it. Last, count reads (GetSegment and CountAudience in turn) of one
node against two, with the same two client processes: both on one node, or one per node.

    .venv/bin/python scripts/bench_nats.py                  # 200k people, 2000 updates
    .venv/bin/python scripts/bench_nats.py --people 1000000 --updates 5000
    .venv/bin/python scripts/bench_nats.py --only replication --people 1000000

nats-server 2.9 or newer must be on PATH (or in /usr/sbin): `apt install nats-server`.
Targets (DESIGN.md): one update p99 under 5 ms with R=3; bulk load at least 50k people/s;
replica lag back under 1 s within 5 s after the load; two nodes serve at least 1.8 times the
count reads of one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "api"))

from api_harness import dynamic_segment, equals
from nats_harness import start_nats, start_nats_cluster
from server_harness import ServerProcess, Stubs

from segsvc.config import Config, Replication
from segsvc.engine.bulk import PeopleColumns
from segsvc.engine.engine import Engine
from segsvc.engine.jetstream_log import JetStreamOperationLog
from segsvc.engine.people import PersonUpsert
from segsvc.engine.shared_checkpoints import Covered
from segsvc.v1 import audiences_pb2, segments_pb2, workspaces_pb2

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


# Seconds between two samples of the follower's position.
SAMPLE_SECONDS = 0.05
# How long the follower may take to catch up after the load before the run gives up.
CATCH_UP_LIMIT = 300.0


def batches_of(people: int) -> list[PeopleColumns]:
    return [
        PeopleColumns.from_upserts([profile(i) for i in range(s, min(s + BATCH, people))])
        for s in range(0, people, BATCH)
    ]


def applied_on(stubs: Stubs, workspace: str = "default") -> tuple[int, int]:
    """(the last op the node applied, its live people) in `workspace` (0, 0: not yet)."""
    found = stubs.workspaces.GetServerStatus(workspaces_pb2.GetServerStatusRequest(), timeout=60)
    for ws in found.workspaces:
        if ws.name == workspace:
            return ws.replica.applied_op_seq, ws.people
    return 0, 0


@dataclass
class LagSamples:
    """The follower's applied op, sampled; the writer's acknowledgements, timed."""

    acks: list[tuple[float, int]] = field(default_factory=list)  # (time, last op acked)
    samples: list[tuple[float, int]] = field(default_factory=list)  # (time, op applied)

    def lag_at(self, t: float, applied: int) -> float:
        """Seconds since the writer acknowledged the oldest op the follower had not applied
        at `t` (0: it had applied all acknowledged by then)."""
        for acked_at, op in self.acks:
            if acked_at > t:
                return 0.0
            if op > applied:
                return t - acked_at
        return 0.0

    def lags(self) -> list[tuple[float, float]]:
        return [(t, self.lag_at(t, applied)) for t, applied in self.samples]


def follow(stubs: Stubs, samples: LagSamples, stop: threading.Event) -> None:
    while not stop.is_set():
        applied, _ = applied_on(stubs)
        samples.samples.append((time.perf_counter(), applied))
        stop.wait(SAMPLE_SECONDS)


def wait_applied(stubs: Stubs, op: int, limit: float = CATCH_UP_LIMIT) -> float:
    """Seconds until the node has applied `op` (polling its status)."""
    started = time.perf_counter()
    while applied_on(stubs)[0] < op:
        if time.perf_counter() - started > limit:
            raise TimeoutError(f"the node did not apply op {op} within {limit:g} s")
        time.sleep(SAMPLE_SECONDS)
    return time.perf_counter() - started


def read_client(address: str, segment_id: int, seconds: float) -> int:
    """Count reads against one node for `seconds`: GetSegment and CountAudience in turn;
    returns how many answered."""
    stubs = Stubs.connect(address)
    get = segments_pb2.GetSegmentRequest(segment_id=segment_id)
    count = audiences_pb2.CountAudienceRequest(
        audience=audiences_pb2.AudienceSpec(include=[segment_id])
    )
    calls = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        stubs.segments.GetSegment(get, timeout=10)
        stubs.audiences.CountAudience(count, timeout=10)
        calls += 2
    return calls


def reads_per_second(addresses: list[str], segment_id: int, seconds: float) -> float:
    """Count reads per second of one client process per address, all at once."""
    clients = [
        subprocess.Popen(
            [sys.executable, __file__, "--read-client", address, str(segment_id), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for address in addresses
    ]
    calls = 0
    for client in clients:
        out, _ = client.communicate(timeout=seconds + 120)
        if client.returncode:
            raise RuntimeError(f"read client failed ({client.returncode})")
        calls += int(out.split()[-1])
    return calls / seconds


@dataclass
class ReplicationFigures:
    people: int
    load_seconds: float
    max_lag_during: float
    lag_at_end: float
    under_1s_after: float  # seconds after the load until the lag stays under 1 s
    caught_up_after: float  # seconds after the load until the follower applied every op
    join_from_stream: float
    join_from_checkpoint: float
    joined_people: tuple[int, int]  # live people on the two joined nodes
    checkpoint_op: int
    purged_below: int  # the stream sequence the stream was purged below
    reads_one_node: float
    reads_two_nodes: float

    def lines(self) -> list[str]:
        return [
            f"replication, {self.people:,} people loaded in {self.load_seconds:.1f} s "
            f"({self.people / self.load_seconds:,.0f} people/s) through JetStream R=1",
            f"  follower lag during the load: max {self.max_lag_during:.2f} s, "
            f"{self.lag_at_end:.2f} s when it ended",
            f"  after the load: under 1 s after {self.under_1s_after:.2f} s, "
            f"every op applied after {self.caught_up_after:.2f} s (target: under 1 s within 5 s)",
            f"  empty node catches up from the stream: {self.join_from_stream:.1f} s "
            f"({self.joined_people[0]:,} people)",
            f"  empty node catches up from the object-store checkpoint (op {self.checkpoint_op}; "
            f"stream purged below stream seq {self.purged_below}): "
            f"{self.join_from_checkpoint:.1f} s ({self.joined_people[1]:,} people)",
            f"  count reads: one node {self.reads_one_node:,.0f}/s, two nodes "
            f"{self.reads_two_nodes:,.0f}/s = {self.reads_two_nodes / self.reads_one_node:.2f}x "
            "(two client processes both times; target 1.8x)",
        ]


def replication(people: int, read_seconds: float) -> ReplicationFigures:
    with tempfile.TemporaryDirectory(prefix="segsvc-bench-repl-") as tmp:
        root = Path(tmp)
        server = start_nats(root / "nats")
        nodes: list[ServerProcess] = []

        def node(name: str) -> ServerProcess:
            args = ("--nats", server.url, "--node-name", name, "--map-size", str(8 << 30))
            nodes.append(ServerProcess(root / name, root / f"{name}.log", args))
            return nodes[-1]

        engine: Engine | None = None
        try:
            follower = Stubs.connect(node("b").address)
            segment_id = dynamic_segment(follower, "pro", equals("plan", "pro"))
            config = Config(
                data_dir=root / "a",
                map_size=8 << 30,
                replication=Replication(servers=(server.url,), node_name="a"),
            )
            engine = Engine(config)
            ws = engine.workspace("default")
            lag = LagSamples()
            stop = threading.Event()
            sampler = threading.Thread(target=follow, args=(follower, lag, stop), daemon=True)
            batches = batches_of(people)
            sampler.start()
            started = time.perf_counter()
            for batch in batches:
                ws.upsert_columns(batch)
                lag.acks.append((time.perf_counter(), ws.state.op_seq))
            ended = time.perf_counter()
            last_op = ws.state.op_seq
            wait_applied(follower, last_op)
            caught_up_after = time.perf_counter() - ended
            stop.set()
            sampler.join()
            lags = lag.lags()
            during = [seconds for t, seconds in lags if t <= ended] or [0.0]
            after = [(t, seconds) for t, seconds in lags if t > ended]
            over = [t for t, seconds in after if seconds >= 1.0]
            under_1s_after = (max(over) - ended + SAMPLE_SECONDS) if over else 0.0

            started_join = time.perf_counter()
            joined = Stubs.connect(node("c").address)
            wait_applied(joined, last_op)
            join_from_stream = time.perf_counter() - started_join
            from_stream_people = applied_on(joined)[1]
            one = reads_per_second([nodes[0].address] * 2, segment_id, read_seconds)
            two = reads_per_second([nodes[0].address, nodes[1].address], segment_id, read_seconds)

            # The stream drops what the newest checkpoint covers; a node joining then starts
            # from the checkpoint in the object store.
            assert ws.checkpoint()
            logs = engine._logs
            assert logs is not None
            logs.wait_for_shared_checkpoints()
            oplog = ws.core.oplog
            assert isinstance(oplog, JetStreamOperationLog)
            description = logs.js.object_description(logs.shared_checkpoints.bucket, "default")
            covered = Covered.parse(description)
            assert covered is not None and covered.op_seq == last_op
            logs.js.purge(logs.stream, oplog.subject, covered.stream_seq)
            started_join = time.perf_counter()
            from_checkpoint = Stubs.connect(node("d").address)
            wait_applied(from_checkpoint, last_op)
            join_from_checkpoint = time.perf_counter() - started_join
            assert "loaded the published checkpoint" in nodes[-1].log(), nodes[-1].log()
            return ReplicationFigures(
                people=people,
                load_seconds=ended - started,
                max_lag_during=max(during),
                lag_at_end=during[-1],
                under_1s_after=under_1s_after,
                caught_up_after=caught_up_after,
                join_from_stream=join_from_stream,
                join_from_checkpoint=join_from_checkpoint,
                joined_people=(from_stream_people, applied_on(from_checkpoint)[1]),
                checkpoint_op=covered.op_seq,
                purged_below=covered.stream_seq,
                reads_one_node=one,
                reads_two_nodes=two,
            )
        finally:
            for process in nodes:
                if process.process.poll() is None:
                    process.terminate()
            if engine is not None:
                engine.close(checkpoint=False)
            server.stop()


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--read-client":
        print(read_client(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=200_000)
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--read-seconds", type=float, default=10.0)
    parser.add_argument("--only", choices=("logs", "replication"))
    args = parser.parse_args()
    if args.only != "replication":
        print(f"{args.people:,} people in batches of {BATCH:,}; {args.updates:,} single updates")
        for label, servers in (
            ("embedded LMDB log", 0),
            ("JetStream R=1", 1),
            ("JetStream R=3", 3),
        ):
            print(measure(label, servers, args.people, args.updates), flush=True)
    if args.only != "logs":
        for line in replication(args.people, args.read_seconds).lines():
            print(line, flush=True)


if __name__ == "__main__":
    main()
