"""`segsvc members ...` against a real server: by hand, CSV import and export."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from cli_harness import Cli


def _ids(cli: Cli, segment: str) -> list[str]:
    return sorted(m["id"] for m in cli.json("members", "list", segment)["members"])


def test_add_list_remove_clear(loaded: Cli) -> None:
    loaded.json("segments", "create", "Beta", "--manual")

    added = loaded.json("members", "add", "Beta", "u1", "u2")
    assert [r["outcome"] for r in added["results"]] == ["OUTCOME_ADDED", "OUTCOME_ADDED"]
    by_email = loaded.json("members", "add", "Beta", "carol@example.com", "--by", "email")
    assert by_email["results"][0]["outcome"] == "OUTCOME_ADDED"
    assert _ids(loaded, "Beta") == ["u1", "u2", "u3"]
    listed = loaded.json("members", "list", "Beta")
    assert listed["total"] == 3
    assert {m["id"]: m["email"] for m in listed["members"]}["u1"] == "alice@example.com"

    # --limit stops the cursor paging early; the total still counts everyone.
    limited = loaded.json("members", "list", "Beta", "--limit", "2")
    assert len(limited["members"]) == 2 and limited["total"] == 3

    # A partial failure: one applied, one already there, one unknown -> exit 1.
    result = loaded("--json", "members", "add", "Beta", "u4", "u1", "nobody")
    assert result.exit_code == 1
    outcomes = [r["outcome"] for r in json.loads(result.stdout)["results"]]
    assert outcomes == ["OUTCOME_ADDED", "OUTCOME_ALREADY_MEMBER", "OUTCOME_NOT_FOUND"]
    human = loaded("members", "add", "Beta", "nobody")
    assert human.exit_code == 1
    assert "not found" in human.stdout and "rejected 1" in human.stdout

    removed = loaded.json("members", "remove", "Beta", "u2")
    assert removed["results"][0]["outcome"] == "OUTCOME_REMOVED"
    assert _ids(loaded, "Beta") == ["u1", "u3", "u4"]

    check = loaded.json("members", "check", "u1", "Beta")
    assert [r["member"] for r in check["results"]] == [True]
    assert loaded.json("members", "check", "u2", "Beta")["results"][0]["member"] is False

    cleared = loaded.json("members", "clear", "Beta", "--yes")
    assert cleared["removed"] == 3
    assert loaded.json("members", "list", "Beta") == {"total": 0, "members": []}


def test_clear_without_yes_and_no_terminal_changes_nothing(loaded: Cli) -> None:
    loaded.json("segments", "create", "Beta", "--manual")
    loaded.json("members", "add", "Beta", "u1")
    refused = loaded("members", "clear", "Beta", input="")
    assert refused.exit_code == 2
    assert "nothing was changed" in refused.stderr
    declined = loaded("members", "clear", "Beta", input="n\n")
    assert declined.exit_code == 2
    assert _ids(loaded, "Beta") == ["u1"]
    agreed = loaded("members", "clear", "Beta", input="y\n")
    assert agreed.exit_code == 0
    assert _ids(loaded, "Beta") == []


def test_unknown_segment_is_an_error(loaded: Cli) -> None:
    by_name = loaded("members", "add", "Nope", "u1")
    assert by_name.exit_code == 2
    assert "no segment is named 'Nope'" in by_name.stderr
    by_id = loaded("members", "list", "424242")
    assert by_id.exit_code == 2
    assert by_id.stderr.startswith("error: NOT_FOUND: ")


def test_import_reports_bad_rows_and_writes_them_to_the_errors_file(
    loaded: Cli, tmp_path: Path
) -> None:
    loaded.json("segments", "create", "Imported", "--manual")
    loaded.json("members", "add", "Imported", "u3")  # carol: already a member
    source = tmp_path / "signups.csv"
    source.write_bytes(
        "\ufeffemail,name\r\n"  # line 1: header, with a UTF-8 BOM
        "alice@example.com,Alice\r\n"  # line 2: added
        '"bob@example.com","Bob, Jr."\r\n'  # line 3: quoted fields, added
        "\r\n"  # line 4: empty, skipped
        "nobody@example.com,Ghost\r\n"  # line 5: unknown person
        "carol@example.com,Carol\r\n"  # line 6: already a member
        "not-an-email,X\r\n".encode()  # line 7: unknown / invalid
    )
    result = loaded(
        "--json", "members", "import", "Imported", str(source), "--by", "email", "--column", "email"
    )
    assert result.exit_code == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["added"], summary["already_members"], summary["rejected"]) == (
        5,
        2,
        1,
        2,
    )
    errors_file = tmp_path / "signups.errors.csv"
    assert summary["errors_file"] == str(errors_file)
    with errors_file.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["line", "value", "reason"]
    assert [(r[0], r[1]) for r in rows[1:]] == [("5", "nobody@example.com"), ("7", "not-an-email")]
    assert all(r[2] for r in rows[1:]), "every rejected row says why"
    assert _ids(loaded, "Imported") == ["u1", "u2", "u3"]


def test_import_human_summary_and_guessed_header(loaded: Cli, tmp_path: Path) -> None:
    loaded.json("segments", "create", "Imported", "--manual")
    source = tmp_path / "ids.csv"
    source.write_text("id\nu4\nu5\nghost\n", encoding="utf-8")
    errors = tmp_path / "fix-me.csv"
    result = loaded(
        "members", "import", "Imported", str(source), "--by", "id", "--errors", str(errors)
    )
    assert result.exit_code == 1
    assert "treating line 1 as a header" in result.stderr
    assert "rows 3, added 2, already members 0, rejected 1" in result.stdout
    assert f"written to {errors}" in result.stderr
    with errors.open(newline="") as f:
        assert [r[:2] for r in csv.reader(f)] == [["line", "value"], ["4", "ghost"]]
    assert _ids(loaded, "Imported") == ["u4", "u5"]


def test_import_without_header_by_column_number(loaded: Cli, tmp_path: Path) -> None:
    loaded.json("segments", "create", "Imported", "--manual")
    source = tmp_path / "people.txt"
    source.write_text("x;u1\ny;u2\n", encoding="utf-8")
    summary = loaded.json(
        "members", "import", "Imported", str(source), "--by", "id", "--column", "2", "--no-header"
    )
    assert (summary["rows"], summary["added"], summary["rejected"]) == (2, 2, 0)
    assert summary["errors_file"] is None
    assert not (tmp_path / "people.errors.csv").exists()
    assert _ids(loaded, "Imported") == ["u1", "u2"]


def test_export_writes_every_member(loaded: Cli, tmp_path: Path) -> None:
    loaded.json("segments", "create", "Beta", "--manual")
    loaded.json("members", "add", "Beta", "u1", "u2", "u5")
    target = tmp_path / "beta.csv"
    done = loaded.json("members", "export", "Beta", str(target), "--fields", "id,email")
    assert done == {"file": str(target), "members": 3}
    with target.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "email"]
    assert sorted(rows[1:]) == [
        ["u1", "alice@example.com"],
        ["u2", "bob@example.com"],
        ["u5", "erin@example.com"],
    ]
    bad = loaded("members", "export", "Beta", str(target), "--fields", "id,age")
    assert bad.exit_code == 2
