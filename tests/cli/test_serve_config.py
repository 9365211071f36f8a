"""How `segsvc serve` is configured (options, SEGSVC_* environment variables, sizes, the
absolute data path, --version). What a real server then says: tests/api/test_startup_lines.py."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st

from segsvc.cli import main
from segsvc.cli.serve import serve
from segsvc.config import Config
from segsvc.sizes import format_size, parse_size
from segsvc.tokens_file import add_token


@pytest.fixture
def configs(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    """The Config each `serve` run below would have served (the server itself not run)."""
    import segsvc.api.server

    seen: list[Config] = []
    monkeypatch.setattr(segsvc.api.server, "serve", seen.append)
    return seen


def run_serve(args: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner(env=env).invoke(main, ["serve", *args])


def test_every_serve_option_comes_from_its_environment_variable_shown_in_help() -> None:
    # Whitespace collapsed: click wraps a long option's help, "env var:" included.
    help_text = " ".join(CliRunner().invoke(main, ["serve", "--help"]).output.split())
    options = [p for p in serve.params if isinstance(p, click.Option) and p.name != "help"]
    assert len(options) >= 15
    for option in options:
        long_name = next(o for o in option.opts if o.startswith("--"))
        expected = "SEGSVC_" + long_name[2:].replace("-", "_").upper()
        assert option.envvar == expected, long_name
        assert f"env var: {expected}" in help_text, long_name


def test_environment_configures_serve_and_the_command_line_wins(
    configs: list[Config], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    add_token(tokens, "acme", "write")
    env = {
        "SEGSVC_DATA": str(tmp_path / "from-env"),
        "SEGSVC_LISTEN": "127.0.0.1:6001",
        "SEGSVC_MAP_SIZE": "512MiB",
        "SEGSVC_TICK_SECONDS": "7",
        "SEGSVC_CHANGE_RETENTION_DAYS": "3",
        "SEGSVC_EVENT_RETENTION_DAYS": "45",
        "SEGSVC_SNAPSHOT_RETENTION_HOURS": "2",
        "SEGSVC_CHECKPOINT_EVERY": "123",
        "SEGSVC_GRACE_SECONDS": "2.5",
        "SEGSVC_WORKERS": "5",
        "SEGSVC_DEFAULT_REGION": "GB",
        "SEGSVC_TOKENS_FILE": str(tokens),
        "SEGSVC_LOG_LEVEL": "WARNING",
    }
    result = run_serve([], env)
    assert result.exit_code == 0, result.output
    from_env = configs.pop()
    assert from_env.data_dir == tmp_path / "from-env"
    assert from_env.listen == "127.0.0.1:6001"
    assert from_env.map_size == 512 << 20
    assert from_env.tick_seconds == 7
    assert from_env.change_retention_seconds == 3 * 86400
    assert from_env.event_retention_seconds == 45 * 86400
    assert from_env.snapshot_retention_seconds == 2 * 3600
    assert from_env.checkpoint_every_ops == 123
    assert from_env.grace_seconds == 2.5
    assert from_env.workers == 5
    assert from_env.default_region == "GB"
    assert from_env.tokens_file == tokens

    result = run_serve(["--listen", "127.0.0.1:6002", "--map-size", "1GiB", "--workers", "9"], env)
    assert result.exit_code == 0, result.output
    overridden = configs.pop()
    assert (overridden.listen, overridden.map_size, overridden.workers) == (
        "127.0.0.1:6002",
        1 << 30,
        9,
    )
    assert overridden.tick_seconds == 7  # the rest still from the environment


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64GiB", 64 << 30),
        ("512MiB", 512 << 20),
        ("1TB", 10**12),
        ("1.5GiB", 3 << 29),
        ("2 TiB", 2 << 40),
        ("1048576", 1 << 20),
        ("100mb", 100 * 10**6),
    ],
)
def test_map_size_takes_units(configs: list[Config], text: str, size: int) -> None:
    result = run_serve(["--map-size", text])
    assert result.exit_code == 0, result.output
    assert configs.pop().map_size == size


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("64XB", "'64XB' is not a size: give bytes or a number with a unit"),
        ("lots", "'lots' is not a size"),
        ("-1GiB", "'-1GiB' is not a size"),
        ("1.5", "'1.5' is not a whole number of bytes"),
        ("1000", "1000 is less than the minimum, 1MiB"),
    ],
)
def test_a_bad_map_size_is_one_line(configs: list[Config], text: str, reason: str) -> None:
    result = run_serve(["--map-size", text])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("segsvc: Invalid value for '--map-size'")
    assert reason in result.stderr
    assert configs == []


def test_help_shows_the_default_map_size_in_units() -> None:
    # Whitespace collapsed: click wraps a long option's help, "env var:" included.
    help_text = " ".join(CliRunner().invoke(main, ["serve", "--help"]).output.split())
    assert re.search(r"--map-size SIZE .*default: 64GiB", help_text), help_text


@given(st.integers(min_value=0, max_value=1 << 50))
def test_sizes_read_back_as_they_are_shown(size: int) -> None:
    assert parse_size(format_size(size)) == size


def test_data_is_resolved_to_an_absolute_path(
    configs: list[Config], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for given_as, resolved in (
        ("data", tmp_path / "data"),
        ("./x/../data", tmp_path / "data"),
        ("link", tmp_path / "real"),
    ):
        assert run_serve(["--data", given_as]).exit_code == 0
        assert configs.pop().data_dir == resolved
    assert run_serve([], {"SEGSVC_DATA": "rel"}).exit_code == 0
    assert configs.pop().data_dir == tmp_path / "rel"


def test_version_is_the_installed_package_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"segsvc, version {version('segsvc')}\n"
