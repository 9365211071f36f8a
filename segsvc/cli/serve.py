"""`segsvc serve`: run the server in the foreground."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NoReturn

import click

from segsvc.cli.output import EXIT_ERROR
from segsvc.cli.replication import replication_options
from segsvc.config import DEFAULT_DATA, DEFAULT_LISTEN, Config, Replication

_DEFAULTS = Config()
_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


class StartRefused(click.ClickException):
    """A start that cannot go ahead: one line `segsvc: <why>` and exit 2, whether click or the
    server's own checks refuse it, so a supervisor's log shows the reason and nothing else."""

    exit_code = EXIT_ERROR

    def show(self, file: Any = None) -> None:
        click.echo(f"segsvc: {self.format_message()}", err=True)


class _ServeCommand(click.Command):
    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            # Not click's usage block: the option and what is wrong with it are the message.
            raise StartRefused(exc.format_message()) from None


@click.command(cls=_ServeCommand)
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA,
    show_default=True,
    help="Directory of the LMDB files (created if missing).",
)
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="HOST:PORT")
@click.option(
    "--map-size",
    type=click.IntRange(min=1 << 20),
    default=_DEFAULTS.map_size,
    show_default=True,
    metavar="BYTES",
    help="LMDB address space to reserve; the file grows only as data is written.",
)
@click.option(
    "--tick-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=_DEFAULTS.tick_seconds,
    show_default=True,
    help="How often time-dependent segments are re-checked.",
)
@click.option(
    "--change-retention-days",
    type=click.FloatRange(min=0, min_open=True),
    default=_DEFAULTS.change_retention_seconds / 86400,
    show_default=True,
    help="How long the change feed keeps entries.",
)
@click.option(
    "--event-retention-days",
    type=click.FloatRange(min=0, min_open=True),
    default=_DEFAULTS.event_retention_seconds / 86400,
    show_default=True,
    help="How long events are kept (and count in conditions).",
)
@click.option(
    "--snapshot-retention-hours",
    type=click.FloatRange(min=0, min_open=True),
    default=_DEFAULTS.snapshot_retention_seconds / 3600,
    show_default=True,
    help="How long an audience snapshot can be resumed with its cursor.",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    default=_DEFAULTS.checkpoint_every_ops,
    show_default=True,
    metavar="N",
    help="Checkpoint the in-memory state after N logged items (or a tenth of the people, "
    "whichever is more).",
)
@click.option(
    "--grace-seconds",
    type=click.FloatRange(min=0),
    default=_DEFAULTS.grace_seconds,
    show_default=True,
    help="Time given to calls in flight on shutdown.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=_DEFAULTS.workers,
    show_default=True,
    help="gRPC worker threads.",
)
@click.option(
    "--default-region",
    default=_DEFAULTS.default_region,
    show_default=True,
    metavar="REGION",
    callback=lambda ctx, param, value: _default_region(value),
    help="Country (ISO 3166 code: US, GB, DE, ...) of phones written without a country code; "
    "'none' refuses such phones.",
)
@click.option(
    "--tokens-file",
    type=_FILE,
    help="Bearer tokens (hashed, each with workspace and role). Without it the server "
    "accepts every call and may listen on loopback only.",
)
@click.option("--tls-cert", type=_FILE, help="PEM certificate chain; needs --tls-key.")
@click.option("--tls-key", type=_FILE, help="PEM private key; needs --tls-cert.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@replication_options
def serve(
    data: Path,
    listen: str,
    map_size: int,
    tick_seconds: float,
    change_retention_days: float,
    event_retention_days: float,
    snapshot_retention_hours: float,
    checkpoint_every: int,
    grace_seconds: float,
    workers: int,
    default_region: str | None,
    tokens_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    log_level: str,
    replication: Replication | None,
) -> None:
    """Run the server in the foreground until SIGTERM or Ctrl-C.

    \b
    Example:
      segsvc serve --data /var/lib/segsvc --listen 0.0.0.0:50051 \\
          --tokens-file /etc/segsvc/tokens --tls-cert cert.pem --tls-key key.pem
    """
    if (tls_cert is None) != (tls_key is None):
        raise StartRefused("--tls-cert and --tls-key go together")
    config = Config(
        data_dir=data,
        listen=listen,
        map_size=map_size,
        tick_seconds=tick_seconds,
        change_retention_seconds=round(change_retention_days * 86400),
        event_retention_seconds=round(event_retention_days * 86400),
        snapshot_retention_seconds=round(snapshot_retention_hours * 3600),
        checkpoint_every_ops=checkpoint_every,
        grace_seconds=grace_seconds,
        workers=workers,
        default_region=default_region,
        tokens_file=tokens_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
        replication=replication,
    )
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Imported only here: the client commands must not load the engine, LMDB and bitmaps,
    # and a client-only install (`pip install segsvc`) has none of them.
    try:
        from segsvc.api.server import serve as run_server
    except ImportError as exc:
        _missing_server_dependencies(exc)

    run_server(config)


def _default_region(value: str | None) -> str | None:
    if value is None or value.strip().lower() == "none":
        return None
    # Imported here, as the server below: client commands do not load phone metadata.
    try:
        from segsvc.engine.values import check_region
    except ImportError as exc:
        _missing_server_dependencies(exc)

    try:
        return check_region(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _missing_server_dependencies(exc: ImportError) -> NoReturn:
    raise StartRefused(
        f"the server's dependencies are not installed ({exc.name} is missing): "
        "pip install 'segsvc[server]'"
    )
