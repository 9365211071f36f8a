"""`segsvc workspaces`: the workspaces a server holds (needs an admin token when the server
has tokens), so a mistyped --workspace shows up as a name that is not there."""

from __future__ import annotations

import click

from segsvc.cli.common import Session, pass_session
from segsvc.cli.output import to_dict
from segsvc.v1 import workspaces_pb2


@click.group()
def workspaces() -> None:
    """The server's workspaces."""


@workspaces.command("list")
@pass_session
def list_workspaces(session: Session) -> None:
    """List every workspace with its people, segments and newest change.

    \b
    Example:
      segsvc --token "$ADMIN_TOKEN" workspaces list
    """
    found = session.client.workspaces.ListWorkspaces(workspaces_pb2.ListWorkspacesRequest())
    if session.out.json:
        session.out.document(to_dict(found))
        return
    session.out.table(
        ["workspace", "people", "segments", "last change"],
        (
            [w.name, str(w.people), str(w.segments), str(w.last_change_seq)]
            for w in found.workspaces
        ),
    )
