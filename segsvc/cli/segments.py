"""`segsvc segments ...`: define, inspect and retire segments."""

from __future__ import annotations

from pathlib import Path

import click
from google.protobuf import json_format
from rich.text import Text

from segsvc.cli.common import (
    Session,
    by_option,
    confirm,
    fail,
    finish,
    iter_segments,
    pass_session,
    person_ref,
    resolve_segment,
    resolve_segments,
)
from segsvc.cli.output import (
    Output,
    count_outcomes,
    format_time,
    item_rows,
    report_batch,
    to_dict,
)
from segsvc.v1 import conditions_pb2, segments_pb2

_JSON_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)

_TYPES = {"manual": segments_pb2.SEGMENT_TYPE_MANUAL, "dynamic": segments_pb2.SEGMENT_TYPE_DYNAMIC}


def type_name(segment_type: segments_pb2.SegmentType.ValueType) -> str:
    return segments_pb2.SegmentType.Name(segment_type).removeprefix("SEGMENT_TYPE_").lower()


def load_conditions(path: Path) -> conditions_pb2.Condition:
    """A condition tree from a file holding segsvc.v1.Condition in protobuf JSON form; a file
    that does not parse is refused with the file and the problem named."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        fail(f"{path}: cannot read the file: {err}")
    try:
        return json_format.Parse(text, conditions_pb2.Condition())
    except json_format.ParseError as err:
        fail(f"{path}: not a valid segsvc.v1.Condition: {err}")


def _summaries(items: list[segments_pb2.SegmentSummary]) -> str:
    return ", ".join(f"{s.name} ({s.id})" for s in items) or "-"


def show_segment(out: Output, segment: segments_pb2.Segment) -> None:
    """One segment in full: a field block (and its conditions as JSON), or the JSON form."""
    if out.json:
        out.document(to_dict(segment))
        return
    out.fields(
        [
            ("id", str(segment.id)),
            ("name", segment.name),
            ("description", segment.description or "-"),
            ("type", type_name(segment.type)),
            ("members", str(segment.member_count)),
            ("archived", "yes" if segment.archived else "no"),
            ("created", format_time(segment.created_at)),
            ("updated", format_time(segment.updated_at)),
            ("references", _summaries(list(segment.references))),
            ("referenced by", _summaries(list(segment.referenced_by))),
        ]
    )
    if segment.HasField("conditions"):
        out.text("conditions:")
        out.text(
            json_format.MessageToJson(
                segment.conditions, indent=2, preserving_proto_field_name=True
            )
        )


@click.group()
def segments() -> None:
    """Define, inspect and retire segments.

    SEGMENT arguments are an id or a segment's exact name.
    """


@segments.command("list")
@click.option("--name", "name_contains", default="", help="Only names containing this text.")
@click.option("--type", "segment_type", type=click.Choice(sorted(_TYPES)), help="Only this type.")
@click.option("--archived", "archived", flag_value="archived", help="Only archived segments.")
@click.option("--all", "archived", flag_value="all", help="Archived and active segments.")
@pass_session
def list_segments(
    session: Session, name_contains: str, segment_type: str | None, archived: str | None
) -> None:
    """List segments with their live member counts (active ones unless --archived/--all).

    \b
    Example:
      segsvc segments list --name trial --type manual --all
    """
    archived_filter = {
        "archived": segments_pb2.ARCHIVED_FILTER_ARCHIVED,
        "all": segments_pb2.ARCHIVED_FILTER_ALL,
    }.get(archived or "", segments_pb2.ARCHIVED_FILTER_ACTIVE)
    found = list(
        iter_segments(
            session.client,
            name_contains=name_contains,
            segment_type=_TYPES.get(segment_type or "", segments_pb2.SEGMENT_TYPE_UNSPECIFIED),
            archived=archived_filter,
        )
    )
    if session.out.json:
        session.out.document({"segments": [to_dict(s) for s in found]})
        return
    session.out.table(
        ["id", "name", "type", "members", "archived", "created"],
        (
            [
                str(s.id),
                s.name,
                type_name(s.type),
                str(s.member_count),
                "yes" if s.archived else "",
                format_time(s.created_at),
            ]
            for s in found
        ),
    )


@segments.command("create")
@click.argument("name")
@click.option("--description", default="", help="What the segment is for.")
@click.option("--manual", is_flag=True, help="A manual segment: members are added by hand.")
@click.option(
    "--conditions",
    type=_JSON_FILE,
    help="A dynamic segment: its condition tree (segsvc.v1.Condition as JSON).",
)
@pass_session
def create(
    session: Session, name: str, description: str, manual: bool, conditions: Path | None
) -> None:
    """Create a manual segment, or a dynamic one from a condition file.

    \b
    Example:
      segsvc segments create "Trial users" --manual
      echo '{"attribute": {"attribute": "plan", "operator": "OPERATOR_EQUALS",
             "value": {"string_value": "pro"}}}' > pro.json
      segsvc segments create "Pro plan" --description "Paying users" --conditions pro.json
    """
    if manual == (conditions is not None):
        raise click.UsageError("give exactly one of --manual and --conditions FILE")
    request = segments_pb2.CreateSegmentRequest(name=name, description=description)
    if conditions is None:
        request.type = segments_pb2.SEGMENT_TYPE_MANUAL
    else:
        request.type = segments_pb2.SEGMENT_TYPE_DYNAMIC
        request.conditions.CopyFrom(load_conditions(conditions))
    show_segment(session.out, session.client.segments.CreateSegment(request).segment)


@segments.command("show")
@click.argument("segment")
@pass_session
def show(session: Session, segment: str) -> None:
    """Show a segment: its definition, member count and the segments it refers to.

    \b
    Example:
      segsvc segments show "Pro plan"
    """
    segment_id = resolve_segment(session.client, segment)
    request = segments_pb2.GetSegmentRequest(segment_id=segment_id)
    show_segment(session.out, session.client.segments.GetSegment(request).segment)


@segments.command("update")
@click.argument("segment")
@click.option("--name", help="New name.")
@click.option("--description", help="New description.")
@click.option("--conditions", type=_JSON_FILE, help="New condition tree (dynamic segments).")
@pass_session
def update(
    session: Session,
    segment: str,
    name: str | None,
    description: str | None,
    conditions: Path | None,
) -> None:
    """Rename a segment, change its description, or replace its conditions (members are
    recomputed at once).

    \b
    Example:
      segsvc segments update "Pro plan" --name "Pro and team plans" --conditions plans.json
    """
    if name is None and description is None and conditions is None:
        raise click.UsageError("nothing to change: give --name, --description or --conditions")
    request = segments_pb2.UpdateSegmentRequest(segment_id=resolve_segment(session.client, segment))
    if name is not None:
        request.name = name
    if description is not None:
        request.description = description
    if conditions is not None:
        request.conditions.CopyFrom(load_conditions(conditions))
    show_segment(session.out, session.client.segments.UpdateSegment(request).segment)


@segments.command("delete")
@click.argument("segment_args", metavar="SEGMENT...", nargs=-1, required=True)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_session
def delete(session: Session, segment_args: tuple[str, ...], yes: bool) -> None:
    """Delete segments (their members leave with cause DELETED). A segment that other
    segments refer to is refused.

    \b
    Example:
      segsvc segments delete "Old promo" 42 --yes
    """
    ids = resolve_segments(session.client, segment_args)
    confirm(f"Delete {len(ids)} segment(s): {', '.join(segment_args)}?", yes)
    response = session.client.segments.DeleteSegments(
        segments_pb2.DeleteSegmentsRequest(segment_ids=ids)
    )
    _report(session, response)


def _archive(session: Session, segment_args: tuple[str, ...], unarchive: bool) -> None:
    ids = resolve_segments(session.client, segment_args)
    response = session.client.segments.ArchiveSegments(
        segments_pb2.ArchiveSegmentsRequest(segment_ids=ids, unarchive=unarchive)
    )
    _report(session, response)


def _report(
    session: Session,
    response: segments_pb2.DeleteSegmentsResponse | segments_pb2.ArchiveSegmentsResponse,
) -> None:
    rows = item_rows(response.results)
    counts = count_outcomes(response.results)
    finish(report_batch(session.out, to_dict(response), counts, rows))


@segments.command("archive")
@click.argument("segment_args", metavar="SEGMENT...", nargs=-1, required=True)
@pass_session
def archive(session: Session, segment_args: tuple[str, ...]) -> None:
    """Archive segments: hidden from the default listing, kept up to date, restorable.

    \b
    Example:
      segsvc segments archive "Spring sale" "Summer sale"
    """
    _archive(session, segment_args, unarchive=False)


@segments.command("unarchive")
@click.argument("segment_args", metavar="SEGMENT...", nargs=-1, required=True)
@pass_session
def unarchive(session: Session, segment_args: tuple[str, ...]) -> None:
    """Bring archived segments back.

    \b
    Example:
      segsvc segments unarchive "Spring sale"
    """
    _archive(session, segment_args, unarchive=True)


@segments.command("preview")
@click.argument("conditions", metavar="FILE.json", type=_JSON_FILE)
@click.option(
    "--sample",
    type=click.IntRange(0, 1000),
    default=10,
    show_default=True,
    help="How many matching ids to show.",
)
@pass_session
def preview(session: Session, conditions: Path, sample: int) -> None:
    """Count who an unsaved condition tree matches, with a sample of their ids.

    \b
    Example:
      segsvc segments preview pro.json --sample 20
    """
    request = segments_pb2.PreviewSegmentRequest(
        conditions=load_conditions(conditions), sample_size=sample
    )
    response = session.client.segments.PreviewSegment(request)
    if session.out.json:
        session.out.document(to_dict(response))
        return
    session.out.text(f"{response.count} people match")
    for person_id in response.sample:
        session.out.text(f"  {person_id}")


@segments.command("explain")
@click.argument("segment")
@click.argument("person")
@by_option
@pass_session
def explain(session: Session, segment: str, person: str, by: str) -> None:
    """Why a person is or is not in a dynamic segment: every node of its condition tree
    with ✓ (true for this person) or ✗.

    \b
    Example:
      segsvc segments explain "Pro plan" alice@example.com --by email
    """
    request = segments_pb2.ExplainMembershipRequest(
        person=person_ref(person, by), segment_id=resolve_segment(session.client, segment)
    )
    response = session.client.segments.ExplainMembership(request)
    if session.out.json:
        session.out.document(to_dict(response))
        return
    verdict = "is a member" if response.member else "is not a member"
    session.out.text(f"{person} {verdict} of {segment}")
    _print_node(session.out, response.root, 0)


def _print_node(out: Output, node: segments_pb2.ExplainNode, depth: int) -> None:
    line = Text("  " * depth)
    line.append("✓ " if node.matched else "✗ ", style="green" if node.matched else "red")
    line.append(node.description)
    if node.path:
        line.append(f"  ({node.path})", style="dim")
    out.stdout.print(line, soft_wrap=True)
    for child in node.children:
        _print_node(out, child, depth + 1)


@segments.command("history")
@click.argument("segment")
@pass_session
def history(session: Session, segment: str) -> None:
    """A segment's member count over time.

    \b
    Example:
      segsvc segments history "Pro plan"
    """
    request = segments_pb2.GetSegmentHistoryRequest(
        segment_id=resolve_segment(session.client, segment)
    )
    response = session.client.segments.GetSegmentHistory(request)
    if session.out.json:
        session.out.document(to_dict(response))
        return
    session.out.table(
        ["at", "members"], ([format_time(p.at), str(p.member_count)] for p in response.points)
    )
