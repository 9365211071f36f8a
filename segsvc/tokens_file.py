"""The tokens file: its format, reading it (the server) and changing it (`segsvc tokens`).

JSON Lines, one token per line, `#` comments and blank lines allowed. Only the SHA-256 of a
token is stored, so the file is no secret by itself:

    {"token_sha256": "<64 hex digits>", "workspace": "acme", "role": "write", "name": "etl"}

`name` is optional (files written before it existed have none); `segsvc tokens add` always
writes one, and `tokens revoke NAME` finds the line by it. Names are unique in a file.

No grpc, LMDB or engine imports here: `segsvc tokens` runs on a client-only install.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from segsvc.config import name_problem

Role = Literal["read", "write", "admin"]
ROLES: tuple[Role, ...] = ("read", "write", "admin")
# Bytes of randomness in a new token: 256 bits, as many as the hash that stands for it.
TOKEN_BYTES = 32

_ENTRY_SHAPE = (
    '{"token_sha256": HEX, "workspace": NAME, "role": "read|write|admin", "name": NAME}'
    " (name optional)"
)
_REQUIRED_KEYS = frozenset({"token_sha256", "workspace", "role"})
_KNOWN_KEYS = _REQUIRED_KEYS | {"name"}


class TokensFileError(ValueError):
    """The tokens file cannot be used, or not changed as asked; the message names the file
    (and the line, when one line is at fault)."""


@dataclass(frozen=True)
class Token:
    """One line of the tokens file."""

    sha256: bytes
    workspace: str
    role: Role
    name: str | None = None
    line: int = 0


def hash_token(token: str) -> str:
    """The hex digest to write in the tokens file for `token`."""
    return hashlib.sha256(token.encode()).hexdigest()


def read_tokens(path: Path) -> list[Token]:
    """Every token of the tokens file (possibly none), or TokensFileError naming the first
    bad line.

    A key the file does not know is refused rather than ignored: a misspelt or unsupported
    setting (an expiry, say) must not silently grant more than the operator meant."""
    tokens: list[Token] = []
    first_line_of: dict[bytes, int] = {}
    line_named: dict[str, int] = {}
    for number, text in _entries(path):
        token = _parse_token(text, f"{path}:{number}", number)
        if token.sha256 in first_line_of:
            raise TokensFileError(
                f"{path}:{number}: the same token as line {first_line_of[token.sha256]}: "
                "one token has one workspace and one role"
            )
        if token.name is not None and token.name in line_named:
            raise TokensFileError(
                f"{path}:{number}: the name {token.name!r} is taken by line "
                f"{line_named[token.name]}: names must be unique (revoke goes by name)"
            )
        first_line_of[token.sha256] = number
        if token.name is not None:
            line_named[token.name] = number
        tokens.append(token)
    return tokens


def load_tokens(path: Path) -> list[Token]:
    """The tokens a server accepts: as read_tokens, and a file without any is refused (every
    call would be)."""
    tokens = read_tokens(path)
    if not tokens:
        raise TokensFileError(f"{path} holds no tokens: every call would be refused")
    return tokens


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise TokensFileError(f"cannot read the tokens file {path}: {reason}") from exc


def _entries(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line that is not blank or a comment."""
    for number, line in enumerate(_lines(path), start=1):
        text = line.strip()
        if text and not text.startswith("#"):
            yield number, text


def _parse_token(text: str, where: str, number: int) -> Token:
    try:
        entry = json.loads(text)
    except ValueError as exc:
        raise TokensFileError(f"{where}: expected {_ENTRY_SHAPE} ({exc})") from exc
    if not isinstance(entry, dict):
        raise TokensFileError(f"{where}: expected {_ENTRY_SHAPE}")
    missing = sorted(_REQUIRED_KEYS - entry.keys())
    unknown = sorted(entry.keys() - _KNOWN_KEYS)
    if missing or unknown:
        problems = [f"missing {', '.join(missing)}"] if missing else []
        problems += [f"unknown key {', '.join(map(repr, unknown))}"] if unknown else []
        raise TokensFileError(f"{where}: {'; '.join(problems)}: expected {_ENTRY_SHAPE}")
    digest, workspace, role = entry["token_sha256"], entry["workspace"], entry["role"]
    name = entry.get("name")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
        raise TokensFileError(f"{where}: token_sha256 must be 64 hex digits")
    if not isinstance(role, str) or role not in ROLES:
        raise TokensFileError(f"{where}: role must be read, write or admin, not {role!r}")
    if not isinstance(workspace, str):
        raise TokensFileError(f"{where}: workspace must be a string, not {workspace!r}")
    if name is not None and not isinstance(name, str):
        raise TokensFileError(f"{where}: name must be a string, not {name!r}")
    problem = _names_problem(workspace, name)
    if problem is not None:
        raise TokensFileError(f"{where}: {problem}")
    return Token(bytes.fromhex(digest), workspace, role, name, number)


def _names_problem(workspace: str, name: str | None) -> str | None:
    """What is wrong with a token's workspace or name (None when both are fine)."""
    problem = name_problem("workspace", workspace)
    if problem is None and name is not None:
        problem = name_problem("token", name)
    return problem


# -- changing the file (`segsvc tokens`) -----------------------------------------------------


def add_token(path: Path, workspace: str, role: Role, name: str | None = None) -> tuple[str, Token]:
    """Makes a new random token for `workspace` and `role`, appends its hash line to the file
    (created, readable by its owner only, when missing) and returns the secret, which exists
    nowhere else, and its entry. Without `name` one is made up: WORKSPACE-ROLE-N."""
    problem = _names_problem(workspace, name)
    if problem is not None:
        raise TokensFileError(problem)
    existing = read_tokens(path) if path.exists() else []
    taken = {token.name for token in existing}
    if name is None:
        name = next(
            candidate
            for n in range(1, len(taken) + 2)
            if (candidate := f"{workspace}-{role}-{n}") not in taken
        )
    elif name in taken:
        raise TokensFileError(f"{path} already has a token named {name!r}: choose another --name")
    secret = secrets.token_urlsafe(TOKEN_BYTES)
    line = _entry_line(hash_token(secret), workspace, role, name)
    # O_APPEND: the line lands whole at the end even if the file changed since it was read.
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "a", encoding="utf-8") as out:
        if _ends_without_newline(path):
            out.write("\n")
        out.write(line)
        out.flush()
        os.fsync(out.fileno())
    number = len(_lines(path))
    return secret, Token(bytes.fromhex(hash_token(secret)), workspace, role, name, number)


def revoke_token(path: Path, name: str) -> Token:
    """Removes the token named `name` from the file and returns its entry. The file is
    replaced whole (a new file renamed over it, with the same permissions), so a server
    reloading it meanwhile reads the old file or the new one, never half of one."""
    tokens = read_tokens(path)
    found = next((token for token in tokens if token.name == name), None)
    if found is None:
        named = sorted(token.name for token in tokens if token.name is not None)
        known = ", ".join(named) if named else "none"
        raise TokensFileError(
            f"{path} has no token named {name!r} (names: {known}; `segsvc tokens list`)"
        )
    kept = [line for number, line in enumerate(_lines(path), 1) if number != found.line]
    _replace(path, "".join(f"{line}\n" for line in kept))
    return found


def _entry_line(digest: str, workspace: str, role: Role, name: str) -> str:
    entry = {"token_sha256": digest, "workspace": workspace, "role": role, "name": name}
    return json.dumps(entry) + "\n"


def _ends_without_newline(path: Path) -> bool:
    with path.open("rb") as existing:
        if existing.seek(0, os.SEEK_END) == 0:
            return False
        existing.seek(-1, os.SEEK_END)
        return existing.read(1) != b"\n"


def _replace(path: Path, text: str) -> None:
    mode = path.stat().st_mode & 0o7777
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), mode)
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
