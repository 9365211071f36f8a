"""`segsvc people ...`: look people up, load them in bulk, delete them."""

from __future__ import annotations

import codecs
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from segsvc.cli.common import (
    Session,
    by_option,
    fail,
    finish,
    pass_session,
    person_ref,
    require_import_extra,
    segment_names,
)
from segsvc.cli.output import (
    count_outcomes,
    format_time,
    format_value,
    item_rows,
    report_batch,
    to_dict,
    value_type,
)
from segsvc.cli.readers import IMPORT_FORMATS, PersonBuilder, parse_types, read_proto_lines
from segsvc.cli.upload import bulk_load, column_load
from segsvc.v1 import people_pb2

if TYPE_CHECKING:
    # The import commands read files with pyarrow (the `segsvc[import]` extra), so
    # segsvc.cli.columnar is imported when they run, not for every command.
    from segsvc.cli.columnar import Source

F = TypeVar("F", bound=Callable[..., Any])

_INPUT = click.Path(exists=True, dir_okay=False, path_type=Path)
_PEOPLE_COUNTS = ("created", "updated", "unchanged")


def _request(batch: list[people_pb2.PersonUpsert]) -> people_pb2.StreamUpsertPeopleRequest:
    return people_pb2.StreamUpsertPeopleRequest(people=batch)


@click.group()
def people() -> None:
    """Look people up, load them from files, delete them."""


@people.command("get")
@click.argument("key")
@by_option
@pass_session
def get(session: Session, key: str, by: str) -> None:
    """Show a person: profile, attributes, tags, devices and the segments they are in.

    \b
    Example:
      segsvc people get alice@example.com --by email
    """
    person = session.client.people.GetPerson(
        people_pb2.GetPersonRequest(person=person_ref(key, by))
    ).person
    out = session.out
    if out.json:
        out.document(to_dict(person))
        return
    names = segment_names(session.client) if person.segment_ids else {}
    segments = ", ".join(f"{names.get(i, '?')} ({i})" for i in person.segment_ids)
    out.fields(
        [
            ("id", person.id),
            ("email", person.email or "-"),
            ("phone", person.phone or "-"),
            ("unsubscribed", "yes" if person.unsubscribed else "no"),
            ("created", format_time(person.created_at)),
            ("updated", format_time(person.updated_at)),
            ("tags", ", ".join(sorted(person.tags)) or "-"),
            ("segments", segments or "-"),
        ]
    )
    if person.attributes:
        out.table(
            ["attribute", "type", "value"],
            (
                [name, value_type(value), format_value(value)]
                for name, value in sorted(person.attributes.items())
            ),
        )
    if person.devices:
        out.table(["device", "platform"], ([d.id, d.platform] for d in person.devices))


@people.command("upsert")
@click.argument("file", type=_INPUT)
@pass_session
def upsert(session: Session, file: Path) -> None:
    """Create or update people from JSON Lines, one segsvc.v1.PersonUpsert per line
    (protobuf JSON form). Lines that are rejected are listed by line number; exit 1 then.

    \b
    Example:
      echo '{"id": "u1", "email": "a@example.com", "attributes":
             {"plan": {"string_value": "pro"}}, "add_tags": ["beta"]}' > people.jsonl
      segsvc people upsert people.jsonl
    """
    finish(
        bulk_load(
            session,
            session.client.people.StreamUpsertPeople,
            read_proto_lines(file, people_pb2.PersonUpsert, lambda p: p.id),
            _request,
            total=file.stat().st_size,
            description=f"loading {file.name}",
            counts=_PEOPLE_COUNTS,
        )
    )


def import_options(command: F) -> F:
    """The options of the commands that import a file as columns: format, declared types,
    CSV delimiter and encoding."""
    options = (
        click.option(
            "--format",
            "file_format",
            type=click.Choice(IMPORT_FORMATS),
            help="Default: jsonl for .jsonl/.ndjson, parquet for .parquet, else csv.",
        ),
        click.option(
            "--types",
            "types_spec",
            default="",
            metavar="COL=TYPE,...",
            help="Declared types (string, number, bool, timestamp); a CSV header may say "
            "name:type too. Others are typed value by value (CSV, JSON text) or kept as the "
            "file types them (JSON numbers and booleans, Parquet).",
        ),
        click.option("--delimiter", default=",", show_default=True, help="CSV: the separator."),
        click.option("--encoding", default="utf-8", show_default=True, help="CSV: the encoding."),
    )
    for option in reversed(options):
        command = option(command)
    return command


@people.command("import")
@click.argument("file", type=_INPUT)
@import_options
@click.option("--id-column", default="id", show_default=True, help="The column of the ids.")
@pass_session
def import_people(
    session: Session,
    file: Path,
    file_format: str | None,
    types_spec: str,
    delimiter: str,
    encoding: str,
    id_column: str,
) -> None:
    """Create or update people from a CSV file with a header row, JSON Lines of flat objects
    or Parquet, read as columns and sent as columns (the bulk-load form).

    Columns: the id column, email, phone, unsubscribed and tags (separated by |, or a JSON
    list) are the built-in fields; every other column is an attribute. Values are typed as
    declared with --types or a `name:type` CSV header, otherwise per value: true/false ->
    bool, a number -> number (a leading zero keeps it text), an ISO-8601 date or time ->
    timestamp, anything else -> string (JSON and Parquet values keep their own types).
    Empty cells leave the stored value alone. Rejected rows are listed by their row in the
    file (1 is the first row after the header) and column; exit 1 then.

    \b
    Example:
      segsvc people import customers.csv --types zip=string,signed_up=timestamp
    """
    source = source_of("segsvc people import", file, file_format, types_spec, delimiter, encoding)
    from segsvc.cli import columnar

    builtins = {id_column: "id"}
    layout = columnar.Layout(source, builtins)

    def check_header() -> None:
        _name_builtins(builtins, source.columns, id_column, PersonBuilder.BUILTINS)
        columnar.check_header(
            source.columns, {"ids": id_column}, file, "name the id column with --id-column"
        )
        check_types(source, builtins)

    finish(
        column_load(
            session,
            session.client.people.StreamUpsertPeople,
            source.requests(check_header, partial(columnar.people_request, layout)),
            total=source.total_rows,
            description=f"importing {file.name}",
            counts=_PEOPLE_COUNTS,
        )
    )


def source_of(
    command: str,
    file: Path,
    file_format: str | None,
    types_spec: str,
    delimiter: str,
    encoding: str,
) -> Source:
    """The file to import as columns, its options checked (pyarrow asked for first)."""
    require_import_extra(command)
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise click.BadParameter(
            f"unknown encoding {encoding!r}", param_hint="--encoding"
        ) from None
    if len(delimiter) != 1:
        raise click.BadParameter("one character", param_hint="--delimiter")
    from segsvc.cli.columnar import Source
    from segsvc.cli.columnar import file_format as format_of

    return Source(file, format_of(file, file_format), delimiter, encoding, parse_types(types_spec))


def _name_builtins(
    builtins: dict[str, str], columns: list[str], key_column: str, fields: tuple[str, ...]
) -> None:
    """Adds the file's columns that are built-in fields (named case-insensitively)."""
    for column in columns:
        if column != key_column and column.lower() in fields:
            builtins[column] = column.lower()


def check_types(source: Source, builtins: dict[str, str]) -> None:
    for column in source.types:
        if column in builtins:
            fail(f"--types: {column!r} is a built-in field; only attributes take a type")
    missing = sorted(set(source.types) - set(source.columns))
    if missing:
        fail(f"--types names columns the file does not have: {', '.join(missing)}")


@people.command("delete")
@click.argument("keys", metavar="KEY...", nargs=-1, required=True)
@by_option
@pass_session
def delete(session: Session, keys: tuple[str, ...], by: str) -> None:
    """Delete people: they leave every segment and nothing of them stays indexed.

    \b
    Example:
      segsvc people delete u1 u2
    """
    response = session.client.people.DeletePeople(
        people_pb2.DeletePeopleRequest(people=[person_ref(key, by) for key in keys])
    )
    counts = count_outcomes(response.results)
    finish(report_batch(session.out, to_dict(response), counts, item_rows(response.results)))
