"""segsvc benchmark: every DESIGN.md target measured beside DuckDB answering the same question
over the same generated data in the same run, with the counts of every segment checked equal.

    .venv/bin/python scripts/bench.py --quick          # 50k people, a minute or so
    .venv/bin/python scripts/bench.py                  # 1M people, 100 segments
    .venv/bin/python scripts/bench.py --grpc           # also through a real server
    .venv/bin/python scripts/bench.py --events-per-person 20   # 20M events at 1M people

The engine runs in this process on a fixed clock (gen_data.NOW); the DuckDB peer uses the same
instant. Restart time and resident memory are measured in fresh child processes, so that
neither DuckDB nor the generator is counted in segsvc's memory (nor the other way round).

With events (the default; --no-events leaves them out) the people also get about
--events-per-person events each over the 90 days before NOW, and 20 event, page-view and
message segments join the 100 (so 120 segments in all): event load, event segment creation
and counts, tracking with the segments live, and the tick are measured beside DuckDB's events
table. The CLI phase (--no-cli to skip) imports an N-row CSV of members with the real
`segsvc members import` against a real `segsvc serve` process, and reads that process's
resident memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_duckdb as peer
import duckdb
import gen_data
import psutil
import pyroaring
from gen_data import DAY, NOW, SegmentSpec

from segsvc.config import Config
from segsvc.engine.clock import FakeClock
from segsvc.engine.conditions import (
    AttributeCondition,
    Group,
    Node,
    TagCondition,
    describe_node,
    leaves_of,
)
from segsvc.engine.engine import Engine
from segsvc.engine.events import EventInput
from segsvc.engine.leaves import EventLeaf, SegmentLeaf
from segsvc.engine.model import AudienceSpec, PersonKey
from segsvc.engine.people import PersonUpsert
from segsvc.engine.workspace import Workspace

WORKSPACE = "default"
MAP_SIZE = 64 * 1024**3


# ---------------------------------------------------------------------------------------------
# Figures


@dataclass
class Row:
    figure: str
    ours: str
    theirs: str = "-"
    ratio: str = ""
    target: str = ""
    verdict: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(
            f"  {row.figure}: segsvc {row.ours} | duckdb {row.theirs} {row.ratio} "
            f"{row.verdict}".rstrip(),
            flush=True,
        )

    def print(self, title: str) -> None:
        headers = ("figure", "segsvc", "duckdb", "ratio", "target", "")
        table = [headers] + [
            (r.figure, r.ours, r.theirs, r.ratio, r.target, r.verdict) for r in self.rows
        ]
        widths = [max(len(str(line[i])) for line in table) for i in range(len(headers))]
        print()
        print(title)
        for n, line in enumerate(table):
            print("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
            if n == 0:
                print("  ".join("-" * w for w in widths))
        for note in self.notes:
            print(f"note: {note}")
        if self.mismatches:
            print(f"\n!!! {len(self.mismatches)} MISMATCHES (segsvc vs DuckDB counts) OR FAILURES:")
            for m in self.mismatches:
                print(f"!!!   {m}")
        else:
            print("\nsegment and audience counts: segsvc == DuckDB everywhere checked")


def ms(seconds: float) -> str:
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def rate(n: float, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s" if seconds > 0 else "inf"


def pct(samples: Sequence[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def faster(ours: float, theirs: float) -> str:
    """How many times less time segsvc took."""
    if math.isnan(ours) or math.isnan(theirs):
        return "-"
    if ours <= 0:
        return "inf"
    ratio = theirs / ours
    return f"{ratio:,.1f}x" if ratio >= 1 else f"{ratio:.2g}x"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def describe(node: Node | None) -> str:
    """A condition tree in words, for notes."""
    if node is None:
        return "manual"
    if isinstance(node, Group):
        inner = ", ".join(describe(c) for c in node.children)
        return f"{describe_node(node)} ({inner})"
    return describe_node(node)


def revision() -> str:
    """The segsvc commit measured, and whether the engine's files differ from it (others
    change them while benchmarks run)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "segsvc"],
            cwd=repo,
            capture_output=True,
            text=True,
        ).stdout.split("\n")
    except OSError:
        return "unknown revision"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"segsvc {head}" + (f" + uncommitted {', '.join(changed)}" if changed else "")


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 1024**3
    with duckdb.connect() as con:
        row = con.execute("SELECT current_setting('threads')").fetchone()
        threads = row[0] if row else "?"
    return (
        f"{model}; {os.cpu_count()} logical cores ({psutil.cpu_count(logical=False)} physical); "
        f"{mem:.1f} GiB RAM; Python {platform.python_version()}; DuckDB {duckdb.__version__} "
        f"(threads {threads}); "
        f"pyroaring {pyroaring.__version__}; {platform.platform()}"
    )


# ---------------------------------------------------------------------------------------------
# The two systems, loaded with the same data


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


def open_engine(data_dir: Path, clock: FakeClock) -> Engine:
    return Engine(Config(data_dir=data_dir, map_size=MAP_SIZE), clock)


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


# ---------------------------------------------------------------------------------------------
# The benchmark phases


def five_condition(variant: int, pools: gen_data.Pools) -> Node:
    """A 5-condition dynamic segment with operands none of the 100 segments use, so that all
    its leaves are new (nothing is shared with existing segments)."""
    countries = pools.country.values
    return Group(
        "all",
        (
            AttributeCondition(
                "one_of", attribute="country", values=tuple(countries[2 + variant : 5 + variant])
            ),
            AttributeCondition("between", attribute="age", value=25.0 + variant, upper=47.0),
            AttributeCondition("greater_than", attribute="lifetime_value", value=1234.56 + variant),
            AttributeCondition(
                "within_last", attribute="last_login", seconds=(20 + variant) * DAY + 17
            ),
            TagCondition(gen_data.TAG_NAMES[1 + variant], negate=True),
        ),
    )


def bench_create(setup: Setup, report: Report, runs: int = 5) -> None:
    pools = gen_data.pools()
    ours: list[float] = []
    theirs: list[float] = []
    compiler = setup.compiler()
    for v in range(runs):
        node = five_condition(v, pools)
        elapsed, info = timed(
            lambda n=node, v=v: setup.ws.create_segment(f"bench-five-{v}", "", True, n)
        )
        ours.append(elapsed)
        where = compiler.where(node)
        t, _ = timed(
            lambda w=where: setup.con.execute(
                f"CREATE TEMP TABLE five AS SELECT pid FROM people WHERE {w}"
            )
        )
        theirs.append(t)
        duck = peer.count(setup.con, "pid IN (SELECT pid FROM five)")
        setup.con.execute("DROP TABLE five")
        if duck != info.member_count:
            report.mismatches.append(
                f"5-condition segment {v}: segsvc {info.member_count}, DuckDB {duck}"
            )
        setup.ws.delete_segments([info.id])
    report.add(
        Row(
            "create a 5-condition dynamic segment (median / max of 5)",
            f"{ms(statistics.median(ours))} / {ms(max(ours))}",
            f"{ms(statistics.median(theirs))} / {ms(max(theirs))}",
            faster(statistics.median(ours), statistics.median(theirs)),
            "< 100 ms",
            verdict(max(ours) < 0.1),
        )
    )


def count_samples(setup: Setup, indices: Sequence[int], rounds: int) -> list[float]:
    """Seconds of `rounds` member counts of each of the segments (spec indices)."""
    samples: list[float] = []
    get = setup.ws.get_segment
    for _ in range(rounds):
        for k in indices:
            sid = setup.sid(k)
            t0 = time.perf_counter()
            get(sid).member_count  # noqa: B018
            samples.append(time.perf_counter() - t0)
    return samples


def bench_counts(setup: Setup, report: Report, duck_by_spec: dict[int, float], rounds: int) -> None:
    """Counts of the attribute-level dynamic segments (the event ones have their own row)."""
    chosen = [k for k, s in enumerate(setup.specs) if s.dynamic and not is_event_spec(s)]
    samples = count_samples(setup, chosen, rounds)
    duck_times = [duck_by_spec[k] for k in chosen]
    p50, p99 = pct(samples, 50), pct(samples, 99)
    d50, d99 = pct(duck_times, 50), pct(duck_times, 99)
    setup.duck_count_p50 = d50
    report.add(
        Row(
            f"count a dynamic segment p50 / p99 ({len(samples)} / {len(duck_times)} runs)",
            f"{ms(p50)} / {ms(p99)}",
            f"{ms(d50)} / {ms(d99)}",
            faster(p50, d50),
            "< 1 ms, >= 50x",
            verdict(p99 < 0.001 and d50 / p50 >= 50),
        )
    )


def event_indices(setup: Setup) -> list[int]:
    return [k for k, s in enumerate(setup.specs) if is_event_spec(s)]


def bench_event_segments(
    setup: Setup, report: Report, duck_by_spec: dict[int, float], rounds: int
) -> None:
    """Creation (the first count over the whole log, timed in build) and counts of the
    event segments, beside DuckDB materialising and counting the same members."""
    chosen = event_indices(setup)
    if not chosen:
        return
    created = dict(zip(setup.create_names, setup.create_seconds, strict=True))
    ours = [created[setup.specs[k].name] for k in chosen]
    compiler = setup.compiler()
    theirs: list[float] = []
    for k in chosen:
        where = compiler.segment(k)
        elapsed, _ = timed(
            lambda w=where: setup.con.execute(
                f"CREATE TEMP TABLE ev AS SELECT pid FROM people WHERE {w}"
            )
        )
        setup.con.execute("DROP TABLE ev")
        theirs.append(elapsed)
    m_ours, m_theirs = statistics.median(ours), statistics.median(theirs)
    report.add(
        Row(
            f"create an event segment over {setup.events:,} events: median / max of {len(chosen)}",
            f"{ms(m_ours)} / {ms(max(ours))}",
            f"{ms(m_theirs)} / {ms(max(theirs))}",
            faster(m_ours, m_theirs),
            "< 100 ms",
            verdict(max(ours) < 0.1),
        )
    )
    slowest = sorted(zip(ours, chosen, strict=True), reverse=True)[:3]
    report.notes.append(
        "slowest event segment creations: "
        + "; ".join(
            f"{setup.specs[k].name} {ms(t)}: {describe(setup.specs[k].conditions)}"
            for t, k in slowest
        )
    )
    samples = count_samples(setup, chosen, rounds)
    duck = [duck_by_spec[k] for k in chosen]
    p50, p99 = pct(samples, 50), pct(samples, 99)
    d50, d99 = pct(duck, 50), pct(duck, 99)
    report.add(
        Row(
            f"count an event segment p50 / p99 ({len(samples)} / {len(duck)} runs)",
            f"{ms(p50)} / {ms(p99)}",
            f"{ms(d50)} / {ms(d99)}",
            faster(p50, d50),
            "< 1 ms, >= 50x",
            verdict(p99 < 0.001 and d50 / p50 >= 50),
        )
    )
    sizes = ", ".join(
        f"{setup.specs[k].name} {setup.ws.get_segment(setup.sid(k)).member_count:,}" for k in chosen
    )
    report.notes.append(f"event segment sizes after load: {sizes}")


def bench_live_events(
    setup: Setup, report: Report, count: int, singles: int = 300, duck_singles: int = 20
) -> None:
    """Tracking while every segment is live: batches of 10k events of the last hour, then
    one event per call (the event twin of the one-person update)."""
    chosen = event_indices(setup)
    if not chosen or count <= 0:
        return
    now = setup.clock.now()
    live = gen_data.live_events(count, setup.people, now, stream="live")
    ours = 0.0
    for start in range(0, count, gen_data.CHUNK):
        batch = live[start : start + gen_data.CHUNK]
        elapsed, results = timed(lambda b=batch: setup.ws.track_events(b))
        ours += elapsed
        bad = [r for r in results if r.outcome != "tracked"]
        if bad:
            raise SystemExit(f"track_events rejected live events: {bad[:3]}")
    compiler = setup.compiler(now)
    insert, recount = append_to_peer(setup, live, "live-events.tsv", compiler, chosen)
    report.add(
        Row(
            f"track events, all {len(setup.specs)} segments live ({count:,} events of the last "
            "hour, batches of 10k)",
            rate(count, ours),
            f"{rate(count, insert + recount)} (insert + recount {len(chosen)} event segments)",
            f"{(insert + recount) / ours:,.1f}x",
        )
    )

    one = gen_data.live_events(singles, setup.people, now, stream="live-single")
    samples: list[float] = []
    for event in one:
        t0 = time.perf_counter()
        results = setup.ws.track_events([event])
        samples.append(time.perf_counter() - t0)
        if results[0].outcome != "tracked":
            raise SystemExit(f"track_events rejected a live event: {results[0]}")
    predicates = [compiler.segment(k) for k in range(len(setup.specs))]
    theirs: list[float] = []
    for event in one[:duck_singles]:
        pid = gen_data.event_pid(event)
        t0 = time.perf_counter()
        peer.insert_events(setup.con, [event])
        peer.memberships(setup.con, predicates, [pid])
        theirs.append(time.perf_counter() - t0)
    if one[duck_singles:]:
        peer.insert_events(setup.con, one[duck_singles:])
    p50, p99 = pct(samples, 50), pct(samples, 99)
    report.add(
        Row(
            f"one event re-evaluated against all segments p50 / p99 ({len(samples)} / "
            f"{len(theirs)} runs)",
            f"{ms(p50)} / {ms(p99)}",
            f"{ms(pct(theirs, 50))} / {ms(pct(theirs, 99))}",
            faster(p50, pct(theirs, 50)),
            "p99 < 2 ms",
            verdict(p99 < 0.002),
        )
    )


def append_to_peer(
    setup: Setup,
    events: Sequence[EventInput],
    name: str,
    compiler: peer.SqlCompiler,
    recount: Sequence[int],
) -> tuple[float, float]:
    """Appends events to DuckDB's table through a TSV file; returns the seconds of the
    insert and of counting the `recount` segments afterwards."""
    tsv = setup.data_dir / name
    with tsv.open("w") as out:
        peer.write_events(out, events)
    insert = peer.append_events(setup.con, tsv)
    tsv.unlink()
    counting, _ = timed(lambda: [peer.count(setup.con, compiler.segment(k)) for k in recount])
    return insert, counting


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


def bench_audience(setup: Setup, report: Report, rounds: int = 300) -> None:
    include, require, exclude = choose_audience(setup)
    spec = AudienceSpec(
        include=tuple(setup.sid(k) for k in include),
        require=tuple(setup.sid(k) for k in require),
        exclude=tuple(setup.sid(k) for k in exclude),
    )
    samples = []
    size = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        size = len(setup.ws.audience(spec))
        samples.append(time.perf_counter() - t0)
    where = peer.audience_sql(setup.compiler(), include, require, exclude)
    duck = []
    theirs = 0
    for _ in range(5):
        elapsed, theirs = timed(lambda: peer.count(setup.con, where))
        duck.append(elapsed)
    if size != theirs:
        report.mismatches.append(f"10-segment audience: segsvc {size}, DuckDB {theirs}")
        print(f"!!! MISMATCH audience: segsvc {size}, DuckDB {theirs}", flush=True)
    p50, p99 = pct(samples, 50), pct(samples, 99)
    d50 = setup.duck_audience_p50 = statistics.median(duck)
    report.add(
        Row(
            f"count a 10-segment audience p50 / p99 ({size:,} people)",
            f"{ms(p50)} / {ms(p99)}",
            f"{ms(d50)} / {ms(max(duck))}",
            faster(p50, d50),
            "< 1 ms, >= 50x",
            verdict(p99 < 0.001 and d50 / p50 >= 50),
        )
    )


def _pid(person_id: str) -> int:
    return int(person_id[1:])


def bench_fsync(root: Path, report: Report, runs: int = 300) -> None:
    """The floor under every acknowledged write: one small LMDB commit, fsync'd as the
    engine's store does it, on the same disk."""
    import lmdb

    path = root / "fsync-probe"
    env = lmdb.open(str(path), map_size=2**26, sync=True, metasync=True)
    samples = []
    for i in range(runs):
        t0 = time.perf_counter()
        with env.begin(write=True) as txn:
            txn.put(b"k%d" % i, b"x" * 300)
        samples.append(time.perf_counter() - t0)
    env.close()
    shutil.rmtree(path, ignore_errors=True)
    report.add(
        Row(
            f"floor: one fsync'd LMDB commit of 300 bytes p50 / p99 ({runs} runs)",
            f"{ms(pct(samples, 50))} / {ms(pct(samples, 99))}",
        )
    )


def bench_single_updates(setup: Setup, report: Report, count: int, duck_runs: int = 100) -> None:
    batch = gen_data.updates(count, setup.people, stream="single")
    ours: list[float] = []
    for upsert in batch:
        t0 = time.perf_counter()
        setup.ws.upsert_people([upsert])
        ours.append(time.perf_counter() - t0)
    compiler = setup.compiler()
    predicates = [compiler.segment(k) for k in range(len(setup.specs))]
    # DuckDB takes ~100x longer per update: time the first `duck_runs`, then apply the rest
    # in one statement so that both hold the same data again.
    theirs: list[float] = []
    for upsert in batch[:duck_runs]:
        pid = _pid(upsert.id)
        t0 = time.perf_counter()
        peer.apply_updates(setup.con, [(pid, upsert)])
        peer.memberships(setup.con, predicates, [pid])
        theirs.append(time.perf_counter() - t0)
    rest = batch[duck_runs:]
    if rest:
        peer.apply_updates(setup.con, [(_pid(u.id), u) for u in rest])
    p50, p99 = pct(ours, 50), pct(ours, 99)
    report.add(
        Row(
            f"one person's update vs all segments p50 / p99 ({count} / {len(theirs)} runs)",
            f"{ms(p50)} / {ms(p99)}",
            f"{ms(pct(theirs, 50))} / {ms(pct(theirs, 99))}",
            faster(p50, pct(theirs, 50)),
            "p99 < 2 ms",
            verdict(p99 < 0.002),
        )
    )


def bench_batched_updates(setup: Setup, report: Report, batches: int, size: int = 1000) -> None:
    work = [gen_data.updates(size, setup.people, stream=f"batch-{b}") for b in range(batches)]
    ours = 0.0
    for batch in work:
        elapsed, _ = timed(lambda b=batch: setup.ws.upsert_people(b))
        ours += elapsed
    compiler = setup.compiler()
    predicates = [compiler.segment(k) for k in range(len(setup.specs))]
    theirs = 0.0
    for batch in work:
        pairs = [(_pid(u.id), u) for u in batch]
        t0 = time.perf_counter()
        peer.apply_updates(setup.con, pairs)
        peer.memberships(setup.con, predicates, [p for p, _ in pairs])
        theirs += time.perf_counter() - t0
    n = batches * size
    report.add(
        Row(
            f"batched updates ({batches} x {size} people)",
            rate(n, ours),
            rate(n, theirs),
            f"{theirs / ours:,.1f}x",
            ">= 20,000/s",
            verdict(n / ours >= 20_000),
        )
    )


def bench_tick(setup: Setup, report: Report, seconds: int = 3600) -> None:
    """Time passes: segsvc's tick re-checks the time-dependent leaves and moves the segments
    using them; DuckDB's equivalent is counting again every segment whose answer depends on
    the time (directly or through a segment it names) at the new now."""
    leaves = [leaf for leaf in setup.ws.state.leaves if leaf.time_dependent]
    events = sum(isinstance(leaf, EventLeaf) for leaf in leaves)
    setup.clock.advance(seconds)
    elapsed, _ = timed(setup.ws.tick)
    moving = time_dependent_specs(setup)
    compiler = setup.compiler(setup.clock.now())
    theirs = sum(timed(lambda k=k: peer.count(setup.con, compiler.segment(k)))[0] for k in moving)
    report.add(
        Row(
            f"tick after {seconds} s: re-check {len(leaves)} time-dependent leaves "
            f"({events} over events); DuckDB counts the {len(moving)} segments they move",
            ms(elapsed),
            ms(theirs),
            f"{theirs / elapsed:,.1f}x",
        )
    )


def time_dependent_specs(setup: Setup) -> list[int]:
    """The benchmark segments (by spec index) whose membership depends on the clock."""
    state = setup.ws.state
    memo: dict[int, bool] = {}

    def moves(sid: int) -> bool:
        if sid not in memo:
            memo[sid] = False  # the definitions have no cycles; this ends the recursion
            seg = state.segments.get(sid)
            if seg is not None and seg.expr is not None:
                memo[sid] = any(
                    moves(leaf.segment_id) if isinstance(leaf, SegmentLeaf) else leaf.time_dependent
                    for leaf in leaves_of(seg.expr)
                )
        return memo[sid]

    return [k for k, spec in enumerate(setup.specs) if spec.dynamic and moves(setup.sid(k))]


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


def _run_child(
    kind: str, path: Path, stdin: str = "", report: Report | None = None
) -> dict[str, float]:
    """The child's figures; when it fails, NaN figures and a loud entry in the report's
    mismatches (a state that a new process cannot open is as wrong as a wrong count)."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(path)],
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


def bench_restart(setup: Setup, report: Report) -> None:
    # Remember the counts so that the restarted engine can be checked against them.
    before = {sid: len(seg.members) for sid, seg in setup.ws.state.segments.items()}
    # As after a crash: no checkpoint on the way down, so the start replays the log written
    # since the last automatic checkpoint.
    tail = setup.ws.core.items_since_checkpoint
    setup.engine.close(checkpoint=False)
    crashed = _run_child("engine", setup.data_dir / "segsvc", report=report)
    report.add(
        Row(
            f"restart without a checkpoint at close (replays {tail:,} logged items), new process",
            ms(crashed["ready"]),
            "",
            "",
            "< 3 s",
            verdict(crashed["ready"] < 3),
        )
    )
    engine = open_engine(setup.data_dir / "segsvc", setup.clock)
    close_s, _ = timed(engine.close)
    t0 = time.perf_counter()
    engine = open_engine(setup.data_dir / "segsvc", setup.clock)
    ws = engine.workspace(WORKSPACE)
    ws.get_segment(setup.sid(0))
    open_s = time.perf_counter() - t0
    after = {sid: len(seg.members) for sid, seg in ws.state.segments.items()}
    if before != after:
        report.mismatches.append("segment counts differ after the restart")
    setup.engine, setup.ws = engine, ws

    first = setup.compiler(setup.clock.now()).segment(0)
    setup.con.close()
    t0 = time.perf_counter()
    setup.con = duckdb.connect(str(setup.duck_path))
    peer.count(setup.con, first)
    duck_open = time.perf_counter() - t0
    report.add(
        Row(
            "restart in process after close+checkpoint: open until ready (checkpoint)",
            f"{ms(open_s)} ({ms(close_s)})",
            ms(duck_open),
            faster(open_s, duck_open),
            "< 3 s",
            verdict(open_s < 3),
        )
    )
    # A fresh process for each, so memory is theirs alone.
    engine.close(checkpoint=False)
    setup.con.close()
    ours = _run_child("engine", setup.data_dir / "segsvc", report=report)
    theirs = _run_child("duckdb", setup.duck_path, first, report=report)
    report.add(
        Row(
            "restart in a new process after a checkpoint: open until ready",
            ms(ours["ready"]),
            ms(theirs["ready"]),
            faster(ours["ready"], theirs["ready"]),
            "< 3 s",
            verdict(ours["ready"] < 3),
        )
    )
    mib = 2**20
    report.add(
        Row(
            "resident memory after restart: RSS (own, not file-backed; interpreter alone)",
            f"{ours['rss'] / mib:,.0f} MiB ({ours['anon'] / mib:,.0f}; {ours['base'] / mib:,.0f})",
            f"{theirs['rss'] / mib:,.0f} MiB ({theirs['anon'] / mib:,.0f}; "
            f"{theirs['base'] / mib:,.0f})",
            "",
            "< 1 GiB",
            verdict(ours["rss"] < 2**30),
        )
    )
    disk = sum(f.stat().st_size for f in (setup.data_dir / "segsvc").iterdir())
    report.add(
        Row(
            "on disk",
            f"{disk / mib:,.0f} MiB (LMDB)",
            f"{setup.duck_path.stat().st_size / mib:,.0f} MiB",
        )
    )
    # Reopen both for the phases after this one.
    setup.engine = open_engine(setup.data_dir / "segsvc", setup.clock)
    setup.ws = setup.engine.workspace(WORKSPACE)
    setup.con = duckdb.connect(str(setup.duck_path))


def guarded(setup: Setup, report: Report, label: str, phase: Callable[[], None]) -> bool:
    """Runs a phase that starts server processes; a failure is reported loudly (as a
    mismatch) instead of ending the benchmark, and the engine is reopened in this process."""
    try:
        phase()
        return True
    except Exception as exc:
        lines = str(exc).strip().splitlines() or [""]
        message = f"{label} FAILED: {type(exc).__name__}: {lines[-1][:1500]}"
        print(f"!!! {message}", flush=True)
        traceback.print_exc()
        report.mismatches.append(message)
    # The engine may be closed already (before a server started).
    with contextlib.suppress(ValueError, OSError):
        setup.engine.close(checkpoint=False)
    setup.engine = open_engine(setup.data_dir / "segsvc", setup.clock)
    setup.ws = setup.engine.workspace(WORKSPACE)
    return False


def run(args: argparse.Namespace) -> Report:
    report = Report()
    people = 50_000 if args.quick else args.people
    per_person = args.events_per_person if args.events else 0.0
    specs = gen_data.segments(
        args.segments, args.seed, events=args.event_segments if per_person > 0 else 0
    )
    root = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="segsvc-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    print(f"code: {revision()}")
    load_start = os.getloadavg()
    print(
        f"data: {people:,} people, {per_person:g} events per person, {len(specs)} segments, "
        f"seed {args.seed}, under {root}"
    )
    try:
        print("loading both systems ...", flush=True)
        setup = build(people, specs, root, args.seed, events_per_person=per_person)
        report.add(
            Row(
                "bulk load people (engine upsert_people, batches of 10k)",
                rate(people, setup.load_seconds),
                rate(people, setup.duck_load_seconds),
                f"{setup.duck_load_seconds / setup.load_seconds:,.2f}x",
                ">= 100,000/s (API)",
                verdict(people / setup.load_seconds >= 100_000),
            )
        )
        report.notes.append(
            "bulk load: segsvc figure is the in-process engine (upper bound of the streaming "
            "API); DuckDB's is its parallel ingest of a TSV file written while segsvc loaded"
        )
        if setup.events:
            report.add(
                Row(
                    f"bulk load {setup.events:,} events (engine track_events, batches of 10k)",
                    rate(setup.events, setup.event_seconds),
                    rate(setup.events, setup.duck_event_seconds),
                    f"{setup.duck_event_seconds / setup.event_seconds:,.2f}x",
                )
            )
            report.notes.append(
                "event load: DuckDB's figure is read_csv of a TSV file written while segsvc "
                "tracked, plus sorting the table by (name, ts)"
            )
        created = [
            (t, name)
            for t, name in zip(setup.create_seconds, setup.create_names, strict=True)
            if not name.startswith("event-")
        ]
        c = [t for t, _ in created]
        report.add(
            Row(
                f"create the {len(c)} attribute-level dynamic segments: median / max per segment",
                f"{ms(statistics.median(c))} / {ms(max(c))}",
            )
        )
        slowest = sorted(created, reverse=True)[:3]
        report.notes.append(
            "slowest segment creations: "
            + "; ".join(
                f"{name} {ms(t)}: {describe(specs[int(name.split('-')[1])].conditions)}"
                for t, name in slowest
            )
        )
        if setup.manual_added:
            report.add(
                Row(
                    "manual members (engine change_members, batches of 10k)",
                    rate(setup.manual_added, setup.manual_seconds),
                    rate(setup.manual_added, setup.duck_manual_seconds),
                )
            )
        print("checking every segment's count against DuckDB ...", flush=True)
        mismatches, duck_counts = verify(setup, setup.compiler(), "after load")
        report.mismatches += mismatches
        bench_create(setup, report)
        bench_counts(setup, report, duck_counts, rounds=20)
        bench_event_segments(setup, report, duck_counts, rounds=50)
        bench_audience(setup, report)
        bench_fsync(root, report)
        bench_single_updates(setup, report, count=200 if args.quick else 1000)
        bench_batched_updates(setup, report, batches=5 if args.quick else 20)
        bench_live_events(setup, report, count=min(100_000, max(10_000, people // 10)))
        print("checking counts after the updates ...", flush=True)
        report.mismatches += verify(setup, setup.compiler(), "after updates")[0]
        bench_tick(setup, report)
        print("checking counts after the tick ...", flush=True)
        report.mismatches += verify(setup, setup.compiler(setup.clock.now()), "after tick")[0]
        everyone = setup.ws.create_segment(
            "bench-everyone", "", True, AttributeCondition("exists", field="created_at")
        ).id
        load_now = os.getloadavg()
        report.notes.append(
            f"load average {load_start[0]:.1f} at the start, {load_now[0]:.1f} / "
            f"{load_now[1]:.1f} / {load_now[2]:.1f} (1/5/15 min) before the restart phase, "
            f"on {os.cpu_count()} cores: above ~1 other processes shared the CPU and figures "
            "are pessimistic"
        )
        report.notes.append(
            "resident memory: RSS includes the pages of LMDB's memory-mapped file that were "
            "read (page cache the kernel can drop); 'own' is RSS minus file-backed pages; "
            "the verdicts use RSS"
        )
        if os.environ.get("PYTHONHASHSEED", "random") != "random":
            report.notes.append(
                f"PYTHONHASHSEED={os.environ['PYTHONHASHSEED']}: the child processes hash "
                "strings as this one does, so a checkpoint that depends on set order (leaf "
                "names built from frozensets) is not caught here; run without it to check"
            )
        bench_restart(setup, report)
        if args.grpc:
            streamed = guarded(
                setup,
                report,
                "gRPC phase",
                lambda: bench_grpc(setup, report, everyone, stream_events=args.stream_events),
            )
            if streamed and setup.events:
                print("checking counts after the events tracked over gRPC ...", flush=True)
                compiler = setup.compiler(setup.clock.now())
                report.mismatches += verify(setup, compiler, "after gRPC events")[0]
        if args.cli:
            print("importing members with the CLI into segsvc serve ...", flush=True)
            guarded(setup, report, "CLI phase", lambda: bench_cli_import(setup, report, args.seed))
        setup.engine.close(checkpoint=False)
        setup.con.close()
    finally:
        if not args.data and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return report


# ---------------------------------------------------------------------------------------------
# Over gRPC


def serve_child(path: str, now: int) -> None:
    """Runs in a fresh process: a real server over the stored state until stdin closes, on
    a clock fixed at `now` (the data's time: events of the last 90 days before gen_data.NOW
    would be past the event retention on today's clock)."""
    from segsvc.api.server import create_server  # type: ignore[import-not-found, unused-ignore]

    t0 = time.perf_counter()
    config = Config(data_dir=Path(path), map_size=MAP_SIZE, listen="127.0.0.1:0")
    engine = open_engine(Path(path), FakeClock(now))
    # create_server hands back a started server.
    server, port = create_server(config, engine)
    print(json.dumps({"port": port, "ready": time.perf_counter() - t0}), flush=True)
    sys.stdin.read()
    me = psutil.Process()
    print(json.dumps({"rss": me.memory_info().rss, "anon": anon_bytes(me)}), flush=True)
    server.stop(1).wait()
    engine.close()


def bench_grpc(setup: Setup, report: Report, everyone: int, stream_events: int) -> None:
    try:
        import grpc

        from segsvc.v1 import (
            audiences_pb2,
            audiences_pb2_grpc,
            people_pb2,
            people_pb2_grpc,
            segments_pb2,
            segments_pb2_grpc,
        )
    except ImportError as exc:
        report.notes.append(f"gRPC figures skipped: {exc}")
        return
    try:
        import segsvc.api.server as server_module

        getattr(server_module, "create_server")  # noqa: B009
    except (ImportError, AttributeError) as exc:
        report.notes.append(f"gRPC figures skipped: no segsvc.api.server.create_server ({exc})")
        return
    dynamic = [setup.sid(k) for k, s in enumerate(setup.specs) if s.dynamic]
    expected = {sid: setup.ws.get_segment(sid).member_count for sid in dynamic}
    include, require, exclude = choose_audience_ids(setup)
    audience_size = len(
        setup.ws.audience(AudienceSpec(tuple(include), tuple(require), tuple(exclude)))
    )
    setup.engine.close(checkpoint=False)
    now = setup.clock.now()
    streamed: list[EventInput] = []
    event_requests: list[Any] = []
    track_seconds = 0.0
    if setup.events and stream_events > 0:
        streamed = gen_data.live_events(stream_events, setup.people, now, stream="grpc")
        per_request = 1000
        event_requests = [
            people_pb2.StreamTrackEventsRequest(
                events=[_event_to_proto(e) for e in streamed[i : i + per_request]]
            )
            for i in range(0, len(streamed), per_request)
        ]
    proc, port = _start_server(setup.data_dir / "segsvc", now)
    try:
        channel = grpc.insecure_channel(
            f"127.0.0.1:{port}",
            options=[
                ("grpc.max_receive_message_length", 64 * 2**20),
                ("grpc.max_send_message_length", 64 * 2**20),
            ],
        )
        grpc.channel_ready_future(channel).result(timeout=30)
        segments = segments_pb2_grpc.SegmentsServiceStub(channel)
        audiences = audiences_pb2_grpc.AudiencesServiceStub(channel)
        samples = []
        for _ in range(5):
            for sid in dynamic:
                t0 = time.perf_counter()
                got = segments.GetSegment(segments_pb2.GetSegmentRequest(segment_id=sid)).segment
                samples.append(time.perf_counter() - t0)
                if got.member_count != expected[sid]:
                    report.mismatches.append(
                        f"GetSegment {sid} over gRPC: {got.member_count}, engine {expected[sid]}"
                    )
        report.add(
            Row(
                f"count over gRPC: GetSegment p50 / p99 ({len(samples)} runs)",
                f"{ms(pct(samples, 50))} / {ms(pct(samples, 99))}",
                f"{ms(setup.duck_count_p50)} (p50 in process)",
                faster(pct(samples, 50), setup.duck_count_p50),
                "< 3 ms, >= 50x",
                verdict(pct(samples, 99) < 0.003 and setup.duck_count_p50 / pct(samples, 50) >= 50),
            )
        )
        spec = audiences_pb2.AudienceSpec(include=include, require=require, exclude=exclude)
        samples = []
        for _ in range(300):
            t0 = time.perf_counter()
            answer = audiences.CountAudience(audiences_pb2.CountAudienceRequest(audience=spec))
            samples.append(time.perf_counter() - t0)
        if answer.count != audience_size:
            report.mismatches.append(
                f"CountAudience over gRPC: {answer.count}, engine {audience_size}"
            )
        report.add(
            Row(
                "count a 10-segment audience over gRPC p50 / p99",
                f"{ms(pct(samples, 50))} / {ms(pct(samples, 99))}",
                f"{ms(setup.duck_audience_p50)} (p50 in process)",
                faster(pct(samples, 50), setup.duck_audience_p50),
                "< 3 ms, >= 50x",
                verdict(
                    pct(samples, 99) < 0.003 and setup.duck_audience_p50 / pct(samples, 50) >= 50
                ),
            )
        )
        big = audiences_pb2.AudienceSpec(include=[everyone], include_unsubscribed=True)
        t0 = time.perf_counter()
        received = 0
        for chunk in audiences.ResolveAudience(
            audiences_pb2.ResolveAudienceRequest(audience=big, chunk_size=10_000)
        ):
            received += len(chunk.members)
        ours = time.perf_counter() - t0
        if received != setup.people:
            report.mismatches.append(f"ResolveAudience streamed {received} of {setup.people}")
        con = duckdb.connect(str(setup.duck_path))
        theirs, _ = timed(lambda: con.execute("SELECT id FROM people").fetchall())
        con.close()
        report.add(
            Row(
                f"stream a {received:,}-person audience (ids, chunks of 10k)",
                ms(ours),
                f"{ms(theirs)} (fetchall)",
                faster(ours, theirs),
                "1M in < 2 s",
                verdict(ours * 1_000_000 / max(1, received) < 2),
            )
        )
        if streamed:
            people_stub = people_pb2_grpc.PeopleServiceStub(channel)
            track_seconds, summary = timed(
                lambda: people_stub.StreamTrackEvents(iter(event_requests))
            )
            if summary.tracked != len(streamed):
                report.mismatches.append(
                    f"StreamTrackEvents tracked {summary.tracked} of {len(streamed)} "
                    f"(rejected {summary.rejected}: {list(summary.errors)[:3]})"
                )
        channel.close()
    finally:
        _stop_server(proc, report)
    if streamed:
        # The same events into DuckDB, so that the counts can be checked once more.
        compiler = setup.compiler(now)
        insert, _ = append_to_peer(setup, streamed, "grpc-events.tsv", compiler, ())
        report.add(
            Row(
                f"TrackEvents through gRPC: StreamTrackEvents ({len(streamed):,} events, "
                f"1000/message, all {len(setup.specs)} segments live)",
                rate(len(streamed), track_seconds),
                f"{rate(len(streamed), insert)} (insert only)",
                f"{insert / track_seconds:,.2f}x",
            )
        )
    bench_stream_load(setup, report)
    setup.engine = open_engine(setup.data_dir / "segsvc", setup.clock)
    setup.ws = setup.engine.workspace(WORKSPACE)


def _event_to_proto(event: EventInput) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp as ProtoTimestamp

    from segsvc.api.convert import value_to_proto
    from segsvc.v1 import people_pb2, types_pb2

    msg = people_pb2.Event(person=types_pb2.PersonRef(id=event.person.value), name=event.name)
    if event.timestamp is not None:
        msg.timestamp.CopyFrom(ProtoTimestamp(seconds=int(event.timestamp)))
    for name, value in event.properties.items():
        msg.properties[name].CopyFrom(value_to_proto(value))
    return msg


def _start_server(path: Path, now: int) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(path), "--now", str(now)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=60)
        raise RuntimeError(f"the server did not start (exit {proc.returncode})")
    return proc, int(json.loads(line)["port"])


def _stop_server(proc: subprocess.Popen[str], report: Report | None) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    try:
        tail = proc.stdout.readline()
        memory = json.loads(tail) if tail else {}
        rss = memory.get("rss", 0)
        if rss and report is not None:
            report.add(
                Row(
                    "resident memory of the server after the gRPC runs: RSS (own)",
                    f"{rss / 2**20:,.0f} MiB (own {memory['anon'] / 2**20:,.0f})",
                    "",
                    "",
                    "< 1 GiB",
                    verdict(rss < 2**30),
                )
            )
    finally:
        proc.wait(timeout=120)


def _to_proto(upsert: PersonUpsert) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp as ProtoTimestamp

    from segsvc.api.convert import value_to_proto
    from segsvc.v1 import people_pb2

    msg = people_pb2.PersonUpsert(
        id=upsert.id,
        add_tags=upsert.add_tags,
        devices=[people_pb2.Device(id=d, platform=p) for d, p in upsert.devices],
    )
    if upsert.email is not None:
        msg.email = upsert.email
    if upsert.phone is not None:
        msg.phone = upsert.phone
    if upsert.unsubscribed is not None:
        msg.unsubscribed = upsert.unsubscribed
    if upsert.created_at is not None:
        msg.created_at.CopyFrom(ProtoTimestamp(seconds=int(upsert.created_at)))
    for name, value in upsert.attributes.items():
        msg.attributes[name].CopyFrom(value_to_proto(value))
    return msg


def bench_stream_load(setup: Setup, report: Report) -> None:
    """The bulk-load figures for simple profiles, beside DuckDB, with the data of this run's
    size (up to 1M people)."""
    bench_simple_load(report, min(setup.people, 1_000_000), setup.data_dir / "bulk-load")


def bench_simple_load(report: Report, count: int, root: Path, per_request: int = 50_000) -> None:
    """Bulk load of `count` simple profiles (gen_data.simple_people) as columns: in the
    engine (upsert_columns), through StreamUpsertPeople into a fresh server (requests built
    before the clock starts, so the figure is the server's), then the same people again with
    new values (a re-import: updates), beside DuckDB inserting the same rows from numpy
    columns. The old per-message form is measured too, on a fifth of the people."""
    import grpc

    from segsvc.api.convert import people_columns_to_proto
    from segsvc.engine.bulk import PeopleColumns
    from segsvc.v1 import people_pb2, people_pb2_grpc

    root.mkdir(parents=True, exist_ok=True)
    print(f"bulk load of {count:,} simple profiles ...", flush=True)
    versions = {
        v: [
            PeopleColumns.from_upserts(b)
            for b in gen_data.simple_people(count, chunk=per_request, version=v)
        ]
        for v in (0, 1)
    }
    # DuckDB: one typed column per attribute, tags as a list, inserted from numpy columns.
    con = duckdb.connect(str(root / "peer.duckdb"))
    con.execute(
        "CREATE TABLE people (id VARCHAR PRIMARY KEY, email VARCHAR, phone VARCHAR, "
        "plan VARCHAR, country VARCHAR, age DOUBLE, is_vip BOOLEAN, last_login TIMESTAMP, "
        "tags VARCHAR[])"
    )
    duck = {v: [_duck_columns(c) for c in batches] for v, batches in versions.items()}
    duck_seconds = {}
    for v, sql in (
        (0, "INSERT INTO people SELECT {cols} FROM src"),
        (1, "INSERT OR REPLACE INTO people SELECT {cols} FROM src"),
    ):
        t0 = time.perf_counter()
        for frame in duck[v]:
            con.register("src", frame)
            con.execute(sql.format(cols=_DUCK_SELECT))
            con.unregister("src")
        duck_seconds[v] = time.perf_counter() - t0
    con.close()
    # The engine in this process.
    engine = open_engine(root / "engine", FakeClock(NOW))
    ws = engine.workspace(WORKSPACE)
    engine_seconds = {}
    for v, batches in versions.items():
        t0 = time.perf_counter()
        for cols in batches:
            ws.upsert_columns(cols)
        engine_seconds[v] = time.perf_counter() - t0
    engine.close(checkpoint=False)
    # Through gRPC.
    requests = {
        v: [
            people_pb2.StreamUpsertPeopleRequest(columns=people_columns_to_proto(c))
            for c in batches
        ]
        for v, batches in versions.items()
    }
    few = count // 5
    per_message = [
        people_pb2.StreamUpsertPeopleRequest(people=[_to_proto(u) for u in b])
        for b in gen_data.simple_people(few, chunk=1000)
    ]
    del versions, duck
    summaries: dict[str, Any] = {}
    grpc_seconds: dict[str, float] = {}
    for folder, phases in (
        ("server", (("columns", requests[0]), ("re-import", requests[1]))),
        ("server-messages", (("messages", per_message),)),
    ):
        proc, port = _start_server(root / folder, NOW)
        try:
            channel = grpc.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 256 * 2**20)]
            )
            grpc.channel_ready_future(channel).result(timeout=30)
            stub = people_pb2_grpc.PeopleServiceStub(channel)
            for name, reqs in phases:
                grpc_seconds[name], summaries[name] = timed(
                    lambda r=reqs, s=stub: s.StreamUpsertPeople(iter(r))
                )
            channel.close()
        finally:
            _stop_server(proc, None)
    for name, want, field_name in (
        ("columns", count, "created"),
        ("re-import", count, "updated"),
        ("messages", few, "created"),
    ):
        got = getattr(summaries[name], field_name) + (
            summaries[name].unchanged if name == "re-import" else 0
        )
        if got != want or summaries[name].rejected:
            report.mismatches.append(f"StreamUpsertPeople ({name}): {summaries[name]}")
    for label, ours, theirs, target in (
        (
            f"bulk load {count:,} simple profiles, engine (upsert_columns, {per_request:,}/call)",
            engine_seconds[0],
            duck_seconds[0],
            False,
        ),
        (
            f"bulk load {count:,} simple profiles through StreamUpsertPeople "
            f"(columns, {per_request:,}/message)",
            grpc_seconds["columns"],
            duck_seconds[0],
            True,
        ),
        (
            "re-import of the same people with new values, engine",
            engine_seconds[1],
            duck_seconds[1],
            False,
        ),
        (
            "re-import through StreamUpsertPeople (columns)",
            grpc_seconds["re-import"],
            duck_seconds[1],
            False,
        ),
    ):
        report.add(
            Row(
                label,
                rate(count, ours),
                rate(count, theirs),
                f"{theirs / ours:,.2f}x",
                ">= 100,000/s" if target else "",
                verdict(count / ours >= 100_000) if target else "",
            )
        )
    report.add(
        Row(
            f"bulk load {few:,} simple profiles through StreamUpsertPeople "
            "(PersonUpsert messages, 1000/message)",
            rate(few, grpc_seconds["messages"]),
        )
    )
    report.notes.append(
        "bulk load: DuckDB inserts the same rows from numpy columns (INSERT ... SELECT from a "
        "registered dict of arrays; INSERT OR REPLACE for the re-import) into a table with a "
        "primary key on id, as segsvc's ids are unique"
    )


_DUCK_SELECT = (
    "id, email, phone, plan, country, age, is_vip, to_timestamp(last_login)::TIMESTAMP, "
    "CASE WHEN tags = '' THEN []::VARCHAR[] ELSE string_split(tags, '|') END"
)


def _duck_columns(cols: Any) -> dict[str, Any]:
    """One batch of columns as numpy arrays for DuckDB (NULL where a row has no value)."""
    import numpy as np

    n = len(cols)

    def present(column: Any) -> Any:
        return (
            np.ones(n, dtype=bool) if column is None or column.present is None else column.present
        )

    def strings(column: Any) -> Any:
        if column is None:
            return np.full(n, None, dtype=object)
        out = np.array(column.values, dtype=object)
        out[~present(column)] = None
        return out

    frame: dict[str, Any] = {
        "id": np.array(cols.ids, dtype=object),
        "email": strings(cols.emails),
        "phone": strings(cols.phones),
    }
    by_name = {a.name: a.column for a in cols.attributes}
    for name in ("plan", "country"):
        frame[name] = strings(by_name.get(name))
    for name, dtype in (("age", np.float64), ("is_vip", np.float64), ("last_login", np.float64)):
        column = by_name.get(name)
        values = np.full(n, np.nan) if column is None else column.values.astype(dtype)
        if column is not None:
            values[~present(column)] = np.nan
        frame[name] = values
    frame["is_vip"] = np.where(np.isnan(frame["is_vip"]), None, frame["is_vip"] > 0).astype(object)
    tags = cols.row_tags()
    frame["tags"] = np.array(["|".join(t) for t in tags], dtype=object)
    return frame


# ---------------------------------------------------------------------------------------------
# The CLI against a real `segsvc serve`


def _segsvc_command() -> list[str] | None:
    script = Path(sys.executable).with_name("segsvc")
    return [str(script)] if script.exists() else None


class _MemoryWatch:
    """Samples a process's resident memory every 50 ms; remembers the peak."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        rss = int(self.process.memory_info().rss)
        self.peak = max(self.peak, rss)
        return rss

    def anon(self) -> int:
        return anon_bytes(self.process)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.now()
            except psutil.Error:
                return

    def __enter__(self) -> _MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _start_segsvc_serve(
    command: list[str], data: Path, log: Path
) -> tuple[subprocess.Popen[str], int, float]:
    """`segsvc serve` on a free loopback port; returns the process, the port and the seconds
    until it printed that it listens. The ticker is slowed to a day: the server runs on
    today's clock, and a tick would move the data's time windows (and drop its events, which
    are older than the retention by today's clock) in the middle of the measurement."""
    t0 = time.perf_counter()
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [*command, "serve", "--data", str(data), "--listen", "127.0.0.1:0",
             "--tick-seconds", "86400", "--log-level", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=sink,
            text=True,
        )  # fmt: skip
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if "listening on" in line:
                port = int(line.split("listening on ", 1)[1].split()[0].rsplit(":", 1)[1])
                return proc, port, time.perf_counter() - t0
        if proc.poll() is not None:
            raise RuntimeError(f"segsvc serve exited {proc.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    proc.terminate()
    raise RuntimeError("segsvc serve did not start listening in 10 minutes")


def bench_cli_import(setup: Setup, report: Report, seed: int) -> None:
    """`segsvc members import SEGMENT FILE --by id --header` of an N-row CSV (every person,
    in a shuffled order) into a manual segment, the real CLI against a real server process;
    and that server's resident memory. DuckDB's peer: read_csv of the same file joined to
    the people."""
    command = _segsvc_command()
    if command is None:
        report.notes.append(f"CLI figures skipped: no segsvc script beside {sys.executable}")
        return
    name = "bench-import"
    segment = setup.ws.create_segment(name, "", False, None).id
    order = list(range(setup.people))
    random.Random(f"{seed}:cli-import").shuffle(order)
    csv_path = setup.data_dir / "members.csv"
    with csv_path.open("w") as out:
        out.write("id\n")
        for start in range(0, len(order), 100_000):
            out.write("".join(gen_data.person_id(i) + "\n" for i in order[start : start + 100_000]))
    setup.engine.close()
    log = setup.data_dir / "segsvc-serve.log"
    proc, port, ready = _start_segsvc_serve(command, setup.data_dir / "segsvc", log)
    mib = 2**20
    try:
        with _MemoryWatch(proc.pid) as memory:
            started, started_anon = memory.now(), memory.anon()
            cli = [*command, "--server", f"127.0.0.1:{port}", "members", "import", name]
            cli += [str(csv_path), "--by", "id", "--header"]
            elapsed, done = timed(
                lambda: subprocess.run(cli, capture_output=True, text=True, check=False)
            )
            after, after_anon = memory.now(), memory.anon()
    finally:
        proc.terminate()
        proc.wait(timeout=300)
    if done.returncode != 0:
        report.mismatches.append(
            f"segsvc members import exited {done.returncode}: {done.stderr[-1000:]}"
        )
    setup.engine = open_engine(setup.data_dir / "segsvc", setup.clock)
    setup.ws = setup.engine.workspace(WORKSPACE)
    added = setup.ws.get_segment(segment).member_count
    if added != setup.people:
        report.mismatches.append(f"CLI import: {added} members of {setup.people}")
    theirs, _ = timed(
        lambda: setup.con.execute(
            "CREATE TEMP TABLE imported AS SELECT p.pid FROM read_csv("
            f"'{csv_path}', header=true, auto_detect=false, columns={{'id': 'VARCHAR'}}) c "
            "JOIN people p ON p.id = c.id"
        )
    )
    duck = peer.count(setup.con, "pid IN (SELECT pid FROM imported)")
    setup.con.execute("DROP TABLE imported")
    if duck != setup.people:
        report.mismatches.append(f"DuckDB CSV import: {duck} members of {setup.people}")
    csv_path.unlink()
    report.add(
        Row(
            f"CLI: segsvc members import of a {setup.people:,}-row CSV (--by id --header) "
            "into segsvc serve",
            f"{ms(elapsed)} ({rate(setup.people, elapsed)})",
            f"{ms(theirs)} (read_csv + join)",
            faster(elapsed, theirs),
            "1M in < 15 s",
            verdict(elapsed * 1_000_000 / setup.people < 15),
        )
    )
    report.add(
        Row(
            "segsvc serve: start until listening (new process, after a checkpoint)",
            ms(ready),
            "",
            "",
            "< 3 s",
            verdict(ready < 3),
        )
    )
    report.add(
        Row(
            f"resident memory of segsvc serve at {setup.people:,} people"
            + (f" and {setup.events:,}+ events" if setup.events else "")
            + ": RSS started / after the import (peak); own started / after",
            f"{started / mib:,.0f} / {after / mib:,.0f} ({memory.peak / mib:,.0f}) MiB; "
            f"{started_anon / mib:,.0f} / {after_anon / mib:,.0f} MiB",
            "",
            "",
            "< 1 GiB",
            verdict(memory.peak < 2**30),
        )
    )


def choose_audience_ids(setup: Setup) -> tuple[list[int], list[int], list[int]]:
    include, require, exclude = choose_audience(setup)
    return (
        [setup.sid(k) for k in include],
        [setup.sid(k) for k in require],
        [setup.sid(k) for k in exclude],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--segments", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="50k people: a smoke run")
    parser.add_argument("--grpc", action="store_true", help="also measure through a server")
    parser.add_argument(
        "--events",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="generate events and the event segments (default: yes)",
    )
    parser.add_argument(
        "--events-per-person",
        type=float,
        default=gen_data.EVENTS_PER_PERSON,
        help="average events per person (default %(default)s: 10M at 1M people)",
    )
    parser.add_argument("--event-segments", type=int, default=20, help="at most 20")
    parser.add_argument(
        "--stream-events",
        type=int,
        default=200_000,
        help="events sent through StreamTrackEvents with --grpc",
    )
    parser.add_argument(
        "--cli",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time `segsvc members import` of an N-row CSV against `segsvc serve` (default: yes)",
    )
    parser.add_argument(
        "--bulk-only",
        action="store_true",
        help="only the bulk load of --people simple profiles (engine, gRPC, DuckDB)",
    )
    parser.add_argument("--seed", type=int, default=gen_data.DEFAULT_SEED)
    parser.add_argument("--data", help="keep the data here instead of a temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--serve", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--now", type=int, default=NOW, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.serve:
        serve_child(args.serve, args.now)
        return
    random.seed(args.seed)
    if args.bulk_only:
        report = Report()
        print(f"machine: {machine()}\ncode: {revision()}")
        with tempfile.TemporaryDirectory(prefix="segsvc-bulk-") as tmp:
            bench_simple_load(report, args.people, Path(tmp))
        report.print(f"bulk load, {args.people:,} simple profiles\nmachine: {machine()}")
        sys.exit(1 if report.mismatches else 0)
    started = time.perf_counter()
    code_at_start = revision()
    report = run(args)
    code_at_end = revision()
    code = code_at_start + (f" (at the end: {code_at_end})" if code_at_end != code_at_start else "")
    events = (
        f"{args.events_per_person:g} events per person, {args.segments} + "
        f"{args.event_segments} event segments"
        if args.events
        else f"no events, {args.segments} segments"
    )
    report.print(
        f"segsvc vs DuckDB, {50_000 if args.quick else args.people:,} people, {events} "
        f"({time.perf_counter() - started:.0f} s in all)\n"
        f"machine: {machine()}\ncode: {code}"
    )
    if report.mismatches:
        sys.exit(1)


if __name__ == "__main__":
    main()
