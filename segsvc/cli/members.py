"""`segsvc members ...`: who is in a manual segment, by hand or by CSV."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import click

from segsvc.cli.common import (
    Session,
    by_option,
    check_encoding,
    confirm,
    finish,
    pass_session,
    person_ref,
    resolve_segment,
    resolve_segments,
)
from segsvc.cli.output import ItemRow, count_outcomes, item_rows, report_batch, to_dict
from segsvc.cli.upload import stream_upload
from segsvc.v1 import segments_pb2

CHUNK_BYTES = 1 << 20
# Rejected rows shown on the terminal; all of them (as the server lists them) go to the file.
SHOWN_REJECTS = 20
MEMBER_FIELDS = ("id", "email", "phone")
_LOOKUP = {
    "id": segments_pb2.LOOKUP_KEY_ID,
    "email": segments_pb2.LOOKUP_KEY_EMAIL,
    "phone": segments_pb2.LOOKUP_KEY_PHONE,
}
# First cells that are column titles rather than people, whatever key the file holds.
_HEADER_WORDS = {
    "id",
    "person",
    "person_id",
    "user",
    "user_id",
    "customer_id",
    "external_id",
    "email",
    "e-mail",
    "email_address",
    "phone",
    "mobile",
    "phone_number",
}
_DELIMITERS = ",;\t|"


@click.group()
def members() -> None:
    """Add, remove, list, import and export the members of manual segments.

    SEGMENT is an id or a segment's exact name; people are named by id unless --by says
    email or phone.
    """


def _change(session: Session, segment: str, keys: tuple[str, ...], by: str, add: bool) -> None:
    segment_id = resolve_segment(session.client, segment)
    people = [person_ref(key, by) for key in keys]
    stub = session.client.segments
    response: segments_pb2.AddMembersResponse | segments_pb2.RemoveMembersResponse
    if add:
        response = stub.AddMembers(
            segments_pb2.AddMembersRequest(segment_id=segment_id, people=people)
        )
    else:
        response = stub.RemoveMembers(
            segments_pb2.RemoveMembersRequest(segment_id=segment_id, people=people)
        )
    counts = count_outcomes(response.results)
    finish(report_batch(session.out, to_dict(response), counts, item_rows(response.results)))


@members.command("add")
@click.argument("segment")
@click.argument("keys", metavar="KEY...", nargs=-1, required=True)
@by_option
@pass_session
def add(session: Session, segment: str, keys: tuple[str, ...], by: str) -> None:
    """Add people (who must exist) to a manual segment. Exit 1 if some were rejected.

    \b
    Example:
      segsvc members add "Beta testers" alice@example.com bob@example.com --by email
    """
    _change(session, segment, keys, by, add=True)


@members.command("remove")
@click.argument("segment")
@click.argument("keys", metavar="KEY...", nargs=-1, required=True)
@by_option
@pass_session
def remove(session: Session, segment: str, keys: tuple[str, ...], by: str) -> None:
    """Take people out of a manual segment.

    \b
    Example:
      segsvc members remove "Beta testers" u123 u456
    """
    _change(session, segment, keys, by, add=False)


def _pages(
    session: Session, segment_id: int, limit: int | None = None
) -> Iterator[segments_pb2.ListMembersResponse]:
    """Pages of members, following the cursor, until the end or `limit` members."""
    request = segments_pb2.ListMembersRequest(segment_id=segment_id, page_size=10_000)
    remaining = limit
    while remaining is None or remaining > 0:
        if remaining is not None:
            request.page_size = min(remaining, 10_000)
        page = session.client.segments.ListMembers(request)
        if remaining is not None:
            remaining -= len(page.members)
        yield page
        if not page.next_page_token:
            return
        request.page_token = page.next_page_token


@members.command("list")
@click.argument("segment")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Show at most this many members; 0 for all (use `export` for big segments).",
)
@pass_session
def list_members(session: Session, segment: str, limit: int) -> None:
    """List the members of a segment (manual or dynamic).

    \b
    Example:
      segsvc members list "Beta testers" --limit 50
    """
    segment_id = resolve_segment(session.client, segment)
    found: list[segments_pb2.Member] = []
    total = 0
    for page in _pages(session, segment_id, limit or None):
        found.extend(page.members)
        total = page.total
    if session.out.json:
        session.out.document({"total": total, "members": [to_dict(m) for m in found]})
        return
    session.out.table(["id", "email", "phone"], ([m.id, m.email, m.phone] for m in found))
    if len(found) < total:
        session.out.note(f"showing {len(found)} of {total} members (see --limit)")
    else:
        session.out.note(f"{total} members")


@members.command("clear")
@click.argument("segment")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_session
def clear(session: Session, segment: str, yes: bool) -> None:
    """Remove every member of a manual segment.

    \b
    Example:
      segsvc members clear "Beta testers" --yes
    """
    segment_id = resolve_segment(session.client, segment)
    confirm(f"Remove every member of {segment}?", yes)
    response = session.client.segments.ClearSegment(
        segments_pb2.ClearSegmentRequest(segment_id=segment_id)
    )
    if session.out.json:
        session.out.document(to_dict(response))
    else:
        session.out.text(f"removed {response.removed}")


@members.command("check")
@click.argument("person")
@click.argument("segment_args", metavar="SEGMENT...", nargs=-1, required=True)
@by_option
@pass_session
def check(session: Session, person: str, segment_args: tuple[str, ...], by: str) -> None:
    """Is a person in these segments?

    \b
    Example:
      segsvc members check alice@example.com "Pro plan" "Beta testers" --by email
    """
    ids = resolve_segments(session.client, segment_args)
    response = session.client.segments.CheckMembership(
        segments_pb2.CheckMembershipRequest(person=person_ref(person, by), segment_ids=ids)
    )
    if session.out.json:
        session.out.document(to_dict(response))
        return
    label = dict(zip(ids, segment_args, strict=True))
    session.out.table(
        ["segment", "member"],
        (
            [label.get(r.segment_id, str(r.segment_id)), "yes" if r.member else "no"]
            for r in response.results
        ),
        title=f"person {response.person_id}",
    )


def _delimiter(value: str | None) -> str:
    if value is None:
        return ""
    if value in ("\\t", "tab"):
        return "\t"
    if len(value) != 1:
        raise click.BadParameter("one character (or 'tab')", param_hint="--delimiter")
    return value


def _guess_header(path: Path, by: str, column: str, delimiter: str, encoding: str) -> bool:
    """Whether line 1 looks like column titles: a known title word, or (for emails and
    phones) a cell that could not be one. Ids can be anything, so only title words count."""
    with path.open("rb") as raw:
        head = raw.read(64 * 1024)
    text = head.decode(encoding or "utf-8-sig", errors="replace")
    first = text.splitlines()[0] if text.strip() else ""
    if not delimiter:
        delimiter = max(_DELIMITERS, key=first.count)
    cells = next(csv.reader([first], delimiter=delimiter), [])
    index = int(column) - 1 if column else 0
    cell = cells[index].strip() if 0 <= index < len(cells) else ""
    if cell.lower() in _HEADER_WORDS:
        return True
    if by == "email":
        return "@" not in cell
    if by == "phone":
        return not any(ch.isdigit() for ch in cell)
    return False


@members.command("import")
@click.argument("segment")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--by", type=click.Choice(sorted(_LOOKUP)), required=True, help="What the column holds."
)
@click.option(
    "--column", default="", help="Column name (in the header) or 1-based number; default 1."
)
@click.option(
    "--header/--no-header",
    default=None,
    help="Whether line 1 is a header. Default: yes when --column is a name or line 1 looks "
    "like titles (not an email/phone for --by email/phone, or a word such as 'email').",
)
@click.option("--delimiter", help="One character, or 'tab'. Default: detected (, ; tab |).")
@click.option("--encoding", default="", help="Default: UTF-8 (BOM or not), else cp1252.")
@click.option(
    "--errors",
    "errors_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the rejected rows. Default: FILE with suffix .errors.csv.",
)
@pass_session
def import_members(
    session: Session,
    segment: str,
    file: Path,
    by: str,
    column: str,
    header: bool | None,
    delimiter: str | None,
    encoding: str,
    errors_path: Path | None,
) -> None:
    """Add the people listed in a CSV file to a manual segment.

    Rejected rows (unknown people, bad values) are written to the errors file as
    line,value,reason so they can be fixed and imported again; then the exit code is 1.

    \b
    Example:
      segsvc members import "Beta testers" signups.csv --by email --column email
    """
    if encoding:
        check_encoding(encoding)
    sep = _delimiter(delimiter)
    column_is_name = bool(column) and not column.isdigit()
    if header is None:
        header = column_is_name or _guess_header(file, by, column, sep, encoding)
        if header:
            session.out.note("treating line 1 as a header (--no-header to import it)")
    elif column_is_name and not header:
        raise click.UsageError("--column by name needs the header (drop --no-header)")
    options = segments_pb2.ImportOptions(
        segment_id=resolve_segment(session.client, segment),
        by=_LOOKUP[by],
        header=header,
        column=column,
        delimiter=sep,
        encoding=encoding,
    )

    def requests() -> Iterator[tuple[segments_pb2.ImportMembersRequest, int]]:
        yield segments_pb2.ImportMembersRequest(options=options), 0
        sent = 0
        with file.open("rb") as raw:
            while chunk := raw.read(CHUNK_BYTES):
                sent += len(chunk)
                yield segments_pb2.ImportMembersRequest(chunk=chunk), sent

    response = stream_upload(
        session.out,
        session.client.segments.ImportMembers,
        requests(),
        total=file.stat().st_size,
        description=f"importing {file.name}",
    )

    errors_file = None
    if response.rejected_rows:
        errors_file = errors_path or file.with_suffix(".errors.csv")
        with errors_file.open("w", newline="", encoding="utf-8") as sink:
            writer = csv.writer(sink)
            writer.writerow(["line", "value", "reason"])
            writer.writerows([r.line, r.value, r.reason] for r in response.rejected_rows)
    rows = [
        ItemRow(f"line {r.line}", r.value, "rejected", r.reason, rejected=True)
        for r in response.rejected_rows[:SHOWN_REJECTS]
    ]
    counts = {
        "rows": response.rows,
        "added": response.added,
        "already members": response.already_members,
        "rejected": response.rejected,
    }
    document = to_dict(response) | {"errors_file": str(errors_file) if errors_file else None}
    code = report_batch(
        session.out, document, counts, rows, more_rejected=response.rejected - len(rows)
    )
    if errors_file and not session.out.json:
        session.out.note(
            f"{len(response.rejected_rows)} rejected rows written to {errors_file}"
            + (
                " (the server lists the first ones only)"
                if len(response.rejected_rows) < response.rejected
                else ""
            )
        )
    finish(code)


@contextmanager
def _csv_sink(file: str) -> Iterator[TextIO]:
    """The output file, or stdout for `-`."""
    if file == "-":
        yield sys.stdout
        return
    with open(file, "w", newline="", encoding="utf-8") as sink:
        yield sink


def parse_fields(spec: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    """`id,email` -> ["id", "email"]; with `allowed`, anything else is a usage error."""
    fields = [f.strip() for f in spec.split(",") if f.strip()]
    if not fields:
        raise click.BadParameter("name at least one field", param_hint="--fields")
    unknown = [f for f in fields if allowed is not None and f not in allowed]
    if unknown:
        raise click.BadParameter(
            f"unknown {', '.join(unknown)} (choose from {', '.join(allowed or ())})",
            param_hint="--fields",
        )
    return fields


@members.command("export")
@click.argument("segment")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--fields", default="id,email,phone", show_default=True, help="Columns to write.")
@pass_session
def export(session: Session, segment: str, file: str, fields: str) -> None:
    """Write the members of a segment to a CSV file (`-` for stdout), with a header row.

    \b
    Example:
      segsvc members export "Pro plan" pro.csv --fields id,email
    """
    columns = parse_fields(fields, MEMBER_FIELDS)
    if file == "-" and session.out.json:
        raise click.UsageError("--json and FILE '-' both want stdout; name a file")
    segment_id = resolve_segment(session.client, segment)
    written = 0
    with (
        _csv_sink(file) as sink,
        session.out.progress(f"exporting {segment}", unit="items") as bar,
    ):
        writer = csv.writer(sink)
        writer.writerow(columns)
        for page in _pages(session, segment_id):
            bar.set_total(page.total)
            writer.writerows([getattr(m, c) for c in columns] for m in page.members)
            written += len(page.members)
            bar.update(written)
    if session.out.json:
        session.out.document({"file": file, "members": written})
    elif file == "-":
        session.out.note(f"wrote {written} members")
    else:
        session.out.text(f"wrote {written} members to {file}")
