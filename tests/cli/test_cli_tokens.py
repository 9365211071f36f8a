"""`segsvc tokens add | list | revoke` on a tokens file: secrets shown once and never stored,
names unique, the file's other lines and permissions kept, old files without names read."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from segsvc.cli import main
from segsvc.tokens_file import load_tokens


def tokens(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner(env=env).invoke(main, ["tokens", *args])


def test_add_prints_a_new_token_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    first = tokens("add", "--tokens-file", str(path), "--workspace", "acme", "--role", "write")
    assert first.exit_code == 0, first.stderr
    secret = first.stdout.strip()
    assert len(secret) >= 43 and "\n" not in secret
    assert "shown only this once" in first.stderr and secret not in first.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert secret not in text
    assert json.loads(text) == {
        "token_sha256": hashlib.sha256(secret.encode()).hexdigest(),
        "workspace": "acme",
        "role": "write",
        "name": "acme-write-1",
    }

    # The environment names the file; --json gives the token with its entry.
    second = tokens(
        "add",
        "--workspace",
        "acme",
        "--role",
        "write",
        env={"SEGSVC_TOKENS_FILE": str(path)},
    )
    assert second.exit_code == 0, second.stderr
    assert second.stdout.strip() != secret
    as_json = CliRunner(env={"SEGSVC_TOKENS_FILE": str(path)}).invoke(
        main, ["--json", "tokens", "add", "--workspace", "b", "--role", "admin", "--name", "ops"]
    )
    assert as_json.exit_code == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["name"] == "ops" and document["role"] == "admin"
    assert [(t.name, t.workspace, t.role) for t in load_tokens(path)] == [
        ("acme-write-1", "acme", "write"),
        ("acme-write-2", "acme", "write"),
        ("ops", "b", "admin"),
    ]
    assert hashlib.sha256(document["token"].encode()).digest() == load_tokens(path)[2].sha256


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--workspace", "acme", "--role", "read", "--name", "etl"], "already has a token named"),
        (["--workspace", "../x", "--role", "read"], "workspace name '../x' must be 1-64"),
        (["--workspace", "a", "--role", "read", "--name", "a b"], "token name 'a b' must be"),
        (["--workspace", "a", "--role", "owner"], "'owner' is not one of 'read', 'write', 'admin'"),
    ],
)
def test_add_refuses_mistakes_and_changes_nothing(
    tmp_path: Path, args: list[str], reason: str
) -> None:
    path = tmp_path / "tokens"
    setup = ("add", "--tokens-file", str(path), "--workspace", "acme", "--role", "read")
    assert tokens(*setup, "--name", "etl").exit_code == 0
    before = path.read_text()
    refused = tokens("add", "--tokens-file", str(path), *args)
    assert refused.exit_code == 2
    assert reason in refused.stderr
    assert refused.stdout == ""
    assert path.read_text() == before


def test_list_shows_names_roles_workspaces_but_no_secret_or_hash(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    digest = hashlib.sha256(b"old").hexdigest()
    # A file from before names existed, with a comment: still read, the entry unnamed.
    path.write_text(
        f'# ops team\n{{"token_sha256": "{digest}", "workspace": "w", "role": "read"}}\n'
    )
    added = tokens("add", "--tokens-file", str(path), "--workspace", "acme", "--role", "admin")
    secret = added.stdout.strip()
    listed = tokens("list", "--tokens-file", str(path))
    assert listed.exit_code == 0, listed.stderr
    assert "(unnamed, line 2)" in listed.stdout and "acme-admin-1" in listed.stdout
    as_json = CliRunner().invoke(main, ["--json", "tokens", "list", "--tokens-file", str(path)])
    assert json.loads(as_json.stdout) == {
        "tokens": [
            {"name": None, "workspace": "w", "role": "read"},
            {"name": "acme-admin-1", "workspace": "acme", "role": "admin"},
        ]
    }
    for output in (listed.stdout, as_json.stdout):
        assert digest not in output and secret not in output
        assert hashlib.sha256(secret.encode()).hexdigest() not in output


def test_a_bad_tokens_file_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text('# fine\n{"token_sha256": "nothex", "workspace": "w", "role": "read"}\n')
    for args in (["list"], ["revoke", "x"], ["add", "--workspace", "w", "--role", "read"]):
        refused = tokens(*args, "--tokens-file", str(path))
        assert refused.exit_code == 2
        assert refused.stderr == f"error: {path}:2: token_sha256 must be 64 hex digits\n"


def test_revoke_removes_that_token_only_and_keeps_the_rest_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# the tokens of acme\n\n")
    path.chmod(0o640)
    for name in ("etl", "dashboard", "ops"):
        tokens("add", "--tokens-file", str(path), "--workspace", "acme", "--role", "read")
        tokens(
            "add", "--tokens-file", str(path), "--workspace", "x", "--role", "read", "--name", name
        )
    before = path.read_text().splitlines()
    revoked = tokens("revoke", "--tokens-file", str(path), "dashboard")
    assert revoked.exit_code == 0, revoked.stderr
    assert "revoked token 'dashboard'" in revoked.stderr
    after = path.read_text().splitlines()
    assert after == [line for line in before if '"dashboard"' not in line]
    assert len(after) == len(before) - 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert "dashboard" not in {t.name for t in load_tokens(path)}

    again = tokens("revoke", "--tokens-file", str(path), "dashboard")
    assert again.exit_code == 2
    assert "has no token named 'dashboard' (names: acme-read-1, acme-read-2" in again.stderr
    assert path.read_text().splitlines() == after


def test_a_name_used_twice_in_the_file_is_refused_with_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    lines = [
        json.dumps(
            {"token_sha256": hashlib.sha256(s).hexdigest(), "workspace": "w", "role": "read"}
            | {"name": "twin"}
        )
        for s in (b"a", b"b")
    ]
    path.write_text("\n".join(lines) + "\n")
    refused = tokens("list", "--tokens-file", str(path))
    assert refused.exit_code == 2
    assert f"{path}:2: the name 'twin' is taken by line 1" in refused.stderr
