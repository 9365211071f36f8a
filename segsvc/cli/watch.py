"""`segsvc watch`: tail the change feed."""

from __future__ import annotations

import click

from segsvc.cli.common import Session, pass_session, resolve_segments, segment_names
from segsvc.cli.output import format_time, to_dict
from segsvc.client import Client
from segsvc.v1 import changes_pb2


class _Labels:
    """`name (id)` for segment ids; segments created while watching are looked up once."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._names = segment_names(client)
        self._looked_up: set[int] = set()

    def __call__(self, segment_id: int) -> str:
        if segment_id not in self._names and segment_id not in self._looked_up:
            self._looked_up.add(segment_id)
            self._names = segment_names(self._client)
        name = self._names.get(segment_id)
        return f"{name} ({segment_id})" if name is not None else str(segment_id)


def _line(change: changes_pb2.Change, segment: str) -> str:
    kind = changes_pb2.ChangeKind.Name(change.kind).removeprefix("CHANGE_KIND_")
    cause = changes_pb2.ChangeCause.Name(change.cause).removeprefix("CHANGE_CAUSE_").lower()
    when = format_time(change.at)
    return f"{change.seq:>10}  {when}  {segment}  {change.person_id}  {kind}  {cause}"


@click.command()
@click.option(
    "--after",
    type=click.IntRange(min=0),
    metavar="SEQ",
    help="Start after this sequence number. Default: the oldest change still kept.",
)
@click.option("--from-now", is_flag=True, help="Skip the stored changes; only new ones.")
@click.option(
    "--segment",
    "segment_args",
    multiple=True,
    metavar="SEGMENT",
    help="Only changes of this segment (repeat for several).",
)
@click.option("--no-follow", is_flag=True, help="Stop after the stored changes.")
@pass_session
def watch(
    session: Session,
    after: int | None,
    from_now: bool,
    segment_args: tuple[str, ...],
    no_follow: bool,
) -> None:
    """Print segment enters and exits as they happen: seq, time, segment, person,
    ENTERED/EXITED and cause (data, definition, manual, time, deleted). Ctrl-C stops.

    Resume after a stop with --after and the last seq printed.

    \b
    Example:
      segsvc watch --segment "Pro plan" --from-now
      segsvc --json watch --after 1200 --no-follow > changes.jsonl
    """
    if after is not None and from_now:
        raise click.UsageError("--after and --from-now exclude each other")
    request = changes_pb2.WatchChangesRequest(
        after_seq=after or 0,
        from_now=from_now,
        segment_ids=resolve_segments(session.client, segment_args),
        no_follow=no_follow,
    )
    out = session.out
    label = None if out.json else _Labels(session.client)
    call = session.client.changes.WatchChanges(request)
    try:
        for response in call:
            for change in response.changes:
                if label is None:
                    out.json_line(to_dict(change))
                else:
                    click.echo(_line(change, label(change.segment_id)))
    except KeyboardInterrupt:
        # Stopping a tail is the normal way to end it: exit 0, not 130.
        call.cancel()  # type: ignore[no-untyped-call]  # unannotated in grpc-stubs
