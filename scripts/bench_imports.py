"""File imports end to end (`bench.py --imports-only`): `segsvc people import` of an N-row
CSV (id, email, phone, 5 attributes of four types, tags) and `segsvc events import` of an
M-row CSV, the real CLI against a real server with every segment live (100 attribute
segments, 20 event segments), and StreamTrackEvents with the events as columns (requests
built before the clock starts: the server's figure) beside the message form. DuckDB's peer
reads the same CSV files into typed tables.
"""

from __future__ import annotations

import csv
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import gen_data
from bench_cli import _segsvc_command
from bench_grpc import _event_to_proto, start_server, stop_server
from bench_report import Report, Row, faster, rate, timed, verdict
from bench_setup import WORKSPACE, open_engine
from gen_data import NOW

from segsvc.engine.clock import FakeClock

PEOPLE_COLUMNS = ("id", "email", "phone", "plan", "country", "age", "is_vip", "last_login", "tags")


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_people_csv(path: Path, count: int, seed: int) -> None:
    """gen_data's simple profiles as an export would write them: ISO times, tags a|b."""
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(PEOPLE_COLUMNS)
        for batch in gen_data.simple_people(count, seed, chunk=50_000):
            for p in batch:
                a = p.attributes
                writer.writerow(
                    (
                        p.id,
                        p.email or "",
                        p.phone or "",
                        a["plan"],
                        a.get("country", ""),
                        "" if "age" not in a else f"{a['age']:g}",
                        "true" if a["is_vip"] else "false",
                        "" if "last_login" not in a else _iso(int(a["last_login"])),
                        "|".join(p.add_tags),
                    )
                )


def write_events_csv(path: Path, events: list[Any]) -> None:
    names = list(gen_data.EVENT_PROPERTIES)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["person_id", "name", "timestamp", *names])
        for e in events:
            props = e.properties
            cells: list[Any] = []
            for key in names:
                value = props.get(key)
                if isinstance(value, bool):
                    value = "true" if value else "false"
                cells.append("" if value is None else value)
            writer.writerow([e.person.value, e.name, int(e.timestamp), *cells])


def _cli(command: list[str], port: int, *args: str) -> tuple[float, dict[str, Any]]:
    cli = [*command, "--server", f"127.0.0.1:{port}", "--json", *args]
    elapsed, done = timed(lambda: subprocess.run(cli, capture_output=True, text=True, check=False))
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(args[:2])} exited {done.returncode}: {done.stderr[-2000:]}")
    return elapsed, json.loads(done.stdout)


def bench_file_imports(report: Report, people: int, events: int, root: Path, seed: int) -> None:
    import grpc

    from segsvc.api.convert import event_columns_to_proto
    from segsvc.engine.event_columns import EventColumns
    from segsvc.v1 import people_pb2, people_pb2_grpc

    command = _segsvc_command()
    if command is None:
        report.mismatches.append("no segsvc script beside this Python: cannot run the CLI")
        return
    root.mkdir(parents=True, exist_ok=True)
    people_csv, events_csv = root / "people.csv", root / "events.csv"
    print(f"writing {people:,} people and {events:,} events as CSV ...", flush=True)
    write_people_csv(people_csv, people, seed)
    live = gen_data.live_events(events, people, NOW, seed, stream="import")
    write_events_csv(events_csv, live)
    del live
    streamed = gen_data.live_events(events, people, NOW, seed, stream="columns")
    per_request = 50_000
    column_requests = [
        people_pb2.StreamTrackEventsRequest(
            columns=event_columns_to_proto(EventColumns.from_events(streamed[i : i + per_request]))
        )
        for i in range(0, len(streamed), per_request)
    ]
    few = streamed[: max(1, events // 5)]
    message_requests = [
        people_pb2.StreamTrackEventsRequest(events=[_event_to_proto(e) for e in few[i : i + 1000]])
        for i in range(0, len(few), 1000)
    ]
    del streamed
    # Every segment live: the benchmark's 100 attribute and 20 event segments, created
    # (empty) before the load, as an admin loading a new workspace would have them.
    specs = gen_data.segments(100, seed, events=20)
    engine = open_engine(root / "server", FakeClock(NOW))
    ws = engine.workspace(WORKSPACE)
    for spec in specs:
        ws.create_segment(spec.name, "", spec.dynamic, spec.conditions)
    engine.close()

    proc, port = start_server(root / "server", NOW)
    try:
        print("segsvc people import ...", flush=True)
        people_seconds, people_summary = _cli(command, port, "people", "import", str(people_csv))
        print("segsvc events import ...", flush=True)
        events_seconds, events_summary = _cli(command, port, "events", "import", str(events_csv))
        channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 256 * 2**20)]
        )
        stub = people_pb2_grpc.PeopleServiceStub(channel)
        print("StreamTrackEvents as columns, then as messages ...", flush=True)
        columns_seconds, columns_summary = timed(
            lambda: stub.StreamTrackEvents(iter(column_requests))
        )
        messages_seconds, messages_summary = timed(
            lambda: stub.StreamTrackEvents(iter(message_requests))
        )
        channel.close()
    finally:
        stop_server(proc, report)
    for what, summary, field, want in (
        ("people import", people_summary, "created", people),
        ("events import", events_summary, "tracked", events),
        ("StreamTrackEvents columns", columns_summary, "tracked", events),
        ("StreamTrackEvents messages", messages_summary, "tracked", len(few)),
    ):
        got = summary[field] if isinstance(summary, dict) else getattr(summary, field)
        if int(got) != want:
            report.mismatches.append(f"{what}: {field} {got} of {want}")

    con = duckdb.connect(str(root / "peer.duckdb"))
    duck_people, _ = timed(
        lambda: con.execute(f"CREATE TABLE people AS SELECT * FROM read_csv('{people_csv}')")
    )
    duck_events, _ = timed(
        lambda: con.execute(f"CREATE TABLE events AS SELECT * FROM read_csv('{events_csv}')")
    )
    con.close()
    report.add(
        Row(
            f"CLI: segsvc people import of a {people:,}-row CSV (id, email, phone, 5 attributes "
            "typed per value, tags) into segsvc serve, 120 segments live",
            f"{people_seconds:,.1f} s ({rate(people, people_seconds)})",
            f"{duck_people:,.1f} s (read_csv into a table)",
            faster(people_seconds, duck_people),
            ">= 100,000 rows/s",
            verdict(people / people_seconds >= 100_000),
        )
    )
    report.add(
        Row(
            f"CLI: segsvc events import of a {events:,}-row CSV (10 typed properties), "
            "every segment live",
            f"{events_seconds:,.1f} s ({rate(events, events_seconds)})",
            f"{duck_events:,.1f} s (read_csv into a table)",
            faster(events_seconds, duck_events),
            ">= 250,000 events/s",
            verdict(events / events_seconds >= 250_000),
        )
    )
    report.add(
        Row(
            f"StreamTrackEvents of {events:,} events as columns (50,000 a message, requests "
            "built beforehand), every segment live",
            rate(events, columns_seconds),
            "",
            "",
            ">= 250,000 events/s",
            verdict(events / columns_seconds >= 250_000),
        )
    )
    report.add(
        Row(
            f"StreamTrackEvents of {len(few):,} events as messages (1000 a message), "
            "every segment live",
            rate(len(few), messages_seconds),
        )
    )
    report.notes.append(
        "imports: the CLI figures are wall time of the `segsvc` process from start to the "
        "server's summary (Python start, reading and typing the CSV with pyarrow, sending, "
        f"the server applying); the server ran on a clock fixed at {NOW} (the data's time)"
    )
