"""`segsvc events track`: load events from a file."""

from __future__ import annotations

from pathlib import Path

import click

from segsvc.cli.common import Session, finish, pass_session
from segsvc.cli.readers import read_proto_lines
from segsvc.cli.upload import bulk_load
from segsvc.v1 import people_pb2


def _person_key(event: people_pb2.Event) -> str:
    key = event.person.WhichOneof("key")
    return str(getattr(event.person, key)) if key else ""


@click.group()
def events() -> None:
    """Record what people did."""


@events.command("track")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--create-missing-people",
    is_flag=True,
    help="Create a bare person for an unknown id instead of rejecting the event.",
)
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
