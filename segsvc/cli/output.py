"""Everything the CLI prints: rich tables for people, JSON for programs, progress bars on stderr.

Commands build their answer once and hand it to `Output`; it decides between a table and JSON,
so no command has to test `--json` itself except to pick what to put in the document.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click
import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from segsvc.v1 import types_pb2

# Exit codes of every command.
EXIT_OK = 0
EXIT_PARTIAL = 1  # some items of a batch or import were rejected, the others applied
EXIT_ERROR = 2  # bad usage, unreadable input, or a failed call
EXIT_INTERRUPTED = 130  # Ctrl-C

# Outcomes at or above this number are rejections (see types.proto: "Rejected items").
FIRST_REJECTED_OUTCOME = types_pb2.OUTCOME_NOT_FOUND


def to_dict(message: Message) -> dict[str, Any]:
    """The JSON form of a message for `--json` output: proto field names, every field present
    (so scripts need no defaults), 64-bit integers as numbers when they fit."""
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )


def format_time(ts: Timestamp) -> str:
    """A timestamp as `2024-05-01T12:00:00Z`; empty when the field is unset."""
    if ts.seconds == 0 and ts.nanos == 0:
        return ""
    return datetime.fromtimestamp(ts.seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_number(number: float) -> str:
    """Whole numbers without a trailing `.0`, so ids and counts read as they were written."""
    if number.is_integer() and abs(number) < 2**53:
        return str(int(number))
    return repr(number)


def format_value(value: types_pb2.Value) -> str:
    """A typed attribute value as plain text (CSV cells and tables)."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return str(value.string_value)
    if kind == "number_value":
        return format_number(value.number_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "timestamp_value":
        return format_time(value.timestamp_value)
    return ""


def value_type(value: types_pb2.Value) -> str:
    kind = value.WhichOneof("kind")
    return kind.removesuffix("_value") if kind else ""


def outcome_name(outcome: types_pb2.Outcome.ValueType) -> str:
    """`OUTCOME_ALREADY_MEMBER` -> `already member`."""
    return types_pb2.Outcome.Name(outcome).removeprefix("OUTCOME_").replace("_", " ").lower()


@dataclass(frozen=True)
class ItemRow:
    """One line of a batch report: where the item was (`#3`, `line 17`), its key and outcome."""

    where: str
    key: str
    outcome: str
    error: str = ""
    rejected: bool = False


def item_rows(results: Iterable[types_pb2.ItemResult]) -> list[ItemRow]:
    """Rows for the per-item results of a batch call (item positions shown 1-based)."""
    return [
        ItemRow(
            where=f"#{r.index + 1}",
            key=r.key,
            outcome=outcome_name(r.outcome),
            error=f"{r.field}: {r.error}" if r.field else r.error,
            rejected=r.outcome >= FIRST_REJECTED_OUTCOME,
        )
        for r in results
    ]


class RowRateColumn(ProgressColumn):
    """Rows per second, as rich's TransferSpeedColumn shows bytes per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} rows/s")


class Tracker:
    """A handle on one progress bar; safe to update from the thread gRPC uses to send a stream."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task

    def update(self, completed: float) -> None:
        self._progress.update(self._task, completed=completed)

    def set_total(self, total: float | None) -> None:
        self._progress.update(self._task, total=total)


class Output:
    """Where a command's answer goes: stdout holds only the answer (a table or JSON); notes,
    warnings and progress bars go to stderr so `--json` output can be piped as is."""

    def __init__(self, json_mode: bool) -> None:
        self.json = json_mode
        # Markup and emoji off: segment names and attribute values are user data, and a name
        # such as "[vip]" or ":fire:" must print as typed.
        self.stdout = Console(markup=False, emoji=False, highlight=False)
        self.stderr = Console(stderr=True, markup=False, emoji=False, highlight=False)

    def document(self, doc: object) -> None:
        """The one JSON document of a non-streaming command."""
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))

    def json_line(self, doc: object) -> None:
        """One record of a streaming command (JSON Lines); flushed at once for `| jq`."""
        click.echo(json.dumps(doc, ensure_ascii=False, separators=(",", ":")))

    def text(self, line: str) -> None:
        """A human line on stdout (never in `--json` mode: callers emit a document there)."""
        self.stdout.print(line, soft_wrap=True)

    def note(self, line: str) -> None:
        """Something the user should read whatever the mode: goes to stderr."""
        self.stderr.print(line, soft_wrap=True)

    def table(
        self, columns: Sequence[str], rows: Iterable[Sequence[str]], title: str | None = None
    ) -> None:
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*row)
        self.stdout.print(table)

    def fields(self, pairs: Iterable[tuple[str, str]]) -> None:
        """A two-column "name: value" block, for showing one object."""
        table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for name, value in pairs:
            table.add_row(name, value)
        self.stdout.print(table)

    @contextmanager
    def progress(
        self, description: str, total: float | None = None, *, unit: str = "bytes"
    ) -> Iterator[Tracker]:
        """A progress bar on stderr, shown only on a terminal and never with `--json`.
        `unit` is "bytes" (sizes and speed), "rows" (a count and rows/s) or "items" (a
        count)."""
        columns: list[str | ProgressColumn] = [
            TextColumn("{task.description}"),
            BarColumn(),
        ]
        if unit == "bytes":
            columns += [DownloadColumn(), TransferSpeedColumn()]
        elif unit == "rows":
            columns += [TextColumn("{task.completed:,.0f} rows"), RowRateColumn()]
        else:
            columns += [MofNCompleteColumn()]
        columns.append(TimeRemainingColumn())
        disabled = self.json or not self.stderr.is_terminal
        with Progress(*columns, console=self.stderr, disable=disabled, transient=False) as bar:
            yield Tracker(bar, bar.add_task(description, total=total))

    def rpc_error(self, err: grpc.RpcError) -> None:
        """`error: NOT_FOUND: <details>` plus any field violations the server attached."""
        for line in rpc_error_lines(err):
            click.echo(line, err=True)


def rpc_error_lines(err: grpc.RpcError) -> list[str]:
    """The lines that describe a failed call. The status message says what to fix; a
    google.rpc.BadRequest detail adds one line per offending field."""
    if not isinstance(err, grpc.Call):
        return [f"error: {err}"]
    code = err.code()
    details = err.details()
    name = code.name if code else "UNKNOWN"
    lines = [f"error: {name}: {details}" if details else f"error: {name}"]
    for field, description in _field_violations(err):
        line = f"{field}: {description}" if field else description
        # Servers often put the violations in the message too; say each thing once.
        if line not in (details or ""):
            lines.append(f"  {line}")
    return lines


def _field_violations(call: grpc.Call) -> list[tuple[str, str]]:
    # Imported here: grpc_status pulls in googleapis-common-protos, needed only on errors.
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    try:
        status = rpc_status.from_call(call)
    except ValueError:
        # The trailer disagrees with the call's own status: nothing trustworthy to add.
        return []
    if status is None:
        return []
    violations: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations += [(v.field, v.description) for v in bad_request.field_violations]
    return violations


def report_batch(
    out: Output,
    document: Mapping[str, Any],
    counts: Mapping[str, int],
    rows: Sequence[ItemRow],
    *,
    show_all: bool = True,
    more_rejected: int = 0,
) -> int:
    """Print the result of a batch or bulk call and return its exit code: 0 when every item
    was applied, 1 when some were rejected (the others were applied).

    `document` is the `--json` answer; `counts` the summary line ("added 3, rejected 1");
    `rows` the per-item results, of which only the rejected ones are listed unless `show_all`;
    `more_rejected` counts rejections the server did not itemise (it lists the first ones).
    """
    rejected = counts.get("rejected", sum(1 for row in rows if row.rejected))
    if out.json:
        out.document(document)
    else:
        listed = rows if show_all else [row for row in rows if row.rejected]
        if listed:
            out.table(
                ["item", "key", "outcome", "error"],
                ([r.where, r.key, r.outcome, r.error] for r in listed),
            )
        out.text(", ".join(f"{name} {count}" for name, count in counts.items()))
        if more_rejected:
            out.note(f"({more_rejected} more rejected items are not listed here)")
    return EXIT_PARTIAL if rejected else EXIT_OK


def count_outcomes(results: Iterable[types_pb2.ItemResult]) -> dict[str, int]:
    """Summary counts of per-item results: one entry per applied outcome ("deleted": 2),
    then "rejected" for all rejections together."""
    counts: dict[str, int] = {}
    rejected = 0
    for result in results:
        if result.outcome >= FIRST_REJECTED_OUTCOME:
            rejected += 1
        else:
            name = outcome_name(result.outcome)
            counts[name] = counts.get(name, 0) + 1
    counts["rejected"] = rejected
    return counts
