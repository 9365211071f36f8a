"""`segsvc relay-changes`: publish a workspace's change feed to NATS JetStream."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NoReturn

import click

from segsvc.cli.common import Session, fail, pass_session
from segsvc.cli.replication import NATS_CONNECTION_OPTIONS, nats_servers
from segsvc.client import Client
from segsvc.relay.subjects import DEFAULT_STREAM, subject_token

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _no_nats(exc: ImportError) -> NoReturn:
    fail(f"relay-changes needs the NATS client ({exc.name}): pip install 'segsvc[relay]'")


@click.command("relay-changes")
@click.option(
    "--server",
    envvar="SEGSVC_SERVER",
    show_envvar=True,
    metavar="HOST:PORT",
    help="The segsvc server to follow (default: the global --server).",
)
@click.option(
    "--workspace",
    envvar="SEGSVC_WORKSPACE",
    show_envvar=True,
    help="The workspace whose changes to relay; required (here or as the global option).",
)
@click.option(
    "--token",
    envvar="SEGSVC_TOKEN",
    show_envvar=True,
    help="Bearer token with read access to the workspace (default: the global --token).",
)
@click.option(
    "--tls",
    is_flag=True,
    envvar="SEGSVC_TLS",
    show_envvar=True,
    help="Connect to the server with TLS, trusting the system's CAs.",
)
@click.option(
    "--ca-cert",
    envvar="SEGSVC_CA_CERT",
    show_envvar=True,
    type=_FILE,
    help="Connect to the server with TLS, trusting this CA bundle.",
)
@click.option(
    "--nats",
    "nats_urls",
    envvar="SEGSVC_NATS",
    show_envvar=True,
    required=True,
    metavar="nats://HOST:PORT[,...]",
    callback=lambda ctx, param, value: nats_servers(value) if value else None,
    help="NATS servers to publish to (comma-separated; any of a cluster will do).",
)
@click.option(
    "--stream",
    envvar="SEGSVC_CHANGES_STREAM",
    show_envvar=True,
    help="JetStream stream, created if missing with the subjects segsvc.changes.>. "
    "[default: SEGSVC_CHANGES; with --own-stream SEGSVC_CHANGES_<workspace token>]",
)
@click.option(
    "--own-stream",
    is_flag=True,
    envvar="SEGSVC_RELAY_OWN_STREAM",
    show_envvar=True,
    help="Create the stream for this workspace alone (subjects "
    "segsvc.changes.<workspace>.>). The relay then makes JetStream store each change only "
    "right after the one before, so the stream stays in feed order even when its leader "
    "changes (README).",
)
@click.option(
    "--replicas",
    envvar="SEGSVC_CHANGES_REPLICAS",
    show_envvar=True,
    type=click.IntRange(1, 5),
    default=1,
    show_default=True,
    help="Replicas of the stream when the relay creates it.",
)
@NATS_CONNECTION_OPTIONS[0]
@NATS_CONNECTION_OPTIONS[1]
@click.option(
    "--from-start/--from-now",
    "first_from_start",
    envvar="SEGSVC_RELAY_FROM_START",
    show_envvar=True,
    default=None,
    help="Where a first start begins (the stream holds no change of the workspace yet): "
    "every change the feed still keeps, or only new ones. Required on a first start; "
    "ignored later, when the relay goes on after the last change in the stream.",
)
@click.option(
    "--resume-after",
    envvar="SEGSVC_RELAY_RESUME_AFTER",
    show_envvar=True,
    type=click.IntRange(min=0),
    metavar="SEQ",
    help="Relay the changes after SEQ even if the stream's last one is older, skipping those "
    "in between (e.g. pruned by the server's retention before they were relayed). "
    "Ignored once the stream holds SEQ, so it is safe to leave in place.",
)
@click.option(
    "--max-in-flight",
    envvar="SEGSVC_RELAY_MAX_IN_FLIGHT",
    show_envvar=True,
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="Publishes awaiting JetStream's acknowledgement at once.",
)
@click.option(
    "--ack-timeout",
    envvar="SEGSVC_RELAY_ACK_TIMEOUT",
    show_envvar=True,
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="A publish not acknowledged in this time is published again.",
)
@pass_session
def relay_changes(
    session: Session,
    server: str | None,
    workspace: str | None,
    token: str | None,
    tls: bool,
    ca_cert: Path | None,
    nats_urls: tuple[str, ...],
    stream: str | None,
    own_stream: bool,
    replicas: int,
    nats_creds: Path | None,
    nats_tls_ca: Path | None,
    first_from_start: bool | None,
    resume_after: int | None,
    max_in_flight: int,
    ack_timeout: float,
) -> None:
    """Publish every change of a workspace's feed to NATS JetStream, for consumers in any
    language: subject segsvc.changes.<workspace>.<segment id>, payload the protobuf
    segsvc.v1.Change, message id <workspace>:<seq> (README, "Change feed on NATS").

    It goes on after the last change the stream holds, so a restarted relay publishes
    nothing twice and misses nothing. SIGTERM or Ctrl-C: stops after the changes in flight
    are acknowledged, exit 0.

    \b
    Example:
      segsvc relay-changes --server 10.0.0.5:50051 --workspace acme \\
        --nats nats://n1:4222,nats://n2:4222 --replicas 3 --from-start
    """
    try:
        from segsvc.relay.relay import RelayError, RelaySettings, run_relay
    except ImportError as exc:
        _no_nats(exc)

    base = session.client
    workspace = workspace or base.workspace
    if not workspace:
        raise click.UsageError("give the workspace to relay: --workspace NAME")
    if stream is None:
        stream = f"{DEFAULT_STREAM}_{subject_token(workspace)}" if own_stream else DEFAULT_STREAM
    settings = RelaySettings(
        workspace=workspace,
        nats_servers=nats_urls,
        stream=stream,
        own_stream=own_stream,
        replicas=replicas,
        nats_creds=nats_creds,
        nats_tls_ca=nats_tls_ca,
        first_from_start=first_from_start,
        resume_after=resume_after,
        max_in_flight=max_in_flight,
        ack_timeout=ack_timeout,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s segsvc-relay: %(message)s")
    client = Client(
        server or base.target,
        token=token or base.token,
        workspace=workspace,
        tls=tls or base.tls,
        ca_cert=ca_cert or base.ca_cert,
    )
    with client:
        try:
            report = run_relay(client, settings)
        except RelayError as exc:
            fail(str(exc))
    click.echo(f"stopped: relayed {report.relayed} changes, up to seq {report.last_seq}", err=True)
