"""Figures through a real server (--grpc, and the bulk load of --bulk-only): counts, audiences,
updates and event streams over gRPC, and the streaming bulk load of simple profiles beside
DuckDB inserting the same rows.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import gen_data
import psutil
from bench_report import Report, Row, faster, ms, pct, rate, timed, verdict
from bench_setup import (
    BENCH_SCRIPT,
    MAP_SIZE,
    WORKSPACE,
    Setup,
    anon_bytes,
    choose_audience_ids,
    open_engine,
)
from bench_writes import append_to_peer
from gen_data import NOW

from segsvc.config import Config
from segsvc.engine.clock import FakeClock
from segsvc.engine.events import EventInput
from segsvc.engine.model import AudienceSpec
from segsvc.engine.observer import NO_OBSERVER
from segsvc.engine.people import PersonUpsert


def serve_child(path: str, now: int, ops: bool | None = None) -> None:
    """Runs in a fresh process: a real server over the stored state until stdin closes, on
    a clock fixed at `now` (the data's time: events of the last 90 days before gen_data.NOW
    would be past the event retention on today's clock). `ops` True: with Prometheus metrics
    (engine timings included) and the access log, as `segsvc serve --metrics-listen` runs;
    False: neither, but logging as with them (JSON at INFO to stderr); None: neither, and
    only warnings logged (the other phases' servers)."""
    from segsvc.api.metrics import ServerMetrics
    from segsvc.api.server import create_server  # type: ignore[import-not-found, unused-ignore]
    from segsvc.logs import configure_logging

    if ops is not None:
        configure_logging("info", "json")
    t0 = time.perf_counter()
    config = Config(
        data_dir=Path(path),
        map_size=MAP_SIZE,
        listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0" if ops else None,
        access_log=bool(ops),
    )
    metrics = ServerMetrics() if ops else None
    observer = metrics.engine_observer if metrics is not None else NO_OBSERVER
    engine = open_engine(Path(path), FakeClock(now), observer)
    # create_server hands back a started server.
    server, port = create_server(config, engine, metrics)
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
    proc, port = start_server(setup.data_dir / "segsvc", now)
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
        stop_server(proc, report)
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


def start_server(
    path: Path, now: int, ops: bool | None = None, log: Path | None = None
) -> tuple[subprocess.Popen[str], int]:
    """A server child (serve_child) over `path`, `ops` as there; its log goes to `log`
    (else inherited)."""
    command = [sys.executable, BENCH_SCRIPT, "--serve", str(path), "--now", str(now)]
    with open(log, "ab") if log is not None else contextlib.nullcontext() as stderr:
        proc = subprocess.Popen(
            [*command, *([] if ops is None else ["--ops", "on" if ops else "off"])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=60)
        raise RuntimeError(f"the server did not start (exit {proc.returncode})")
    return proc, int(json.loads(line)["port"])


def stop_server(proc: subprocess.Popen[str], report: Report | None) -> None:
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


def upsert_to_proto(upsert: PersonUpsert) -> Any:
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
        people_pb2.StreamUpsertPeopleRequest(people=[upsert_to_proto(u) for u in b])
        for b in gen_data.simple_people(few, chunk=1000)
    ]
    del versions, duck
    summaries: dict[str, Any] = {}
    grpc_seconds: dict[str, float] = {}
    for folder, phases in (
        ("server", (("columns", requests[0]), ("re-import", requests[1]))),
        ("server-messages", (("messages", per_message),)),
    ):
        proc, port = start_server(root / folder, NOW)
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
            stop_server(proc, None)
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
