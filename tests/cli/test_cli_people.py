"""`segsvc people ...` and `events track` against a real server."""

from __future__ import annotations

import json
from pathlib import Path

from cli_harness import Cli


def test_import_csv_types_values_and_reports_bad_rows(cli: Cli, tmp_path: Path) -> None:
    source = tmp_path / "customers.csv"
    source.write_text(
        "id,email,unsubscribed,tags,plan,ltv,vip,signed_up,zip,note\n"  # the header
        "u1,Alice@Example.com,false,beta|early,pro,120.5,true,2024-03-01T10:00:00Z,01234,\n"
        'u2,,,,free,0,false,2024-03-02,90210,"a, quoted\nnote"\n'  # row 2, on two lines
        "u3,c@example.com,maybe,,pro,1,,,,\n"  # row 3: bad unsubscribed
        ",nobody@example.com,,,,,,,,\n"  # row 4: no id
        "u4,d@example.com,true,,team,,,,,\n",  # row 5
        encoding="utf-8",
    )
    result = cli("--json", "people", "import", str(source), "--types", "ltv=number")
    assert result.exit_code == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["created"], summary["rejected"]) == (5, 3, 2)
    assert [(e["row"], e["key"]) for e in summary["errors"]] == [(3, "u3"), (4, "")]
    assert summary["errors"][0]["error"] == (
        "unsubscribed: 'maybe' is not a boolean (true/false, yes/no, 1/0)"
    )
    assert summary["errors"][1]["error"] == "id: empty; every row needs an id"

    alice = cli.json("people", "get", "u1")
    assert alice["email"] == "alice@example.com"  # case-folded by the server
    assert alice["unsubscribed"] is False
    assert sorted(alice["tags"]) == ["beta", "early"]
    attributes = alice["attributes"]
    assert attributes["plan"] == {"string_value": "pro"}
    assert attributes["ltv"] == {"number_value": 120.5}
    assert attributes["vip"] == {"bool_value": True}
    assert attributes["signed_up"] == {"timestamp_value": "2024-03-01T10:00:00Z"}
    assert attributes["zip"] == {"string_value": "01234"}  # a leading zero keeps it text
    assert "note" not in attributes  # empty cells are skipped

    bob = cli.json("people", "get", "u2")
    assert bob["email"] == ""
    assert bob["attributes"]["zip"] == {"number_value": 90210}
    assert bob["attributes"]["signed_up"] == {"timestamp_value": "2024-03-02T00:00:00Z"}
    assert bob["attributes"]["note"] == {"string_value": "a, quoted\nnote"}

    assert cli.json("people", "get", "d@example.com", "--by", "email")["unsubscribed"] is True
    human = cli("people", "get", "u1")
    assert human.exit_code == 0
    assert "alice@example.com" in human.stdout and "120.5" in human.stdout


def test_import_refuses_a_file_without_the_id_column(cli: Cli, tmp_path: Path) -> None:
    source = tmp_path / "no-id.csv"
    source.write_text("email,plan\na@example.com,pro\n", encoding="utf-8")
    result = cli("people", "import", str(source))
    assert result.exit_code == 2
    assert "no 'id' column" in result.stderr
    again = cli("people", "import", str(source), "--id-column", "email")
    assert again.exit_code == 0, again.stderr
    assert cli.json("people", "get", "a@example.com")["attributes"]["plan"] == {
        "string_value": "pro"
    }


def test_import_flat_jsonl(cli: Cli, tmp_path: Path) -> None:
    source = tmp_path / "people.jsonl"
    source.write_text(
        '{"id": "j1", "email": "j1@example.com", "score": 7, "tags": ["a", "b"]}\n'
        "\n"
        '{"id": "j2", "active": true, "since": "2020-01-01"}\n',
        encoding="utf-8",
    )
    summary = cli.json("people", "import", str(source))
    assert (summary["rows"], summary["created"], summary["rejected"]) == (2, 2, 0)
    j1 = cli.json("people", "get", "j1")
    assert j1["attributes"]["score"] == {"number_value": 7}
    assert sorted(j1["tags"]) == ["a", "b"]
    j2 = cli.json("people", "get", "j2")
    assert j2["attributes"]["active"] == {"bool_value": True}
    assert j2["attributes"]["since"] == {"timestamp_value": "2020-01-01T00:00:00Z"}


def test_upsert_jsonl_reports_lines_the_client_and_server_reject(cli: Cli, tmp_path: Path) -> None:
    source = tmp_path / "upserts.jsonl"
    source.write_text(
        '{"id": "p1", "email": "p1@example.com"}\n'  # line 1
        '{"id": "p2", "emial": "typo"}\n'  # line 2: unknown field, refused by the client
        "\n"  # line 3: skipped
        '{"id": "p3", "email": "p1@example.com"}\n'  # line 4: email taken, refused by server
        '{"id": "p4", "attributes": {"n": {"number_value": 4}}}\n',  # line 5
        encoding="utf-8",
    )
    result = cli("--json", "people", "upsert", str(source))
    assert result.exit_code == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["created"], summary["rejected"]) == (4, 2, 2)
    assert [e["line"] for e in summary["errors"]] == [2, 4]
    assert "emial" in summary["errors"][0]["error"]
    assert summary["errors"][1]["key"] == "p3"
    assert cli.json("people", "get", "p4")["attributes"]["n"] == {"number_value": 4}
    missing = cli("people", "get", "p3")
    assert missing.exit_code == 2
    assert missing.stderr.startswith("error: NOT_FOUND: ")


def test_delete_people(loaded: Cli) -> None:
    loaded.json("segments", "create", "Beta", "--manual")
    loaded.json("members", "add", "Beta", "u1", "u2")
    result = loaded("--json", "people", "delete", "u1", "ghost")
    assert result.exit_code == 1
    outcomes = [r["outcome"] for r in json.loads(result.stdout)["results"]]
    assert outcomes == ["OUTCOME_DELETED", "OUTCOME_NOT_FOUND"]
    assert [m["id"] for m in loaded.json("members", "list", "Beta")["members"]] == ["u2"]
    assert loaded("people", "get", "u1").exit_code == 2


def test_track_events(loaded: Cli, tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    source.write_text(
        '{"person": {"id": "u1"}, "name": "purchase", "properties": '
        '{"plan": {"string_value": "pro"}}}\n'
        '{"person": {"id": "new"}, "name": "signup"}\n'
        "not json\n",
        encoding="utf-8",
    )
    result = loaded("--json", "events", "track", str(source), "--create-missing-people")
    assert result.exit_code == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["tracked"], summary["rejected"]) == (3, 2, 1)
    assert [e["line"] for e in summary["errors"]] == [3]
    assert loaded.json("people", "get", "new")["id"] == "new"
