"""Reading input files into messages, one record at a time (files may be gigabytes).

Every reader yields `Record`s: the message built from one line or row, or the reason it could
not be built, with its line number and how many bytes of the file are read so far (for the
progress bar). A bad row never stops a load: it is reported with the server's rejections.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from segsvc.cli.common import fail
from segsvc.v1 import people_pb2, types_pb2

M = TypeVar("M", bound=Message)

VALUE_TYPES = ("string", "number", "bool", "timestamp")
# The formats the import commands read as columns (segsvc.cli.columnar).
IMPORT_FORMATS = ("csv", "jsonl", "parquet")


@dataclass(frozen=True)
class Record(Generic[M]):
    """One line or row of an input file: its message, or `error` saying why there is none."""

    line: int
    position: int
    key: str
    message: M | None
    error: str = ""


class CountingReader(io.RawIOBase):
    """A raw binary file that counts the bytes read from it, so a progress bar can follow a
    text reader (text files cannot `tell()` while being iterated)."""

    def __init__(self, raw: io.FileIO) -> None:
        self._raw = raw
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self._raw.readinto(buffer) or 0
        self.consumed += count
        return count

    def close(self) -> None:
        self._raw.close()
        super().close()


@contextmanager
def open_counted(path: Path, encoding: str) -> Iterator[tuple[io.TextIOWrapper, CountingReader]]:
    """`path` as text (universal newlines left to the csv module) and its byte counter."""
    counter = CountingReader(io.FileIO(path, "r"))
    text = io.TextIOWrapper(io.BufferedReader(counter, 1 << 20), encoding=encoding, newline="")
    try:
        yield text, counter
    except UnicodeDecodeError as err:
        fail(
            f"{path}: cannot decode the file as {encoding} ({err.reason} at a byte "
            f"{err.object[err.start : err.start + 1]!r}); pass --encoding, e.g. cp1252"
        )
    finally:
        text.close()


def read_proto_lines(
    path: Path, factory: Callable[[], M], key_of: Callable[[M], str]
) -> Iterator[Record[M]]:
    """JSON Lines where each line is one message in protobuf JSON form. Blank lines are
    skipped; a line that does not parse becomes an error record naming what is wrong."""
    with open_counted(path, "utf-8-sig") as (text, counter):
        for number, line in enumerate(text, start=1):
            if not line.strip():
                continue
            message = factory()
            try:
                json_format.Parse(line, message)
            except json_format.ParseError as err:
                yield Record(number, counter.consumed, "", None, str(err))
                continue
            yield Record(number, counter.consumed, key_of(message), message)


# --- people from CSV or flat JSON records -------------------------------------------------

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
# A leading zero ("007", "01234") marks a code, not a quantity: keep such values as strings.
_CODE = re.compile(r"[+-]?0\d")
_ISO_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?)?"
)
_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}


def epoch_seconds(text: str) -> int:
    """Whole UTC seconds of an ISO-8601 date or date-time (UTC unless it names an offset);
    ValueError if it is not one."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return math.floor(moment.timestamp())


def infer_into(value: types_pb2.Value, text: str) -> None:
    """Set `value` to the typed reading of a cell nobody declared a type for: true/false ->
    bool, a number -> number (unless it has a leading zero, like a zip code), an ISO-8601
    date or date-time -> timestamp, anything else -> string. Fills the message in place
    (a map entry, usually): this runs for every cell of files of millions of rows."""
    first = text[0]
    if first in "tTfF" and len(text) in (4, 5):
        lowered = text.lower()
        if lowered in ("true", "false"):
            value.bool_value = lowered == "true"
            return
    elif first in "+-.0123456789":
        if _NUMBER.fullmatch(text) and not _CODE.match(text):
            number = float(text)
            if math.isfinite(number):
                value.number_value = number
                return
        elif _ISO_TIME.fullmatch(text):
            try:
                value.timestamp_value.seconds = epoch_seconds(text)
                return
            except ValueError:
                pass  # e.g. 2024-02-30: not a date after all, so a string
    value.string_value = text


def infer_value(text: str) -> types_pb2.Value:
    """`infer_into` a new Value."""
    value = types_pb2.Value()
    infer_into(value, text)
    return value


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false, yes/no, 1/0)")


def declared_value(text: str, type_name: str) -> types_pb2.Value:
    """The value of a cell whose column was declared with `--types`; ValueError if it is not
    of that type."""
    if type_name == "string":
        return types_pb2.Value(string_value=text)
    if type_name == "bool":
        return types_pb2.Value(bool_value=parse_bool(text))
    if type_name == "number":
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ValueError(f"{text!r} is not a number")
        return types_pb2.Value(number_value=number)
    # timestamp: ISO-8601, or seconds since the epoch.
    if _NUMBER.fullmatch(text):
        value = types_pb2.Value()
        value.timestamp_value.seconds = math.floor(float(text))
        return value
    value = types_pb2.Value()
    try:
        value.timestamp_value.seconds = epoch_seconds(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO-8601 date/time or epoch seconds") from None
    return value


def parse_types(spec: str) -> dict[str, str]:
    """`col=number,col2=timestamp` -> {"col": "number", "col2": "timestamp"}."""
    types: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        column, sep, type_name = part.rpartition("=")
        if not sep or not column or type_name not in VALUE_TYPES:
            fail(f"--types: {part!r} is not COLUMN=TYPE with TYPE one of {', '.join(VALUE_TYPES)}")
        types[column.strip()] = type_name
    return types


class PersonBuilder:
    """Turns one flat record (CSV row or JSON object) into a PersonUpsert.

    The id column, `email`, `phone`, `unsubscribed` and `tags` (split on `|`) are the built-in
    fields; every other column is an attribute, typed as declared or inferred per value.
    Empty cells are skipped, so a partial file updates only what it holds.
    """

    BUILTINS = ("email", "phone", "unsubscribed", "tags")

    def __init__(self, id_column: str, types: Mapping[str, str]) -> None:
        self.id_column = id_column
        self.types = dict(types)
        self._setters: dict[str, _Setter] = {}
        for column in self.types:
            if column == id_column or column.lower() in self.BUILTINS:
                fail(f"--types: {column!r} is a built-in field; only attributes take a type")

    def check_columns(self, columns: Sequence[str], path: Path) -> None:
        """Refuse a header that cannot be loaded, before anything is sent."""
        if self.id_column not in columns:
            fail(
                f"{path}: no {self.id_column!r} column (the header has "
                f"{', '.join(map(repr, columns))}); name the id column with --id-column"
            )
        seen: set[str] = set()
        for column in columns:
            if column in seen:
                fail(f"{path}: the column {column!r} appears twice in the header")
            seen.add(column)
        missing = sorted(set(self.types) - seen)
        if missing:
            fail(f"--types names columns the file does not have: {', '.join(missing)}")

    def build(self, record: Mapping[str, Any]) -> people_pb2.PersonUpsert:
        """ValueError (with the column named) when a value cannot be used."""
        person_id = record.get(self.id_column)
        if isinstance(person_id, (int, float)) and not isinstance(person_id, bool):
            person_id = format(person_id, "g") if isinstance(person_id, float) else str(person_id)
        if not isinstance(person_id, str) or not person_id.strip():
            raise ValueError(f"{self.id_column}: empty; every row needs an id")
        person = people_pb2.PersonUpsert(id=person_id.strip())
        for column, raw in record.items():
            value = raw.strip() if isinstance(raw, str) else raw
            if value is None or value == "" or column == self.id_column:
                continue
            setter = self._setters.get(column) or self._setter(column)
            try:
                setter(person, value)
            except ValueError as err:
                raise ValueError(f"{column}: {err}") from None
        return person

    def _setter(self, column: str) -> _Setter:
        """How values of `column` go into a PersonUpsert; decided once per column."""
        builtin = column.lower()
        setter: _Setter
        if builtin in ("email", "phone"):

            def setter(person: people_pb2.PersonUpsert, value: Any) -> None:
                if not isinstance(value, str):
                    raise ValueError(f"expected text, got {value!r}")
                setattr(person, builtin, value)

        elif builtin == "unsubscribed":

            def setter(person: people_pb2.PersonUpsert, value: Any) -> None:
                person.unsubscribed = value if isinstance(value, bool) else parse_bool(str(value))

        elif builtin == "tags":

            def setter(person: people_pb2.PersonUpsert, value: Any) -> None:
                tags = value if isinstance(value, list) else str(value).split("|")
                person.add_tags.extend(t.strip() for t in map(str, tags) if t.strip())

        else:
            declared = self.types.get(column)

            def setter(person: people_pb2.PersonUpsert, value: Any) -> None:
                if isinstance(value, str) and declared is None:
                    infer_into(person.attributes[column], value)
                else:
                    person.attributes[column].CopyFrom(_attribute(value, declared))

        self._setters[column] = setter
        return setter


_Setter = Callable[[people_pb2.PersonUpsert, Any], None]


def _attribute(value: Any, declared: str | None) -> types_pb2.Value:
    """A JSON value (or a CSV cell of a declared type) as an attribute value."""
    if isinstance(value, bool):
        if declared in (None, "bool"):
            return types_pb2.Value(bool_value=value)
        value = "true" if value else "false"
    elif isinstance(value, (int, float)):
        if declared in (None, "number"):
            return types_pb2.Value(number_value=float(value))
        value = str(value)
    elif not isinstance(value, str):
        raise ValueError(f"nested values are not supported ({type(value).__name__})")
    return declared_value(value, declared) if declared else infer_value(value)


def read_people_csv(
    path: Path, builder: PersonBuilder, *, delimiter: str, encoding: str
) -> Iterator[Record[people_pb2.PersonUpsert]]:
    """People from a CSV file with a header row. Quoted fields may span lines; a row's line
    number is the line it starts on."""
    with open_counted(path, encoding) as (text, counter):
        reader = csv.reader(text, delimiter=delimiter)
        header = [column.strip() for column in next(reader, [])]
        if not header:
            fail(f"{path}: the file is empty; it needs a header row")
        builder.check_columns(header, path)
        end = reader.line_num
        while True:
            start = end + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                end = reader.line_num
                yield Record(start, counter.consumed, "", None, f"not valid CSV: {err}")
                continue
            end = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) > len(header):
                key = row[header.index(builder.id_column)]
                error = f"{len(row)} cells but the header has {len(header)} columns"
                yield Record(start, counter.consumed, key, None, error)
                continue
            yield _built(builder, dict(zip(header, row, strict=False)), start, counter.consumed)


def read_people_jsonl(
    path: Path, builder: PersonBuilder
) -> Iterator[Record[people_pb2.PersonUpsert]]:
    """People from JSON Lines of flat objects ({"id": "u1", "plan": "pro", "tags": [...]}):
    the same columns as the CSV form, with JSON's own types where it has them."""
    with open_counted(path, "utf-8-sig") as (text, counter):
        for number, line in enumerate(text, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as err:
                yield Record(number, counter.consumed, "", None, f"not valid JSON: {err}")
                continue
            if not isinstance(obj, dict):
                yield Record(number, counter.consumed, "", None, "expected a JSON object")
                continue
            yield _built(builder, obj, number, counter.consumed)


def _built(
    builder: PersonBuilder, record: Mapping[str, Any], line: int, position: int
) -> Record[people_pb2.PersonUpsert]:
    key = str(record.get(builder.id_column) or "")
    try:
        return Record(line, position, key, builder.build(record))
    except ValueError as err:
        return Record(line, position, key, None, str(err))
