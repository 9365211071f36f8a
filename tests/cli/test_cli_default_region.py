"""`segsvc serve --default-region`: checked against the regions phonenumbers knows."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from segsvc.cli import main
from segsvc.config import Config


def served_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str) -> Config:
    import segsvc.api.server

    seen: list[Config] = []
    monkeypatch.setattr(segsvc.api.server, "serve", seen.append)
    result = CliRunner().invoke(main, ["serve", "--data", str(tmp_path / "d"), *args])
    assert result.exit_code == 0, result.output
    (config,) = seen
    return config


def test_the_default_region_is_us_upper_cased_or_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert served_config(monkeypatch, tmp_path).default_region == "US"
    given = served_config(monkeypatch, tmp_path, "--default-region", "de")
    assert given.default_region == "DE"
    refused = served_config(monkeypatch, tmp_path, "--default-region", "none")
    assert refused.default_region is None


def test_an_unknown_region_is_refused_before_serving(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--data", str(tmp_path), "--default-region", "XX"])
    assert result.exit_code == 2
    assert "'XX' is not a region phonenumbers knows" in result.stderr
