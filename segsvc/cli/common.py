"""What every command shares: the session (client + output), errors, person keys and the
resolution of SEGMENT arguments (an id or an exact name)."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, TypeVar

import click

from segsvc.cli.output import EXIT_ERROR, Output
from segsvc.client import Client
from segsvc.v1 import segments_pb2, types_pb2

F = TypeVar("F", bound=Callable[..., Any])

PersonKey = Literal["id", "email", "phone"]
PERSON_KEYS: tuple[PersonKey, ...] = ("id", "email", "phone")


class CliError(click.ClickException):
    """A mistake the user can fix (unknown segment, unreadable file, ...): printed as
    `error: <message>` and exits 2, like a usage error."""

    exit_code = EXIT_ERROR

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


@dataclass
class Session:
    """The context object of every command: the connection and where output goes."""

    client: Client
    out: Output


pass_session = click.make_pass_decorator(Session)


def finish(code: int) -> None:
    """End the command with `code` (0 returns normally, so click exits 0)."""
    if code:
        raise click.exceptions.Exit(code)


def fail(message: str) -> NoReturn:
    raise CliError(message)


def check_encoding(encoding: str) -> None:
    """Refuses an --encoding Python does not know, as a usage error naming the option."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise click.BadParameter(
            f"unknown encoding {encoding!r}", param_hint="--encoding"
        ) from None


def require_import_extra(command: str) -> None:
    """Fails with the one line that says how to get what reading files as columns needs
    (pyarrow, numpy: the `segsvc[import]` extra), when it is missing."""
    try:
        import numpy  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError as exc:
        fail(
            f"{command} reads files with {exc.name}, which is not installed: "
            "pip install 'segsvc[import]'"
        )


def by_option(func: F) -> F:
    """The `--by id|email|phone` option: which unique key the person arguments are."""
    return click.option(
        "--by",
        type=click.Choice(PERSON_KEYS),
        default="id",
        show_default=True,
        help="Which key the person arguments are.",
    )(func)


def person_ref(key: str, by: str) -> types_pb2.PersonRef:
    if by == "email":
        return types_pb2.PersonRef(email=key)
    if by == "phone":
        return types_pb2.PersonRef(phone=key)
    return types_pb2.PersonRef(id=key)


def confirm(question: str, yes: bool) -> None:
    """Ask before a destructive action unless `--yes` was given; refuse (exit 2, nothing
    done) when the answer is no or there is nobody to answer (no terminal on stdin)."""
    if yes:
        return
    try:
        agreed = click.confirm(question, default=False, err=True)
    except click.Abort:
        agreed = False
    if not agreed:
        fail("aborted, nothing was changed (pass --yes to skip the question)")


def iter_segments(
    client: Client,
    *,
    name_contains: str = "",
    segment_type: segments_pb2.SegmentType.ValueType = segments_pb2.SEGMENT_TYPE_UNSPECIFIED,
    archived: segments_pb2.ArchivedFilter.ValueType = segments_pb2.ARCHIVED_FILTER_ALL,
) -> Iterator[segments_pb2.Segment]:
    """Every segment matching the filters, following page tokens to the end."""
    request = segments_pb2.ListSegmentsRequest(
        name_contains=name_contains, type=segment_type, archived=archived, page_size=1000
    )
    return client.iter_segments(request)


def resolve_segments(client: Client, args: Sequence[str]) -> list[int]:
    """Segment ids for SEGMENT arguments, in order: digits are ids, anything else must be the
    exact name of one segment (archived ones included). Names cost one listing in all."""
    names = sorted({arg for arg in args if not arg.isdigit()})
    by_name: dict[str, list[int]] = {name: [] for name in names}
    if names:
        # One name: let the server filter; several: one listing of everything.
        contains = names[0] if len(names) == 1 else ""
        for segment in iter_segments(client, name_contains=contains):
            if segment.name in by_name:
                by_name[segment.name].append(segment.id)
    ids: list[int] = []
    for arg in args:
        if arg.isdigit():
            ids.append(int(arg))
            continue
        found = by_name[arg]
        if not found:
            fail(
                f"no segment is named {arg!r} (give its id or exact name; "
                "`segsvc segments list --all` lists them)"
            )
        if len(found) > 1:
            listed = ", ".join(str(i) for i in found)
            fail(f"{len(found)} segments are named {arg!r} (ids {listed}); give the id instead")
        ids.append(found[0])
    return ids


def resolve_segment(client: Client, arg: str) -> int:
    """The id of one SEGMENT argument (see `resolve_segments`)."""
    return resolve_segments(client, [arg])[0]


def segment_names(client: Client) -> dict[int, str]:
    """Id -> name of every segment, for labelling output that carries only ids."""
    return {segment.id: segment.name for segment in iter_segments(client)}
