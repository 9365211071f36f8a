"""`pip install segsvc` without extras is a light client: no numpy, LMDB or bitmaps, and it
talks to a server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CLIENT_SCRIPT = """
import importlib.util, json, sys
from segsvc.client import Client
from segsvc.v1 import people_pb2, types_pb2

heavy = [m for m in ("numpy", "lmdb", "pyroaring", "msgpack") if importlib.util.find_spec(m)]
with Client(sys.argv[1], workspace="light") as client:
    client.people.UpsertPeople(
        people_pb2.UpsertPeopleRequest(people=[people_pb2.PersonUpsert(id="ann", email="Ann@X.io")])
    )
    found = client.people.GetPerson(
        people_pb2.GetPersonRequest(person=types_pb2.PersonRef(email="ann@x.io"))
    ).person
print(json.dumps({"heavy": heavy, "id": found.id, "email": found.email}))
"""


def test_client_only_install_talks_to_a_server(api, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    started = time.monotonic()
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(REPO)],
        check=True,
        cwd=tmp_path,
    )
    print(f"client-only install took {time.monotonic() - started:.1f} s")
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", CLIENT_SCRIPT, api.address],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    assert json.loads(result.stdout) == {"heavy": [], "id": "ann", "email": "ann@x.io"}
    # The command is there too, and says what `serve` would need.
    serve = subprocess.run(
        [str(venv / "bin" / "segsvc"), "serve", "--data", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert serve.returncode == 2
    assert "pip install 'segsvc[server]'" in serve.stderr
    assert not (tmp_path / "d").exists()

    # The tokens tooling needs none of the server's dependencies.
    def tokens(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(venv / "bin" / "segsvc"), "--json", "tokens", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={"SEGSVC_TOKENS_FILE": str(tmp_path / "tokens")},
        )

    added = tokens("add", "--workspace", "light", "--role", "write", "--name", "etl")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["name"] == "etl"
    assert json.loads(tokens("list").stdout) == {
        "tokens": [{"name": "etl", "workspace": "light", "role": "write"}]
    }
    assert tokens("revoke", "etl").returncode == 0
    assert json.loads(tokens("list").stdout) == {"tokens": []}

    # Importing files as columns needs pyarrow (the `segsvc[import]` extra): one line says so.
    (tmp_path / "people.csv").write_text("id\nann\n", encoding="utf-8")
    imported = subprocess.run(
        [str(venv / "bin" / "segsvc"), "--server", api.address, "people", "import", "people.csv"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert imported.returncode == 2
    assert imported.stderr.strip().endswith("pip install 'segsvc[import]'")

    # And what the change-feed relay would need.
    relay = subprocess.run(
        [
            str(venv / "bin" / "segsvc"),
            "relay-changes",
            "--workspace",
            "w",
            "--nats",
            "nats://127.0.0.1:4222",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert relay.returncode == 2
    assert "pip install 'segsvc[relay]'" in relay.stderr
