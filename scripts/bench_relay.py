"""How fast `segsvc relay-changes` moves the change feed into JetStream, with real processes
on loopback: a `segsvc serve`, a nats-server (JetStream, file storage, R=1) and the relay.

Two figures for each --max-in-flight asked for:
- backlog: N changes already in the feed, relayed by a relay started --from-start; the rate
  is N over the time between the first and the last message JetStream stored (the relay's
  start-up is not in it);
- live: a relay following the feed while N more changes are written as fast as the server
  takes them (UpsertPeople batches into a dynamic segment); the write rate, and how long
  after the last write the stream held the last change (the relay's lag).
Beside them, the rate at which WatchChanges alone hands the same N changes to a client: the
most a relay over gRPC could do.

    .venv/bin/python scripts/bench_relay.py --changes 200000 --in-flight 1,100,1000,5000
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import nats
import nats.js.errors
from bench_cli import _segsvc_command, _start_segsvc_serve

from segsvc.client import Client
from segsvc.relay.subjects import workspace_subjects
from segsvc.v1 import changes_pb2, conditions_pb2, people_pb2, segments_pb2, types_pb2

WORKSPACE = "bench"
BATCH = 5000
_SEARCH_PATH = "/usr/local/bin:/usr/bin:/usr/sbin:/usr/local/sbin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_nats(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("nats-server") or shutil.which("nats-server", path=_SEARCH_PATH)
    if binary is None:
        raise SystemExit("needs nats-server 2.9+ on PATH (apt install nats-server)")
    port = free_port()
    log = (root / "nats.log").open("wb")
    store = root / "jetstream"
    args = [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)]
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    url = f"nats://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nats-server did not listen on {port}")


def create_pro_segment(client: Client) -> int:
    """The dynamic segment "Pro": everyone whose attribute plan is "pro"."""
    return client.segments.CreateSegment(  # type: ignore[no-any-return]
        segments_pb2.CreateSegmentRequest(
            name="Pro",
            type=segments_pb2.SEGMENT_TYPE_DYNAMIC,
            conditions=conditions_pb2.Condition(
                attribute=conditions_pb2.AttributeCondition(
                    attribute="plan",
                    operator=conditions_pb2.OPERATOR_EQUALS,
                    value=types_pb2.Value(string_value="pro"),
                )
            ),
        )
    ).segment.id


def write_changes(client: Client, segment_id: int, start: int, count: int) -> float:
    """`count` new people who enter the segment (one change each); returns the seconds."""
    t0 = time.perf_counter()
    for first in range(start, start + count, BATCH):
        people = [
            people_pb2.PersonUpsert(
                id=f"p{i}", attributes={"plan": types_pb2.Value(string_value="pro")}
            )
            for i in range(first, min(first + BATCH, start + count))
        ]
        client.people.UpsertPeople(people_pb2.UpsertPeopleRequest(people=people))
    return time.perf_counter() - t0


def stream_span(url: str, stream: str) -> tuple[int, float]:
    """The workspace's last seq in `stream` and the seconds between its first and last
    message (the times JetStream stored them)."""

    async def ask() -> tuple[int, float]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream(timeout=30)
            try:
                last = await js.get_last_msg(stream, workspace_subjects(WORKSPACE))
            except nats.js.errors.NotFoundError:
                return 0, 0.0
            first = await js.get_msg(stream, 1)
            seq = changes_pb2.Change.FromString(last.data or b"").seq
            assert first.time is not None and last.time is not None
            return seq, (last.time - first.time).total_seconds()
        finally:
            await nc.close()

    return asyncio.run(ask())


def wait_for(url: str, stream: str, seq: int, timeout: float = 600) -> float:
    """Until `stream` holds the workspace's change `seq`; the stream's first-to-last span."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last, span = stream_span(url, stream)
        if last >= seq:
            return span
        time.sleep(0.02)
    raise SystemExit(f"the relay did not reach seq {seq} in {timeout} s")


def delete_stream(url: str, stream: str) -> None:
    """Streams may not share subjects: each run's goes before the next one's is made."""

    async def delete() -> None:
        nc = await nats.connect(url)
        try:
            await nc.jetstream(timeout=30).delete_stream(stream)
        finally:
            await nc.close()

    asyncio.run(delete())


def relay(
    command: list[str], server: str, url: str, stream: str, in_flight: int, *extra: str
) -> subprocess.Popen[bytes]:
    args = [*command, "relay-changes", "--server", server, "--workspace", WORKSPACE]
    args += ["--nats", url, "--stream", stream, "--max-in-flight", str(in_flight), *extra]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--in-flight", default="1,100,1000,5000")
    args = parser.parse_args()
    command = _segsvc_command()
    if command is None:
        raise SystemExit("run it with the venv's python (.venv/bin/python), beside `segsvc`")
    n = args.changes
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        root = Path(tmp)
        server_proc, port, _ = _start_segsvc_serve(command, root / "data", root / "serve.log")
        nats_proc, url = start_nats(root)
        server = f"127.0.0.1:{port}"
        try:
            with Client(server, workspace=WORKSPACE) as client:
                segment = create_pro_segment(client)
                written = write_changes(client, segment, 0, n)
                print(f"feed: {n} changes written in {written:.2f} s ({n / written:,.0f}/s)")
                t0 = time.perf_counter()
                request = changes_pb2.WatchChangesRequest(no_follow=True)
                read = sum(1 for _ in client.watch_changes(request))
                took = time.perf_counter() - t0
                print(f"WatchChanges alone: {read} changes in {took:.2f} s ({read / took:,.0f}/s)")

                start = n
                for in_flight in [int(x) for x in args.in_flight.split(",")]:
                    stream = f"BENCH_{in_flight}"
                    proc = relay(command, server, url, stream, in_flight, "--from-start")
                    span = wait_for(url, stream, start)
                    print(
                        f"max-in-flight {in_flight:>5}: backlog of {start} relayed at "
                        f"{start / span:,.0f}/s",
                        end="",
                    )
                    took = write_changes(client, segment, start, n)
                    t_written = time.perf_counter()
                    wait_for(url, stream, start + n)
                    lag = time.perf_counter() - t_written
                    proc.terminate()
                    proc.wait(30)
                    delete_stream(url, stream)
                    print(
                        f"; live: {n} written at {n / took:,.0f}/s, stream complete "
                        f"{lag:.2f} s after the last write"
                    )
                    start += n
        finally:
            server_proc.terminate()
            nats_proc.terminate()
            server_proc.wait(30)
            nats_proc.wait(30)


if __name__ == "__main__":
    main()
