"""The `segsvc` command: run the server, and operate one over gRPC.

Exit codes: 0 success; 1 partial failure (some items of a batch or import were rejected, the
others applied); 2 error (bad usage, or a gRPC error, printed as `error: CODE: details`);
130 interrupted by Ctrl-C.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import grpc

from segsvc import package_version
from segsvc.cli import (
    audience,
    backup,
    check,
    events,
    members,
    people,
    relay,
    segments,
    serve,
    status,
    tokens,
    watch,
    workspaces,
)
from segsvc.cli.common import Session
from segsvc.cli.output import EXIT_ERROR, EXIT_INTERRUPTED, Output, rpc_error_lines
from segsvc.client import Client
from segsvc.config import DEFAULT_LISTEN

__all__ = ["main"]


class _Group(click.Group):
    """The root group: turns a failed call into `error: CODE: details` and exit 2, and Ctrl-C
    into exit 130, whichever command was running."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except grpc.RpcError as err:
            for line in rpc_error_lines(err):
                click.echo(line, err=True)
            raise click.exceptions.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--server",
    envvar="SEGSVC_SERVER",
    default=DEFAULT_LISTEN,
    show_default=True,
    metavar="HOST:PORT",
    help="Server address (env SEGSVC_SERVER).",
)
@click.option(
    "--token",
    envvar="SEGSVC_TOKEN",
    help="Bearer token sent with every call (env SEGSVC_TOKEN).",
)
@click.option(
    "--workspace",
    envvar="SEGSVC_WORKSPACE",
    help="Workspace to work in; the token's own when omitted (env SEGSVC_WORKSPACE).",
)
@click.option("--tls", is_flag=True, help="Connect with TLS, trusting the system's CAs.")
@click.option(
    "--ca-cert",
    envvar="SEGSVC_CA_CERT",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Connect with TLS, trusting this CA bundle (env SEGSVC_CA_CERT).",
)
@click.option(
    "--json",
    "json_mode",
    is_flag=True,
    help="Machine output: one JSON document on stdout (JSON Lines for streams).",
)
@click.version_option(package_version(), prog_name="segsvc")
@click.pass_context
def main(
    ctx: click.Context,
    server: str,
    token: str | None,
    workspace: str | None,
    tls: bool,
    ca_cert: Path | None,
    json_mode: bool,
) -> None:
    """Operate a segsvc server: segments, members, people, audiences and the change feed.

    \b
    Example:
      segsvc --server 10.0.0.5:50051 --token "$TOKEN" segments list
      segsvc --json members list "Trial users" | jq '.members[].id'
    """
    client = Client(server, token=token, workspace=workspace, tls=tls, ca_cert=ca_cert)
    ctx.obj = Session(client, Output(json_mode))
    ctx.call_on_close(client.close)


main.add_command(serve.serve)
main.add_command(check.check)
main.add_command(backup.backup)
main.add_command(segments.segments)
main.add_command(members.members)
main.add_command(people.people)
main.add_command(events.events)
main.add_command(watch.watch)
main.add_command(relay.relay_changes)
main.add_command(audience.audience)
main.add_command(workspaces.workspaces)
main.add_command(tokens.tokens)
main.add_command(status.status)
