"""Real server processes: killed with SIGKILL mid-write, stopped with SIGTERM, refused."""

from __future__ import annotations

import subprocess
import time

import grpc
from api_harness import (
    WritesUntilFailure,
    add_members,
    attr,
    by_id,
    dynamic_segment,
    manual_segment,
    members_of,
    person,
    stored_changes,
)
from server_harness import REPO, Stubs, serve_command

from segsvc.v1 import changes_pb2, people_pb2
from segsvc.v1 import conditions_pb2 as C

CH = changes_pb2


def test_every_acknowledged_write_survives_sigkill(server_processes, tmp_path):
    data = tmp_path / "data"
    server = server_processes(data)
    client = Stubs.connect(server.address)
    manual = manual_segment(client, "Crash list")
    dynamic = dynamic_segment(client, "Has n", attr("n", C.OPERATOR_EXISTS))

    writer = WritesUntilFailure(client, manual)
    writer.wait_for_members(200, timeout=30)
    server.kill()  # in the middle of the writer's stream of calls
    assert writer.join_failed().code() == grpc.StatusCode.UNAVAILABLE
    acknowledged_people, acknowledged_members = writer.people, writer.members
    client.channel.close()

    restarted = server_processes(data)
    client = Stubs.connect(restarted.address)
    for person_id in acknowledged_people:
        got = client.people.GetPerson(people_pb2.GetPersonRequest(person=by_id(person_id))).person
        assert got.id == person_id
    assert set(acknowledged_members) <= members_of(client, manual)
    assert set(acknowledged_people) <= members_of(client, dynamic)

    changes = stored_changes(client)
    seqs = [c.seq for c in changes]
    assert seqs == list(range(1, len(seqs) + 1)), "gaps or repeats in the change feed"
    entered = {
        (c.segment_id, c.person_id, c.cause) for c in changes if c.kind == CH.CHANGE_KIND_ENTERED
    }
    for person_id in acknowledged_people:
        assert (dynamic, person_id, CH.CHANGE_CAUSE_DATA) in entered
    for person_id in acknowledged_members:
        assert (manual, person_id, CH.CHANGE_CAUSE_MANUAL) in entered
    # And the restarted server takes writes again, continuing the feed.
    add_members(client, manual, acknowledged_people[0])
    upsert = client.people.UpsertPeople(
        people_pb2.UpsertPeopleRequest(people=[person("after-restart", n=1)])
    )
    assert upsert.created == 1
    assert stored_changes(client, after_seq=seqs[-1])[0].seq == seqs[-1] + 1
    client.channel.close()


def test_sigterm_stops_cleanly(server_processes, tmp_path):
    data = tmp_path / "data"
    server = server_processes(data, "--grace-seconds", "5")
    client = Stubs.connect(server.address)
    vip = manual_segment(client, "VIP")
    # Two people: one alone without a phone trips an engine bug on restart (see
    # test_server.py::test_restart_with_a_single_person_without_email).
    client.people.UpsertPeople(people_pb2.UpsertPeopleRequest(people=[person("u1"), person("u2")]))
    add_members(client, vip, "u1")
    follower = client.changes.WatchChanges(CH.WatchChangesRequest())
    assert next(follower).changes[0].person_id == "u1"
    started = time.monotonic()
    assert server.terminate() == 0
    # A following watcher does not hold the shutdown for the grace period.
    assert time.monotonic() - started < 4, server.log()
    assert f"segsvc listening on 127.0.0.1:{server.port} (data {data})" in server.log()
    client.channel.close()

    again = server_processes(data)
    client = Stubs.connect(again.address)
    assert members_of(client, vip) == {"u1"}
    client.channel.close()


def test_serve_refuses_open_listening_without_tokens(tmp_path):
    result = subprocess.run(
        [*serve_command(), "--data", str(tmp_path / "data"), "--listen", "0.0.0.0:0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "refusing to listen on 0.0.0.0:0 without authentication" in result.stderr
    assert not (tmp_path / "data").exists()


def test_sigkill_while_checkpoints_are_written_in_the_background_loses_nothing(
    server_processes, tmp_path
):
    """Checkpoints every few writes, so they are packed and staged in the background all the
    time the writer runs; each kill lands among them. After each restart (checkpoint + the
    log after it) every acknowledged write is there, and the dynamic segment (every person
    has n) holds every acknowledged person and manual member, and only stored people."""
    data = tmp_path / "data"
    server = server_processes(data, "--checkpoint-every", "5")
    client = Stubs.connect(server.address)
    manual = manual_segment(client, "Crash list")
    dynamic = dynamic_segment(client, "Has n", attr("n", C.OPERATOR_EXISTS))
    acknowledged_people: list[str] = []
    acknowledged_members: set[str] = set()
    for round_ in range(3):
        writer = WritesUntilFailure(client, manual, f"r{round_}-")
        writer.wait_for_members(150, timeout=60)
        # At least one checkpoint of this server is stored before the kill.
        deadline = time.monotonic() + 30
        while "checkpoint at op" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "checkpoint at op" in server.log(), server.log()
        server.kill()
        assert writer.join_failed().code() == grpc.StatusCode.UNAVAILABLE
        acknowledged_people += writer.people
        acknowledged_members |= set(writer.members)
        client.channel.close()

        server = server_processes(data, "--checkpoint-every", "5")
        client = Stubs.connect(server.address)
        stored = members_of(client, dynamic)
        assert set(acknowledged_people) <= stored
        # Everyone has n: the segment holds everyone stored, and only them.
        for person_id in stored:
            got = client.people.GetPerson(people_pb2.GetPersonRequest(person=by_id(person_id)))
            assert got.person.id == person_id
        assert acknowledged_members <= members_of(client, manual) <= stored
        seqs = [c.seq for c in stored_changes(client)]
        assert seqs == list(range(1, len(seqs) + 1)), "gaps or repeats in the change feed"
    client.channel.close()
