"""`segsvc relay-changes` refusing to start, with what to fix: no workspace, no NATS, and
its options taken from the environment."""

from __future__ import annotations

from click.testing import CliRunner
from nats_harness import free_port

from segsvc.cli import main


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
