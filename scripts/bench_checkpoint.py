"""Checkpoints off the write lock, measured (issue 15): the longest pause a writer issuing
one-person updates in a loop sees while checkpoints are taken back to back, and the crash
restart of a real `segsvc serve` process to SERVING with a long log tail after the last
checkpoint.

    .venv/bin/python scripts/bench_checkpoint.py --people 1000000 --dir /tmp/ckpt-1m

The data set (gen_data's people, events and 100 segments) is built in --dir on the first
run and reused after; each run changes it (updates, checkpoints). The crash is as kill -9
leaves the disk: every commit is durable, so the engine is closed without a checkpoint, and
a new server process then loads the checkpoint and replays the tail.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import gen_data
import grpc
from gen_data import NOW
from grpc_health.v1 import health_pb2, health_pb2_grpc

from segsvc.config import Config
from segsvc.engine.clock import FakeClock
from segsvc.engine.engine import Engine
from segsvc.engine.people import PersonUpsert
from segsvc.engine.workspace import Workspace

WORKSPACE = "default"
MAP_SIZE = 64 * 1024**3
# No automatic checkpoint while the tail is written.
NEVER = 10**12


def open_engine(path: Path, checkpoint_every: int = Config.checkpoint_every_ops) -> Engine:
    config = Config(data_dir=path, map_size=MAP_SIZE, checkpoint_every_ops=checkpoint_every)
    return Engine(config, FakeClock(NOW))


def build(path: Path, people: int, events_per_person: float) -> None:
    engine = open_engine(path)
    ws = engine.workspace(WORKSPACE)
    started = time.perf_counter()
    for batch in gen_data.people(people):
        ws.upsert_people(batch)
    for events in gen_data.events(people, events_per_person):
        ws.track_events(events)
    ids: dict[int, int] = {}
    for k, spec in enumerate(gen_data.segments(100)):
        definition = gen_data.remap(spec.conditions, ids) if spec.conditions else None
        ids[k + 1] = ws.create_segment(spec.name, "", spec.dynamic, definition).id
    engine.close()
    print(f"built {people:,} people in {time.perf_counter() - started:.0f} s", flush=True)


def update(ws: Workspace, i: int, people: int, salt: float) -> None:
    """One person's update that changes a value (an update that changes nothing logs
    nothing): `salt` differs from run to run."""
    person = (i * 7919) % people
    ws.upsert_people([PersonUpsert(gen_data.person_id(person), attributes={"w": salt + i})])


def writer_pauses(ws: Workspace, people: int, seconds: float) -> None:
    """A writer updating one person after another: its latencies without checkpoints, then
    while checkpoints are taken back to back on the background thread."""
    latencies: list[float] = []
    stop = threading.Event()

    salt = time.time()

    def write() -> None:
        i = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            update(ws, i, people, salt)
            latencies.append(time.perf_counter() - t0)
            i += 1

    thread = threading.Thread(target=write)
    thread.start()
    time.sleep(seconds / 3)
    quiet = len(latencies)
    checkpoints = 0
    snapshot_ms: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        with ws.core.lock:
            t0 = time.perf_counter()
            ws.core.start_checkpoint()
            snapshot_ms.append((time.perf_counter() - t0) * 1000)
        ws.core.finish_checkpoint()
        checkpoints += 1
    stop.set()
    thread.join()
    before, during = sorted(latencies[:quiet]), sorted(latencies[quiet:])

    def figures(values: list[float]) -> str:
        p50, p99 = values[len(values) // 2], values[int(len(values) * 0.99)]
        return (
            f"p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.1f} ms, longest {values[-1] * 1000:.1f} ms"
        )

    print(f"writer without checkpoints: {len(before):,} updates, {figures(before)}")
    print(
        f"writer during {checkpoints} back-to-back checkpoints ({seconds:.0f} s): "
        f"{len(during):,} updates, {figures(during)} (target: longest < 50 ms)"
    )
    print(
        f"snapshot under the lock: longest {max(snapshot_ms):.1f} ms, "
        f"median {sorted(snapshot_ms)[len(snapshot_ms) // 2]:.1f} ms",
        flush=True,
    )


def write_tail(path: Path, people: int, writes: int, batch: int, automatic: bool) -> None:
    """A checkpoint, then `writes` person updates (`batch` per call): with the automatic
    checkpoints of the default schedule (in the background), or none (`automatic` False:
    the whole of them is the log a crash leaves to replay)."""
    engine = open_engine(path)
    engine.close(checkpoint=True)
    engine = open_engine(path, checkpoint_every=Config.checkpoint_every_ops if automatic else NEVER)
    ws = engine.workspace(WORKSPACE)
    # Values no earlier run wrote: an update that changes nothing logs nothing.
    salt = time.time()
    t0 = time.perf_counter()
    for start in range(0, writes, batch):
        ws.upsert_people(
            [
                PersonUpsert(gen_data.person_id((i * 7919) % people), attributes={"w": salt + i})
                for i in range(start, min(writes, start + batch))
            ]
        )
    ws.core.finish_checkpoint()
    tail = ws.core.items_since_checkpoint
    engine.close(checkpoint=False)
    schedule = "automatic checkpoints" if automatic else "no checkpoint"
    print(
        f"wrote {writes:,} updates ({batch} per call, {schedule}) in "
        f"{time.perf_counter() - t0:.1f} s; tail since the last checkpoint {tail:,}",
        flush=True,
    )


def restart_to_serving(path: Path) -> float:
    """Seconds from starting `segsvc serve` on `path` until its health check says SERVING."""
    log = path / "bench-serve.log"
    serve = [sys.executable, "-c", "from segsvc.cli import main; main()", "serve"]
    command = [*serve, "--data", str(path)]
    t0 = time.perf_counter()
    with log.open("wb") as stderr:
        server = subprocess.Popen(
            [*command, "--listen", "127.0.0.1:0"], stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        port = None
        while port is None:
            found = re.search(r"segsvc listening on \S+:(\d+) ", log.read_text(errors="replace"))
            if found:
                port = int(found.group(1))
            elif server.poll() is not None:
                raise SystemExit(f"the server exited:\n{log.read_text()}")
            else:
                time.sleep(0.01)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return time.perf_counter() - t0
                except grpc.RpcError:
                    pass
                time.sleep(0.01)
    finally:
        server.kill()  # kill -9: the next run starts from what is on disk
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--events-per-person", type=float, default=2.0)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--tail", type=int, default=100_000, help="writes since the checkpoint")
    parser.add_argument("--batch", type=int, default=100, help="people per write of the tail")
    args = parser.parse_args()
    if not (args.dir / "data.mdb").exists():
        build(args.dir, args.people, args.events_per_person)
    engine = open_engine(args.dir)
    writer_pauses(engine.workspace(WORKSPACE), args.people, args.seconds)
    engine.close(checkpoint=False)
    for automatic in (True, False):
        write_tail(args.dir, args.people, args.tail, args.batch, automatic)
        seconds = restart_to_serving(args.dir)
        print(f"crash restart to SERVING: {seconds:.2f} s (target < 3 s)", flush=True)


if __name__ == "__main__":
    main()
