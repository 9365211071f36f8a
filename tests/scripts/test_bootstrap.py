"""scripts/bootstrap.sh with a stand-in for python: which installs it asks pip for, when, and
that runs started together take turns (one creates .venv, the others wait for it).

The stand-in records every venv creation and pip install in a log and, like the real venv
module, makes .venv/bin/python some time before pip is in it: the moment a second run used
to find a half-made .venv and fail with "No module named pip".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FAKE_PYTHON = r"""#!/usr/bin/env bash
set -euo pipefail
venv_of_this=$(dirname "$(dirname "$0")")
case "$1" in
  --version) echo "Python 3.11.99" ;;
  -c)
    if [[ "$2" == *"import pip"* ]]; then
      [ -f "$venv_of_this/pip-ready" ] || { echo "No module named pip" >&2; exit 1; }
    else
      exec "$REAL_PYTHON" "$@"  # the version check and the lock
    fi ;;
  -m)
    target=${@: -1}
    case "$2" in
      venv)
        echo "venv start" >> "$FAKE_LOG"
        rm -rf "$target"; mkdir -p "$target/bin"; cp "$0" "$target/bin/python"
        sleep "$FAKE_SLEEP"
        touch "$target/pip-ready"
        echo "venv end" >> "$FAKE_LOG" ;;
      pip)
        [ -f "$venv_of_this/pip-ready" ] || { echo "No module named pip" >&2; exit 1; }
        echo "pip start ${target#"$FAKE_REPO"}" >> "$FAKE_LOG"
        sleep "$FAKE_SLEEP"
        echo "pip end" >> "$FAKE_LOG" ;;
    esac ;;
esac
"""


class Clone:
    """A copy of bootstrap.sh in an empty repository, and the stand-in python for it."""

    def __init__(self, root: Path, sleep: float) -> None:
        self.repo = root / "repo"
        (self.repo / "scripts").mkdir(parents=True)
        shutil.copy(REPO / "scripts" / "bootstrap.sh", self.repo / "scripts" / "bootstrap.sh")
        (self.repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
        self.python = root / "python3"
        self.python.write_text(FAKE_PYTHON)
        self.python.chmod(0o755)
        self.log = root / "calls.log"
        self.env = {
            **os.environ,
            "PYTHON": str(self.python),
            "REAL_PYTHON": sys.executable,
            "FAKE_LOG": str(self.log),
            "FAKE_REPO": str(self.repo),
            "FAKE_SLEEP": str(sleep),
        }

    def start(self, want: str) -> subprocess.Popen[str]:
        script = 'set -euo pipefail; source "$1/scripts/bootstrap.sh"; segsvc_bootstrap "$2"'
        return subprocess.Popen(
            ["bash", "-c", script, "bootstrap", str(self.repo), want],
            env=self.env,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, want: str) -> str:
        """Bootstraps for `want`; its stderr."""
        process = self.start(want)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
        return stderr

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def clone(tmp_path: Path) -> Clone:
    return Clone(tmp_path, sleep=0)


def test_serve_installs_the_server_only_and_test_adds_the_tools(clone: Clone) -> None:
    said = clone.run("server")
    assert clone.calls() == ["venv start", "venv end", "pip start [server]", "pip end"]
    assert "creating .venv" in said
    assert "installing segsvc and the server's dependencies into .venv" in said
    assert "test tools" not in said

    assert clone.run("server") == ""  # nothing to do, nothing said
    said = clone.run("dev")
    assert clone.calls()[4:] == ["pip start [dev]", "pip end"]
    assert "the test tools" in said and "creating .venv" not in said
    assert clone.run("server") == "" and clone.run("dev") == ""
    assert len(clone.calls()) == 6

    # pyproject.toml changed: installed again, and only what is asked for.
    pyproject = clone.repo / "pyproject.toml"
    later = time.time() + 10
    os.utime(pyproject, (later, later))
    clone.run("server")
    assert clone.calls()[6:] == ["pip start [server]", "pip end"]


def test_a_half_made_venv_is_made_again(clone: Clone) -> None:
    venv_python = clone.repo / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    shutil.copy(clone.python, venv_python)  # a python, but no pip: a run killed midway
    clone.run("server")
    assert clone.calls() == ["venv start", "venv end", "pip start [server]", "pip end"]


def test_runs_started_together_take_turns(tmp_path: Path) -> None:
    clone = Clone(tmp_path, sleep=1)
    first = clone.start("server")
    for _ in range(600):  # until the first run holds the lock and is making .venv
        if clone.calls():
            break
        time.sleep(0.05)
    second = clone.start("dev")
    _, first_said = first.communicate(timeout=60)
    _, second_said = second.communicate(timeout=60)
    assert first.returncode == 0, first_said
    assert second.returncode == 0, second_said
    assert "waiting for another scripts/serve or scripts/test" in second_said
    # One .venv, made once; the installs one after the other, never overlapping.
    assert clone.calls() == [
        "venv start",
        "venv end",
        "pip start [server]",
        "pip end",
        "pip start [dev]",
        "pip end",
    ]
