"""The `segsvc serve` options that put the operation log on NATS JetStream (`--nats` and its
companions), each also read from a SEGSVC_* environment variable, as deployments set them."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from segsvc.config import Replication

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_SCHEMES = ("nats", "tls", "ws", "wss")

# How to reach NATS, the same for serve --nats and relay-changes.
NATS_CONNECTION_OPTIONS = (
    click.option(
        "--nats-creds",
        envvar="SEGSVC_NATS_CREDS",
        show_envvar=True,
        type=_FILE,
        help="NATS user credentials file (.creds: JWT and NKey seed).",
    ),
    click.option(
        "--nats-tls-ca",
        envvar="SEGSVC_NATS_TLS_CA",
        show_envvar=True,
        type=_FILE,
        help="PEM CA certificates to verify the NATS servers' TLS with.",
    ),
)

OPTIONS = (
    click.option(
        "--nats",
        envvar="SEGSVC_NATS",
        show_envvar=True,
        metavar="nats://HOST:PORT[,...]",
        callback=lambda ctx, param, value: nats_servers(value) if value else None,
        help="Put every workspace's operation log on NATS JetStream at these servers; LMDB "
        "then holds this node's materialisation. Without it the log is embedded in LMDB.",
    ),
    click.option(
        "--nats-replicas",
        envvar="SEGSVC_NATS_REPLICAS",
        show_envvar=True,
        type=click.IntRange(1, 5),
        default=1,
        show_default=True,
        help="Copies of the stream when it is created (3 survives one NATS server lost).",
    ),
    click.option(
        "--nats-stream",
        envvar="SEGSVC_NATS_STREAM",
        show_envvar=True,
        default="SEGSVC_OPS",
        show_default=True,
        help="The JetStream stream of the operation log (subjects segsvc.ops.<workspace>).",
    ),
    click.option(
        "--node-name",
        envvar="SEGSVC_NODE_NAME",
        show_envvar=True,
        default="",
        help="This node's name on the NATS connection (default: the host name).",
    ),
    *NATS_CONNECTION_OPTIONS,
)


def replication_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Adds the NATS options to `command`, which gets them as one `replication` argument
    (None without --nats)."""

    @functools.wraps(command)
    def with_replication(
        *args: Any,
        nats: tuple[str, ...] | None,
        nats_replicas: int,
        nats_stream: str,
        node_name: str,
        nats_creds: Path | None,
        nats_tls_ca: Path | None,
        **kwargs: Any,
    ) -> Any:
        replication = None
        if nats:
            replication = Replication(
                servers=nats,
                replicas=nats_replicas,
                stream=nats_stream,
                node_name=node_name,
                creds_file=nats_creds,
                tls_ca_file=nats_tls_ca,
            )
        return command(*args, replication=replication, **kwargs)

    decorated: Callable[..., Any] = with_replication
    for option in reversed(OPTIONS):
        decorated = option(decorated)
    return decorated


def nats_servers(value: str) -> tuple[str, ...]:
    """The server URLs of --nats, each checked: SCHEME://HOST:PORT."""
    servers = tuple(part.strip() for part in value.split(",") if part.strip())
    if not servers:
        raise click.BadParameter("no server URL given", param_hint="--nats")
    for url in servers:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in _SCHEMES or not parts.hostname or port is None:
            raise click.BadParameter(
                f"{url!r} is not a NATS server URL like nats://127.0.0.1:4222",
                param_hint="--nats",
            )
    return servers
