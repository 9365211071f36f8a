"""Write figures: one person's update and batched updates against every segment, events
tracked while the segments are live, the fsync floor, the tick, and the restart (with and
without a checkpoint, in this process and in a new one).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import bench_duckdb as peer
import duckdb
import gen_data
from bench_reads import event_indices
from bench_report import Report, Row, faster, ms, pct, rate, timed, verdict
from bench_setup import WORKSPACE, Setup, open_engine, run_child

from segsvc.engine.conditions import leaves_of
from segsvc.engine.events import EventInput
from segsvc.engine.leaves import EventLeaf, SegmentLeaf


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


def bench_restart(setup: Setup, report: Report) -> None:
    # Remember the counts so that the restarted engine can be checked against them.
    before = {sid: len(seg.members) for sid, seg in setup.ws.state.segments.items()}
    # As after a crash: no checkpoint on the way down, so the start replays the log written
    # since the last automatic checkpoint.
    tail = setup.ws.core.items_since_checkpoint
    setup.engine.close(checkpoint=False)
    crashed = run_child("engine", setup.data_dir / "segsvc", report=report)
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
    ours = run_child("engine", setup.data_dir / "segsvc", report=report)
    theirs = run_child("duckdb", setup.duck_path, first, report=report)
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
