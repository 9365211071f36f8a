"""`segsvc segments ...` against a real server."""

from __future__ import annotations

import json
from pathlib import Path

from cli_harness import Cli

PRO = {
    "attribute": {
        "attribute": "plan",
        "operator": "OPERATOR_EQUALS",
        "value": {"string_value": "pro"},
    }
}


def test_create_list_show_delete(cli: Cli) -> None:
    created = cli.json("segments", "create", "Beta testers", "--manual", "--description", "b")
    assert created["name"] == "Beta testers"
    assert created["type"] == "SEGMENT_TYPE_MANUAL"
    assert created["description"] == "b"
    segment_id = created["id"]

    listed = cli.json("segments", "list")
    assert [(s["id"], s["name"], s["member_count"]) for s in listed["segments"]] == [
        (segment_id, "Beta testers", 0)
    ]
    table = cli("segments", "list")
    assert table.exit_code == 0
    assert "Beta testers" in table.stdout and "manual" in table.stdout

    # By exact name and by id, the same segment.
    assert cli.json("segments", "show", "Beta testers")["id"] == segment_id
    assert cli.json("segments", "show", str(segment_id))["name"] == "Beta testers"

    deleted = cli.json("segments", "delete", "Beta testers", "--yes")
    assert [r["outcome"] for r in deleted["results"]] == ["OUTCOME_DELETED"]
    assert cli.json("segments", "list") == {"segments": []}

    gone = cli("segments", "show", str(segment_id))
    assert gone.exit_code == 2
    assert gone.stderr.startswith("error: NOT_FOUND: ")
    assert gone.stdout == ""
    unknown = cli("segments", "show", "Beta testers")
    assert unknown.exit_code == 2
    assert "no segment is named 'Beta testers'" in unknown.stderr


def test_duplicate_name_is_refused(cli: Cli) -> None:
    cli.json("segments", "create", "VIP", "--manual")
    again = cli("segments", "create", "VIP", "--manual")
    assert again.exit_code == 2
    assert again.stderr.startswith("error: ALREADY_EXISTS: ")


def test_create_needs_exactly_one_kind(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "pro.json"
    path.write_text(json.dumps(PRO))
    for args in ([], ["--manual", "--conditions", str(path)]):
        result = cli("segments", "create", "X", *args)
        assert result.exit_code == 2
        assert "exactly one of --manual and --conditions" in result.stderr


def test_dynamic_segment_preview_and_explain(loaded: Cli, tmp_path: Path) -> None:
    path = tmp_path / "pro.json"
    path.write_text(json.dumps(PRO))
    preview = loaded.json("segments", "preview", str(path), "--sample", "10")
    assert preview["count"] == 2
    assert sorted(preview["sample"]) == ["u1", "u3"]

    created = loaded.json("segments", "create", "Pro plan", "--conditions", str(path))
    assert created["type"] == "SEGMENT_TYPE_DYNAMIC"
    assert created["member_count"] == 2
    assert created["conditions"]["attribute"]["attribute"] == "plan"

    member = loaded.json("segments", "explain", "Pro plan", "alice@example.com", "--by", "email")
    assert member["member"] is True and member["root"]["matched"] is True
    outsider = loaded("segments", "explain", "Pro plan", "u2")
    assert outsider.exit_code == 0
    assert "u2 is not a member of Pro plan" in outsider.stdout
    assert "✗" in outsider.stdout

    # Hand-made membership of a dynamic segment is refused by the server.
    refused = loaded("members", "add", "Pro plan", "u2")
    assert refused.exit_code == 2
    assert refused.stderr.startswith("error: FAILED_PRECONDITION: ")


def test_update_archive_unarchive(cli: Cli) -> None:
    segment_id = cli.json("segments", "create", "Old", "--manual")["id"]
    updated = cli.json("segments", "update", "Old", "--name", "New", "--description", "d")
    assert (updated["id"], updated["name"], updated["description"]) == (segment_id, "New", "d")

    archived = cli.json("segments", "archive", "New")
    assert [r["outcome"] for r in archived["results"]] == ["OUTCOME_ARCHIVED"]
    assert cli.json("segments", "list") == {"segments": []}
    assert [s["name"] for s in cli.json("segments", "list", "--archived")["segments"]] == ["New"]
    # Archived segments still resolve by name.
    unarchived = cli.json("segments", "unarchive", "New")
    assert [r["outcome"] for r in unarchived["results"]] == ["OUTCOME_UNARCHIVED"]
    assert [s["name"] for s in cli.json("segments", "list")["segments"]] == ["New"]


def test_bulk_delete_with_an_unknown_id_is_a_partial_failure(cli: Cli) -> None:
    keep = cli.json("segments", "create", "A", "--manual")["id"]
    result = cli("--json", "segments", "delete", str(keep), "999999", "--yes")
    assert result.exit_code == 1
    outcomes = {r["key"]: r["outcome"] for r in json.loads(result.stdout)["results"]}
    assert outcomes == {str(keep): "OUTCOME_DELETED", "999999": "OUTCOME_NOT_FOUND"}


def test_bad_conditions_file_names_the_file_and_the_problem(cli: Cli, tmp_path: Path) -> None:
    syntax = tmp_path / "syntax.json"
    syntax.write_text('{"attribute": {"attribute": "plan",}}')
    result = cli("segments", "create", "Broken", "--conditions", str(syntax))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {syntax}: not a valid segsvc.v1.Condition")

    unknown_field = tmp_path / "field.json"
    unknown_field.write_text('{"attribute": {"atribute": "plan"}}')
    result = cli("segments", "create", "Broken", "--conditions", str(unknown_field))
    assert result.exit_code == 2
    assert "atribute" in result.stderr
    assert cli.json("segments", "list", "--all") == {"segments": []}


def test_invalid_tree_reports_invalid_argument(cli: Cli, tmp_path: Path) -> None:
    empty_group = tmp_path / "empty.json"
    empty_group.write_text(json.dumps({"group": {"combinator": "COMBINATOR_ALL"}}))
    result = cli("segments", "create", "Empty", "--conditions", str(empty_group))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: INVALID_ARGUMENT: ")
    assert "conditions" in result.stderr
    assert cli.json("segments", "list", "--all") == {"segments": []}


def test_unreachable_server_is_an_error() -> None:
    result = Cli("127.0.0.1:1")("segments", "list")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: UNAVAILABLE")


def test_workspaces_list(cli) -> None:
    cli("segments", "create", "VIP", "--manual")
    cli("--workspace", "acme", "segments", "create", "Acme VIP", "--manual")
    listed = cli.json("workspaces", "list")
    assert [(w["name"], int(w["segments"])) for w in listed["workspaces"]] == [
        ("acme", 1),
        ("default", 1),
    ]
    table = cli("workspaces", "list")
    assert table.exit_code == 0 and "acme" in table.stdout and "default" in table.stdout
