"""CSV member import: bytes arriving in chunks -> one key per row -> members, in batches.

Nothing here holds the whole file: chunks are decoded incrementally, split into lines, parsed
by the csv module and resolved and added 10,000 rows at a time, so a 1M-row file costs the
memory of one batch. Line numbers are the file's physical lines (1-based), as a spreadsheet
shows them, and a row spanning lines (a quoted newline) is reported at its first line.
"""

from __future__ import annotations

import codecs
import csv
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from segsvc.engine.errors import InvalidArgument

BATCH_ROWS = 10_000
MAX_LINE_CHARS = 1 << 20
MAX_LISTED_REJECTIONS = 10_000
DELIMITERS = ",;\t|"
# Lines looked at to pick the delimiter when none is given.
_SNIFF_LINES = 20
_BOM = codecs.BOM_UTF8


@dataclass(frozen=True)
class CsvSettings:
    """How to read the file; `column` is "" (column 1), a 1-based number or a header name."""

    header: bool = False
    column: str = ""
    delimiter: str = ""
    encoding: str = ""

    def check(self, path: str = "options") -> None:
        if self.delimiter and (len(self.delimiter) != 1 or self.delimiter in '"\r\n'):
            raise InvalidArgument(
                "the delimiter is one character other than a quote or a newline "
                "(or empty to detect , ; tab or |)",
                f"{path}.delimiter",
            )
        if self.encoding:
            _check_encoding(self.encoding, f"{path}.encoding")
        column = self.column.strip()
        if _is_number(column):
            if int(column) < 1:
                raise InvalidArgument("column numbers start at 1", f"{path}.column")
        elif column and not self.header:
            raise InvalidArgument(
                f"column {column!r} is a name, which needs a header row: set header, "
                "or give the column's number",
                f"{path}.column",
            )


@dataclass(frozen=True)
class CsvRow:
    line: int
    value: str
    # Why the row cannot be used; "" for a row to resolve.
    problem: str = ""


@dataclass
class ImportReport:
    rows: int = 0
    added: int = 0
    already_members: int = 0
    rejected: int = 0
    rejected_rows: list[CsvRow] = field(default_factory=list)

    def reject(self, row: CsvRow) -> None:
        self.rejected += 1
        if len(self.rejected_rows) < MAX_LISTED_REJECTIONS:
            self.rejected_rows.append(row)


def import_members(
    rows: Iterable[CsvRow],
    kind: str,
    resolve: Callable[[str, Sequence[str]], list[int | str | None]],
    add: Callable[[Sequence[int]], int],
) -> ImportReport:
    """Resolves keys (`resolve(kind, values)`: ordinal, None for nobody, or why the key is
    malformed) and adds the people found (`add(ordinals)`: how many were not members yet),
    one batch at a time. A key repeated in the file counts as already a member."""
    report = ImportReport()
    # Rows in file order, unusable ones included, so rejections are listed by line.
    pending: list[CsvRow] = []

    def flush() -> None:
        usable = [row for row in pending if not row.problem]
        found = iter(resolve(kind, [row.value for row in usable]))
        ordinals: list[int] = []
        for row in pending:
            outcome = row.problem or next(found)
            if isinstance(outcome, int):
                ordinals.append(outcome)
            elif outcome is None:
                report.reject(CsvRow(row.line, row.value, f"no person with {kind} {row.value!r}"))
            else:
                report.reject(CsvRow(row.line, row.value, outcome))
        if ordinals:
            new = add(ordinals)
            report.added += new
            report.already_members += len(ordinals) - new
        pending.clear()

    for row in rows:
        report.rows += 1
        pending.append(row)
        if len(pending) >= BATCH_ROWS:
            flush()
    if pending:
        flush()
    return report


def read_rows(chunks: Iterable[bytes], settings: CsvSettings) -> Iterator[CsvRow]:
    """The key column of every non-empty data row, stripped, with its line number."""
    lines = _lines(_decode(chunks, settings.encoding))
    head = list(itertools.islice(lines, _SNIFF_LINES))
    delimiter = settings.delimiter or sniff_delimiter(head)
    reader = csv.reader(itertools.chain(head, lines), delimiter=delimiter)
    column = _column_number(settings.column)
    header_seen = not settings.header
    last_line = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield CsvRow(last_line + 1, "", f"unreadable CSV: {exc}")
            last_line = reader.line_num
            continue
        line, last_line = last_line + 1, reader.line_num
        if not any(f.strip() for f in fields):
            continue
        if not header_seen:
            header_seen = True
            if column is None:
                column = _column_named(settings.column.strip(), fields)
            continue
        index = column or 0
        if index >= len(fields):
            yield CsvRow(line, "", f"the row has {len(fields)} columns, not {index + 1}")
            continue
        value = fields[index].strip()
        yield CsvRow(line, value, "" if value else "the key is empty")


def sniff_delimiter(lines: Sequence[str]) -> str:
    """The candidate that splits every sampled line into the same number of fields (the most
    fields wins), else the most frequent one, else a comma (a one-column file)."""
    sample = [line for line in lines if line.strip()]
    if not sample:
        return ","
    best, best_count = ",", 0
    for candidate in DELIMITERS:
        counts = {line.count(candidate) for line in sample}
        if len(counts) == 1 and (count := counts.pop()) > best_count:
            best, best_count = candidate, count
    if best_count:
        return best
    totals = {d: sum(line.count(d) for line in sample) for d in DELIMITERS}
    top = max(DELIMITERS, key=lambda d: totals[d])
    return top if totals[top] else ","


def _column_number(column: str) -> int | None:
    """0-based index for "" or a number; None for a name (known once the header is read)."""
    column = column.strip()
    if not column:
        return 0
    return int(column) - 1 if _is_number(column) else None


def _is_number(column: str) -> bool:
    # ASCII digits only: str.isdigit() also accepts "²" and "①", which int() refuses; such a
    # column is a name.
    return column.isascii() and column.isdigit()


def _check_encoding(encoding: str, path: str) -> None:
    """A text encoding Python knows. codecs.lookup also finds the str->str and bytes->bytes
    codecs (rot13, base64, zlib, hex, bz2 ...), whose decoders do not give text; bytes.decode
    refuses those with LookupError (given at least one byte: b"" is not even looked up)."""
    try:
        b"a".decode(encoding, "replace")
    except UnicodeError:
        pass  # a text encoding that takes no error handler (idna): its own errors come later
    except (LookupError, ValueError):  # ValueError: a name with NUL in it
        raise InvalidArgument(
            f"unknown text encoding {encoding!r} (e.g. utf-8, utf-16, cp1252, latin-1)", path
        ) from None


def _column_named(name: str, header: list[str]) -> int:
    names = [h.strip() for h in header]
    if name in names:
        return names.index(name)
    folded = [n.casefold() for n in names]
    if name.casefold() in folded:
        return folded.index(name.casefold())
    raise InvalidArgument(
        f"no column {name!r} in the header; the columns are {', '.join(map(repr, names))}",
        "options.column",
    )


def _lines(texts: Iterable[str]) -> Iterator[str]:
    """Lines ending in "\\n" (the last one may not). Only "\\n" splits: the csv module wants
    the other separators str.splitlines knows (\\x0b, \\x1c, U+2028 ...) left in the fields.
    A file without newlines would otherwise be held whole in memory: lines are bounded."""
    rest = ""
    count = 0
    for text in texts:
        if not text:
            continue
        parts = (rest + text).split("\n")
        rest = parts.pop()
        count += len(parts)
        if len(rest) > MAX_LINE_CHARS:
            raise InvalidArgument(
                f"line {count + 1} is longer than {MAX_LINE_CHARS} characters: "
                "is this a CSV file with one key per line?",
                "chunk",
            )
        for part in parts:
            yield part + "\n"
    if rest:
        yield rest


def _decode(chunks: Iterable[bytes], encoding: str) -> Iterator[str]:
    if encoding:
        yield from _decode_declared(chunks, encoding)
    else:
        yield from _decode_auto(chunks)


def _decode_declared(chunks: Iterable[bytes], encoding: str) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    offset = 0
    try:
        for chunk in chunks:
            yield decoder.decode(chunk)
            offset += len(chunk)
        yield decoder.decode(b"", final=True)
    except UnicodeError as exc:
        # Some decoders raise a plain UnicodeError, without a position: utf-16 and utf-32
        # when the file does not start with a byte order mark, punycode, idna.
        if isinstance(exc, UnicodeDecodeError):
            why = f"{exc.reason} near byte {offset + exc.start}"
        else:
            why = f"{exc}, in the chunk from byte {offset}"
        raise InvalidArgument(
            f"the file is not valid {encoding}: {why}; set options.encoding to the file's "
            "encoding (utf-16-le or utf-16-be for UTF-16 without a byte order mark)",
            "options.encoding",
        ) from None


def _decode_auto(chunks: Iterable[bytes]) -> Iterator[str]:
    """UTF-8 with or without a BOM; a file that is not UTF-8 is read as cp1252 (what Excel
    writes on Windows). The switch is safe while everything decoded so far was ASCII, which
    reads the same in both; after real UTF-8 text, invalid bytes are an error."""
    utf8 = codecs.getincrementaldecoder("utf-8")("strict")
    fallback: codecs.IncrementalDecoder | None = None
    seen_non_ascii = False
    end: list[bytes | None] = [None]
    for piece in itertools.chain(_without_bom(chunks), end):
        final = piece is None
        chunk = piece or b""
        if fallback is not None:
            yield fallback.decode(chunk, final=final)
            continue
        try:
            text = utf8.decode(chunk, final=final)
        except UnicodeDecodeError as exc:
            # exc.object is what the decoder had: its buffered bytes and this chunk.
            pending = bytes(exc.object)
            if seen_non_ascii or not pending[: exc.start].isascii():
                raise InvalidArgument(
                    "the file mixes UTF-8 text with bytes that are not UTF-8: "
                    "set options.encoding to the file's encoding",
                    "options.encoding",
                ) from None
            fallback = codecs.getincrementaldecoder("cp1252")("replace")
            yield fallback.decode(pending, final=final)
            continue
        seen_non_ascii = seen_non_ascii or not text.isascii()
        yield text


def _without_bom(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The chunks with a leading UTF-8 BOM removed, even when it is split across chunks."""
    rest = iter(chunks)
    head = b""
    for chunk in rest:
        head += chunk
        if len(head) >= len(_BOM):
            break
    if head:
        yield head.removeprefix(_BOM)
    yield from rest
