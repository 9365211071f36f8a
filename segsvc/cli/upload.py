"""Client-streaming uploads with a progress bar, and bulk loads of records in batches.

`stream_upload` is the one way the CLI sends a request stream (CSV chunks, batches of people,
events); `bulk_load` builds on it for files of records and reports their summary.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import Message

from segsvc.cli.common import Session
from segsvc.cli.output import ItemRow, Output, outcome_name, report_batch, to_dict
from segsvc.cli.readers import Record
from segsvc.v1 import people_pb2, types_pb2

Req = TypeVar("Req")
Req_co = TypeVar("Req_co", covariant=True)
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
    unit: str = "bytes",
    acknowledged: Callable[[], int] | None = None,
) -> Resp:
    """Send `requests` as one client stream and return the server's answer, with a progress
    bar over `total` (each request comes with the progress reached once it is built).
    `acknowledged` gives where the bar ends once the server answered (default `total`).

    gRPC pulls the requests from its own thread. If producing them fails (an unreadable
    file), the call is cancelled, so the server never takes a truncated stream for a whole
    one, and that error is raised here instead of a bare CANCELLED.
    """
    failure: list[Exception] = []
    call_started = threading.Event()
    calls: list[grpc.CallFuture[Resp]] = []

    with out.progress(description, total, unit=unit) as bar:

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
        end = total if acknowledged is None else acknowledged()
        if end is not None:
            bar.set_total(end)
            bar.update(end)
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
    local_rows = [(r.line, r.key, r.error) for r in local.listed]
    return report_load(
        session, summary, local_rows, local.count, lambda e: (lines.line_of(e.index), ""), counts
    )


def report_load(
    session: Session,
    summary: BulkSummary,
    local: Sequence[tuple[int, str, str]],
    local_count: int,
    place_of: Callable[[types_pb2.ItemResult], tuple[int, str]],
    counts: Sequence[str],
    word: str = "line",
    file: str = "",
) -> int:
    """Reports a bulk load's summary with every rejected line (or row), the client's
    (`local`: (place, key, what is wrong), `local_count` of them in all) and the server's,
    whose place and field name in the file `place_of` gives; `file` names the file in each
    (and in the JSON document). Returns the exit code (1 if any was rejected). `counts`
    names the summary's fields to show beside rows and rejected."""
    where = f"{file} {word}" if file else word
    placed = [
        (place, ItemRow(f"{where} {place}", key, "invalid", error, rejected=True))
        for place, key, error in local
    ]
    errors = []
    for item in summary.errors:
        place, column = place_of(item)
        errors.append(to_dict(item) | {word: place})
        # The field path names the item's place in its batch ("people[3].email"); the line
        # number says where it is in the file, so only the field within the item is shown.
        field = column or _BATCH_INDEX.sub("", item.field)
        message = f"{field}: {item.error}" if field else item.error
        row = ItemRow(f"{where} {place}", item.key, outcome_name(item.outcome), message, True)
        placed.append((place, row))
    errors += [
        {word: place, "key": key, "outcome": "OUTCOME_INVALID", "error": error, "field": ""}
        for place, key, error in local
    ]
    errors.sort(key=lambda error: int(error[word]))
    placed.sort(key=lambda pair: pair[0])
    rows = [row for _, row in placed]

    rejected = summary.rejected + local_count
    document = (
        ({"file": file} if file else {})
        | to_dict(summary)
        | {
            "rows": summary.received + local_count,
            "rejected": rejected,
            "errors": errors,
        }
    )
    shown = {"rows": summary.received + local_count}
    shown |= {name: int(getattr(summary, name)) for name in counts}
    shown["rejected"] = rejected
    listed = rows[:SHOWN_ON_TERMINAL]
    code = report_batch(
        session.out, document, shown, listed, show_all=False, more_rejected=rejected - len(listed)
    )
    if len(listed) < rejected and not session.out.json:
        session.out.note(f"--json lists every rejected {word} (up to {MAX_LISTED} of each kind)")
    return code


class ColumnBatch(Protocol[Req_co]):
    """One stream message of columns built from a batch of a file's rows (see
    segsvc.cli.columnar): the request, the file row of each row it carries (1-based, the
    header not counted), the wire column -> file column names, and the rows the client
    rejected: (file row, key, column, what is wrong)."""

    @property
    def request(self) -> Req_co: ...

    @property
    def rows(self) -> Any: ...  # a numpy array of ints (numpy is not the light client's)

    @property
    def names(self) -> Mapping[str, str]: ...

    @property
    def rejected(self) -> Sequence[tuple[int, str, str, str]]: ...


_WIRE_COLUMN = re.compile(r"^columns\.(\w+(?:\[\d+\])?)")


def column_load(
    session: Session,
    method: grpc.StreamUnaryMultiCallable[Req, BulkSummary],
    batches: Iterable[ColumnBatch[Req]],
    *,
    total: int | None,
    description: str,
    counts: Sequence[str],
    file: str,
) -> int:
    """Stream batches of columns to a bulk method, with a progress bar in rows and rows/s
    that ends when the server has answered, then report the summary with every rejected
    row, the client's and the server's, by its row in the file and its column."""
    firsts: list[int] = []
    sent: list[ColumnBatch[Req]] = []
    local = _LocalRejects()
    rows = 0

    def requests() -> Iterator[tuple[Req, int]]:
        nonlocal rows
        for batch in batches:
            for row, key, column, error in batch.rejected:
                local.add(Record(row, 0, key, None, f"{column}: {error}" if column else error))
            if not len(batch.rows):
                continue
            firsts.append(sum(len(b.rows) for b in sent[-1:]) + (firsts[-1] if firsts else 0))
            sent.append(batch)
            # The bar counts a batch once gRPC takes the next one: the rows sent so far,
            # not the rows read; it ends only when the server has answered.
            yield batch.request, rows
            rows += len(batch.rows)

    summary = stream_upload(
        session.out,
        method,
        requests(),
        total=total,
        description=description,
        unit="rows",
        acknowledged=lambda: rows + local.count,
    )

    def place_of(item: types_pb2.ItemResult) -> tuple[int, str]:
        at = bisect.bisect_right(firsts, item.index) - 1
        batch = sent[at]
        found = _WIRE_COLUMN.match(item.field)
        column = batch.names.get(found.group(1), "") if found else ""
        return int(batch.rows[item.index - firsts[at]]), column

    local_rows = [(r.line, r.key, r.error) for r in local.listed]
    return report_load(session, summary, local_rows, local.count, place_of, counts, "row", file)
