"""ImportMembers: CSV streamed in chunks, decoded incrementally, resolved in batches."""

from __future__ import annotations

import grpc
import pytest
from api_harness import (
    add_members,
    dynamic_segment,
    equals,
    manual_segment,
    members_of,
    rpc_error,
    status_of,
    upsert,
    violations,
)

from segsvc.api import csv_import
from segsvc.api.csv_import import CsvRow, CsvSettings, read_rows, sniff_delimiter
from segsvc.config import Limits
from segsvc.engine.errors import InvalidArgument
from segsvc.v1 import people_pb2, segments_pb2

S = segments_pb2


def _people(api, count=5):
    upsert(
        api,
        *[
            people_pb2.PersonUpsert(
                id=f"u{i}", email=f"user{i}@example.com", phone=f"+4670000000{i}"
            )
            for i in range(1, count + 1)
        ],
    )


def _import(api, segment_id, data: bytes, chunk=7, **options):
    def requests():
        yield S.ImportMembersRequest(options=S.ImportOptions(segment_id=segment_id, **options))
        for start in range(0, len(data), chunk):
            yield S.ImportMembersRequest(chunk=data[start : start + chunk])

    return api.segments.ImportMembers(requests())


def _rejected(response):
    return [(r.line, r.value, r.reason) for r in response.rejected_rows]


def test_import_by_header_name_with_rejections_and_line_numbers(api):
    _people(api)
    seg = manual_segment(api, "Imported")
    add_members(api, seg, "u1")
    data = (
        b"name;Email;note\n"
        b"Ann; USER1@example.com ;x\n"
        b"\n"
        b"Bob;user2@example.com;y\n"
        b"Eve;nobody@example.com;z\n"
        b'Quo;"user3@example.com";"multi\nline"\n'
        b"Bad;not-an-email;w\n"
        b"Dup;user2@example.com;again\n"
        b"Short\n"
        b"Empty;;v\n"
    )
    response = _import(api, seg, data, by=S.LOOKUP_KEY_EMAIL, header=True, column="email")
    # u1 was a member before, u2 is in the file twice.
    assert (response.rows, response.added, response.already_members, response.rejected) == (
        8,
        2,
        2,
        4,
    )
    rejected = _rejected(response)
    assert [(line, value) for line, value, _ in rejected] == [
        (5, "nobody@example.com"),
        (8, "not-an-email"),
        (10, ""),
        (11, ""),
    ]
    assert "no person with email" in rejected[0][2]
    assert "not an email address" in rejected[1][2]
    assert "columns" in rejected[2][2]
    assert rejected[3][2] == "the key is empty"
    assert members_of(api, seg) == {"u1", "u2", "u3"}


def test_import_plain_ids_column_number_bom_and_crlf(api):
    _people(api)
    seg = manual_segment(api, "Ids")
    data = "\ufeffx,id\r\na,u1\r\nb,u4\r\nc,u1\r\n".encode()
    response = _import(api, seg, data, chunk=1, header=True, column="2")
    assert (response.rows, response.added, response.already_members, response.rejected) == (
        3,
        2,
        1,
        0,
    )
    assert members_of(api, seg) == {"u1", "u4"}
    # Single column, no header, by phone, tab-free: the delimiter defaults to a comma.
    response = _import(api, seg, b"+46 700 000 005\n+46700000002\n", by=S.LOOKUP_KEY_PHONE)
    assert (response.added, response.rejected) == (2, 0)


def test_import_falls_back_to_cp1252(api):
    upsert(api, people_pb2.PersonUpsert(id="José"), people_pb2.PersonUpsert(id="plain"))
    seg = manual_segment(api, "Latin")
    data = "id\nplain\nJosé\n".encode("cp1252")
    response = _import(api, seg, data, chunk=3, header=True)
    assert (response.added, response.rejected) == (2, 0), _rejected(response)
    assert members_of(api, seg) == {"José", "plain"}


def test_import_utf8_split_across_chunks(api):
    upsert(api, people_pb2.PersonUpsert(id="Zoë"), people_pb2.PersonUpsert(id="Øystein"))
    seg = manual_segment(api, "Utf8")
    response = _import(api, seg, "Zoë\nØystein\n".encode(), chunk=1)
    assert (response.added, response.rejected) == (2, 0), _rejected(response)


def test_import_refusals_before_reading(api):
    _people(api)
    dynamic = dynamic_segment(api, "Dyn", equals("plan", "pro"))
    code, message = status_of(lambda: _import(api, dynamic, b"u1\n"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "dynamic" in message
    code, _ = status_of(lambda: _import(api, 404, b"u1\n"))
    assert code == grpc.StatusCode.NOT_FOUND

    seg = manual_segment(api, "M")
    # Options must come first.
    error = rpc_error(
        lambda: api.segments.ImportMembers(iter([S.ImportMembersRequest(chunk=b"u1")]))
    )
    assert [f for f, _ in violations(error)] == ["options"]
    error = rpc_error(lambda: _import(api, seg, b"u1\n", column="name"))
    assert [f for f, _ in violations(error)] == ["options.column"]
    error = rpc_error(lambda: _import(api, seg, b"u1\n", delimiter="::"))
    assert [f for f, _ in violations(error)] == ["options.delimiter"]
    error = rpc_error(lambda: _import(api, seg, b"u1\n", encoding="klingon"))
    assert [f for f, _ in violations(error)] == ["options.encoding"]
    error = rpc_error(lambda: _import(api, seg, b"id\nu1\n", header=True, column="email"))
    assert violations(error)[0][0] == "options.column"
    assert "'id'" in violations(error)[0][1]
    assert members_of(api, seg) == set()


def test_import_larger_than_the_limit_is_resource_exhausted(api_servers):
    api = api_servers.start(api_servers.config(limits=Limits(max_csv_bytes=100)))
    _people(api)
    seg = manual_segment(api, "M")
    code, message = status_of(lambda: _import(api, seg, b"u1\n" * 40, chunk=50))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "100 bytes" in message


def test_import_in_batches(api, monkeypatch):
    # Three engine batches of 4 rows: counts and line numbers run across batches.
    monkeypatch.setattr(csv_import, "BATCH_ROWS", 4)
    _people(api, 9)
    seg = manual_segment(api, "Batches")
    lines = [f"u{i}" for i in range(1, 10)] + ["ghost", "u1"]
    response = _import(api, seg, ("\n".join(lines) + "\n").encode())
    assert (response.rows, response.added, response.already_members, response.rejected) == (
        11,
        9,
        1,
        1,
    )
    assert _rejected(response)[0][:2] == (10, "ghost")


# -- the reader alone ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["a;b;c\n", "1;2;3\n"], ";"),
        (["a\tb\n", "1\t2\n"], "\t"),
        (["a|b\n", "1|2\n"], "|"),
        (["id\n", "u1\n"], ","),
        (["name,email;x\n", "a,b;c\n"], ","),  # both consistent: the first with most fields
        ([], ","),
    ],
)
def test_sniff_delimiter(lines, expected):
    assert sniff_delimiter(lines) == expected


def test_read_rows_mixed_encodings_are_refused():
    data = ["é\n".encode(), b"\xff\n"]
    with pytest.raises(InvalidArgument, match="mixes UTF-8"):
        list(read_rows(data, CsvSettings()))


def test_read_rows_declared_encoding():
    rows = list(read_rows(["Ærø\n".encode("latin-1")], CsvSettings(encoding="latin-1")))
    assert rows == [CsvRow(1, "Ærø")]


def test_a_file_without_newlines_is_refused_not_buffered(monkeypatch):
    monkeypatch.setattr(csv_import, "MAX_LINE_CHARS", 100)
    chunks = [b"u1\n", b"x" * 60, b"x" * 60]
    with pytest.raises(InvalidArgument, match="line 2 is longer than 100 characters"):
        list(read_rows(chunks, CsvSettings()))
