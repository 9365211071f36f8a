"""The relay when things go wrong around it: nats-server killed and restarted under it,
SIGTERM mid-stream, and a feed pruned past the point where the relay stopped."""

from __future__ import annotations

import re
import time
from pathlib import Path

from nats_harness import NatsServer
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

from segsvc.client import Client


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
