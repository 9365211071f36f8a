"""How `people import` reads values and rows, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from segsvc.cli.common import CliError
from segsvc.cli.output import format_value
from segsvc.cli.readers import (
    PersonBuilder,
    declared_value,
    infer_value,
    parse_types,
    read_people_csv,
)


@pytest.mark.parametrize(
    ("text", "kind", "shown"),
    [
        ("true", "bool_value", "true"),
        ("FALSE", "bool_value", "false"),
        ("42", "number_value", "42"),
        ("-3.5", "number_value", "-3.5"),
        ("1e3", "number_value", "1000"),
        ("0", "number_value", "0"),
        ("0.25", "number_value", "0.25"),
        ("01234", "string_value", "01234"),
        ("1_000", "string_value", "1_000"),
        ("nan", "string_value", "nan"),
        ("2024-02-29", "timestamp_value", "2024-02-29T00:00:00Z"),
        ("2024-05-01T12:30:00Z", "timestamp_value", "2024-05-01T12:30:00Z"),
        ("2024-05-01 12:30:00+02:00", "timestamp_value", "2024-05-01T10:30:00Z"),
        ("2024-02-30", "string_value", "2024-02-30"),
        ("pro", "string_value", "pro"),
        ("yes", "string_value", "yes"),
    ],
)
def test_infer_value(text: str, kind: str, shown: str) -> None:
    value = infer_value(text)
    assert value.WhichOneof("kind") == kind
    assert format_value(value) == shown


def test_declared_types_convert_or_refuse() -> None:
    assert declared_value("01234", "number").number_value == 1234
    assert declared_value("42", "string").string_value == "42"
    assert declared_value("yes", "bool").bool_value is True
    assert declared_value("1700000000", "timestamp").timestamp_value.seconds == 1700000000
    for text, type_name in [
        ("abc", "number"),
        ("inf", "number"),
        ("maybe", "bool"),
        ("soon", "timestamp"),
    ]:
        with pytest.raises(ValueError, match=repr(text)):
            declared_value(text, type_name)


def test_parse_types() -> None:
    assert parse_types("a=number, b=timestamp") == {"a": "number", "b": "timestamp"}
    with pytest.raises(CliError, match="COLUMN=TYPE"):
        parse_types("a=integer")


def test_builder_maps_builtins_and_attributes() -> None:
    builder = PersonBuilder("customer", {"score": "number"})
    person = builder.build(
        {
            "customer": " c1 ",
            "Email": "A@x.io",
            "tags": "a| b ||c",
            "unsubscribed": "yes",
            "score": "07",
            "city": "",
            "id": "legacy-9",
        }
    )
    assert person.id == "c1"
    assert person.email == "A@x.io"
    assert list(person.add_tags) == ["a", "b", "c"]
    assert person.unsubscribed is True
    assert person.attributes["score"].number_value == 7
    assert "city" not in person.attributes
    # Another column called id is an attribute when the id comes from --id-column.
    assert person.attributes["id"].string_value == "legacy-9"
    assert not person.HasField("phone")


def test_builder_refuses_types_on_builtins() -> None:
    with pytest.raises(CliError, match="built-in"):
        PersonBuilder("id", {"email": "string"})


def test_csv_rows_keep_their_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_bytes(
        b'\xef\xbb\xbfid,note\r\np1,"two\r\nlines"\r\n\r\np2,x,extra\r\n,y\r\np3,z\r\n'
    )
    records = list(
        read_people_csv(path, PersonBuilder("id", {}), delimiter=",", encoding="utf-8-sig")
    )
    assert [(r.line, r.key, r.message is not None) for r in records] == [
        (2, "p1", True),
        (5, "p2", False),
        (6, "", False),
        (7, "p3", True),
    ]
    assert records[0].message is not None
    assert records[0].message.attributes["note"].string_value == "two\r\nlines"
    assert "3 cells" in records[1].error
    assert records[-1].position == path.stat().st_size


def test_csv_in_the_wrong_encoding_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("id,city\np1,Zürich\n".encode("cp1252"))
    with pytest.raises(CliError, match="--encoding"):
        list(read_people_csv(path, PersonBuilder("id", {}), delimiter=",", encoding="utf-8-sig"))
    records = list(read_people_csv(path, PersonBuilder("id", {}), delimiter=",", encoding="cp1252"))
    assert records[0].message is not None
    assert records[0].message.attributes["city"].string_value == "Zürich"
