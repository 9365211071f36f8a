"""Node for the tests that run a client in another language (tests/node/): node and npm,
installed from Debian's packages when missing and we may (root, apt), and the packages of
tests/node/package-lock.json, installed when the lock file changed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parent / "node"


def _ensure_node() -> None:
    if shutil.which("node") and shutil.which("npm"):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "nodejs", "npm"], check=True)
        return
    pytest.fail("the Node tests need node and npm: install them (e.g. apt install nodejs npm)")


@pytest.fixture(scope="session")
def node_dir() -> Path:
    """tests/node with its node_modules installed."""
    _ensure_node()
    lock = NODE_DIR / "package-lock.json"
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run(
            ["npm", "ci", "--silent", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True
        )
    return NODE_DIR
