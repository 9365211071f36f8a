"""What the commands that import a file as columns share (`segsvc people import`,
`segsvc events import`): their options, the file to read, the checks of declared types.

Light on purpose: segsvc.cli.columnar (pyarrow, numpy: the `segsvc[import]` extra) is
imported only once `source_of` has found it installed, so every other command works on the
light client.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from segsvc.cli.common import check_encoding, fail, require_import_extra
from segsvc.cli.readers import IMPORT_FORMATS, parse_types

if TYPE_CHECKING:
    from segsvc.cli.columnar import Source

F = TypeVar("F", bound=Callable[..., Any])


def import_options(command: F) -> F:
    """The options of the commands that import a file as columns: format, declared types,
    CSV delimiter and encoding."""
    options = (
        click.option(
            "--format",
            "file_format",
            type=click.Choice(IMPORT_FORMATS),
            help="Default: jsonl for .jsonl/.ndjson, parquet for .parquet, else csv.",
        ),
        click.option(
            "--types",
            "types_spec",
            default="",
            metavar="COL=TYPE,...",
            help="Declared types (string, number, bool, timestamp); a CSV header may say "
            "name:type too. Others are typed value by value (CSV, JSON text) or kept as the "
            "file types them (JSON numbers and booleans, Parquet).",
        ),
        click.option("--delimiter", default=",", show_default=True, help="CSV: the separator."),
        click.option("--encoding", default="utf-8", show_default=True, help="CSV: the encoding."),
    )
    for option in reversed(options):
        command = option(command)
    return command


def source_of(
    command: str,
    file: Path,
    file_format: str | None,
    types_spec: str,
    delimiter: str,
    encoding: str,
) -> Source:
    """The file to import as columns, its options checked (pyarrow asked for first)."""
    require_import_extra(command)
    check_encoding(encoding)
    if len(delimiter) != 1:
        raise click.BadParameter("one character", param_hint="--delimiter")
    from segsvc.cli.columnar import Source
    from segsvc.cli.columnar import file_format as format_of

    return Source(file, format_of(file, file_format), delimiter, encoding, parse_types(types_spec))


def name_builtins(
    builtins: dict[str, str], columns: list[str], key_column: str, fields: tuple[str, ...]
) -> None:
    """Adds the file's columns that are built-in fields (named case-insensitively)."""
    for column in columns:
        if column != key_column and column.lower() in fields:
            builtins[column] = column.lower()


def check_types(source: Source, builtins: dict[str, str]) -> None:
    for column in source.types:
        if column in builtins:
            fail(f"--types: {column!r} is a built-in field; only attributes take a type")
    missing = sorted(set(source.types) - set(source.columns))
    if missing:
        fail(f"--types names columns the file does not have: {', '.join(missing)}")
