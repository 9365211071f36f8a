"""`segsvc serve`: run the server in the foreground."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from segsvc.cli.output import EXIT_ERROR
from segsvc.cli.replication import replication_options
from segsvc.config import DEFAULT_DATA, DEFAULT_LISTEN, Config, Replication
from segsvc.logs import LOG_FORMATS, configure_logging
from segsvc.sizes import format_size, parse_size

MiB = 1 << 20

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


if TYPE_CHECKING:
    _IntType = click.ParamType[int]
else:
    # Generic only since click 8.4; the client install accepts older clicks.
    _IntType = click.ParamType


class ByteSize(_IntType):
    """A size in bytes, written `64GiB`, `512MiB`, `1TB` or as plain bytes."""

    name = "size"

    def __init__(self, minimum: int = 0) -> None:
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            size = value
        else:
            try:
                size = parse_size(str(value))
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if size < self.minimum:
            self.fail(f"{value} is less than the minimum, {format_size(self.minimum)}", param, ctx)
        return size


F = TypeVar("F", bound=Callable[..., Any])


def _option(*decls: str, **attrs: Any) -> Callable[[F], F]:
    """A `serve` option that can also come from the environment: SEGSVC_ and its long name
    in upper snake case (--map-size: SEGSVC_MAP_SIZE), shown in --help. The command line
    wins over the environment (click's order)."""
    # A flag pair ("--access-log/--no-access-log") is named by its first half.
    long_name = next(decl for decl in decls if decl.startswith("--")).split("/")[0]
    envvar = "SEGSVC_" + long_name.removeprefix("--").replace("-", "_").upper()
    return click.option(*decls, envvar=envvar, show_envvar=True, **attrs)


@click.command(cls=_ServeCommand)
@_option(
    "--data",
    # Resolved: the startup line and every message name the directory unambiguously.
    type=click.Path(file_okay=False, resolve_path=True, path_type=Path),
    default=DEFAULT_DATA,
    show_default=True,
    help="Directory of the LMDB files (created if missing).",
)
@_option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="HOST:PORT")
@_option(
    "--map-size",
    type=ByteSize(minimum=MiB),
    default=format_size(_DEFAULTS.map_size),
    show_default=True,
    help="LMDB address space to reserve (64GiB, 512MiB, 1TB, or bytes); the file grows "
    "only as data is written.",
)
@_option(
    "--tick-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=_DEFAULTS.tick_seconds,
    show_default=True,
    help="How often time-dependent segments are re-checked.",
)
@_option(
    "--change-retention-days",
    type=click.FloatRange(min=0, min_open=True),
    default=_DEFAULTS.change_retention_seconds / 86400,
    show_default=True,
    help="How long the change feed keeps entries.",
)
@_option(
    "--event-retention-days",
    type=click.FloatRange(min=0, min_open=True),
    default=_DEFAULTS.event_retention_seconds / 86400,
    show_default=True,
    help="How long events are kept (and count in conditions).",
)
@_option(
    "--snapshot-retention-hours",
    type=click.FloatRange(min=0, min_open=True),
    default=_DEFAULTS.snapshot_retention_seconds / 3600,
    show_default=True,
    help="How long an audience snapshot can be resumed with its cursor.",
)
@_option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    default=_DEFAULTS.checkpoint_every_ops,
    show_default=True,
    metavar="N",
    help="Checkpoint the in-memory state after N logged items (or a tenth of the people, "
    "whichever is more).",
)
@_option(
    "--grace-seconds",
    type=click.FloatRange(min=0),
    default=_DEFAULTS.grace_seconds,
    show_default=True,
    help="Time given to calls in flight on shutdown.",
)
@_option(
    "--workers",
    type=click.IntRange(min=1),
    default=_DEFAULTS.workers,
    show_default=True,
    help="gRPC worker threads.",
)
@_option(
    "--default-region",
    default=_DEFAULTS.default_region,
    show_default=True,
    metavar="REGION",
    callback=lambda ctx, param, value: _default_region(value),
    help="Country (ISO 3166 code: US, GB, DE, ...) of phones written without a country code; "
    "'none' refuses such phones.",
)
@_option(
    "--tokens-file",
    type=_FILE,
    help="Bearer tokens (hashed, each with workspace and role; `segsvc tokens` edits it; "
    "SIGHUP reloads it). Without it the server accepts every call and may listen on "
    "loopback only.",
)
@_option("--tls-cert", type=_FILE, help="PEM certificate chain; needs --tls-key.")
@_option("--tls-key", type=_FILE, help="PEM private key; needs --tls-cert.")
@_option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
)
@_option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="json: one JSON object a line (time, level, logger, message and fields).",
)
@_option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="One line per call on the segsvc.access logger (never tokens or people's data).",
)
@_option(
    "--metrics-listen",
    metavar="HOST:PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (https with --tls-cert). "
    "Off by default; beyond loopback only with tokens or TLS.",
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
    log_format: str,
    access_log: bool,
    metrics_listen: str | None,
    replication: Replication | None,
) -> None:
    """Run the server in the foreground until SIGTERM or Ctrl-C; SIGHUP reloads the tokens
    file. Every option can also be set by the environment variable shown with it; the
    command line wins.

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
        metrics_listen=metrics_listen,
        access_log=access_log,
        replication=replication,
    )
    configure_logging(log_level, log_format)
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
