"""SIGHUP reloads the tokens file of a real `segsvc serve` while calls keep coming: no call
fails because of a reload, a revoked token is then refused, a new one accepted, and a broken
file keeps the tokens in use."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from api_harness import by_id, person
from server_harness import ServerProcess, Stubs

from segsvc.tokens_file import add_token, revoke_token
from segsvc.v1 import changes_pb2, people_pb2, segments_pb2


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret}"),)


def list_segments(stubs: Stubs, secret: str) -> segments_pb2.ListSegmentsResponse:
    return stubs.segments.ListSegments(
        segments_pb2.ListSegmentsRequest(), metadata=bearer(secret), timeout=10
    )


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def wait_for_log(server: ServerProcess, needle: str, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while server.log().count(needle) < count:
        assert time.monotonic() < deadline, f"no {count}x {needle!r} in:\n{server.log()}"
        time.sleep(0.02)


def test_sighup_reloads_tokens_without_failing_a_call(server_processes: Any, tmp_path: Path):
    path = tmp_path / "tokens"
    steady, _ = add_token(path, "acme", "write", "steady")
    leaving, _ = add_token(path, "acme", "read", "leaving")
    server = server_processes(tmp_path / "data", "--tokens-file", str(path))
    stubs = Stubs.connect(server.address)
    segment_id = stubs.segments.CreateSegment(
        segments_pb2.CreateSegmentRequest(name="S", type=segments_pb2.SEGMENT_TYPE_MANUAL),
        metadata=bearer(steady),
    ).segment.id
    # A stream opened before the reloads stays open through them.
    follower = stubs.changes.WatchChanges(
        changes_pb2.WatchChangesRequest(), metadata=bearer(steady)
    )

    calls, failures = [0], []
    stop = threading.Event()

    def keep_calling() -> None:
        while not stop.is_set():
            try:
                assert [s.name for s in list_segments(stubs, steady).segments] == ["S"]
            except Exception as error:  # any failure at all is the test failing
                failures.append(error)
            calls[0] += 1

    callers = [threading.Thread(target=keep_calling) for _ in range(4)]
    for caller in callers:
        caller.start()
    reloads = 0
    try:
        added = []
        for round_ in range(5):
            secret, _ = add_token(path, "acme", "read", f"new-{round_}")
            added.append(secret)
            server.process.send_signal(signal.SIGHUP)
            reloads += 1
            wait_for_log(server, "reloaded:", reloads)
            assert code_of(lambda secret=secret: list_segments(stubs, secret)) == grpc.StatusCode.OK

        revoke_token(path, "leaving")
        server.process.send_signal(signal.SIGHUP)
        reloads += 1
        wait_for_log(server, "reloaded:", reloads)

        # A broken file is logged, and the tokens in use stay.
        good = path.read_text()
        path.write_text(good + "{not json\n")
        server.process.send_signal(signal.SIGHUP)
        wait_for_log(server, "tokens file not reloaded", 1)
        assert f"{path}:{len(good.splitlines()) + 1}: expected" in server.log()
        path.write_text(good)
        time.sleep(0.2)  # calls keep flowing over the refused reload
    finally:
        stop.set()
        for caller in callers:
            caller.join(timeout=30)

    assert failures == [], failures[:3]
    assert calls[0] > 50, calls
    assert code_of(lambda: list_segments(stubs, leaving)) == grpc.StatusCode.UNAUTHENTICATED
    for secret in added:
        assert code_of(lambda secret=secret: list_segments(stubs, secret)) == grpc.StatusCode.OK
    assert code_of(lambda: list_segments(stubs, "made-up")) == grpc.StatusCode.UNAUTHENTICATED
    # The stream opened before the reloads is still live: it sees a change made now.
    stubs.people.UpsertPeople(
        people_pb2.UpsertPeopleRequest(people=[person("u1")]), metadata=bearer(steady)
    )
    stubs.segments.AddMembers(
        segments_pb2.AddMembersRequest(segment_id=segment_id, people=[by_id("u1")]),
        metadata=bearer(steady),
    )
    change = next(follower).changes[0]
    assert (change.segment_id, change.person_id) == (segment_id, "u1")
    follower.cancel()
    assert server.process.poll() is None
    assert server.terminate() == 0
    assert "Traceback" not in server.log()
