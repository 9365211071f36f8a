"""Running the real `segsvc` command in-process, for the CLI tests.

A module of its own (not conftest) so test modules can import `Cli`; pytest puts this folder
on sys.path, as it has no __init__.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from click.testing import CliRunner, Result

from segsvc.cli import main


@dataclass
class Cli:
    """Runs `segsvc --server ADDRESS ARGS...` in-process and returns click's Result
    (exit_code, stdout, stderr kept apart)."""

    server: str

    def __call__(
        self, *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> Result:
        return CliRunner(env=env).invoke(
            main, ["--server", self.server, *args], input=input, catch_exceptions=False
        )

    def json(self, *args: str, exit_code: int = 0) -> Any:
        """Runs with --json, checks the exit code and parses stdout as one JSON document."""
        result = self("--json", *args)
        assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr)
        return json.loads(result.stdout)
