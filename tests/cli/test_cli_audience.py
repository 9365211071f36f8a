"""`segsvc audience ...` and `segsvc watch`: against a real server, and the export's resume
after a dropped connection against a server that drops it on purpose."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cli_harness import Cli

import segsvc.client
from segsvc.v1 import audiences_pb2, audiences_pb2_grpc, types_pb2


def _read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_count_and_export(loaded: Cli, tmp_path: Path) -> None:
    loaded.json("segments", "create", "A", "--manual")
    loaded.json("segments", "create", "B", "--manual")
    loaded.json("segments", "create", "Churn", "--manual")
    loaded.json("members", "add", "A", "u1", "u2", "u3")
    loaded.json("members", "add", "B", "u3", "u4", "u5")
    loaded.json("members", "add", "Churn", "u2")

    both = ["--include", "A", "--include", "B"]
    assert loaded.json("audience", "count", *both) == {"count": 5}
    assert loaded.json("audience", "count", *both, "--exclude", "Churn") == {"count": 4}
    assert loaded.json("audience", "count", *both, "--require", "A") == {"count": 3}
    # u4 and u5 have no phone in the fixture.
    assert loaded.json("audience", "count", *both, "--channel", "phone") == {"count": 3}
    human = loaded("audience", "count", *both)
    assert human.exit_code == 0 and human.stdout.strip() == "5 people"

    target = tmp_path / "audience.csv"
    done = loaded.json(
        "audience",
        "export",
        str(target),
        *both,
        "--exclude",
        "Churn",
        "--fields",
        "id,email,plan",
        "--chunk-size",
        "2",
    )
    assert done == {"file": str(target), "people": 4}
    rows = _read_csv(target)
    assert rows[0] == ["id", "email", "plan"]
    assert sorted(rows[1:]) == [
        ["u1", "alice@example.com", "pro"],
        ["u3", "carol@example.com", "pro"],
        ["u4", "dave@example.com", "free"],
        ["u5", "erin@example.com", "team"],
    ]


def test_watch_replays_changes_as_json_lines(loaded: Cli) -> None:
    segment_id = loaded.json("segments", "create", "Beta", "--manual")["id"]
    loaded.json("members", "add", "Beta", "u1", "u2")
    loaded.json("members", "remove", "Beta", "u1")

    result = loaded("--json", "watch", "--segment", "Beta", "--no-follow")
    assert result.exit_code == 0, result.stderr
    changes = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(c["person_id"], c["kind"], c["cause"]) for c in changes] == [
        ("u1", "CHANGE_KIND_ENTERED", "CHANGE_CAUSE_MANUAL"),
        ("u2", "CHANGE_KIND_ENTERED", "CHANGE_CAUSE_MANUAL"),
        ("u1", "CHANGE_KIND_EXITED", "CHANGE_CAUSE_MANUAL"),
    ]
    assert {c["segment_id"] for c in changes} == {segment_id}
    seqs = [c["seq"] for c in changes]
    assert seqs == sorted(seqs)

    after = loaded("--json", "watch", "--after", str(seqs[0]), "--no-follow", "--segment", "Beta")
    assert [json.loads(line)["seq"] for line in after.stdout.splitlines()] == seqs[1:]

    human = loaded("watch", "--no-follow")
    assert human.exit_code == 0
    lines = human.stdout.splitlines()
    assert len(lines) == 3
    assert "Beta" in lines[0] and "u1" in lines[0] and "ENTERED" in lines[0]
    assert "EXITED" in lines[2] and "manual" in lines[2]


class _DroppingAudiences(audiences_pb2_grpc.AudiencesServiceServicer):
    """Serves five people in chunks of two and drops the connection (UNAVAILABLE) after
    each of the first `drops` chunks; resumes from the cursor it is given."""

    def __init__(self, drops: int) -> None:
        self.drops = drops
        # When set, every call fails before sending anything.
        self.down = False
        self.requests: list[audiences_pb2.ResolveAudienceRequest] = []

    def ResolveAudience(
        self, request: audiences_pb2.ResolveAudienceRequest, context: grpc.ServicerContext
    ) -> Iterator[audiences_pb2.ResolveAudienceResponse]:
        self.requests.append(request)
        if self.down:
            context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        people = [f"p{i}" for i in range(1, 6)]
        start = int(request.cursor or 0)
        for at in range(start, len(people), 2):
            members = [
                audiences_pb2.AudienceMember(
                    id=pid, attributes={"n": types_pb2.Value(number_value=int(pid[1:]))}
                )
                for pid in people[at : at + 2]
            ]
            yield audiences_pb2.ResolveAudienceResponse(
                members=members, cursor=str(at + 2), total=5, last=at + 2 >= len(people)
            )
            if self.drops > 0:
                self.drops -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "node restarting")


@pytest.fixture
def dropping(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Cli, _DroppingAudiences]]:
    monkeypatch.setattr(segsvc.client, "RECONNECT_DELAY", 0.0)
    servicer = _DroppingAudiences(drops=2)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    audiences_pb2_grpc.add_AudiencesServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield Cli(f"127.0.0.1:{port}"), servicer
    finally:
        server.stop(grace=None)


def test_export_resumes_after_a_dropped_connection(
    dropping: tuple[Cli, _DroppingAudiences], tmp_path: Path
) -> None:
    cli, servicer = dropping
    target = tmp_path / "out.csv"
    result = cli("audience", "export", str(target), "--include", "7", "--fields", "id,n")
    assert result.exit_code == 0, result.stderr
    assert _read_csv(target) == [
        ["id", "n"],
        ["p1", "1"],
        ["p2", "2"],
        ["p3", "3"],
        ["p4", "4"],
        ["p5", "5"],
    ]
    assert [r.cursor for r in servicer.requests] == ["", "2", "4"]
    assert list(servicer.requests[0].audience.include) == [7]
    assert list(servicer.requests[0].fields) == ["n"]
    assert result.stderr.count("reconnecting") == 2


def test_export_gives_up_after_five_reconnects(
    dropping: tuple[Cli, _DroppingAudiences], tmp_path: Path
) -> None:
    cli, servicer = dropping
    servicer.down = True
    result = cli("audience", "export", str(tmp_path / "out.csv"), "--include", "7")
    assert result.exit_code == 2
    assert result.stderr.count("reconnecting") == 5
    assert "error: UNAVAILABLE: down" in result.stderr
    assert len(servicer.requests) == 6
