"""`segsvc relay-changes` end to end: a real segsvc server process, a real nats-server, the
relay as a child process killed with -9 mid-stream and started again, and a durable
JetStream consumer (the README's Python consumer) that must see the feed exactly as
WatchChanges gives it: every change once, in order, with its kind and cause."""

from __future__ import annotations

import re
from pathlib import Path

from nats_harness import NatsServer
from relay_harness import (
    WORKSPACE,
    RelayProcess,
    Writer,
    assert_consumed_exactly,
    consume_all,
    feed,
    start_workspace,
    wait_relayed,
)

from segsvc.relay.subjects import change_subject, workspace_subjects
from segsvc.v1 import changes_pb2


def test_a_relay_killed_mid_stream_and_restarted_delivers_every_change_once_in_order(
    server_processes, nats_server: NatsServer, tmp_path: Path
) -> None:
    server = server_processes(tmp_path / "data")
    relay_log = tmp_path / "relay.log"
    client, pro, vip = start_workspace(server.address)

    # A first start must say where to begin.
    refused = RelayProcess(relay_log, server.address, WORKSPACE, nats_server.url)
    assert refused.wait() == 2
    assert "--from-start" in refused.log() and "--from-now" in refused.log()

    with Writer(client, vip) as writer:
        first = RelayProcess(relay_log, server.address, WORKSPACE, nats_server.url, "--from-start")
        wait_relayed(nats_server.url, WORKSPACE, 300)
        first.kill()
        # The writes go on while no relay runs; the next one starts from the stream's last
        # change (its --from-start is ignored now).
        writer.wait_rounds(5)
        second = RelayProcess(relay_log, server.address, WORKSPACE, nats_server.url, "--from-start")
        writer.wait_rounds(10)

    expected = feed(server.address, WORKSPACE)
    wait_relayed(nats_server.url, WORKSPACE, expected[-1].seq)
    assert second.terminate() == 0, second.log()
    # It went on from the stream's last change, which the killed relay left mid-feed.
    resumed = re.search(r"holds changes up to (\d+): relaying after it", second.log())
    assert resumed is not None, second.log()
    assert 300 <= int(resumed.group(1)) < expected[-1].seq

    causes = {change.cause for change in expected}
    assert causes == {
        changes_pb2.CHANGE_CAUSE_DEFINITION,
        changes_pb2.CHANGE_CAUSE_DATA,
        changes_pb2.CHANGE_CAUSE_MANUAL,
        changes_pb2.CHANGE_CAUSE_DELETED,
    }
    assert {change.segment_id for change in expected} == {pro, vip}

    assert_consumed_exactly(nats_server.url, expected)

    # A consumer of one segment sees that segment's part of the feed.
    only_vip = feed(server.address, WORKSPACE, (vip,))
    assert_consumed_exactly(nats_server.url, only_vip, "vip", change_subject(WORKSPACE, vip))


def test_from_now_relays_none_of_the_changes_written_before_the_first_start(
    server_processes, nats_server: NatsServer, tmp_path: Path
) -> None:
    server = server_processes(tmp_path / "data")
    client, _, vip = start_workspace(server.address)
    before = feed(server.address, WORKSPACE)[-1].seq
    relay = RelayProcess(
        tmp_path / "relay.log", server.address, WORKSPACE, nats_server.url, "--from-now"
    )
    with Writer(client, vip) as writer:
        writer.wait_rounds(3)
        wait_relayed(nats_server.url, WORKSPACE, before + 1)
    expected = feed(server.address, WORKSPACE, after_seq=before)
    wait_relayed(nats_server.url, WORKSPACE, expected[-1].seq)
    assert relay.terminate() == 0, relay.log()
    first = consume_all(nats_server.url, workspace_subjects(WORKSPACE), "first", 1)[0]
    assert first.seq > before
    # From there on, everything, once.
    assert_consumed_exactly(nats_server.url, [c for c in expected if c.seq >= first.seq])
