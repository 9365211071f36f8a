"""What operating the server costs (--grpc, or alone with --ops-only): the count-over-gRPC
latency and the batched-update throughput of a server with Prometheus metrics (engine timings
included) and the access log on, beside one with both off, in the same run.

The two servers run at the same time over two copies of the same data, and the calls
alternate between them (off, on, off, on, ...): whatever else the machine runs falls on both
alike, which running one after the other does not give on a shared machine. Each update batch
changes other people's values (an update that changes nothing would be cheaper). The servers
write their JSON logs to files, as they would to a pipe. Overhead is (on - off) / off of the
p50 latency and of the server's CPU time per call, and (off - on) / off of the update rate.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

import gen_data
import psutil
from bench_grpc import start_server, stop_server, upsert_to_proto
from bench_report import Report, Row, ms, pct, verdict
from bench_setup import WORKSPACE, Setup, choose_audience_ids, open_engine

TARGET = 0.05
MODES = (False, True)  # metrics + access log off, on


def bench_ops_overhead(
    setup: Setup, report: Report, rounds: int = 3, batches: int = 10, size: int = 1000
) -> None:
    import grpc

    from segsvc.v1 import (
        audiences_pb2,
        audiences_pb2_grpc,
        people_pb2,
        people_pb2_grpc,
        segments_pb2,
        segments_pb2_grpc,
    )

    dynamic = [setup.sid(k) for k, s in enumerate(setup.specs) if s.dynamic]
    include, require, exclude = choose_audience_ids(setup)
    spec = audiences_pb2.AudienceSpec(include=include, require=require, exclude=exclude)
    now = setup.clock.now()
    setup.engine.close()
    path = setup.data_dir / "segsvc"
    copy = setup.data_dir / "segsvc-ops-on"
    shutil.copytree(path, copy)
    servers = {
        ops: start_server(copy if ops else path, now, ops, setup.data_dir / f"ops-{ops}.log")
        for ops in MODES
    }
    counts: dict[bool, list[float]] = {ops: [] for ops in MODES}
    audience: dict[bool, list[float]] = {ops: [] for ops in MODES}
    updates: dict[bool, list[float]] = {ops: [] for ops in MODES}
    cpu: dict[bool, float] = {ops: 0.0 for ops in MODES}
    try:
        stubs = {}
        for ops, (proc, port) in servers.items():
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            grpc.channel_ready_future(channel).result(timeout=60)
            stubs[ops] = (
                segments_pb2_grpc.SegmentsServiceStub(channel),
                audiences_pb2_grpc.AudiencesServiceStub(channel),
                people_pb2_grpc.PeopleServiceStub(channel),
                psutil.Process(proc.pid),
            )
            for sid in dynamic[:20]:  # warm-up
                stubs[ops][0].GetSegment(segments_pb2.GetSegmentRequest(segment_id=sid))
        for round_number in range(rounds):
            before = {ops: _cpu_seconds(stubs[ops][3]) for ops in MODES}
            for sid in dynamic:
                request = segments_pb2.GetSegmentRequest(segment_id=sid)
                for ops in MODES:
                    counts[ops].append(_timed(stubs[ops][0].GetSegment, request))
            request = audiences_pb2.CountAudienceRequest(audience=spec)
            for _ in range(200):
                for ops in MODES:
                    audience[ops].append(_timed(stubs[ops][1].CountAudience, request))
            for ops in MODES:
                cpu[ops] += _cpu_seconds(stubs[ops][3]) - before[ops]
            for b in range(batches):
                for ops in MODES:
                    stream = f"ops-{round_number}-{b}-{ops}"
                    batch = gen_data.updates(size, setup.people, stream=stream)
                    request = people_pb2.UpsertPeopleRequest(
                        people=[upsert_to_proto(u) for u in batch]
                    )
                    t0 = time.perf_counter()
                    answer = stubs[ops][2].UpsertPeople(request)
                    updates[ops].append(time.perf_counter() - t0)
                    if answer.rejected:
                        report.mismatches.append(f"ops overhead: {answer.rejected} rejected")
    finally:
        for proc, _ in servers.values():
            stop_server(proc, None)
        shutil.rmtree(copy, ignore_errors=True)
    for label, samples in (
        ("count over gRPC: GetSegment p50", counts),
        ("count a 10-segment audience over gRPC: CountAudience p50", audience),
    ):
        off, on = pct(samples[False], 50), pct(samples[True], 50)
        report.add(_row(f"{label} ({len(samples[True])} calls each)", on, off, ms))
    # The kernel counts CPU time in 10 ms ticks: over a few hundred calls the figure is
    # only as good as those ticks allow, hence both kinds of reads together.
    reads = len(counts[True]) + len(audience[True])
    report.add(
        _row(
            f"server CPU per read call ({reads} GetSegment and CountAudience)",
            cpu[True] / reads,
            cpu[False] / reads,
            ms,
        )
    )
    n = len(updates[True]) * size
    rate_on, rate_off = n / sum(updates[True]), n / sum(updates[False])
    report.add(
        _row(
            f"batched updates over gRPC ({len(updates[True])} x UpsertPeople of {size})",
            rate_on,
            rate_off,
            lambda r: f"{r:,.0f}/s",
            higher_is_better=True,
        )
    )
    lines = sum(
        line.count('"segsvc.access"')
        for line in (setup.data_dir / "ops-True.log").read_text().splitlines()
    )
    report.notes.append(
        "ops overhead: servers with metrics + access log off and on run side by side over "
        "copies of the same data, calls alternating between them; segsvc column = on, "
        f"duckdb column = off; the 'on' server wrote {lines:,} access-log lines (JSON)"
    )
    setup.engine = open_engine(path, setup.clock)
    setup.ws = setup.engine.workspace(WORKSPACE)


def _row(label: str, on: float, off: float, show: Any, higher_is_better: bool = False) -> Row:
    cost = (off - on) / off if higher_is_better else (on - off) / off
    return Row(
        f"{label}, metrics + access log on vs off",
        f"{show(on)} on",
        f"{show(off)} off",
        f"{cost:+.1%} cost",
        f"< {TARGET:.0%}",
        verdict(cost < TARGET),
    )


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _timed(call: Any, request: Any) -> float:
    t0 = time.perf_counter()
    call(request)
    return time.perf_counter() - t0
