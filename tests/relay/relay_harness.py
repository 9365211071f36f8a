"""What the relay tests share: `segsvc relay-changes` as a child process, the feed as the
server gives it, and a look into the stream."""

from __future__ import annotations

import asyncio
import re
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import nats
import nats.js.errors
from server_harness import REPO, ChildProcess, serve_command

from segsvc.client import Client
from segsvc.relay.subjects import DEFAULT_STREAM, workspace_subjects
from segsvc.v1 import changes_pb2, people_pb2, segments_pb2, types_pb2

sys.path.insert(0, str(REPO / "scripts"))
from bench_relay import create_pro_segment

T = TypeVar("T")

# A name with a '.', which is no subject token as it is.
WORKSPACE = "acme.eu"
PEOPLE = [f"p{i}" for i in range(30)]
# JetStream API calls of the tests: generous, for a machine busy with other tests.
NATS_TIMEOUT = 30


def run(make: Callable[[], Awaitable[T]], timeout: float = 120) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(make(), timeout)

    return asyncio.run(bounded())


def segsvc_command() -> list[str]:
    """The `segsvc` command in a fresh interpreter (serve_command without `serve`)."""
    return serve_command()[:-1]


class RelayProcess(ChildProcess):
    """`segsvc relay-changes` as a child process; its stderr goes to `log_path`."""

    def __init__(self, log_path: Path, server: str, workspace: str, nats_url: str, *extra: str):
        args = [
            *segsvc_command(),
            "relay-changes",
            "--server",
            server,
            "--workspace",
            workspace,
            "--nats",
            nats_url,
            *extra,
        ]
        super().__init__(args, log_path)


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_consumer():
    """The `consume` function of the README's Python consumer, as the README has it."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (source,) = [block for block in blocks if "async def consume(" in block]
    namespace: dict[str, object] = {}
    exec(compile(source, "README.md", "exec"), namespace)
    return namespace["consume"]


def consume_all(
    url: str | list[str], subjects: str, durable: str, count: int, stream: str = DEFAULT_STREAM
) -> list[changes_pb2.Change]:
    consume = readme_consumer()
    seen: list[changes_pb2.Change] = []

    def handle(change: changes_pb2.Change) -> bool:
        seen.append(change)
        return len(seen) < count

    run(lambda: consume(url, subjects, durable, handle, stream=stream))
    return seen


def assert_consumed_exactly(
    url: str,
    expected: list[changes_pb2.Change],
    durable: str = "all",
    subjects: str = "",
    stream: str = DEFAULT_STREAM,
) -> None:
    """A new durable consumer of `subjects` (default: all of WORKSPACE's) gets `expected`,
    in order, and nothing more: no change missing, none twice."""
    subjects = subjects or workspace_subjects(WORKSPACE)
    assert consume_all(url.split(","), subjects, durable, len(expected), stream) == expected
    assert pending(url, durable, stream) == 0


def pending(url: str, durable: str, stream: str = DEFAULT_STREAM) -> int:
    """Messages the durable consumer has not been given yet."""

    async def ask() -> int:
        nc = await nats.connect(url.split(","))
        try:
            info = await nc.jetstream(timeout=NATS_TIMEOUT).consumer_info(stream, durable)
            return int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        finally:
            await nc.close()

    return run(ask)


def feed(
    address: str, workspace: str, segment_ids: tuple[int, ...] = (), after_seq: int = 0
) -> list[changes_pb2.Change]:
    """The changes the server holds for `workspace` after `after_seq`, from WatchChanges."""
    request = changes_pb2.WatchChangesRequest(
        after_seq=after_seq, no_follow=True, segment_ids=segment_ids
    )
    with Client(address, workspace=workspace) as client:
        return list(client.watch_changes(request))


async def last_relayed(nats_url: str, workspace: str, stream: str = DEFAULT_STREAM) -> int:
    """The seq of the workspace's last change in the stream; 0 when it has none."""
    nc = await nats.connect(nats_url.split(","))
    try:
        js = nc.jetstream(timeout=NATS_TIMEOUT)
        try:
            message = await js.get_last_msg(stream, workspace_subjects(workspace))
        except nats.js.errors.NotFoundError:
            return 0
        return changes_pb2.Change.FromString(message.data or b"").seq
    finally:
        await nc.close()


def wait_relayed(
    nats_url: str, workspace: str, seq: int, timeout: float = 60, stream: str = DEFAULT_STREAM
) -> None:
    """Until the stream holds the workspace's change `seq` (or a later one)."""
    deadline = time.monotonic() + timeout
    last = 0
    while time.monotonic() < deadline:
        try:
            last = run(lambda: last_relayed(nats_url, workspace, stream), 10)
        except TimeoutError:  # a busy machine: ask again
            continue
        if last >= seq:
            return
        time.sleep(0.05)
    raise AssertionError(f"the stream reached seq {last} of {workspace}, not {seq}")


def make_segments(client: Client) -> tuple[int, int]:
    """A dynamic segment (plan is "pro") and a manual one."""
    pro = create_pro_segment(client)
    vip = client.segments.CreateSegment(
        segments_pb2.CreateSegmentRequest(name="VIP", type=segments_pb2.SEGMENT_TYPE_MANUAL)
    ).segment.id
    return pro, vip


def plan(n: int) -> str:
    return "pro" if n % 3 else "free"


def write_round(client: Client, round_no: int, vip: int) -> None:
    """Moves people in and out of both segments: plan changes (DATA), VIP adds and removes
    (MANUAL), and a delete now and then (DELETED)."""
    upserts = [
        people_pb2.PersonUpsert(
            id=person,
            attributes={"plan": types_pb2.Value(string_value=plan(i + round_no))},
        )
        for i, person in enumerate(PEOPLE)
    ]
    client.people.UpsertPeople(people_pb2.UpsertPeopleRequest(people=upserts))
    if not vip:
        return
    refs = [types_pb2.PersonRef(id=p) for i, p in enumerate(PEOPLE) if (i + round_no) % 2]
    if round_no % 2:
        client.segments.AddMembers(segments_pb2.AddMembersRequest(segment_id=vip, people=refs))
    else:
        client.segments.RemoveMembers(
            segments_pb2.RemoveMembersRequest(segment_id=vip, people=refs)
        )
    if round_no % 5 == 4:
        victim = PEOPLE[round_no % len(PEOPLE)]
        client.people.DeletePeople(
            people_pb2.DeletePeopleRequest(people=[types_pb2.PersonRef(id=victim)])
        )


class Writer:
    """write_round in a loop on a thread, until stopped; `rounds` counts the rounds done."""

    def __init__(self, client: Client, vip: int, first_round: int = 1) -> None:
        self.rounds = first_round
        self._client = client
        self._vip = vip
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write)
        self._thread.start()

    def _write(self) -> None:
        while not self._stop.is_set():
            write_round(self._client, self.rounds, self._vip)
            self.rounds += 1

    def wait_rounds(self, more: int) -> None:
        until = self.rounds + more
        while self.rounds < until:
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_workspace(address: str, token: str | None = None) -> tuple[Client, int, int]:
    """WORKSPACE with its people and both segments: a client of it, and the segments' ids."""
    client = Client(address, workspace=WORKSPACE, token=token)
    # Some are "pro" already, so creating the segment moves them in (DEFINITION).
    write_round(client, 0, vip=0)
    pro, vip = make_segments(client)
    return client, pro, vip
