"""`segsvc people ...`: look people up, load them in bulk, delete them."""

from __future__ import annotations

import codecs
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
from segsvc.cli.output import (
    count_outcomes,
    format_time,
    format_value,
    item_rows,
    report_batch,
    to_dict,
    value_type,
)
from segsvc.cli.readers import (
    PersonBuilder,
    parse_types,
    read_people_csv,
    read_people_jsonl,
    read_proto_lines,
)
from segsvc.cli.upload import bulk_load
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
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["csv", "jsonl"]),
    help="Default: jsonl for .jsonl/.ndjson files, else csv.",
)
@click.option("--id-column", default="id", show_default=True, help="The column of the ids.")
@click.option(
    "--types",
    "types_spec",
    default="",
    metavar="COL=TYPE,...",
    help="Declared attribute types (string, number, bool, timestamp); others are inferred.",
)
@click.option("--delimiter", default=",", show_default=True, help="CSV: the field separator.")
@click.option("--encoding", default="utf-8-sig", show_default=True, help="CSV: the encoding.")
@pass_session
def import_people(
    session: Session,
    file: Path,
    file_format: str | None,
    id_column: str,
    types_spec: str,
    delimiter: str,
    encoding: str,
) -> None:
    """Create or update people from a CSV file with a header row (or flat JSON Lines).

    Columns: the id column, email, phone, unsubscribed and tags (separated by |) are the
    built-in fields; every other column is an attribute. Values are typed as declared with
    --types, otherwise per value: true/false -> bool, a number -> number (a leading zero keeps
    it text), an ISO-8601 date or time -> timestamp, anything else -> string. Empty cells
    leave the stored value alone. Rejected rows are listed by line; exit 1 then.

    \b
    Example:
      segsvc people import customers.csv --types zip=string,signed_up=timestamp
    """
    if file_format is None:
        file_format = "jsonl" if file.suffix.lower() in (".jsonl", ".ndjson") else "csv"
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise click.BadParameter(
            f"unknown encoding {encoding!r}", param_hint="--encoding"
        ) from None
    if len(delimiter) != 1:
        raise click.BadParameter("one character", param_hint="--delimiter")
    builder = PersonBuilder(id_column, parse_types(types_spec))
    records = (
        read_people_jsonl(file, builder)
        if file_format == "jsonl"
        else read_people_csv(file, builder, delimiter=delimiter, encoding=encoding)
    )
    finish(
        bulk_load(
            session,
            session.client.people.StreamUpsertPeople,
            records,
            _request,
            total=file.stat().st_size,
            description=f"importing {file.name}",
            counts=_PEOPLE_COUNTS,
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
