"""`segsvc serve` as a real process, and the token and workspace the client sends."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_harness import Cli
from click.testing import CliRunner
from server_harness import remount, serve_command

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
        # Nobody reads the rest of the log, but a full pipe would block the server.
        threading.Thread(target=process.stderr.read, daemon=True).start()
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


# -- refused starts: one line `segsvc: <why>`, exit 2, nothing written -----------------------


def run_serve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from segsvc.cli import main; main()", "serve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_refused(result: subprocess.CompletedProcess[str], reason: str) -> None:
    """Exit 2 and exactly one line on stderr: `segsvc: ` and `reason` in it (no traceback,
    no usage block)."""
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("segsvc: "), result.stderr
    assert reason in result.stderr


@pytest.fixture(scope="module")
def pem_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A certificate and its key, the key of another certificate, the key encrypted, and a
    file that is no PEM at all."""
    folder = tmp_path_factory.mktemp("pem")
    files = {name: folder / f"{name}.pem" for name in ("cert", "key", "other_cert", "other_key")}
    for cert, key in (("cert", "key"), ("other_cert", "other_key")):
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-subj", "/CN=localhost", "-keyout", str(files[key]), "-out", str(files[cert]),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
    files["encrypted_key"] = folder / "encrypted_key.pem"
    subprocess.run(
        [
            "openssl", "pkey", "-in", str(files["key"]), "-aes256", "-passout", "pass:secret",
            "-out", str(files["encrypted_key"]),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    files["garbage"] = folder / "garbage.pem"
    files["garbage"].write_text("this is not a key\n")
    return files


def _token_line(**entry: object) -> str:
    base: dict[str, object] = {"token_sha256": hashlib.sha256(b"t").hexdigest(), "role": "read"}
    return json.dumps({**base, **entry}) + "\n"


@pytest.mark.parametrize(
    ("tokens", "reason"),
    [
        (_token_line(workspace="../acme"), "tokens:1: workspace name '../acme' must be 1-64"),
        (_token_line(workspace="acme\n"), "tokens:1: workspace name 'acme\\n' must be"),
        (_token_line(workspace=""), "tokens:1: workspace name '' must be"),
        (_token_line(workspace=7), "tokens:1: workspace must be a string, not 7"),
        (_token_line(workspace="a", role=["admin"]), "tokens:1: role must be read, write or"),
        (_token_line(workspace="a", expires="2027-01-01"), "tokens:1: unknown key 'expires'"),
        (_token_line(workspace="a") + _token_line(workspace="b"), "tokens:2: the same token as"),
        ("[1, 2]\n", "tokens:1: expected {"),
    ],
)
def test_serve_refuses_a_bad_tokens_file(tmp_path: Path, tokens: str, reason: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(tokens)
    data = tmp_path / "data"
    assert_refused(run_serve("--data", str(data), "--tokens-file", str(path)), reason)
    assert not data.exists()


@pytest.mark.parametrize(
    ("cert", "key", "reason"),
    [
        ("cert", "garbage", "the TLS key {key} holds no PEM private key"),
        ("cert", "other_key", "the TLS key {key} is not the key of the certificate in {cert}"),
        ("cert", "encrypted_key", "the TLS key {key} is encrypted"),
        ("key", "cert", "the TLS certificate {cert} holds no PEM certificate (it holds a private"),
        ("garbage", "key", "the TLS certificate {cert} holds no PEM certificate"),
    ],
)
def test_serve_refuses_bad_tls_files(
    tmp_path: Path, pem_files: dict[str, Path], cert: str, key: str, reason: str
) -> None:
    data = tmp_path / "data"
    cert_path, key_path = pem_files[cert], pem_files[key]
    result = run_serve(
        "--data", str(data), "--tls-cert", str(cert_path), "--tls-key", str(key_path)
    )
    assert_refused(result, reason.format(cert=cert_path, key=key_path))
    assert not data.exists()


def test_serve_refuses_usage_mistakes_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    missing = tmp_path / "no-such-tokens"
    assert_refused(
        run_serve("--data", str(data), "--tokens-file", str(missing)),
        # (click names the variable too: the value may have come from there)
        f"Invalid value for '--tokens-file' (env var: 'SEGSVC_TOKENS_FILE'): File '{missing}' "
        "does not exist",
    )
    assert_refused(run_serve("--data", str(data), "--tls-key", str(missing.parent)), "--tls-key")
    assert_refused(run_serve("--data", str(data), "--no-such-option"), "--no-such-option")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert_refused(
        run_serve("--data", str(a_file / "data")),
        f"cannot create the data directory {a_file / 'data'}: {a_file} is a file",
    )
    assert not data.exists()


def test_a_second_serve_on_the_same_data_or_port_is_refused(
    served: tuple[subprocess.Popen[str], str], tmp_path: Path
) -> None:
    process, address = served
    cli = Cli(address)
    cli.json("segments", "create", "Kept", "--manual")
    assert_refused(
        run_serve("--data", str(tmp_path / "data"), "--listen", "127.0.0.1:0"),
        f"{tmp_path / 'data'} is in use by another segsvc process",
    )
    other = tmp_path / "other"
    assert_refused(
        run_serve("--data", str(other), "--listen", address),
        f"cannot listen on {address}: another process listens there",
    )
    assert not other.exists()
    # The first server was not disturbed, and stops cleanly.
    assert [s["name"] for s in cli.json("segments", "list")["segments"]] == ["Kept"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def test_serve_refuses_tls_files_it_cannot_read(tmp_path: Path, pem_files: dict[str, Path]) -> None:
    data = tmp_path / "data"
    missing = tmp_path / "missing.pem"
    assert_refused(
        run_serve("--data", str(data), "--tls-cert", str(missing), "--tls-key", str(missing)),
        f"File '{missing}' does not exist",
    )
    assert_refused(
        run_serve("--data", str(data), "--tls-cert", str(tmp_path), "--tls-key", str(tmp_path)),
        f"File '{tmp_path}' is a directory",
    )
    der = tmp_path / "cert.der"
    subprocess.run(
        ["openssl", "x509", "-in", str(pem_files["cert"]), "-outform", "DER", "-out", str(der)],
        check=True,
    )
    assert_refused(
        run_serve("--data", str(data), "--tls-cert", str(der), "--tls-key", str(pem_files["key"])),
        f"the TLS certificate {der} is not PEM text (DER? convert it with openssl)",
    )
    assert not data.exists()


def test_serve_refuses_a_data_path_that_is_a_file(tmp_path: Path) -> None:
    a_file = tmp_path / "data"
    a_file.write_text("not a store")
    assert_refused(run_serve("--data", str(a_file)), f"Directory '{a_file}' is a file")
    assert a_file.read_text() == "not a store"


def test_serve_refuses_a_data_directory_it_cannot_write(
    tmp_path: Path, small_disk: Callable[[int], Path]
) -> None:
    disk = small_disk(8)
    existing = disk / "existing"
    existing.mkdir()
    remount(disk, "ro")
    assert_refused(
        run_serve("--data", str(existing)),
        f"the data directory {existing} is on a read-only filesystem",
    )
    new = disk / "new" / "data"
    assert_refused(
        run_serve("--data", str(new)),
        f"cannot create the data directory {new}: {disk} is on a read-only filesystem",
    )
    assert sorted(p.name for p in disk.iterdir()) == ["existing"]
    assert list(existing.iterdir()) == []


def test_serve_refuses_a_new_store_on_a_full_disk(
    tmp_path: Path, small_disk: Callable[[int], Path]
) -> None:
    disk = small_disk(8)
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    # 1 MiB left: less than the 8 MiB disk's reserve (1 MiB) and room to write beyond it.
    (disk / "filler").write_bytes(b"\0" * (free - (1 << 20)))
    data = disk / "data"
    assert_refused(run_serve("--data", str(data)), f"the disk holding {data} is full: 1MiB free")
    assert not data.exists()
    (disk / "filler").unlink()
    # With room again the same start goes ahead.
    started = subprocess.Popen(
        [*serve_command(), "--data", str(data), "--listen", "127.0.0.1:0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert started.stderr is not None
        assert "segsvc listening on" in started.stderr.readline()
        started.send_signal(signal.SIGTERM)
        assert started.wait(timeout=30) == 0
    finally:
        if started.poll() is None:
            started.kill()
            started.wait()
    assert (data / "data.mdb").exists()


def test_a_store_refused_after_the_port_is_bound_is_one_line_and_creates_nothing(
    tmp_path: Path,
) -> None:
    """Every check passes, the port is bound, and then opening the store fails (here: a
    lock file without its data file, a lost store): still one line, and nothing added."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "segsvc.lock").write_text("")
    assert_refused(
        run_serve("--data", str(data)),
        f"{data / 'data.mdb'} is missing, but {data} held a segsvc store",
    )
    assert sorted(p.name for p in data.iterdir()) == ["segsvc.lock"]
