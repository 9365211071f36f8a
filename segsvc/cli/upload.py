"""Client-streaming uploads with a progress bar, and bulk loads of records in batches.

`stream_upload` is the one way the CLI sends a request stream (CSV chunks, batches of people,
events); `bulk_load` builds on it for files of records and reports their summary.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from segsvc.cli.common import Session
from segsvc.cli.output import ItemRow, Output, outcome_name, report_batch, to_dict
from segsvc.cli.readers import Record
from segsvc.v1 import people_pb2

Req = TypeVar("Req")
# What a bulk method answers at the end of its stream.
BulkSummary = TypeVar(
    "BulkSummary", people_pb2.StreamUpsertPeopleResponse, people_pb2.StreamTrackEventsResponse
)
Resp = TypeVar("Resp")
M = TypeVar("M", bound=Message)

BATCH_SIZE = 1000
# Client-side rejections listed in the report (the rest are only counted), like the server.
MAX_LISTED = 10_000
# Rejected lines shown in the table on the terminal.
SHOWN_ON_TERMINAL = 50
_BATCH_INDEX = re.compile(r"^\w+\[\d+\]\.?")


def stream_upload(
    out: Output,
    method: grpc.StreamUnaryMultiCallable[Req, Resp],
    requests: Iterable[tuple[Req, int]],
    *,
    total: int | None,
    description: str,
) -> Resp:
    """Send `requests` as one client stream and return the server's answer, with a progress
    bar over `total` (each request comes with the progress reached once it is built).

    gRPC pulls the requests from its own thread. If producing them fails (an unreadable
    file), the call is cancelled, so the server never takes a truncated stream for a whole
    one, and that error is raised here instead of a bare CANCELLED.
    """
    failure: list[Exception] = []
    call_started = threading.Event()
    calls: list[grpc.CallFuture[Resp]] = []

    with out.progress(description, total) as bar:

        def feed() -> Iterator[Req]:
            try:
                for request, progress in requests:
                    bar.update(progress)
                    yield request
            except Exception as exc:
                failure.append(exc)
                call_started.wait()
                calls[0].cancel()  # type: ignore[no-untyped-call]  # unannotated in grpc-stubs

        call = method.future(feed())
        calls.append(call)
        call_started.set()
        try:
            response = call.result()
        except (grpc.RpcError, grpc.FutureCancelledError):
            if failure:
                raise failure[0] from None
            raise
        except KeyboardInterrupt:
            call.cancel()  # type: ignore[no-untyped-call]
            raise
        if total is not None:
            bar.update(total)
    return response


class _LineMap:
    """Maps a record's position in the stream (what the server reports) back to its line in
    the file. Stores only the places where lines skip (blank or rejected lines), so memory
    stays small however long the file."""

    def __init__(self) -> None:
        self._indexes: list[int] = []
        self._lines: list[int] = []
        self._count = 0

    def add(self, line: int) -> None:
        if not self._lines or line != self._lines[-1] + (self._count - self._indexes[-1]):
            self._indexes.append(self._count)
            self._lines.append(line)
        self._count += 1

    def line_of(self, index: int) -> int:
        at = bisect.bisect_right(self._indexes, index) - 1
        return self._lines[at] + index - self._indexes[at] if at >= 0 else 0


class _LocalRejects:
    """Records the client could not turn into messages: counted, and the first ones kept."""

    def __init__(self) -> None:
        self.count = 0
        self.listed: list[Record[Any]] = []

    def add(self, record: Record[Any]) -> None:
        self.count += 1
        if len(self.listed) < MAX_LISTED:
            self.listed.append(record)


def bulk_load(
    session: Session,
    method: grpc.StreamUnaryMultiCallable[Req, BulkSummary],
    records: Iterable[Record[M]],
    build: Callable[[list[M]], Req],
    *,
    total: int | None,
    description: str,
    counts: Sequence[str],
    batch_size: int = BATCH_SIZE,
) -> int:
    """Stream `records` to a bulk method (StreamUpsertPeople, StreamTrackEvents) in batches of
    `batch_size`, then report the summary with every rejected line, the client's and the
    server's, by line number. Returns the exit code (1 if any line was rejected).

    `counts` names the summary's fields to show beside rows and rejected."""
    lines = _LineMap()
    local = _LocalRejects()

    def batches() -> Iterator[tuple[Req, int]]:
        batch: list[M] = []
        position = 0
        for record in records:
            position = record.position
            if record.message is None:
                local.add(record)
                continue
            lines.add(record.line)
            batch.append(record.message)
            if len(batch) >= batch_size:
                yield build(batch), position
                batch = []
        if batch:
            yield build(batch), position

    summary = stream_upload(session.out, method, batches(), total=total, description=description)

    rows = [
        ItemRow(f"line {r.line}", r.key, "invalid", r.error, rejected=True) for r in local.listed
    ]
    errors = [to_dict(error) | {"line": lines.line_of(error.index)} for error in summary.errors]
    for error, item in zip(errors, summary.errors, strict=True):
        # The field path names the item's place in its batch ("people[3].email"); the line
        # number says where it is in the file, so only the field within the item is shown.
        field = _BATCH_INDEX.sub("", item.field)
        message = f"{field}: {item.error}" if field else item.error
        rows.append(
            ItemRow(f"line {error['line']}", item.key, outcome_name(item.outcome), message, True)
        )
    errors += [
        {"line": r.line, "key": r.key, "outcome": "OUTCOME_INVALID", "error": r.error, "field": ""}
        for r in local.listed
    ]
    errors.sort(key=lambda error: int(error["line"]))
    rows.sort(key=lambda row: int(row.where.removeprefix("line ")))

    rejected = summary.rejected + local.count
    document = to_dict(summary) | {
        "rows": summary.received + local.count,
        "rejected": rejected,
        "errors": errors,
    }
    shown = {"rows": summary.received + local.count}
    shown |= {name: int(getattr(summary, name)) for name in counts}
    shown["rejected"] = rejected
    listed = rows[:SHOWN_ON_TERMINAL]
    code = report_batch(
        session.out, document, shown, listed, show_all=False, more_rejected=rejected - len(listed)
    )
    if len(listed) < rejected and not session.out.json:
        session.out.note(f"--json lists every rejected line (up to {MAX_LISTED} of each kind)")
    return code
