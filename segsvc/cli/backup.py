"""`segsvc backup`: a consistent copy of a store, taken while the server serves it."""

from __future__ import annotations

import time
from pathlib import Path

import click

from segsvc.cli.output import EXIT_ERROR
from segsvc.sizes import approximate_size


@click.command()
@click.option(
    "--data",
    envvar="SEGSVC_DATA",
    show_envvar=True,
    required=True,
    type=click.Path(file_okay=False, exists=True, resolve_path=True, path_type=Path),
    help="The server's data directory (as given to `segsvc serve --data`).",
)
@click.argument("dest", type=click.Path(resolve_path=True, path_type=Path))
def backup(data: Path, dest: Path) -> None:
    """Copy the store in --data to DEST (a new or empty directory), consistently, whether a
    server is running on it or not: the copy holds every write acknowledged before the
    backup began. Run it on the server's machine; it reads the LMDB files directly.

    Restore: stop the server and start it with `--data DEST` (or move DEST in place of the
    old directory). The copy starts like a server after a crash: it replays its log.

    \b
    Example:
      segsvc backup --data /var/lib/segsvc /backup/segsvc-$(date +%F)
      segsvc check --data /backup/segsvc-$(date +%F)
    """
    # Imported only here: the client commands must not load LMDB.
    try:
        from segsvc.storage.errors import StorageError
        from segsvc.storage.store import backup as backup_store
    except ImportError as exc:
        raise click.ClickException(
            f"the server's dependencies are not installed ({exc.name} is missing): "
            "pip install 'segsvc[server]'"
        ) from None

    started = time.monotonic()
    try:
        size = backup_store(data, dest)
    except StorageError as exc:
        click.echo(f"segsvc: {exc}", err=True)
        raise click.exceptions.Exit(EXIT_ERROR) from None
    click.echo(
        f"{dest}: backup of {data}, {approximate_size(size)} in {time.monotonic() - started:.2f} s;"
        f" restore with: segsvc serve --data {dest}"
    )
