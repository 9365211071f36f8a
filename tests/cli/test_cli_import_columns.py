"""`segsvc people import` and `segsvc events import` read files as columns (pyarrow) and
send the column form, against a real server: CSV typed as declared (options or header) or
value by value, Parquet with its own types, rejected rows named by row and column whether
the client or the server refused them, many batches, and the one line that asks for the
`segsvc[import]` extra when pyarrow is missing."""

from __future__ import annotations

import builtins
import json
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_harness import Cli

from segsvc.cli import columnar


def test_people_csv_rows_the_server_rejects_name_their_row_and_column(
    cli: Cli, tmp_path: Path
) -> None:
    source = tmp_path / "people.csv"
    source.write_text(
        "id,email,score:number,joined\n"
        "a,a@x.io,1.5,2024-01-02\n"
        "b,not an email,2,2024-01-03T04:05:06+01:00\n"  # row 2: the server refuses the email
        "c,c@x.io,lots,\n"  # row 3: not a number (declared in the header)
        "d,a@x.io,4,\n",  # row 4: a's email: a conflict
        encoding="utf-8",
    )
    result = cli("--json", "people", "import", str(source))
    assert result.exit_code == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["created"], summary["rejected"]) == (4, 1, 3)
    assert [(e["row"], e["key"], e["outcome"]) for e in summary["errors"]] == [
        (2, "b", "OUTCOME_INVALID"),
        (3, "c", "OUTCOME_INVALID"),
        (4, "d", "OUTCOME_CONFLICT"),
    ]
    assert summary["errors"][1]["error"] == "score: 'lots' is not a number"
    assert summary["file"] == "people.csv"
    human = cli("people", "import", str(source))
    assert "people.csv row 2" in human.stdout and "email" in human.stdout
    a = cli.json("people", "get", "a")["attributes"]
    assert a == {
        "score": {"number_value": 1.5},
        "joined": {"timestamp_value": "2024-01-02T00:00:00Z"},
    }


def test_people_parquet_keeps_its_types_across_batches(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(columnar, "BATCH_ROWS", 3)
    source = tmp_path / "people.parquet"
    rows = 10
    table = pa.table(
        {
            "id": [f"p{i}" for i in range(rows)],
            "code": [f"00{i}" for i in range(rows)],  # text stays text in Parquet
            "n": pa.array([i if i % 2 else None for i in range(rows)], pa.int64()),
            "vip": [i % 3 == 0 for i in range(rows)],
            "tags": [["a", "b"] if i % 2 else [] for i in range(rows)],
        }
    )
    pq.write_table(table, source)
    summary = cli.json("people", "import", str(source))
    assert (summary["rows"], summary["created"], summary["rejected"]) == (rows, rows, 0)
    p3 = cli.json("people", "get", "p3")
    assert p3["attributes"] == {
        "code": {"string_value": "003"},
        "n": {"number_value": 3},
        "vip": {"bool_value": True},
    }
    assert sorted(p3["tags"]) == ["a", "b"]
    assert "n" not in cli.json("people", "get", "p4")["attributes"]  # null: left alone


def test_events_import_csv(cli: Cli, tmp_path: Path) -> None:
    people = tmp_path / "people.csv"
    people.write_text("id\nu1\nu2\n", encoding="utf-8")
    assert cli("people", "import", str(people)).exit_code == 0
    condition = tmp_path / "bought-pro.json"
    condition.write_text(
        json.dumps(
            {
                "event": {
                    "name": "purchase",
                    "filters": [
                        {
                            "attribute": "plan",
                            "operator": "OPERATOR_EQUALS",
                            "value": {"string_value": "pro"},
                        }
                    ],
                }
            }
        ),
        encoding="utf-8",
    )
    cli.json("segments", "create", "Bought pro", "--conditions", str(condition))
    events = tmp_path / "events.csv"
    events.write_text(
        "person_id,name,timestamp,plan,amount\n"
        "u1,purchase,,pro,10\n"
        "u2,purchase,2020-01-01,free,5\n"  # row 2: older than the retention
        "ghost,purchase,,pro,1\n"  # row 3: no such person
        "u2,purchase,,pro,not-a-number-but-text\n",
        encoding="utf-8",
    )
    result = cli("--json", "events", "import", str(events))
    assert result.exit_code == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["tracked"], summary["rejected"]) == (4, 2, 2)
    assert [(e["row"], e["key"], e["field"]) for e in summary["errors"]] == [
        (2, "u2", "columns.timestamps.seconds[1]"),
        (3, "ghost", "columns.person_ids[2]"),
    ]
    members = cli.json("members", "list", "Bought pro")["members"]
    assert sorted(m["id"] for m in members) == ["u1", "u2"]
    again = cli.json("events", "import", str(events), "--create-missing-people", exit_code=1)
    assert again["tracked"] == 3
    assert cli.json("people", "get", "ghost")["id"] == "ghost"


def test_events_import_needs_the_person_and_name_columns(cli: Cli, tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text("who,what\nu1,login\n", encoding="utf-8")
    result = cli("events", "import", str(events))
    assert result.exit_code == 2
    assert "no 'person_id' column" in result.stderr
    ok = cli("events", "import", str(events), "--person-column", "who", "--name-column", "what")
    assert ok.exit_code == 1  # u1 does not exist
    assert "row 1" in ok.stdout


def test_a_missing_pyarrow_is_asked_for_in_one_line(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "people.csv"
    source.write_text("id\nu1\n", encoding="utf-8")
    real_import = builtins.__import__

    def without_pyarrow(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_pyarrow)
    monkeypatch.delitem(sys.modules, "pyarrow", raising=False)
    result = cli("people", "import", str(source))
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: segsvc people import reads files with pyarrow, which is not installed: "
        "pip install 'segsvc[import]'"
    )


@pytest.mark.parametrize(
    ("text", "spans"),
    [
        ('id,note\n1,"a, b"\n2,plain\n', False),
        ('id,note\n1,"say ""hi""\nthere"\n', True),
        ('id,note\n1,"""quoted"""\n2,x\n', False),
        ("id\n1\n2\n", False),
    ],
)
def test_quoted_newlines_are_found_across_chunks(tmp_path: Path, text: str, spans: bool) -> None:
    path = tmp_path / "f.csv"
    path.write_text(text, encoding="utf-8")
    for chunk in (1, 3, 1 << 20):
        assert columnar.quoted_newlines(path, chunk) is spans


def test_lines_that_are_not_rows_are_reported_and_the_rest_imported(
    cli: Cli, tmp_path: Path
) -> None:
    source = tmp_path / "people.csv"
    source.write_text("id,plan\nu1,pro\nu2,free,extra\nu3,team\n", encoding="utf-8")
    summary = cli.json("people", "import", str(source), exit_code=1)
    assert (summary["rows"], summary["created"], summary["rejected"]) == (3, 2, 1)
    [error] = summary["errors"]
    assert error["error"] == (
        "a line with 3 cells where the header has 2 columns was skipped: 'u2,free,extra'"
    )
    assert cli.json("people", "get", "u3")["attributes"]["plan"] == {"string_value": "team"}
