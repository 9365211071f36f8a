"""A stop is bounded whatever grpc or a handler does: SIGTERM ends `segsvc serve` with exit 0
even when a call never ends, and the next start finds every acknowledged write.

The stuck calls are made on purpose: the real `segsvc serve` runs with one handler replaced by
one that ignores cancellation and blocks forever (outside the engine, or holding a workspace's
lock so that no checkpoint can be written), and with a short STOP_DEADLINE_SECONDS so the test
waits seconds, not the production deadline. The process wait timeouts below are generous
upper bounds that only a hang exceeds; they measure nothing.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import server_harness
from api_harness import add_members, by_id, manual_segment, members_of, person
from server_harness import ServerProcess, Stubs

import segsvc.api.people
import segsvc.api.server
from segsvc.api.server import build_server
from segsvc.config import Config
from segsvc.engine.engine import Engine
from segsvc.v1 import people_pb2

GRACE = 0.5
DEADLINE = 1.0
# A stop takes at most GRACE + 2 * DEADLINE; the rest is for a loaded CI machine.
EXIT_WITHIN = GRACE + 2 * DEADLINE + 30

_SERVE = """
import sys, threading
import segsvc.api.people, segsvc.api.server
segsvc.api.server.STOP_DEADLINE_SECONDS = {deadline}
STUCK = {stuck!r}

def get_person(self, request, context):
    if STUCK == "holding the workspace lock":
        self._workspace().core.lock.acquire()
    print("handler is stuck", file=sys.stderr, flush=True)
    threading.Event().wait()

if STUCK:
    segsvc.api.people.PeopleServicer.GetPerson = get_person
from segsvc.cli import main
main()
"""


@pytest.fixture
def serve_with(
    server_processes: Callable[..., ServerProcess], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., ServerProcess]:
    """Starts `segsvc serve` with a short stop deadline and, when `stuck` names a way,
    GetPerson replaced by a handler that never returns."""

    def start(data: Path, stuck: str = "", *extra: str) -> ServerProcess:
        code = _SERVE.format(deadline=DEADLINE, stuck=stuck)
        monkeypatch.setattr(
            server_harness, "serve_command", lambda: [sys.executable, "-c", code, "serve"]
        )
        return server_processes(data, "--grace-seconds", str(GRACE), *extra)

    return start


def write_some(client: Stubs) -> int:
    """Acknowledged writes a restart must keep; the segment's id."""
    vip = manual_segment(client, "VIP")
    client.people.UpsertPeople(people_pb2.UpsertPeopleRequest(people=[person("u1"), person("u2")]))
    add_members(client, vip, "u1")
    return vip


def assert_kept(serve_with: Callable[..., ServerProcess], data: Path, vip: int) -> None:
    """A plain restart on `data` serves every acknowledged write and takes new ones."""
    again = serve_with(data)
    client = Stubs.connect(again.address)
    assert members_of(client, vip) == {"u1"}
    assert (
        client.people.GetPerson(people_pb2.GetPersonRequest(person=by_id("u2"))).person.id == "u2"
    )
    add_members(client, vip, "u2")
    assert members_of(client, vip) == {"u1", "u2"}
    client.channel.close()
    assert again.terminate(timeout=EXIT_WITHIN) == 0


def wait_for_log(server: ServerProcess, text: str) -> None:
    deadline = threading.Event()
    for _ in range(600):
        if text in server.log():
            return
        deadline.wait(0.05)
    raise AssertionError(f"{text!r} never appeared in the server's log:\n{server.log()}")


@pytest.mark.parametrize("stuck", ["outside the engine", "holding the workspace lock"])
def test_sigterm_exits_although_a_call_never_ends(serve_with, tmp_path, stuck):
    data = tmp_path / "data"
    server = serve_with(data, stuck)
    client = Stubs.connect(server.address)
    vip = write_some(client)
    call = client.people.GetPerson.future(people_pb2.GetPersonRequest(person=by_id("u1")))
    wait_for_log(server, "handler is stuck")

    assert server.terminate(timeout=EXIT_WITHIN) == 0, server.log()
    log = server.log()
    assert "abandoning them" in log
    if stuck == "outside the engine":
        assert "checkpoint at op" in log, "the engine was free: it should have checkpointed"
    else:
        assert "did not checkpoint and close" in log
    assert call.exception(timeout=10) is not None  # the client learns the call is gone
    client.channel.close()
    assert_kept(serve_with, data, vip)


@pytest.mark.parametrize("method", ["StreamUpsertPeople", "StreamTrackEvents"])
def test_sigterm_after_undecodable_stream_messages(serve_with, tmp_path, method):
    """The issue's case: grpcio could keep a call whose messages did not decode open for ever,
    so its stop never ended. Whether or not grpc still does, the process exits."""
    data = tmp_path / "data"
    server = serve_with(data)
    client = Stubs.connect(server.address)
    vip = write_some(client)
    send_raw = client.channel.stream_unary(
        f"/segsvc.v1.PeopleService/{method}",
        request_serializer=lambda raw: raw,
        response_deserializer=lambda raw: raw,
    )
    hold_open = threading.Event()

    def garbage() -> Iterator[bytes]:
        for n in range(5):
            yield b"\xff\xff\xff not a protobuf message %d" % n
        hold_open.wait()

    calls = [send_raw.future(garbage()) for _ in range(4)]
    # This grpcio ends such calls at once. A server that reads on past bad messages keeps
    # them open: the stop below ends them then.
    given_up_at = time.monotonic() + 5
    for call in calls:
        with contextlib.suppress(grpc.FutureTimeoutError):
            call.exception(timeout=max(0.0, given_up_at - time.monotonic()))

    assert server.terminate(timeout=EXIT_WITHIN) == 0, server.log()
    hold_open.set()
    client.channel.close()
    assert_kept(serve_with, data, vip)


@pytest.fixture
def stuck_get_person(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """GetPerson blocks, whatever grpc says, until the test ends; the event is set while a
    call is stuck in it."""
    entered, released = threading.Event(), threading.Event()

    def get_person(self: Any, request: Any, context: Any) -> Any:
        entered.set()
        released.wait()
        raise RuntimeError("released at the end of the test")

    monkeypatch.setattr(segsvc.api.people.PeopleServicer, "GetPerson", get_person)
    monkeypatch.setattr(segsvc.api.server, "STOP_DEADLINE_SECONDS", DEADLINE)
    try:
        yield entered
    finally:
        # Or the pool thread would hold this interpreter's exit.
        released.set()


def test_stop_returns_within_its_deadline_when_a_call_never_ends(tmp_path, stuck_get_person):
    config = Config(data_dir=tmp_path / "data", listen="127.0.0.1:0", tick_seconds=3600)
    server = build_server(config)
    client = Stubs.connect(f"127.0.0.1:{server.port}")
    call = client.people.GetPerson.future(people_pb2.GetPersonRequest(person=by_id("x")))
    assert stuck_get_person.wait(10)

    assert server.stop(GRACE).wait(EXIT_WITHIN)
    assert server.calls_abandoned
    assert not server.wait_for_termination(0)
    # The engine it owned was checkpointed and closed: its data directory opens again.
    Engine(config).close()
    assert call.exception(timeout=10) is not None
    client.channel.close()


def test_a_clean_stop_abandons_nothing(tmp_path):
    config = Config(data_dir=tmp_path / "data", listen="127.0.0.1:0", tick_seconds=3600)
    server = build_server(config)
    client = Stubs.connect(f"127.0.0.1:{server.port}")
    assert (
        client.people.UpsertPeople(people_pb2.UpsertPeopleRequest(people=[person("u1")])).created
        == 1
    )
    client.channel.close()
    assert server.stop(None).wait(EXIT_WITHIN)
    assert not server.calls_abandoned
    assert server.stop(None).is_set()  # a second stop is the first one
    with (
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        pytest.raises(grpc.FutureTimeoutError),
    ):
        grpc.channel_ready_future(channel).result(timeout=0.5)
    Engine(config).close()
