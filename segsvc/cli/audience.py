"""`segsvc audience ...`: who a campaign reaches, counted or exported."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import grpc

from segsvc.cli.common import Session, pass_session, resolve_segments
from segsvc.cli.members import parse_fields
from segsvc.cli.output import format_value
from segsvc.client import MAX_RECONNECTS
from segsvc.v1 import audiences_pb2

F = TypeVar("F", bound=Callable[..., Any])

_CHANNELS = {
    "email": audiences_pb2.CHANNEL_EMAIL,
    "phone": audiences_pb2.CHANNEL_PHONE,
    "device": audiences_pb2.CHANNEL_DEVICE,
}
_MEMBER_FIELDS = ("id", "email", "phone")


def audience_options(func: F) -> F:
    """The selection options shared by `count` and `export`."""
    options = [
        click.option(
            "--include",
            multiple=True,
            required=True,
            metavar="SEGMENT",
            help="People in any of these segments (repeat the option).",
        ),
        click.option(
            "--require",
            multiple=True,
            metavar="SEGMENT",
            help="...who are also in every one of these.",
        ),
        click.option(
            "--exclude", multiple=True, metavar="SEGMENT", help="...and in none of these."
        ),
        click.option(
            "--include-unsubscribed",
            is_flag=True,
            help="Keep people who opted out (transactional messages only).",
        ),
        click.option(
            "--channel",
            type=click.Choice(sorted(_CHANNELS)),
            help="Only people reachable on this channel.",
        ),
        click.option("--platform", help="With --channel device: only this device platform."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _spec(
    session: Session,
    include: tuple[str, ...],
    require: tuple[str, ...],
    exclude: tuple[str, ...],
    include_unsubscribed: bool,
    channel: str | None,
    platform: str | None,
) -> audiences_pb2.AudienceSpec:
    if platform and channel not in (None, "device"):
        raise click.UsageError("--platform applies to --channel device")
    ids = resolve_segments(session.client, [*include, *require, *exclude])
    included, rest = ids[: len(include)], ids[len(include) :]
    return audiences_pb2.AudienceSpec(
        include=included,
        require=rest[: len(require)],
        exclude=rest[len(require) :],
        include_unsubscribed=include_unsubscribed,
        channel=_CHANNELS.get(
            channel or ("device" if platform else ""), audiences_pb2.CHANNEL_UNSPECIFIED
        ),
        device_platform=platform or "",
    )


@click.group()
def audience() -> None:
    """Count or export a campaign audience: (any --include) and (every --require) minus
    (any --exclude), minus unsubscribed people, each person once."""


@audience.command("count")
@audience_options
@pass_session
def count(session: Session, /, **selection: Any) -> None:
    """Count the people an audience reaches.

    \b
    Example:
      segsvc audience count --include "Pro plan" --include "Team plan" \\
          --exclude "Churn risk" --channel email
    """
    response = session.client.audiences.CountAudience(
        audiences_pb2.CountAudienceRequest(audience=_spec(session, **selection))
    )
    if session.out.json:
        session.out.document({"count": response.count})
    else:
        session.out.text(f"{response.count} people")


@audience.command("export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@audience_options
@click.option(
    "--fields",
    default="id,email",
    show_default=True,
    help="Columns: id, email, phone and attribute names.",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(1, 10_000),
    default=1000,
    show_default=True,
    help="People per streamed chunk.",
)
@pass_session
def export(session: Session, /, file: Path, fields: str, chunk_size: int, **selection: Any) -> None:
    """Write an audience to CSV from a frozen snapshot of it.

    If the connection drops, the export resumes after the last chunk written (up to 5
    reconnects in a row), so nobody is written twice or skipped.

    \b
    Example:
      segsvc audience export march.csv --include "Pro plan" --channel email \\
          --fields id,email,first_name
    """
    columns = parse_fields(fields)
    request = audiences_pb2.ResolveAudienceRequest(
        audience=_spec(session, **selection),
        fields=[c for c in columns if c != "id"],
        chunk_size=chunk_size,
    )
    written = 0

    def reconnecting(attempt: int, error: grpc.RpcError) -> None:
        session.out.note(
            f"connection lost after {written} people; reconnecting ({attempt}/{MAX_RECONNECTS})"
        )

    with (
        file.open("w", newline="", encoding="utf-8") as sink,
        session.out.progress(f"exporting to {file.name}", unit="items") as bar,
    ):
        writer = csv.writer(sink)
        writer.writerow(columns)
        # A chunk is in the file before the next is asked for: a reconnect resumes after it.
        for chunk in session.client.resolve_audience(request, on_reconnect=reconnecting):
            writer.writerows(_row(member, columns) for member in chunk.members)
            written += len(chunk.members)
            bar.set_total(chunk.total)
            bar.update(written)
    if session.out.json:
        session.out.document({"file": str(file), "people": written})
    else:
        session.out.text(f"wrote {written} people to {file}")


def _row(member: audiences_pb2.AudienceMember, columns: list[str]) -> list[str]:
    row = []
    for column in columns:
        if column in _MEMBER_FIELDS:
            row.append(getattr(member, column))
        elif column in member.attributes:
            row.append(format_value(member.attributes[column]))
        else:
            row.append("")
    return row
