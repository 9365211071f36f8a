"""`segsvc relay-changes` and its options: what to fix when it cannot start (no workspace,
no NATS, no token), options from the environment, and a server that wants a token."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from click.testing import CliRunner
from nats_harness import NatsServer, free_port
from relay_harness import (
    WORKSPACE,
    RelayProcess,
    assert_consumed_exactly,
    start_workspace,
    wait_relayed,
)

from segsvc.cli import main
from segsvc.client import Client
from segsvc.v1 import changes_pb2


def test_without_a_workspace_it_says_which_option_is_missing() -> None:
    result = CliRunner().invoke(main, ["relay-changes", "--nats", "nats://127.0.0.1:4222"])
    assert result.exit_code == 2
    assert "--workspace" in result.output


def test_options_come_from_the_environment_and_an_unreachable_nats_is_named() -> None:
    url = f"nats://127.0.0.1:{free_port()}"  # nobody listens there
    env = {"SEGSVC_NATS": url, "SEGSVC_WORKSPACE": "acme", "SEGSVC_RELAY_FROM_START": "1"}
    result = CliRunner().invoke(main, ["relay-changes"], env=env)
    assert result.exit_code == 2
    assert f"error: cannot connect to NATS at {url}" in result.output


def test_the_relay_follows_a_secured_server_with_a_read_token_and_names_a_refusal(
    server_processes, nats_server: NatsServer, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.jsonl"
    tokens.write_text(
        "".join(
            json.dumps(
                {
                    "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
                    "workspace": WORKSPACE,
                    "role": role,
                }
            )
            + "\n"
            for token, role in (("w-secret", "write"), ("r-secret", "read"))
        )
    )
    server = server_processes(tmp_path / "data", "--tokens-file", str(tokens))
    start_workspace(server.address, token="w-secret")
    log = tmp_path / "relay.log"

    anonymous = RelayProcess(log, server.address, WORKSPACE, nats_server.url, "--from-start")
    assert anonymous.wait() == 2
    assert "error: the change feed refused the relay: UNAUTHENTICATED" in anonymous.log()

    reader = RelayProcess(
        log, server.address, WORKSPACE, nats_server.url, "--from-start", "--token", "r-secret"
    )
    with Client(server.address, workspace=WORKSPACE, token="r-secret") as client:
        expected = list(client.watch_changes(changes_pb2.WatchChangesRequest(no_follow=True)))
    wait_relayed(nats_server.url, WORKSPACE, expected[-1].seq)
    assert reader.terminate() == 0, reader.log()
    assert_consumed_exactly(nats_server.url, expected)
