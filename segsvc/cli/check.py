"""`segsvc check`: verify a stopped server's store offline and name what is damaged."""

from __future__ import annotations

from pathlib import Path

import click

# Exit codes of `segsvc check`: a whole store, damage found, or no store to examine.
EXIT_CLEAN, EXIT_DAMAGED, EXIT_CANNOT_OPEN = 0, 1, 2
# Damage lines printed at most; the count says how many more.
MAX_LINES = 1000


@click.command()
@click.option(
    "--data",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory of the store (as given to `segsvc serve --data`).",
)
def check(data: Path) -> None:
    """Verify a store offline: LMDB's structure, every record's checksum, the lookups and
    the people the log rebuilds. Prints one line per damaged record (table, key, why).
    Creates and changes nothing; stop the server first.

    Exit status: 0 the store is whole, 1 damage found, 2 the store cannot be examined.

    \b
    Example:
      segsvc check --data /var/lib/segsvc
    """
    # Imported only here: the client commands must not load the engine, LMDB and bitmaps.
    from segsvc.engine.check import check_store
    from segsvc.storage.errors import StorageError

    try:
        report = check_store(data)
    except StorageError as exc:
        click.echo(f"segsvc: {exc}", err=True)
        raise click.exceptions.Exit(EXIT_CANNOT_OPEN) from None
    for damage in report.damage[:MAX_LINES]:
        click.echo(f"damaged: {damage}")
    if len(report.damage) > MAX_LINES:
        click.echo(f"damaged: ... and {len(report.damage) - MAX_LINES} more")
    workspaces = ", ".join(report.workspaces) or "none"
    verdict = f"{len(report.damage)} damaged" if report.damage else "no damage"
    click.echo(f"{data}: {verdict}; {report.records} records checked (workspaces: {workspaces})")
    raise click.exceptions.Exit(EXIT_DAMAGED if report.damage else EXIT_CLEAN)
