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

This file is the command line and the order of the phases; the work is in
    bench_setup    the two systems loaded with the same data, counts checked, child processes
    bench_reads    segment creation, segment and audience counts
    bench_writes   updates, live events, fsync floor, tick, restart
    bench_grpc     the same through a real server (--grpc) and the bulk load (--bulk-only)
    bench_cli      `segsvc members import` against `segsvc serve`
    bench_imports  `segsvc people import` / `events import` of CSV files, events as columns
    bench_report   the rows, their formatting and the final table
beside bench_duckdb (the DuckDB peer) and gen_data (the data and the segments).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen_data
from bench_cli import bench_cli_import
from bench_grpc import bench_grpc, bench_simple_load, serve_child
from bench_imports import bench_file_imports
from bench_ops import bench_ops_overhead
from bench_reads import bench_audience, bench_counts, bench_create, bench_event_segments
from bench_report import Report, Row, describe, machine, ms, rate, revision, verdict
from bench_setup import WORKSPACE, Setup, build, child, open_engine, verify
from bench_writes import (
    bench_batched_updates,
    bench_fsync,
    bench_live_events,
    bench_restart,
    bench_single_updates,
    bench_tick,
)
from gen_data import NOW

from segsvc.engine.conditions import AttributeCondition


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
            print("metrics and access log on vs off through servers ...", flush=True)
            guarded(setup, report, "ops overhead phase", lambda: bench_ops_overhead(setup, report))
        if args.cli:
            print("importing members with the CLI into segsvc serve ...", flush=True)
            guarded(setup, report, "CLI phase", lambda: bench_cli_import(setup, report, args.seed))
        setup.engine.close(checkpoint=False)
        setup.con.close()
    finally:
        if not args.data and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return report


def ops_only(args: argparse.Namespace) -> int:
    """--ops-only: both systems loaded without events, then only the ops-overhead phase."""
    report = Report()
    people = 50_000 if args.quick else args.people
    specs = gen_data.segments(args.segments, args.seed, events=0)
    print(f"machine: {machine()}\ncode: {revision()}")
    with tempfile.TemporaryDirectory(prefix="segsvc-ops-") as tmp:
        print(f"loading {people:,} people and {len(specs)} segments ...", flush=True)
        setup = build(people, specs, Path(tmp), args.seed)
        print("metrics and access log on vs off through servers ...", flush=True)
        bench_ops_overhead(setup, report)
        setup.engine.close(checkpoint=False)
        setup.con.close()
    report.print(f"ops overhead, {people:,} people, {len(specs)} segments\nmachine: {machine()}")
    return 1 if report.mismatches else 0


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
    parser.add_argument(
        "--imports-only",
        action="store_true",
        help="only `segsvc people import` of a --people-row CSV and `segsvc events import` "
        "of a --stream-events-row CSV against segsvc serve, and StreamTrackEvents as columns",
    )
    parser.add_argument("--seed", type=int, default=gen_data.DEFAULT_SEED)
    parser.add_argument("--data", help="keep the data here instead of a temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--ops-only",
        action="store_true",
        help="only the cost of metrics and the access log over gRPC (--people, no events)",
    )
    parser.add_argument("--serve", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--ops", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--now", type=int, default=NOW, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.serve:
        serve_child(args.serve, args.now, None if args.ops is None else args.ops == "on")
        return
    random.seed(args.seed)
    if args.bulk_only:
        report = Report()
        print(f"machine: {machine()}\ncode: {revision()}")
        with tempfile.TemporaryDirectory(prefix="segsvc-bulk-") as tmp:
            bench_simple_load(report, args.people, Path(tmp))
        report.print(f"bulk load, {args.people:,} simple profiles\nmachine: {machine()}")
        sys.exit(1 if report.mismatches else 0)
    if args.imports_only:
        report = Report()
        print(f"machine: {machine()}\ncode: {revision()}")
        with tempfile.TemporaryDirectory(prefix="segsvc-imports-") as tmp:
            bench_file_imports(report, args.people, args.stream_events, Path(tmp), args.seed)
        report.print(
            f"file imports, {args.people:,} people and {args.stream_events:,} events\n"
            f"machine: {machine()}"
        )
        sys.exit(1 if report.mismatches else 0)
    if args.ops_only:
        sys.exit(ops_only(args))
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
