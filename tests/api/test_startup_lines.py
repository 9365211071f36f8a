"""The two lines an operator reads first, from a real `segsvc serve`: the startup line (version,
address, absolute data directory, effective options, workspaces loaded, load time) and the
shutdown line (signal, how long the stop took, whether the checkpoint was written)."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path
from typing import Any

from api_harness import manual_segment, person, upsert
from server_harness import ServerProcess, Stubs

from segsvc.tokens_file import add_token


def records_of(server: ServerProcess, logger: str) -> list[str]:
    """The messages of `logger`'s own records in the server's text log."""
    pattern = re.compile(rf" [A-Z]+ {re.escape(logger)}: (.*)$")
    return [m.group(1) for line in server.log().splitlines() if (m := pattern.search(line))]


def test_startup_and_shutdown_lines(server_processes: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = server_processes(data, "--map-size", "2GiB", "--tick-seconds", "30")
    client = Stubs.connect(server.address)
    upsert(client, person("u1"), person("u2"), person("u3"))
    manual_segment(client, "S")
    client.channel.close()
    assert server.terminate() == 0

    started, stopped = records_of(server, "segsvc")
    assert started.startswith(f"segsvc listening on 127.0.0.1:{server.port} (data {data}) ")
    assert f" version {version('segsvc')};" in started
    for shown in ("map size 2GiB", "tick 30 s", "workers 16", "tokens off", "TLS off"):
        assert shown in started, started
    assert "workspaces: none;" in started
    assert re.search(r"loaded and replayed in \d+\.\d\d s, ready \d+\.\d\d s after start$", started)
    assert re.fullmatch(
        r"segsvc stopped on SIGTERM: the stop took \d+\.\d\d s \(grace 10 s\); "
        r"checkpoint written",
        stopped,
    ), stopped

    tokens = tmp_path / "tokens"
    add_token(tokens, "default", "read")
    again = server_processes(data, "--tokens-file", str(tokens))
    assert again.terminate() == 0
    restarted = records_of(again, "segsvc")[0]
    assert "workspaces: default (3 people, 1 segments);" in restarted, restarted
    assert "map size 64GiB" in restarted and "tokens on (1)" in restarted, restarted
