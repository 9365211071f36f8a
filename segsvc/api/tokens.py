"""Opaque, tamper-evident page tokens and audience cursors.

A client must pass a token back unchanged, and must not be able to make one up: a forged,
truncated or edited token, or one from another workspace or another kind of call, is refused
with INVALID_ARGUMENT before the engine sees it, so it can never reach another workspace's data.
A token is the engine's own position (a plain string) with an HMAC-SHA256 tag over the
workspace, the kind of call and that position, under a key the server keeps in its store (so
tokens stay good across restarts). The position itself is not secret; the tag makes it
unforgeable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from segsvc.engine.errors import InvalidArgument

_VERSION = b"\x01"
_TAG_BYTES = 16
# Longer than any token this server gives out: refused before any decoding work.
MAX_TOKEN_CHARS = 1024


class TokenSealer:
    """Seals positions into tokens and opens them again, for one server key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the token key must have at least 16 bytes")
        self._key = key

    def _tag(self, workspace: str, kind: str, position: bytes) -> bytes:
        message = b"\x00".join((workspace.encode(), kind.encode(), position))
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_TAG_BYTES]

    def seal(self, workspace: str, kind: str, position: str) -> str:
        """The token for `position` in `workspace`, for calls of `kind` ("" stays "": the
        API's word for "no more pages")."""
        if not position:
            return ""
        raw = position.encode()
        sealed = _VERSION + self._tag(workspace, kind, raw) + raw
        return base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    def open(self, token: str, workspace: str, kind: str, field: str) -> str:
        """The position sealed in `token`; InvalidArgument naming `field` when the token is
        not one this server gave out for `kind` in `workspace`."""
        refused = InvalidArgument(
            f"{field} is not a token this server gave out for this call in this workspace "
            "(pass the token from the previous response unchanged)",
            field,
        )
        if len(token) > MAX_TOKEN_CHARS or not token.isascii():
            raise refused
        try:
            sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise refused from None
        version, tag, raw = sealed[:1], sealed[1 : 1 + _TAG_BYTES], sealed[1 + _TAG_BYTES :]
        if version != _VERSION or not raw:
            raise refused
        if not hmac.compare_digest(tag, self._tag(workspace, kind, raw)):
            raise refused
        try:
            return raw.decode()
        except UnicodeDecodeError:  # only a key leak could get here; refuse all the same
            raise refused from None
