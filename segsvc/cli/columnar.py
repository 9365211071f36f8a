"""Input files read as columns with pyarrow, for `segsvc people import` and `segsvc events
import`: CSV (streamed block by block), JSON Lines and Parquet become record batches, and
each batch becomes typed columns of the wire form (PeopleColumns, EventColumns) with
pyarrow compute and numpy, never a loop per row in Python.

Cells are typed as declared (`--types`, or `name:type` in a CSV header) or, in text
formats, value by value as the row-by-row reader always did: true/false -> bool, a number
-> number (a leading zero keeps it text: zip codes), an ISO-8601 date or time -> timestamp,
anything else -> string; a column then holds up to four typed columns, one per kind. JSON
numbers and booleans and Parquet's types are kept as they are. Empty cells leave the stored
value alone (their validity bit is clear: pyarrow's validity bitmaps are the wire's, least
significant bit first). A cell that cannot be used makes its row the client's error, naming
the file, the row and the column; that row is not sent.

pyarrow (and numpy) are the `segsvc[import]` extra, not the light client's: import this
module after segsvc.cli.common.require_import_extra, which says so in one line when they
are missing.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from segsvc.cli.common import fail
from segsvc.cli.readers import VALUE_TYPES, epoch_seconds
from segsvc.v1 import people_pb2

if TYPE_CHECKING:
    import pyarrow as pa

Req = TypeVar("Req")

# Rows per stream message: what the server applies in one part (10,000 items x 5).
BATCH_ROWS = 50_000

_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
# A leading zero ("007", "01234") marks a code, not a quantity: such values stay strings.
_CODE = r"^[+-]?0\d"
_ISO_TIME = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?)?$"
_ZONE = r"(Z|[+-]\d{2}(:?\d{2})?)$"
_TRUE, _FALSE = ["true", "yes", "1"], ["false", "no", "0"]
_KIND_FIELDS = {
    "string": "strings",
    "number": "numbers",
    "bool": "bools",
    "timestamp": "timestamps",
}


def file_format(path: Path, given: str | None) -> str:
    """The format named, or the one the file's suffix says (csv when it says none)."""
    if given:
        return given
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    return "csv"


def parse_header_type(column: str) -> tuple[str, str | None]:
    """`signed_up:timestamp` -> ("signed_up", "timestamp"); other names unchanged."""
    name, sep, kind = column.rpartition(":")
    if sep and name and kind.strip().lower() in VALUE_TYPES:
        return name.strip(), kind.strip().lower()
    return column.strip(), None


@dataclass
class Source:
    """A file to read as columns, and how to read it."""

    path: Path
    format: str
    delimiter: str = ","
    encoding: str = "utf-8"
    # Declared types of columns; a CSV header's `name:type` adds to them.
    types: dict[str, str] = field(default_factory=dict)
    batch_rows: int = BATCH_ROWS
    # Filled by `batches`: the column names, and the rows in the file when known up front.
    columns: list[str] = field(default_factory=list)
    total_rows: int | None = None
    # CSV lines that are not rows (wrong number of cells), until `requests` reports them.
    malformed: list[str] = field(default_factory=list)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The file's rows, a batch at a time. CSV cells arrive as text (typed by us, so a
        bad cell is one row's error, not the whole block's); empty cells as nulls."""
        import pyarrow as pa

        try:
            if self.format == "csv":
                yield from self._csv()
            elif self.format == "jsonl":
                yield from self._jsonl()
            else:
                yield from self._parquet()
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as err:
            fail(f"{self.path}: cannot read it as {self.format}: {err}")

    def _csv(self) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa
        from pyarrow import csv as pacsv

        with self.path.open(encoding=self.encoding, newline="") as text:
            header = next(csv.reader(text, delimiter=self.delimiter), [])
        if not header:
            fail(f"{self.path}: the file is empty; it needs a header row")
        header[0] = header[0].removeprefix("\ufeff")
        names = []
        for raw in header:
            name, kind = parse_header_type(raw)
            if kind is not None:
                self.types.setdefault(name, kind)
            names.append(name)
        self.columns = names
        # pyarrow skips a UTF-8 byte order mark itself; it names the encoding without "-sig".
        utf8 = self.encoding.lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig")
        encoding = "utf8" if utf8 else self.encoding
        reader = pacsv.open_csv(
            self.path,
            read_options=pacsv.ReadOptions(
                column_names=names, skip_rows=1, encoding=encoding, block_size=1 << 22
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=self.delimiter,
                newlines_in_values=quoted_newlines(self.path),
                invalid_row_handler=self._malformed_line,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
            ),
        )
        for batch in reader:
            yield from _cut(batch, self.batch_rows)

    def _malformed_line(self, row: Any) -> str:
        """A line with more or fewer cells than the header: skipped and kept to report (the
        streaming reader does not know its line number)."""
        self.malformed.append(
            f"a line with {row.actual_columns} cells where the header has "
            f"{row.expected_columns} columns was skipped: {row.text[:200]!r}"
        )
        return "skip"

    def _jsonl(self) -> Iterator[pa.RecordBatch]:
        from pyarrow import json as pajson

        reader = pajson.open_json(
            self.path,
            read_options=pajson.ReadOptions(block_size=1 << 23),
            parse_options=pajson.ParseOptions(newlines_in_values=False),
        )
        self.columns = list(reader.schema.names)
        for batch in reader:
            yield from _cut(batch, self.batch_rows)

    def _parquet(self) -> Iterator[pa.RecordBatch]:
        from pyarrow import parquet as pq

        parquet = pq.ParquetFile(self.path)
        self.columns = list(parquet.schema_arrow.names)
        self.total_rows = parquet.metadata.num_rows
        yield from parquet.iter_batches(batch_size=self.batch_rows)

    def requests(
        self,
        check_header: Callable[[], None],
        build: Callable[[pa.RecordBatch, int], Built[Req]],
    ) -> Iterator[Built[Req]]:
        """Stream messages built from the file's batches with `build(batch, first row)`;
        `check_header` runs once the columns are known, before anything is built."""
        first_row = 1
        for batch in self.batches():
            if first_row == 1:
                check_header()
            built = build(batch, first_row)
            # Lines that are not rows are not numbered: each is reported at the first row
            # of the block it was found in.
            built.rejected.extend((first_row, "", "", why) for why in self.malformed)
            self.malformed.clear()
            yield built
            first_row += batch.num_rows
        if first_row == 1:
            check_header()  # a file of no rows still names its columns

    def infers(self) -> bool:
        """Whether undeclared text is typed value by value (text formats) or kept text."""
        return self.format != "parquet"


def quoted_newlines(path: Path, chunk: int = 1 << 24) -> bool:
    """Whether a quoted CSV field of the file spans lines: some line break comes after an
    odd number of double quotes (an escaped quote is two, so the parity holds). pyarrow
    parses three to four times slower when it has to allow for that, so it is asked to
    only when the file needs it; one pass with numpy over the bytes decides."""
    odd = False
    with path.open("rb") as raw:
        while block := raw.read(chunk):
            if b'"' not in block:
                if odd and b"\n" in block:
                    return True
                continue
            data = np.frombuffer(block, dtype=np.uint8)
            parity = (np.cumsum(data == ord('"')) + odd) % 2
            if parity[data == ord("\n")].any():
                return True
            odd = bool(parity[-1])
    return False


def _cut(batch: pa.RecordBatch, rows: int) -> Iterator[pa.RecordBatch]:
    for start in range(0, batch.num_rows, rows):
        yield batch.slice(start, rows)


# -- cells to typed columns --------------------------------------------------------------------


@dataclass
class Typed:
    """One kind of a column's values: `values` (list of str or numpy array) one slot per
    row, `valid` the rows with a value (numpy bool)."""

    kind: str
    values: Any
    valid: np.ndarray


class RowErrors:
    """The client's rejections in one batch: row -> (column, what is wrong), first wins."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.by_row: dict[int, tuple[str, str]] = {}

    def add(self, rows: np.ndarray, column: str, why: Any) -> None:
        """Rejects `rows`; `why(row)` says what is wrong with each."""
        for row in rows.tolist():
            self.by_row.setdefault(row, (column, why(row)))

    def keep(self) -> np.ndarray:
        keep = np.ones(self.n, dtype=bool)
        keep[list(self.by_row)] = False
        return keep


def _mask(array: Any) -> np.ndarray:
    """A boolean arrow array as numpy, nulls as False."""
    import pyarrow.compute as pc

    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)


def texts(array: Any) -> Any:
    """Cells as trimmed text, empty ones as nulls."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_string(array.type):
        array = pc.cast(array, pa.string())
    trimmed = pc.utf8_trim_whitespace(array)
    return pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)


def _strings(array: Any) -> list[str]:
    import pyarrow.compute as pc

    values: list[str] = pc.fill_null(array, "").to_pylist()
    return values


def _numbers(text: Any, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cells of `candidates` (numbers by the pattern) as floats; (values, finite)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    chosen = pc.if_else(pa.array(candidates), text, "0")
    values = np.asarray(pc.cast(chosen, pa.float64()).to_numpy(zero_copy_only=False))
    return values, candidates & np.isfinite(values)


def _times(text: Any, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ISO-8601 cells of `candidates` as whole UTC seconds; (seconds, parsed). A block
    holding an impossible date (2024-02-30) is parsed value by value, for its errors."""
    import pyarrow as pa
    import pyarrow.compute as pc

    seconds = np.zeros(len(text), dtype=np.int64)
    if not candidates.any():
        return seconds, candidates
    zoned = candidates & _mask(pc.match_substring_regex(text, _ZONE))
    try:
        # Arrow parses times with an offset only as zoned, and times without only as naive
        # (UTC for segsvc): one cast for each.
        for rows, unit in (
            (zoned, pa.timestamp("us", tz="UTC")),
            (candidates & ~zoned, pa.timestamp("us")),
        ):
            if rows.any():
                parsed = pc.cast(pc.if_else(pa.array(rows), text, None), unit).cast(pa.int64())
                micros = np.asarray(pc.fill_null(parsed, 0).to_numpy(zero_copy_only=False))
                seconds[rows] = micros[rows] // 1_000_000
        return seconds, candidates
    except pa.ArrowInvalid:
        parsed = candidates.copy()
        cells = text.to_pylist()
        for row in np.flatnonzero(candidates).tolist():
            try:
                seconds[row] = epoch_seconds(cells[row])
            except ValueError:
                parsed[row] = False
        return seconds, parsed


def typed_columns(
    array: Any, declared: str | None, infer: bool, column: str, errors: RowErrors
) -> list[Typed]:
    """A file column as typed columns: as declared, else by the array's own type, else
    (text) value by value when `infer`. Cells that are not of the declared type are
    `errors`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if pa.types.is_null(kind):
        return []
    if declared is None and not pa.types.is_string(kind) and not pa.types.is_large_string(kind):
        present = ~_mask(pc.is_null(array))
        if pa.types.is_boolean(kind):
            return [Typed("bool", _mask(array), present)]
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
            values = np.asarray(pc.fill_null(pc.cast(array, pa.float64()), 0.0).to_numpy())
            bad = present & ~np.isfinite(values)
            errors.add(np.flatnonzero(bad), column, lambda row: f"{values[row]} is not finite")
            return [Typed("number", values, present & ~bad)]
        if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
            zoned = pa.types.is_timestamp(kind) and kind.tz
            stamps = pc.cast(array, pa.timestamp("us", tz="UTC" if zoned else None))
            micros = np.asarray(pc.fill_null(stamps.cast(pa.int64()), 0).to_numpy())
            return [Typed("timestamp", micros // 1_000_000, present)]
        fail(
            f"column {column!r} holds {kind} values; attributes and properties are text, "
            "numbers, booleans or times"
        )
    text = texts(array)
    present = ~_mask(pc.is_null(text))
    if declared is None and not infer:
        return [Typed("string", _strings(text), present)]
    if declared == "string":
        return [Typed("string", _strings(text), present)]
    numeric = _mask(pc.match_substring_regex(text, _NUMBER))
    if declared == "number":
        values, ok = _numbers(text, numeric)
        errors.add(np.flatnonzero(present & ~ok), column, _says(text, "is not a number"))
        return [Typed("number", values, ok)]
    if declared == "bool":
        lowered = pc.utf8_lower(text)
        truth = _mask(pc.is_in(lowered, pa.array(_TRUE)))
        ok = truth | _mask(pc.is_in(lowered, pa.array(_FALSE)))
        errors.add(
            np.flatnonzero(present & ~ok),
            column,
            _says(text, "is not a boolean (true/false, yes/no, 1/0)"),
        )
        return [Typed("bool", truth, ok)]
    if declared == "timestamp":
        epochs, epoch_ok = _numbers(text, numeric)
        seconds, ok = _times(text, _mask(pc.match_substring_regex(text, _ISO_TIME)) & ~numeric)
        seconds[epoch_ok] = np.floor(epochs[epoch_ok]).astype(np.int64)
        ok |= epoch_ok
        errors.add(
            np.flatnonzero(present & ~ok),
            column,
            _says(text, "is not an ISO-8601 date/time or epoch seconds"),
        )
        return [Typed("timestamp", seconds, ok)]
    # Value by value: bool, then number (not codes), then time, else string. Each test
    # runs only if some cell is left for it (a column of numbers costs two patterns).
    out = []
    code = _mask(pc.match_substring_regex(text, _CODE))
    values, is_number = _numbers(text, numeric & ~code)
    if is_number.any():
        out.append(Typed("number", values, is_number))
    rest = present & ~is_number
    if rest.any() and not numeric[rest].all():
        lowered = pc.utf8_lower(text)
        is_bool = rest & _mask(pc.is_in(lowered, pa.array(["true", "false"])))
        if is_bool.any():
            out.append(Typed("bool", _mask(pc.equal(lowered, "true")), is_bool))
        rest &= ~is_bool
        iso = _mask(pc.match_substring_regex(text, _ISO_TIME))
        seconds, is_time = _times(text, rest & ~numeric & iso)
        if is_time.any():
            out.append(Typed("timestamp", seconds, is_time))
        rest &= ~is_time
    if rest.any():
        out.append(Typed("string", _strings(text), rest))
    return out


def _says(text: Any, what: str) -> Any:
    def why(row: int) -> str:
        return f"{text[row].as_py()!r} {what}"

    return why


# -- typed columns to the wire -----------------------------------------------------------------


def fill_column(target: Any, typed: Typed, keep: np.ndarray | None) -> None:
    """Writes `typed` (its rows where `keep`) into a wire column message: values, and the
    validity bitmap when some row has none."""
    valid = typed.valid if keep is None else typed.valid[keep]
    values = typed.values
    if keep is not None:
        values = _kept(values, keep) if typed.kind == "string" else values[keep]
    slot = "seconds" if typed.kind == "timestamp" else "values"
    getattr(target, slot).extend(values if typed.kind == "string" else values.tolist())
    if not valid.all():
        target.valid = np.packbits(valid, bitorder="little").tobytes()


def add_typed(target: Any, name: str, columns: Sequence[Typed], keep: np.ndarray | None) -> None:
    """Adds AttributeColumn messages named `name` to a repeated field, one per kind."""
    for typed in columns:
        valid = typed.valid if keep is None else typed.valid[keep]
        if valid.any():
            fill_column(getattr(target.add(name=name), _KIND_FIELDS[typed.kind]), typed, keep)


def tag_lists(array: Any, errors: RowErrors, column: str) -> tuple[list[str], np.ndarray]:
    """Tags per row (text split on `|`, or JSON lists), trimmed, empty ones dropped: the
    flat list and the count per row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(array)
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        lists = array
    else:
        lists = pc.split_pattern(texts(array), "|")
    flat = texts(pc.list_flatten(lists))
    owners = np.asarray(pc.list_parent_indices(lists).to_numpy())
    given = ~_mask(pc.is_null(flat))
    counts = np.bincount(owners[given], minlength=n).astype(np.int64)
    tags: list[str] = pc.drop_null(flat).to_pylist()
    return tags, counts


# -- batches to requests -----------------------------------------------------------------------


@dataclass
class Built(Generic[Req]):
    """One stream message built from a batch of rows: the request, the file's row number
    (1-based, the header not counted) of each row it carries, which file column each wire
    column came from (to name them in the server's errors), and the rows the client
    rejected: (file row, key, column, what is wrong)."""

    request: Req
    rows: np.ndarray
    names: dict[str, str]
    rejected: list[tuple[int, str, str, str]]


class Layout:
    """How a file's columns map to the fields of a person or an event."""

    def __init__(self, source: Source, builtins: dict[str, str]) -> None:
        self.source = source
        # file column -> field (id, email, ...); others are attributes or properties. Shared
        # with the command, which adds the built-in columns once it has read the header.
        self.builtins = builtins

    def typed(self, batch: pa.RecordBatch, name: str, errors: RowErrors) -> list[Typed]:
        return typed_columns(
            batch.column(name), self.source.types.get(name), self.source.infers(), name, errors
        )


def people_request(
    layout: Layout, batch: pa.RecordBatch, first_row: int
) -> Built[people_pb2.StreamUpsertPeopleRequest]:
    """One batch of people as a stream message of columns; the rows the client rejects
    are left out and returned (file row -> (column, what is wrong))."""
    import pyarrow.compute as pc

    n = batch.num_rows
    errors = RowErrors(n)
    fields = {f: c for c, f in layout.builtins.items() if c in batch.schema.names}
    id_column = fields["id"]
    ids = texts(batch.column(id_column))
    errors.add(
        np.flatnonzero(_mask(pc.is_null(ids))), id_column, lambda _: "empty; every row needs an id"
    )
    keys = {k: texts(batch.column(fields[k])) for k in ("email", "phone") if k in fields}
    unsubscribed = None
    if "unsubscribed" in fields:
        unsubscribed = typed_columns(
            batch.column(fields["unsubscribed"]), "bool", True, fields["unsubscribed"], errors
        )
    tags = None
    if "tags" in fields:
        tags = tag_lists(batch.column(fields["tags"]), errors, fields["tags"])
    attributes = [
        (name, layout.typed(batch, name, errors))
        for name in batch.schema.names
        if name not in layout.builtins
    ]
    keep = errors.keep()
    everyone = bool(keep.all())
    picked = None if everyone else keep
    columns = people_pb2.PeopleColumns(ids=_kept(_strings(ids), picked))
    names = {"ids": id_column}
    for kind, text in keys.items():
        present = ~_mask(pc.is_null(text))
        fill_column(getattr(columns, f"{kind}s"), Typed("string", _strings(text), present), picked)
        names[f"{kind}s"] = fields[kind]
    if unsubscribed:
        fill_column(columns.unsubscribed, unsubscribed[0], picked)
        names["unsubscribed"] = fields["unsubscribed"]
    if tags is not None:
        flat, counts = tags
        if not everyone:
            flat = _kept(flat, np.repeat(keep, counts))
            counts = counts[keep]
        if len(flat):
            columns.tags.extend(flat)
            columns.tag_counts.extend(counts.tolist())
        names["tags"] = names["tag_counts"] = fields["tags"]
    for name, typed in attributes:
        start = len(columns.attributes)
        add_typed(columns.attributes, name, typed, picked)
        for k in range(start, len(columns.attributes)):
            names[f"attributes[{k}]"] = name
    request = people_pb2.StreamUpsertPeopleRequest(columns=columns)
    return _built(request, keep, names, errors, ids, first_row)


def events_request(
    layout: Layout, batch: pa.RecordBatch, first_row: int, create: bool
) -> Built[people_pb2.StreamTrackEventsRequest]:
    """One batch of events as a stream message of columns, as `people_request`."""
    import pyarrow.compute as pc

    n = batch.num_rows
    errors = RowErrors(n)
    fields = {f: c for c, f in layout.builtins.items() if c in batch.schema.names}
    person = texts(batch.column(fields["person"]))
    errors.add(
        np.flatnonzero(_mask(pc.is_null(person))),
        fields["person"],
        lambda _: "empty; every event needs the id of who did it",
    )
    event_names = texts(batch.column(fields["name"]))
    errors.add(
        np.flatnonzero(_mask(pc.is_null(event_names))),
        fields["name"],
        lambda _: "empty; every event needs a name",
    )
    stamps = None
    if "timestamp" in fields:
        column = fields["timestamp"]
        stamps = typed_columns(batch.column(column), "timestamp", True, column, errors)
    properties = [
        (name, layout.typed(batch, name, errors))
        for name in batch.schema.names
        if name not in layout.builtins
    ]
    keep = errors.keep()
    picked = None if keep.all() else keep
    columns = people_pb2.EventColumns(
        person_ids=_kept(_strings(person), picked), names=_kept(_strings(event_names), picked)
    )
    names = {"person_ids": fields["person"], "names": fields["name"]}
    if stamps:
        fill_column(columns.timestamps, stamps[0], picked)
        names["timestamps"] = fields["timestamp"]
    for name, typed in properties:
        start = len(columns.properties)
        add_typed(columns.properties, name, typed, picked)
        for k in range(start, len(columns.properties)):
            names[f"properties[{k}]"] = name
    request = people_pb2.StreamTrackEventsRequest(columns=columns, create_missing_people=create)
    return _built(request, keep, names, errors, person, first_row)


def _built(
    request: Req,
    keep: np.ndarray,
    names: dict[str, str],
    errors: RowErrors,
    keys: Any,
    first_row: int,
) -> Built[Req]:
    rejected = [
        (first_row + row, keys[row].as_py() or "", column, why)
        for row, (column, why) in errors.by_row.items()
    ]
    return Built(request, np.flatnonzero(keep) + first_row, names, rejected)


def _kept(values: list[str], keep: np.ndarray | None) -> list[str]:
    if keep is None:
        return values
    kept: list[str] = np.asarray(values, dtype=object)[keep].tolist()
    return kept


def check_header(
    columns: Sequence[str], required: Mapping[str, str], path: Path, hint: str
) -> None:
    """Refuses a file without the columns it needs, or with a column twice, before
    anything is sent. `required`: field -> the column that must hold it."""
    seen: set[str] = set()
    for column in columns:
        if column in seen:
            fail(f"{path}: the column {column!r} appears twice in the header")
        seen.add(column)
    for field_name, column in required.items():
        if column not in seen:
            shown = ", ".join(map(repr, columns)) or "none"
            fail(
                f"{path}: no {column!r} column for the {field_name} (the file has {shown}); " + hint
            )
