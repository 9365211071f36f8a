"""`segsvc tokens`: add, list and revoke the bearer tokens of a server's tokens file.

Works on the file, not over gRPC: run it where the server's tokens file is, then send the
server SIGHUP (or restart it) for the change to take effect. Needs none of the server's
dependencies.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from segsvc.cli.common import Session, fail, pass_session
from segsvc.tokens_file import (
    ROLES,
    Role,
    Token,
    TokensFileError,
    add_token,
    read_tokens,
    revoke_token,
)

F = TypeVar("F", bound=Callable[..., Any])

_RELOAD_HINT = "the server applies it on SIGHUP (kill -HUP <pid>) or restart"


def tokens_file_option(must_exist: bool) -> Callable[[F], F]:
    return click.option(
        "--tokens-file",
        envvar="SEGSVC_TOKENS_FILE",
        show_envvar=True,
        required=True,
        type=click.Path(dir_okay=False, exists=must_exist, path_type=Path),
        help="The server's tokens file (as given to `segsvc serve --tokens-file`).",
    )


def describe(token: Token) -> dict[str, Any]:
    """A token as listed: never the secret (the file has none) nor its hash."""
    return {"name": token.name, "workspace": token.workspace, "role": token.role}


@click.group()
def tokens() -> None:
    """Bearer tokens of a server's tokens file: add, list, revoke."""


@tokens.command("add")
@tokens_file_option(must_exist=False)
@click.option("--workspace", required=True, help="The workspace the token works in.")
@click.option(
    "--role",
    type=click.Choice(ROLES),
    required=True,
    help="read: queries, change feed, audiences; write: also changes; admin: any workspace.",
)
@click.option("--name", help="A name to list and revoke it by (default WORKSPACE-ROLE-N).")
@pass_session
def add(session: Session, tokens_file: Path, workspace: str, role: Role, name: str | None) -> None:
    """Make a new random token and add its hash to the tokens file (created, mode 0600, when
    missing). The token is printed once, on stdout: it is stored nowhere, so keep it now.

    \b
    Example:
      segsvc tokens add --tokens-file /etc/segsvc/tokens --workspace acme --role write \\
          --name etl
    """
    try:
        secret, token = add_token(tokens_file, workspace, role, name)
    except TokensFileError as exc:
        fail(str(exc))
    if session.out.json:
        session.out.document({**describe(token), "token": secret})
    else:
        click.echo(secret)
    session.out.note(
        f"added token {token.name!r} ({token.role} in workspace {token.workspace!r}) to "
        f"{tokens_file}; {_RELOAD_HINT}. The token is shown only this once."
    )


@tokens.command("list")
@tokens_file_option(must_exist=True)
@pass_session
def list_tokens(session: Session, tokens_file: Path) -> None:
    """List the tokens: name, workspace and role (no secrets: the file holds only hashes, and
    those are not shown either).

    \b
    Example:
      segsvc tokens list --tokens-file /etc/segsvc/tokens
    """
    try:
        found = read_tokens(tokens_file)
    except TokensFileError as exc:
        fail(str(exc))
    if session.out.json:
        session.out.document({"tokens": [describe(token) for token in found]})
        return
    session.out.table(
        ["name", "workspace", "role"],
        ([t.name or f"(unnamed, line {t.line})", t.workspace, t.role] for t in found),
    )


@tokens.command("revoke")
@tokens_file_option(must_exist=True)
@click.argument("name")
@pass_session
def revoke(session: Session, tokens_file: Path, name: str) -> None:
    """Remove the token called NAME from the tokens file.

    \b
    Example:
      segsvc tokens revoke --tokens-file /etc/segsvc/tokens etl
      kill -HUP "$(pidof segsvc)"
    """
    try:
        token = revoke_token(tokens_file, name)
    except TokensFileError as exc:
        fail(str(exc))
    if session.out.json:
        session.out.document({"revoked": describe(token)})
    session.out.note(
        f"revoked token {name!r} ({token.role} in workspace {token.workspace!r}) from "
        f"{tokens_file}; {_RELOAD_HINT}"
    )
