"""`segsvc serve` as a real process, and the token and workspace the client sends."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_harness import Cli
from click.testing import CliRunner

from segsvc.cli import main
from segsvc.config import Config


def test_serve_builds_the_config_from_its_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import segsvc.api.server

    seen: list[Config] = []
    monkeypatch.setattr(segsvc.api.server, "serve", seen.append)
    tokens = tmp_path / "tokens"
    tokens.write_text("")
    result = CliRunner().invoke(
        main,
        [
            "serve",
            "--data",
            str(tmp_path / "d"),
            "--listen",
            "127.0.0.1:6000",
            "--map-size",
            "1048576",
            "--tick-seconds",
            "5",
            "--change-retention-days",
            "2",
            "--event-retention-days",
            "90",
            "--snapshot-retention-hours",
            "6",
            "--checkpoint-every",
            "100",
            "--grace-seconds",
            "1.5",
            "--workers",
            "3",
            "--tokens-file",
            str(tokens),
        ],
    )
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert config.data_dir == tmp_path / "d"
    assert config.listen == "127.0.0.1:6000"
    assert config.map_size == 1 << 20
    assert config.tick_seconds == 5
    assert config.change_retention_seconds == 2 * 86400
    assert config.event_retention_seconds == 90 * 86400
    assert config.snapshot_retention_seconds == 6 * 3600
    assert config.checkpoint_every_ops == 100
    assert config.grace_seconds == 1.5
    assert config.workers == 3
    assert config.tokens_file == tokens
    assert config.tls_cert is None and config.tls_key is None

    half_tls = CliRunner().invoke(main, ["serve", "--tls-cert", str(tokens)])
    assert half_tls.exit_code == 2
    assert "--tls-cert and --tls-key go together" in half_tls.stderr


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`segsvc serve` in its own process on a free port; its address once it listens."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from segsvc.cli import main; main()",
            "serve",
            "--data",
            str(tmp_path / "data"),
            "--listen",
            "127.0.0.1:0",
            "--grace-seconds",
            "1",
            # Quiet: nobody reads stderr after the first line, and a full pipe would block.
            "--log-level",
            "warning",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        address = ""
        for line in process.stderr:
            match = re.search(r"listening on (\S+)", line)
            if match:
                address = match.group(1)
                break
        assert address, "the server never said where it listens"
        yield process, address
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_runs_until_sigterm(served: tuple[subprocess.Popen[str], str]) -> None:
    process, address = served
    cli = Cli(address)
    assert cli.json("segments", "create", "S", "--manual")["name"] == "S"
    assert [s["name"] for s in cli.json("segments", "list")["segments"]] == ["S"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def test_workspaces_are_separate(cli: Cli) -> None:
    cli.json("--workspace", "a", "segments", "create", "Only in a", "--manual")
    assert cli.json("--workspace", "b", "segments", "list") == {"segments": []}
    in_a = cli("--json", "segments", "list", env={"SEGSVC_WORKSPACE": "a"})
    assert [s["name"] for s in json.loads(in_a.stdout)["segments"]] == ["Only in a"]


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Cli]:
    """A server that takes a write token and a read token for workspace acme."""
    from segsvc.api.server import create_server

    tokens = tmp_path / "tokens.jsonl"
    tokens.write_text(
        "".join(
            json.dumps(
                {
                    "token_sha256": hashlib.sha256(t.encode()).hexdigest(),
                    "workspace": "acme",
                    "role": role,
                }
            )
            + "\n"
            for t, role in (("w-secret", "write"), ("r-secret", "read"))
        )
    )
    config = Config(data_dir=tmp_path / "data", listen="127.0.0.1:0", tokens_file=tokens)
    server, port = create_server(config)
    try:
        yield Cli(f"127.0.0.1:{port}")
    finally:
        server.stop(grace=None)


def test_tokens_are_sent_as_bearer_metadata(secured: Cli) -> None:
    anonymous = secured("segments", "list")
    assert anonymous.exit_code == 2
    assert anonymous.stderr.startswith("error: UNAUTHENTICATED")

    created = secured("--json", "--token", "w-secret", "segments", "create", "S", "--manual")
    assert created.exit_code == 0, created.stderr
    listed = secured("--json", "segments", "list", env={"SEGSVC_TOKEN": "r-secret"})
    assert [s["name"] for s in json.loads(listed.stdout)["segments"]] == ["S"]

    read_only = secured("--token", "r-secret", "segments", "create", "T", "--manual")
    assert read_only.exit_code == 2
    assert read_only.stderr.startswith("error: PERMISSION_DENIED")
    elsewhere = secured("--token", "w-secret", "--workspace", "other", "segments", "list")
    assert elsewhere.exit_code == 2
    assert elsewhere.stderr.startswith("error: PERMISSION_DENIED")
