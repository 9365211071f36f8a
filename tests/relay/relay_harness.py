"""What the relay tests share: `segsvc relay-changes` as a child process, the feed as the
server gives it, and a look into the stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import nats
import nats.js.errors
from server_harness import ChildProcess, serve_command

from segsvc.client import Client
from segsvc.relay.subjects import DEFAULT_STREAM, workspace_subjects
from segsvc.v1 import changes_pb2, conditions_pb2, people_pb2, segments_pb2, types_pb2

T = TypeVar("T")

# A name with a '.', which is no subject token as it is.
WORKSPACE = "acme.eu"
PEOPLE = [f"p{i}" for i in range(30)]


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


def feed(
    address: str, workspace: str, segment_ids: tuple[int, ...] = ()
) -> list[changes_pb2.Change]:
    """Every change the server holds for `workspace`, from WatchChanges."""
    request = changes_pb2.WatchChangesRequest(no_follow=True, segment_ids=segment_ids)
    with Client(address, workspace=workspace) as client:
        return list(client.watch_changes(request))


async def last_relayed(nats_url: str, workspace: str, stream: str = DEFAULT_STREAM) -> int:
    """The seq of the workspace's last change in the stream; 0 when it has none."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        try:
            message = await js.get_last_msg(stream, workspace_subjects(workspace))
        except nats.js.errors.NotFoundError:
            return 0
        return changes_pb2.Change.FromString(message.data or b"").seq
    finally:
        await nc.close()


def wait_relayed(nats_url: str, workspace: str, seq: int, timeout: float = 60) -> None:
    """Until the stream holds the workspace's change `seq` (or a later one)."""
    deadline = time.monotonic() + timeout
    last = 0
    while time.monotonic() < deadline:
        try:
            last = run(lambda: last_relayed(nats_url, workspace), 10)
        except nats.js.errors.NotFoundError:  # no stream yet
            last = 0
        if last >= seq:
            return
        time.sleep(0.05)
    raise AssertionError(f"the stream reached seq {last} of {workspace}, not {seq}")


def make_segments(client: Client) -> tuple[int, int]:
    """A dynamic segment (plan is "pro") and a manual one."""
    pro = client.segments.CreateSegment(
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
