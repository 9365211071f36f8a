"""`segsvc people ...`: look people up, load them in bulk, delete them."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import click

from segsvc.cli.common import (
    Session,
    by_option,
    finish,
    pass_session,
    person_ref,
    segment_names,
)
from segsvc.cli.import_files import check_types, import_options, name_builtins, source_of
from segsvc.cli.output import (
    count_outcomes,
    format_time,
    format_value,
    item_rows,
    report_batch,
    to_dict,
    value_type,
)
from segsvc.cli.readers import PersonBuilder, read_proto_lines
from segsvc.cli.upload import bulk_load, column_load
from segsvc.v1 import people_pb2

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
    # Here, not at the top: pyarrow and numpy are the `segsvc[import]` extra.
    from segsvc.cli.columnar import Layout, people_request
    from segsvc.cli.columnar import check_header as check_columns

    builtins = {id_column: "id"}
    layout = Layout(source, builtins)

    def check_header() -> None:
        name_builtins(builtins, source.columns, id_column, PersonBuilder.BUILTINS)
        check_columns(
            source.columns, {"ids": id_column}, file, "name the id column with --id-column"
        )
        check_types(source, builtins)

    finish(
        column_load(
            session,
            session.client.people.StreamUpsertPeople,
            source.requests(check_header, partial(people_request, layout)),
            total=source.total_rows,
            description=f"importing {file.name}",
            counts=_PEOPLE_COUNTS,
            file=file.name,
        )
    )


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
