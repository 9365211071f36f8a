"""What an operator sees of a real `segsvc serve` process: the Prometheus metrics on
--metrics-listen, the JSON access log on stderr, the status RPC and `segsvc status`."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from api_harness import by_id, equals, person, status_of
from click.testing import CliRunner
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from server_harness import REPO, ServerProcess, Stubs, serve_command

from segsvc.api.engine_metrics import PrometheusObserver
from segsvc.cli import main
from segsvc.config import Config
from segsvc.engine.clock import FakeClock
from segsvc.engine.conditions import EventCondition, Window
from segsvc.engine.engine import Engine
from segsvc.engine.events import EventInput
from segsvc.engine.model import PersonKey
from segsvc.tokens_file import hash_token
from segsvc.v1 import (
    audiences_pb2,
    changes_pb2,
    people_pb2,
    segments_pb2,
    types_pb2,
    workspaces_pb2,
)

_METRICS_LINE = re.compile(r"segsvc metrics on http://127\.0\.0\.1:(\d+)/metrics")
MAP_SIZE = 256 * 1024 * 1024

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_url(server: ServerProcess) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = _METRICS_LINE.search(server.log())
        if found:
            return f"http://127.0.0.1:{found.group(1)}/metrics"
        time.sleep(0.05)
    raise AssertionError(f"no metrics line:\n{server.log()}")


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def only(samples: Samples, name: str, **labels: str) -> Samples:
    """The samples named `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return {key: v for key, v in samples.items() if key[0] == name and wanted <= key[1]}


def value(samples: Samples, name: str, **labels: str) -> float:
    found = only(samples, name, **labels)
    assert len(found) == 1, (name, labels, found)
    return next(iter(found.values()))


def by_method(samples: Samples, name: str, *extra: str) -> dict[tuple[str, ...], float]:
    """segsvc's own RPC samples of `name`, keyed by (method, *extra labels), zeros left out."""
    out = {}
    for (_, labels), v in only(samples, name).items():
        label = dict(labels)
        if label["grpc_service"].startswith("segsvc.v1.") and v:
            out[(label["grpc_method"], *(label[e] for e in extra))] = v
    return out


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


class Follower:
    """A live WatchChanges call on its own thread, until cancel()."""

    def __init__(self, stubs: Stubs, metadata: list[tuple[str, str]] | None = None) -> None:
        request = changes_pb2.WatchChangesRequest(from_now=True)
        self.call = stubs.changes.WatchChanges(request, metadata=metadata)
        self.received = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for _ in self.call:
                self.received += 1
        except grpc.RpcError:
            pass

    def cancel(self) -> None:
        self.call.cancel()
        self._thread.join(timeout=10)


def spec(*segment_ids: int) -> audiences_pb2.AudienceSpec:
    return audiences_pb2.AudienceSpec(include=segment_ids)


# -- metrics ----------------------------------------------------------------------------------


def test_metrics_count_every_call_shape_and_match_the_data(server_processes, tmp_path):
    # 5 workers keep 4 for short calls: one stream at a time, so a second one is refused.
    server = server_processes(
        tmp_path / "data",
        "--metrics-listen",
        "127.0.0.1:0",
        "--workers",
        "5",
        "--map-size",
        str(MAP_SIZE),
        "--checkpoint-every",
        "1",
        "--tick-seconds",
        "0.2",
    )
    url = metrics_url(server)
    stubs = Stubs.connect(server.address)
    people, segments, audiences = stubs.people, stubs.segments, stubs.audiences
    before = scrape(url)
    assert by_method(before, "grpc_server_started_total") == {}

    # unary, OK: 3 people, 2 events, a dynamic segment
    people.UpsertPeople(
        people_pb2.UpsertPeopleRequest(
            people=[person("p1", plan="pro"), person("p2", plan="pro"), person("p3", plan="free")]
        )
    )
    people.TrackEvents(
        people_pb2.TrackEventsRequest(
            events=[people_pb2.Event(person=by_id("p1"), name="opened") for _ in range(2)]
        )
    )
    pro = segments.CreateSegment(
        segments_pb2.CreateSegmentRequest(
            name="pro",
            type=segments_pb2.SEGMENT_TYPE_DYNAMIC,
            conditions=equals("plan", "pro"),
        )
    ).segment.id
    # client stream: 4 messages, one person each
    people.StreamUpsertPeople(
        iter(
            people_pb2.StreamUpsertPeopleRequest(people=[person(f"s{i}", plan="pro")])
            for i in range(4)
        )
    )
    # server stream: a chunk per person of the 6 in "pro"
    chunks = list(
        audiences.ResolveAudience(
            audiences_pb2.ResolveAudienceRequest(audience=spec(pro), chunk_size=1)
        )
    )
    assert sum(len(chunk.members) for chunk in chunks) == 6
    # failing: unary NOT_FOUND, and a stream that fails on its first step
    assert status_of(lambda: people.GetPerson(people_pb2.GetPersonRequest(person=by_id("x"))))[
        0
    ] == (grpc.StatusCode.NOT_FOUND)
    watch_failing = changes_pb2.WatchChangesRequest(after_seq=2**64 - 1, no_follow=True)
    code, _ = status_of(lambda: list(stubs.changes.WatchChanges(watch_failing)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # a follower holds the only stream slot: the next stream is refused
    follower = Follower(stubs)
    wait_for(
        lambda: value(scrape(url), "segsvc_change_feed_followers", workspace="default") == 1,
        "the follower is counted",
    )
    code, _ = status_of(
        lambda: list(
            audiences.ResolveAudience(audiences_pb2.ResolveAudienceRequest(audience=spec(pro)))
        )
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    follower.cancel()
    wait_for(
        lambda: (
            ("WatchChanges", "Canceled")
            in by_method(scrape(url), "grpc_server_handled_total", "grpc_code")
        ),
        "the cancelled follower is counted",
    )
    after = scrape(url)

    assert by_method(after, "grpc_server_started_total", "grpc_type") == {
        ("UpsertPeople", "unary"): 1,
        ("TrackEvents", "unary"): 1,
        ("CreateSegment", "unary"): 1,
        ("StreamUpsertPeople", "client_stream"): 1,
        ("ResolveAudience", "server_stream"): 2,
        ("GetPerson", "unary"): 1,
        ("WatchChanges", "server_stream"): 2,
    }
    assert by_method(after, "grpc_server_handled_total", "grpc_code") == {
        ("UpsertPeople", "OK"): 1,
        ("TrackEvents", "OK"): 1,
        ("CreateSegment", "OK"): 1,
        ("StreamUpsertPeople", "OK"): 1,
        ("ResolveAudience", "OK"): 1,
        ("ResolveAudience", "ResourceExhausted"): 1,
        ("GetPerson", "NotFound"): 1,
        ("WatchChanges", "InvalidArgument"): 1,
        ("WatchChanges", "Canceled"): 1,
    }
    assert by_method(after, "grpc_server_msg_received_total") == {
        ("UpsertPeople",): 1,
        ("TrackEvents",): 1,
        ("CreateSegment",): 1,
        ("StreamUpsertPeople",): 4,
        ("ResolveAudience",): 2,
        ("GetPerson",): 1,
        ("WatchChanges",): 2,
    }
    assert by_method(after, "grpc_server_msg_sent_total") == {
        ("UpsertPeople",): 1,
        ("TrackEvents",): 1,
        ("CreateSegment",): 1,
        ("StreamUpsertPeople",): 1,
        ("ResolveAudience",): len(chunks),
    }
    # histograms: one observation per call, cumulative buckets ending in +Inf
    counts = by_method(after, "grpc_server_handling_seconds_count")
    assert counts == by_method(after, "grpc_server_started_total")
    buckets = only(
        after,
        "grpc_server_handling_seconds_bucket",
        grpc_service="segsvc.v1.PeopleService",
        grpc_method="UpsertPeople",
    )
    bounds = sorted((float(dict(labels)["le"]), v) for (_, labels), v in buckets.items())
    assert len(bounds) > 5 and bounds[-1] == (float("inf"), 1)
    assert [v for _, v in bounds] == sorted(v for _, v in bounds)

    # the service's own gauges match the data
    gauge = lambda name: value(after, name, workspace="default")  # noqa: E731
    assert gauge("segsvc_people") == 7
    assert gauge("segsvc_segments") == 1
    assert gauge("segsvc_events") == 2
    assert gauge("segsvc_audience_snapshots") == 1
    assert gauge("segsvc_change_feed_followers") == 0
    assert gauge("segsvc_change_feed_max_lag_changes") == 0
    listed = stubs.workspaces.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest()).workspaces
    assert gauge("segsvc_last_change_seq") == listed[0].last_change_seq == 6
    # --checkpoint-every 1: every write is checkpointed (in the background, one after the
    # other), so nothing is left to replay once the last one is stored
    deadline = time.monotonic() + 30
    while value(scrape(url), "segsvc_records_since_checkpoint", workspace="default") != 0:
        assert time.monotonic() < deadline, "the last writes were never checkpointed"
        time.sleep(0.05)
    assert gauge("segsvc_checkpoint_age_seconds") >= 0
    assert value(after, "segsvc_checkpoint_seconds_count", workspace="default") >= 4
    assert value(after, "segsvc_lmdb_map_size_bytes") == MAP_SIZE
    assert 0 < value(after, "segsvc_lmdb_map_used_bytes") < MAP_SIZE
    rss, own = value(after, "segsvc_memory_rss_bytes"), value(after, "segsvc_memory_rss_anon_bytes")
    assert 0 < own < rss
    # the workspace was created by the first write: loaded from nothing
    assert value(after, "segsvc_replayed_operations", workspace="default") == 0
    assert value(after, "segsvc_replay_seconds", workspace="default") >= 0

    # engine timings where they happen: one more write is one more commit observed
    commits = value(after, "segsvc_log_commit_seconds_count", workspace="default")
    people.UpsertPeople(people_pb2.UpsertPeopleRequest(people=[person("p9")]))
    again = scrape(url)
    assert value(again, "segsvc_log_commit_seconds_count", workspace="default") == commits + 1
    assert value(again, "segsvc_people", workspace="default") == 8
    # ticks every 0.2 s; with no time-dependent segment they move nobody
    wait_for(
        lambda: value(scrape(url), "segsvc_tick_seconds_count", workspace="default") >= 2,
        "ticks are observed",
    )
    ticked = scrape(url)
    assert value(ticked, "segsvc_tick_changes_sum", workspace="default") == 0
    assert value(ticked, "segsvc_tick_changes_count", workspace="default") >= 2


def test_engine_timings_count_commits_checkpoints_replays_and_people_moved(tmp_path):
    registry = CollectorRegistry()
    clock = FakeClock()
    config = Config(data_dir=tmp_path / "data", map_size=MAP_SIZE)

    def sample(name: str) -> float | None:
        return registry.get_sample_value(name, {"workspace": "default"})

    engine = Engine(config, clock, observer=PrometheusObserver(registry))
    try:
        ws = engine.workspace("default")
        opened = [EventInput(PersonKey("id", f"p{i}"), "opened") for i in range(3)]
        ws.track_events(opened, create_missing_people=True)
        recent = EventCondition("opened", window=Window(within_last_seconds=60))
        ws.create_segment("recent", "", True, recent)
        ws.tick()  # within the minute: nobody moves
        clock.advance(61)
        ws.tick()  # the three leave "recent"
    finally:
        engine.close(checkpoint=False)
    assert sample("segsvc_tick_seconds_count") == 2
    assert sample("segsvc_tick_changes_count") == 2
    assert sample("segsvc_tick_changes_sum") == 3
    assert sample("segsvc_log_commit_seconds_count") == 4  # events, segment, two ticks
    assert sample("segsvc_checkpoint_seconds_count") == 0
    assert sample("segsvc_replayed_operations") == 0  # a new workspace

    # no checkpoint was taken: the next start replays the four records, then checkpoints
    registry = CollectorRegistry()
    engine = Engine(config, clock, observer=PrometheusObserver(registry))
    engine.close()
    assert sample("segsvc_replayed_operations") == 4
    assert sample("segsvc_replay_seconds") > 0
    assert sample("segsvc_checkpoint_seconds_count") == 1
    registry = CollectorRegistry()
    engine = Engine(config, clock, observer=PrometheusObserver(registry))
    engine.close(checkpoint=False)
    assert sample("segsvc_replayed_operations") == 0


# -- logs -------------------------------------------------------------------------------------

TOKENS = {
    "tok-writer-5b1e9c": ("acme", "write"),
    "tok-reader-77d2aa": ("acme", "read"),
    "tok-admin-c0ffee": ("acme", "admin"),
}
EMAILS = ("Secret.Person@Example.COM", "other.person@example.org", "nobody.here@example.net")
PHONES = ("+1 415 555 0123", "+14155550123", "4155550123", "+44 20 7946 0958", "+442079460958")
IDS = ("pid-7f3a9e", "pid-91c2bd", "pid-unknown-42")


def auth(token: str | None) -> list[tuple[str, str]]:
    return [] if token is None else [("authorization", f"Bearer {token}")]


@pytest.fixture
def secured_server(server_processes, tmp_path, monkeypatch) -> ServerProcess:
    tokens = tmp_path / "tokens.jsonl"
    tokens.write_text(
        "".join(
            json.dumps({"token_sha256": hash_token(t), "workspace": ws, "role": role}) + "\n"
            for t, (ws, role) in TOKENS.items()
        )
    )
    # The log format from the environment, as a container would set it.
    monkeypatch.setenv("SEGSVC_LOG_FORMAT", "json")
    return server_processes(
        tmp_path / "data",
        "--tokens-file",
        str(tokens),
        "--metrics-listen",
        "127.0.0.1:0",
        "--checkpoint-every",
        "1",
    )


def test_json_access_log_has_one_line_per_call_and_no_secrets(secured_server):
    stubs = Stubs.connect(secured_server.address)
    writer, reader, _ = (auth(t) for t in TOKENS)
    people = stubs.people
    people.UpsertPeople(
        people_pb2.UpsertPeopleRequest(
            people=[
                people_pb2.PersonUpsert(id=IDS[0], email=EMAILS[0], phone=PHONES[0]),
                people_pb2.PersonUpsert(id=IDS[1], email=EMAILS[1], phone=PHONES[3]),
            ]
        ),
        metadata=writer,
    )
    found = people.GetPerson(
        people_pb2.GetPersonRequest(person=types_pb2.PersonRef(email=EMAILS[0])), metadata=reader
    )
    assert found.person.id == IDS[0]
    expected: Counter[tuple[str, str]] = Counter(
        {("PeopleService/UpsertPeople", "OK"): 1, ("PeopleService/GetPerson", "OK"): 1}
    )

    def fails(call: Callable[[], Any], code: grpc.StatusCode, rpc: str) -> None:
        assert status_of(call)[0] == code
        expected[(rpc, code.name)] += 1

    unknown = types_pb2.PersonRef(email=EMAILS[2])
    fails(
        lambda: people.GetPerson(people_pb2.GetPersonRequest(person=unknown), metadata=reader),
        grpc.StatusCode.NOT_FOUND,
        "PeopleService/GetPerson",
    )
    unknown_id = people_pb2.GetPersonRequest(person=by_id(IDS[2]))
    fails(
        lambda: people.GetPerson(unknown_id, metadata=reader),
        grpc.StatusCode.NOT_FOUND,
        "PeopleService/GetPerson",
    )
    bad_phone = people_pb2.GetPersonRequest(person=types_pb2.PersonRef(phone="12" + PHONES[2]))
    fails(
        lambda: people.GetPerson(bad_phone, metadata=reader),
        grpc.StatusCode.INVALID_ARGUMENT,
        "PeopleService/GetPerson",
    )
    fails(
        lambda: people.GetPerson(people_pb2.GetPersonRequest(person=by_id(IDS[0]))),
        grpc.StatusCode.UNAUTHENTICATED,
        "PeopleService/GetPerson",
    )
    fails(
        lambda: people.UpsertPeople(
            people_pb2.UpsertPeopleRequest(people=[person(IDS[0])]), metadata=reader
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "PeopleService/UpsertPeople",
    )
    stream = people.StreamUpsertPeople(
        iter(
            people_pb2.StreamUpsertPeopleRequest(
                people=[people_pb2.PersonUpsert(id=f"{IDS[0]}-{i}", email=f"s{i}{EMAILS[1]}")]
            )
            for i in range(3)
        ),
        metadata=writer,
    )
    assert stream.created == 3
    expected[("PeopleService/StreamUpsertPeople", "OK")] += 1
    runs = list(
        stubs.changes.WatchChanges(
            changes_pb2.WatchChangesRequest(after_seq=0, no_follow=True), metadata=reader
        )
    )
    expected[("ChangesService/WatchChanges", "OK")] += 1
    secured_server.terminate()

    lines = secured_server.log().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    # every log line is JSON; only the address lines are printed as they are
    printed = [line for line in lines if not line.startswith("{")]
    assert all(line.startswith(("segsvc listening on", "segsvc metrics on")) for line in printed)
    assert len(printed) <= 2, printed
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys()
    # the harness's health checks are not access-logged; every other call is
    assert {r["grpc_service"] for r in records if r["logger"] == "segsvc.access"} == {
        "segsvc.v1.PeopleService",
        "segsvc.v1.ChangesService",
    }
    access = [r for r in records if r["logger"] == "segsvc.access"]
    assert Counter((r["rpc"], r["grpc_code"]) for r in access) == expected
    for record in access:
        assert {"peer", "duration_ms", "msgs_in", "msgs_out", "items_in", "items_out"} <= set(
            record
        )
        assert record["peer"].startswith("ipv4:127.0.0.1:")
        assert record["level"] == "INFO"  # client errors are INFO, with their message
        if record["grpc_code"] == "OK":
            assert "error" not in record
        else:
            assert record["error"], record
        assert record["workspace"] == ("" if record["grpc_code"] == "UNAUTHENTICATED" else "acme")
    upsert = next(
        r for r in access if r["rpc"] == "PeopleService/UpsertPeople" and r["grpc_code"] == "OK"
    )
    assert (upsert["msgs_in"], upsert["items_in"], upsert["msgs_out"], upsert["items_out"]) == (
        1,
        2,
        1,
        2,
    )
    bulk = next(r for r in access if r["rpc"] == "PeopleService/StreamUpsertPeople")
    assert (bulk["msgs_in"], bulk["items_in"], bulk["msgs_out"]) == (3, 3, 1)
    watch = next(r for r in access if r["rpc"] == "ChangesService/WatchChanges")
    assert watch["msgs_out"] == len(runs)
    assert watch["items_out"] == sum(len(run.changes) for run in runs)
    # the quoted email and id of the NOT_FOUND messages are left out, the rest kept
    not_found = [r["error"] for r in access if r["grpc_code"] == "NOT_FOUND"]
    assert sorted(not_found) == ["no person with email '…'", "no person with id '…'"]
    denied = next(r for r in access if r["grpc_code"] == "PERMISSION_DENIED")
    assert "write token" in denied["error"]

    text = secured_server.log().lower()
    secrets = [*TOKENS, *EMAILS, *PHONES, *IDS, "+14155550123", "4155550123"]
    leaked = [secret for secret in secrets if secret.lower() in text]
    assert leaked == [], leaked


def test_an_internal_error_is_logged_at_error_with_its_id_and_traceback(api, caplog, monkeypatch):
    def broken() -> list[Any]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(api.engine, "summaries", broken)
    with caplog.at_level(logging.INFO):
        code, details = status_of(
            lambda: api.workspaces.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest())
        )
    assert code == grpc.StatusCode.INTERNAL
    error_id = re.search(r"error id ([0-9a-f]{12})", details).group(1)
    access = [r for r in caplog.records if r.name == "segsvc.access"]
    assert len(access) == 1
    assert access[0].levelno == logging.ERROR
    assert access[0].error_id == error_id
    assert access[0].grpc_code == "INTERNAL"
    internal = [r for r in caplog.records if r.name == "segsvc.api.errors"]
    assert len(internal) == 1 and internal[0].error_id == error_id
    assert internal[0].exc_info is not None and "a bug" in str(internal[0].exc_info[1])


def test_the_access_log_can_be_switched_off(api_servers, caplog):
    api = api_servers.start(api_servers.config(access_log=False))
    with caplog.at_level(logging.INFO):
        api.workspaces.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest())
    assert [r for r in caplog.records if r.name == "segsvc.access"] == []


# -- status -----------------------------------------------------------------------------------


def test_status_rpc_and_cli_tell_the_server_and_each_workspace(secured_server):
    stubs = Stubs.connect(secured_server.address)
    writer, reader, admin = (auth(t) for t in TOKENS)
    stubs.people.UpsertPeople(
        people_pb2.UpsertPeopleRequest(people=[person("a", plan="pro"), person("b")]),
        metadata=writer,
    )
    stubs.people.TrackEvents(
        people_pb2.TrackEventsRequest(events=[people_pb2.Event(person=by_id("a"), name="e")]),
        metadata=writer,
    )
    stubs.segments.CreateSegment(
        segments_pb2.CreateSegmentRequest(
            name="pro", type=segments_pb2.SEGMENT_TYPE_DYNAMIC, conditions=equals("plan", "pro")
        ),
        metadata=writer,
    )
    follower = Follower(stubs, reader)
    url = metrics_url(secured_server)
    wait_for(
        lambda: value(scrape(url), "segsvc_change_feed_followers", workspace="acme") == 1,
        "the follower is counted",
    )

    request = workspaces_pb2.GetServerStatusRequest()
    for token in (reader, writer):
        code, message = status_of(
            lambda token=token: stubs.workspaces.GetServerStatus(request, metadata=token)
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "GetServerStatus needs an admin token" in message
    status = stubs.workspaces.GetServerStatus(request, metadata=admin)
    assert status.version == "0.1.0"
    assert status.uptime.ToSeconds() >= 0 and status.HasField("uptime")
    assert 0 < status.rss_anon_bytes < status.rss_bytes
    assert 0 < status.map_used_bytes < status.map_size_bytes
    [acme] = status.workspaces
    assert (acme.name, acme.people, acme.segments, acme.events) == ("acme", 2, 1, 1)
    assert acme.last_change_seq == 1  # "a" entered "pro"
    assert acme.last_op_seq == 3  # people, events, segment
    assert acme.HasField("last_checkpoint_age") and acme.records_since_checkpoint == 0
    assert (acme.change_feed_followers, acme.max_follower_lag) == (1, 0)
    # the same numbers as the metrics: one source
    samples = scrape(url)
    assert value(samples, "segsvc_people", workspace="acme") == acme.people
    assert value(samples, "segsvc_last_op_seq", workspace="acme") == acme.last_op_seq

    cli = CliRunner()
    base = ["--server", secured_server.address, "--token"]
    result = cli.invoke(main, [*base, "tok-admin-c0ffee", "status"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines()]
    assert ["version", "0.1.0"] in lines
    assert ["workspace", "acme"] in lines
    assert ["people", "2"] in lines and ["segments", "1"] in lines
    assert ["change", "feed", "1", "followers,", "furthest", "0", "changes", "behind"] in lines
    result = cli.invoke(main, [*base, "tok-admin-c0ffee", "--json", "status"])
    doc = json.loads(result.stdout)
    assert doc["workspaces"][0]["people"] == 2
    result = cli.invoke(main, [*base, "tok-reader-77d2aa", "status"])
    assert result.exit_code == 2
    assert "PERMISSION_DENIED" in result.stderr
    follower.cancel()


# -- refused starts ---------------------------------------------------------------------------


@pytest.mark.parametrize("via_env", [False, True])
def test_metrics_beyond_loopback_need_tokens_or_tls(tmp_path, via_env):
    data = tmp_path / "data"
    args = [*serve_command(), "--data", str(data), "--listen", "127.0.0.1:0"]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    if via_env:
        env["SEGSVC_METRICS_LISTEN"] = "0.0.0.0:0"
    else:
        args += ["--metrics-listen", "0.0.0.0:0"]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "segsvc: refusing to serve metrics on 0.0.0.0:0 without tokens or TLS: workspace "
        "names and sizes would be open to the network. Give a tokens file or TLS, or use "
        "--metrics-listen 127.0.0.1:PORT"
    ]
    assert not data.exists()
