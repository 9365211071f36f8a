"""The two systems the benchmark compares, loaded with the same generated data: the engine in
this process on a fixed clock and the DuckDB peer (bench_duckdb); every segment's count
checked equal between them; and the fresh child processes that measure a restart and its
memory (bench.py --child).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import bench_duckdb as peer
import duckdb
import gen_data
import psutil
from bench_report import Report, rate, timed
from gen_data import NOW, SegmentSpec

from segsvc.config import Config
from segsvc.engine.clock import FakeClock
from segsvc.engine.engine import Engine
from segsvc.engine.events import EventInput
from segsvc.engine.model import PersonKey
from segsvc.engine.observer import NO_OBSERVER, EngineObserver
from segsvc.engine.workspace import Workspace

WORKSPACE = "default"
MAP_SIZE = 64 * 1024**3


# The benchmark's entry point: children run it again with --child or --serve.
BENCH_SCRIPT = str(Path(__file__).resolve().with_name("bench.py"))


@dataclass
class Setup:
    engine: Engine
    ws: Workspace
    clock: FakeClock
    con: duckdb.DuckDBPyConnection
    specs: list[SegmentSpec]
    # placeholder id (spec index + 1) -> segment id in segsvc
    ids: dict[int, int]
    people: int
    data_dir: Path
    duck_path: Path
    load_seconds: float = 0.0
    duck_load_seconds: float = 0.0
    create_seconds: list[float] = field(default_factory=list)
    create_names: list[str] = field(default_factory=list)
    manual_seconds: float = 0.0
    manual_added: int = 0
    duck_manual_seconds: float = 0.0
    # DuckDB's median answers, for the rows measured over gRPC
    duck_count_p50: float = 0.0
    duck_audience_p50: float = 0.0
    # Events loaded at build time, and the seconds each system took
    events: int = 0
    event_seconds: float = 0.0
    duck_event_seconds: float = 0.0

    def sid(self, index: int) -> int:
        return self.ids[index + 1]

    def compiler(self, now: int | None = None) -> peer.SqlCompiler:
        return peer.SqlCompiler(self.specs, NOW if now is None else now)


def open_engine(data_dir: Path, clock: FakeClock, observer: EngineObserver = NO_OBSERVER) -> Engine:
    return Engine(Config(data_dir=data_dir, map_size=MAP_SIZE), clock, observer)


def is_event_spec(spec: SegmentSpec) -> bool:
    """One of the event segments of gen_data.event_segments."""
    return spec.name.startswith("event-")


def build(
    people: int,
    specs: list[SegmentSpec],
    data_dir: Path,
    seed: int,
    progress: bool = True,
    events_per_person: float = 0.0,
) -> Setup:
    """Loads the people (and their events) into both systems and creates the segments in
    both, after the events: an event segment's creation is its first count over the log."""
    clock = FakeClock(NOW)
    engine = open_engine(data_dir / "segsvc", clock)
    ws = engine.workspace(WORKSPACE)
    duck_path = data_dir / "peer.duckdb"
    con = duckdb.connect(str(duck_path))
    tsv = data_dir / "people.tsv"
    setup = Setup(engine, ws, clock, con, specs, {}, people, data_dir, duck_path)
    pools = gen_data.pools(seed)
    loaded = 0
    last_print = time.perf_counter()
    with tsv.open("w") as out:
        for batch in gen_data.people(people, seed, p=pools):
            elapsed, results = timed(lambda b=batch: ws.upsert_people(b))
            setup.load_seconds += elapsed
            bad = [r for r in results if r.outcome != "created"]
            if bad:
                raise SystemExit(f"load rejected people: {bad[:3]}")
            peer.write_rows(out, batch, loaded)
            loaded += len(batch)
            if progress and time.perf_counter() - last_print > 10:
                last_print = time.perf_counter()
                print(
                    f"  loaded {loaded:,} people ({rate(loaded, setup.load_seconds)} in the "
                    f"engine; RSS {psutil.Process().memory_info().rss / 2**20:,.0f} MiB)",
                    flush=True,
                )
    setup.duck_load_seconds = peer.load(con, tsv)
    tsv.unlink()
    if events_per_person > 0:
        load_events(setup, gen_data.events(people, events_per_person, seed), progress)
    else:
        peer.create_empty_events(con)

    manual: dict[int, list[int]] = {}
    for k, spec in enumerate(specs):
        definition = gen_data.remap(spec.conditions, setup.ids) if spec.conditions else None
        elapsed, info = timed(
            lambda s=spec, d=definition: ws.create_segment(s.name, "", s.dynamic, d)
        )
        setup.ids[k + 1] = info.id
        if spec.dynamic:
            setup.create_seconds.append(elapsed)
            setup.create_names.append(spec.name)
            continue
        members = gen_data.manual_members(k, spec.manual_fraction, people, seed)
        manual[k] = members
        for start in range(0, len(members), 10_000):
            keys = [PersonKey("id", gen_data.person_id(i)) for i in members[start : start + 10_000]]
            elapsed, results = timed(lambda ks=keys, s=info.id: ws.change_members(s, ks, True))
            setup.manual_seconds += elapsed
            setup.manual_added += sum(r.outcome == "added" for r in results)
    setup.duck_manual_seconds, _ = timed(lambda: peer.load_manual(con, manual))
    return setup


def load_events(setup: Setup, batches: Iterator[list[EventInput]], progress: bool) -> None:
    """Tracks the events in the engine (timed per batch) while writing them to a TSV file
    that DuckDB then ingests (timed)."""
    tsv = setup.data_dir / "events.tsv"
    last_print = time.perf_counter()
    with tsv.open("w") as out:
        for batch in batches:
            elapsed, results = timed(lambda b=batch: setup.ws.track_events(b))
            setup.event_seconds += elapsed
            bad = [r for r in results if r.outcome != "tracked"]
            if bad:
                raise SystemExit(f"track_events rejected events: {bad[:3]}")
            peer.write_events(out, batch)
            setup.events += len(batch)
            if progress and time.perf_counter() - last_print > 10:
                last_print = time.perf_counter()
                print(
                    f"  tracked {setup.events:,} events ({rate(setup.events, setup.event_seconds)}"
                    f" in the engine; RSS {psutil.Process().memory_info().rss / 2**20:,.0f} MiB)",
                    flush=True,
                )
    setup.duck_event_seconds = peer.load_events(setup.con, tsv)
    tsv.unlink()


def verify(
    setup: Setup, compiler: peer.SqlCompiler, label: str
) -> tuple[list[str], dict[int, float]]:
    """Compares every segment's count; returns the mismatches and DuckDB's count time of
    each dynamic segment (by spec index)."""
    mismatches: list[str] = []
    times: dict[int, float] = {}
    for k, spec in enumerate(setup.specs):
        ours = setup.ws.get_segment(setup.sid(k)).member_count
        elapsed, theirs = timed(lambda k=k: peer.count(setup.con, compiler.segment(k)))
        if spec.dynamic:
            times[k] = elapsed
        if ours != theirs:
            mismatches.append(
                f"[{label}] segment {spec.name} (id {setup.sid(k)}): segsvc {ours}, "
                f"DuckDB {theirs}; definition {spec.conditions}"
            )
    for m in mismatches:
        print(f"!!! MISMATCH {m}", flush=True)
    return mismatches, times


def choose_audience(setup: Setup) -> tuple[list[int], list[int], list[int]]:
    """Spec indices for a 10-segment audience: 4 included segments of middling size, 2
    required large ones, 4 excluded smaller ones."""
    sizes = sorted(
        (setup.ws.get_segment(setup.sid(k)).member_count, k)
        for k, s in enumerate(setup.specs)
        if s.dynamic
    )
    nonempty = [k for size, k in sizes if size > 0]
    n = len(nonempty)

    def pick(position: int) -> int:
        # Small test sets have fewer segments than the spread asks for: clamp (and repeat).
        return nonempty[min(n - 1, max(0, position))]

    require = [pick(n - 3), pick(n - 4)]
    include = [pick(n // 2 + i * 3) for i in range(4)]
    exclude = [pick(n // 5 + i * 2) for i in range(4)]
    return include, require, exclude


def anon_bytes(process: psutil.Process) -> int:
    """Resident memory that is the process's own: RSS minus the file-backed pages (LMDB's
    memory map), which the kernel can drop and read again."""
    info = process.memory_info()
    return int(info.rss - getattr(info, "shared", 0))


def child(kind: str, path: str) -> None:
    """Runs in a fresh process: opens the stored state, answers one count, reports the time
    until ready and the resident memory."""
    base = psutil.Process().memory_info().rss
    if kind == "engine":
        t0 = time.perf_counter()
        engine = open_engine(Path(path), FakeClock(NOW + 3600))
        ws = engine.workspace(WORKSPACE)
        first = next(iter(sorted(ws.state.segments)))
        ws.get_segment(first)
        ready = time.perf_counter() - t0
        me = psutil.Process()
        out = {"ready": ready, "rss": me.memory_info().rss, "anon": anon_bytes(me), "base": base}
        engine.close(checkpoint=False)
    elif kind == "duckdb":
        where = sys.stdin.read()
        t0 = time.perf_counter()
        con = duckdb.connect(path)
        peer.count(con, where)
        ready = time.perf_counter() - t0
        me = psutil.Process()
        out = {"ready": ready, "rss": me.memory_info().rss, "anon": anon_bytes(me), "base": base}
        con.close()
    else:
        raise SystemExit(f"unknown child {kind}")
    print(json.dumps(out))


def run_child(
    kind: str, path: Path, stdin: str = "", report: Report | None = None
) -> dict[str, float]:
    """The child's figures; when it fails, NaN figures and a loud entry in the report's
    mismatches (a state that a new process cannot open is as wrong as a wrong count)."""
    proc = subprocess.run(
        [sys.executable, BENCH_SCRIPT, "--child", kind, str(path)],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        if report is None:
            raise RuntimeError(f"the {kind} child failed ({proc.returncode}):\n{proc.stderr}")
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        message = f"opening the stored {kind} state in a new process FAILED: {last[:1500]}"
        print(f"!!! {message}", flush=True)
        report.mismatches.append(message)
        nan = float("nan")
        return {"ready": nan, "rss": nan, "anon": nan, "base": nan}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def choose_audience_ids(setup: Setup) -> tuple[list[int], list[int], list[int]]:
    include, require, exclude = choose_audience(setup)
    return (
        [setup.sid(k) for k in include],
        [setup.sid(k) for k in require],
        [setup.sid(k) for k in exclude],
    )
