"""`segsvc events track` and `segsvc events import`: load events from a file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from segsvc.cli.common import Session, finish, pass_session
from segsvc.cli.import_files import check_types, import_options, source_of
from segsvc.cli.readers import read_proto_lines
from segsvc.cli.upload import bulk_load, column_load
from segsvc.v1 import people_pb2

if TYPE_CHECKING:
    from segsvc.cli.columnar import Built

_CREATE_MISSING = click.option(
    "--create-missing-people",
    is_flag=True,
    help="Create a bare person for an unknown id instead of rejecting the event.",
)


def _person_key(event: people_pb2.Event) -> str:
    key = event.person.WhichOneof("key")
    return str(getattr(event.person, key)) if key else ""


@click.group()
def events() -> None:
    """Record what people did."""


@events.command("track")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_CREATE_MISSING
@pass_session
def track(session: Session, file: Path, create_missing_people: bool) -> None:
    """Record events from JSON Lines, one segsvc.v1.Event per line (protobuf JSON form).
    Rejected lines are listed by line number; exit 1 then.

    \b
    Example:
      echo '{"person": {"id": "u1"}, "name": "purchase",
             "timestamp": "2024-05-01T12:00:00Z",
             "properties": {"plan": {"string_value": "pro"}}}' > events.jsonl
      segsvc events track events.jsonl --create-missing-people
    """

    def request(batch: list[people_pb2.Event]) -> people_pb2.StreamTrackEventsRequest:
        return people_pb2.StreamTrackEventsRequest(
            events=batch, create_missing_people=create_missing_people
        )

    finish(
        bulk_load(
            session,
            session.client.people.StreamTrackEvents,
            read_proto_lines(file, people_pb2.Event, _person_key),
            request,
            total=file.stat().st_size,
            description=f"tracking {file.name}",
            counts=("tracked",),
        )
    )


@events.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@import_options
@click.option(
    "--person-column",
    default="person_id",
    show_default=True,
    help="The column of the ids of who did each event.",
)
@click.option("--name-column", default="name", show_default=True, help="The events' names.")
@click.option(
    "--timestamp-column",
    default="timestamp",
    show_default=True,
    help="When each event happened (ISO-8601 or epoch seconds); without the column, or "
    "where a cell is empty, the server's now.",
)
@_CREATE_MISSING
@pass_session
def import_events(
    session: Session,
    file: Path,
    file_format: str | None,
    types_spec: str,
    delimiter: str,
    encoding: str,
    person_column: str,
    name_column: str,
    timestamp_column: str,
    create_missing_people: bool,
) -> None:
    """Record events from a CSV file with a header row, JSON Lines of flat objects or
    Parquet, read as columns and sent as columns (the bulk form).

    Columns: who did it (--person-column), the event's name (--name-column), when
    (--timestamp-column, optional); every other column is a property of the event, typed
    as `segsvc people import` types attributes. Rejected rows are listed by their row in
    the file (1 is the first row after the header) and column; exit 1 then.

    \b
    Example:
      segsvc events import purchases.csv --types plan=string,amount=number
    """
    source = source_of("segsvc events import", file, file_format, types_spec, delimiter, encoding)
    # Here, not at the top: pyarrow and numpy are the `segsvc[import]` extra.
    from segsvc.cli.columnar import Layout, events_request
    from segsvc.cli.columnar import check_header as check_columns

    builtins = {person_column: "person", name_column: "name"}
    layout = Layout(source, builtins)

    def check_header() -> None:
        check_columns(
            source.columns,
            {"person ids": person_column, "event names": name_column},
            file,
            "name them with --person-column and --name-column",
        )
        if timestamp_column in source.columns:
            builtins[timestamp_column] = "timestamp"
        check_types(source, builtins)

    def build(batch: Any, first_row: int) -> Built[people_pb2.StreamTrackEventsRequest]:
        return events_request(layout, batch, first_row, create_missing_people)

    finish(
        column_load(
            session,
            session.client.people.StreamTrackEvents,
            source.requests(check_header, build),
            total=source.total_rows,
            description=f"importing {file.name}",
            counts=("tracked",),
            file=file.name,
        )
    )
