"""The relay when things go wrong around it: nats-server killed and restarted under it (one
server, and the relay's server in a cluster of three with R=3), SIGTERM mid-stream, and a
feed pruned past the point where the relay stopped."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from pathlib import Path

import nats
from nats_harness import NatsCluster, NatsServer
from relay_harness import (
    WORKSPACE,
    RelayProcess,
    Writer,
    assert_consumed_exactly,
    feed,
    last_relayed,
    run,
    start_workspace,
    wait_relayed,
    write_round,
)
from server_harness import ServerProcess

from segsvc.client import Client
from segsvc.relay.subjects import DEFAULT_STREAM, subject_token, workspace_subjects
from segsvc.v1 import changes_pb2


def test_nats_killed_and_restarted_under_the_relay_loses_and_repeats_nothing(
    server_processes, nats_server: NatsServer, tmp_path: Path
) -> None:
    server = server_processes(tmp_path / "data")
    client, _, vip = start_workspace(server.address)
    relay = RelayProcess(
        tmp_path / "relay.log",
        server.address,
        WORKSPACE,
        nats_server.url,
        "--from-start",
        "--ack-timeout",
        "2",
    )
    with Writer(client, vip) as writer:
        wait_relayed(nats_server.url, WORKSPACE, 200)
        nats_server.kill()
        writer.wait_rounds(5)
        nats_server.start()
        writer.wait_rounds(10)
    expected = feed(server.address, WORKSPACE)
    wait_relayed(nats_server.url, WORKSPACE, expected[-1].seq)
    assert relay.terminate() == 0, relay.log()
    assert "publishing again from it" in relay.log()  # the outage did hit the relay

    assert_consumed_exactly(nats_server.url, expected)


def test_sigterm_mid_stream_exits_0_with_an_unbroken_prefix_in_the_stream(
    server_processes, nats_server: NatsServer, tmp_path: Path
) -> None:
    server = server_processes(tmp_path / "data")
    client, _, vip = start_workspace(server.address)
    relay = RelayProcess(
        tmp_path / "relay.log", server.address, WORKSPACE, nats_server.url, "--from-start"
    )
    with Writer(client, vip):
        wait_relayed(nats_server.url, WORKSPACE, 200)
        assert relay.terminate() == 0, relay.log()
    stopped = re.search(r"stopped: relayed (\d+) changes, up to seq (\d+)", relay.log())
    assert stopped is not None, relay.log()
    last = run(lambda: last_relayed(nats_server.url, WORKSPACE))
    # What it says it relayed is all the stream holds, with every change before it.
    assert int(stopped.group(1)) == int(stopped.group(2)) == last
    expected = feed(server.address, WORKSPACE)
    assert last < expected[-1].seq  # it stopped mid-stream
    assert_consumed_exactly(nats_server.url, expected[:last])


def test_a_feed_pruned_past_the_relays_position_stops_it_with_what_to_do(
    server_processes, nats_server: NatsServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server = server_processes(data)
    client, _, vip = start_workspace(server.address)
    log = tmp_path / "relay.log"
    first = RelayProcess(log, server.address, WORKSPACE, nats_server.url, "--from-start")
    relayed = feed(server.address, WORKSPACE)
    wait_relayed(nats_server.url, WORKSPACE, relayed[-1].seq)
    assert first.terminate() == 0, first.log()

    # While no relay runs, changes are written, and then pruned by a server that keeps them
    # for about a second and prunes on every tick.
    assert server.terminate() == 0
    server = server_processes(data, "--change-retention-days", "0.00001", "--tick-seconds", "0.2")
    client = Client(server.address, workspace=WORKSPACE)
    for round_no in range(1, 4):
        write_round(client, round_no, vip)
    time.sleep(2.5)
    assert server.terminate() == 0
    server = server_processes(data)
    client = Client(server.address, workspace=WORKSPACE)

    refused = RelayProcess(log, server.address, WORKSPACE, nats_server.url, "--from-start")
    assert refused.wait() == 2
    message = refused.log()
    assert f"after seq {relayed[-1].seq}, where the relay stopped" in message
    assert "--resume-after SEQ" in message and "--change-retention-days" in message
    oldest_kept = re.search(r"after_seq >= (\d+)", message)
    assert oldest_kept is not None, message
    skip_to = int(oldest_kept.group(1))
    assert skip_to > relayed[-1].seq

    # Going on from where the server says, the changes written from then on are relayed.
    resumed = RelayProcess(
        log, server.address, WORKSPACE, nats_server.url, "--resume-after", str(skip_to)
    )
    write_round(client, 4, vip)
    new = feed(server.address, WORKSPACE, after_seq=skip_to)
    assert new and new[0].seq == skip_to + 1
    wait_relayed(nats_server.url, WORKSPACE, new[-1].seq)
    assert resumed.terminate() == 0, resumed.log()
    assert f"skipping changes {relayed[-1].seq + 1} to {skip_to}" in resumed.log()
    assert_consumed_exactly(nats_server.url, relayed + new)


def relay_connection_server(cluster: NatsCluster) -> NatsServer:
    """The server of the cluster the relay is connected to (its monitoring page says)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for server in cluster.servers:
            url = f"http://127.0.0.1:{server.monitor_port}/connz"
            with urllib.request.urlopen(url, timeout=5) as answer:
                connections = json.load(answer).get("connections") or []
            if any(c.get("name") == f"segsvc-relay {WORKSPACE}" for c in connections):
                return server
        time.sleep(0.1)
    raise AssertionError("the relay is connected to no server of the cluster")


def stream_leader(url: str, stream: str = DEFAULT_STREAM, avoid: str = "") -> str:
    """The name of the server leading the stream; with `avoid`, first makes that server
    step down when it leads, and waits for another leader."""

    async def ask() -> str:
        nc = await nats.connect(url.split(","))
        try:
            js = nc.jetstream(timeout=30)
            leader = (await js.stream_info(stream)).cluster
            assert leader is not None and len(leader.replicas or []) == 2  # R=3
            if leader.leader == avoid:
                await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", timeout=30)
                while True:
                    info = (await js.stream_info(stream)).cluster
                    if info is not None and info.leader and info.leader != avoid:
                        return info.leader
                    await asyncio.sleep(0.1)
            return str(leader.leader)
        finally:
            await nc.close()

    return run(ask)


def start_on_cluster(
    server_processes, cluster: NatsCluster, tmp_path: Path, *extra: str
) -> tuple[ServerProcess, Client, int, RelayProcess]:
    """A server with WORKSPACE, and a relay (--from-start, R=3, acks due in 3 s) publishing
    its feed to the cluster: the server, a client, the VIP segment and the relay."""
    server = server_processes(tmp_path / "data")
    client, _, vip = start_workspace(server.address)
    args = ("--from-start", "--replicas", "3", "--ack-timeout", "3", *extra)
    relay = RelayProcess(tmp_path / "relay.log", server.address, WORKSPACE, cluster.urls, *args)
    return server, client, vip, relay


def finish_relaying(
    server: ServerProcess, url: str, relay: RelayProcess, stream: str = DEFAULT_STREAM
) -> list[changes_pb2.Change]:
    """Waits until the stream holds the whole feed, stops the relay (exit 0), and returns
    the feed."""
    expected = feed(server.address, WORKSPACE)
    wait_relayed(url, WORKSPACE, expected[-1].seq, stream=stream)
    assert relay.terminate() == 0, relay.log()
    return expected


def test_a_relay_on_three_nats_servers_goes_on_when_its_server_is_killed(
    server_processes, nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    server, client, vip, relay = start_on_cluster(server_processes, nats_cluster, tmp_path)
    urls = nats_cluster.urls
    wait_relayed(urls, WORKSPACE, feed(server.address, WORKSPACE)[-1].seq)
    # Kill the server the relay talks to, not the stream's leader: what is lost is the
    # connection (a leader change is the case README names, where order may bend).
    victim = relay_connection_server(nats_cluster)
    assert stream_leader(urls, avoid=victim.name) != victim.name
    with Writer(client, vip) as writer:
        wait_relayed(urls, WORKSPACE, 300)
        victim.kill()
        writer.wait_rounds(5)
        victim.start()
        writer.wait_rounds(5)
    expected = finish_relaying(server, urls, relay)
    assert "publishing again from it on a new connection" in relay.log()
    assert_consumed_exactly(urls, expected)


def test_an_own_stream_stays_in_feed_order_across_stream_leader_changes(
    server_processes, nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    server, client, vip, relay = start_on_cluster(
        server_processes, nats_cluster, tmp_path, "--own-stream"
    )
    urls = nats_cluster.urls
    stream = f"SEGSVC_CHANGES_{subject_token(WORKSPACE)}"
    with Writer(client, vip) as writer:
        wait_relayed(urls, WORKSPACE, 200, stream=stream)
        for _ in range(3):  # the leader steps down while changes are in flight
            leader = stream_leader(urls, stream)
            stream_leader(urls, stream, avoid=leader)
            writer.wait_rounds(3)
    expected = finish_relaying(server, urls, relay, stream)
    assert f"created stream {stream} (subjects {workspace_subjects(WORKSPACE)}," in relay.log()
    assert_consumed_exactly(urls, expected, stream=stream)
