"""Small rules every request handler of a workspace shares: the largest ids and sequence
numbers storage holds, page sizes and page tokens, and how a rejected item of a batch is
reported. One home, so that every call pages and rejects alike."""

from __future__ import annotations

from segsvc.engine.errors import InvalidArgument, SegsvcError
from segsvc.engine.model import ItemResult

# The largest numbers storage keys hold: ordinals are u32, segment ids and sequences u64.
MAX_U32 = 2**32 - 1
MAX_U64 = 2**64 - 1


def rejected(index: int, key: str, exc: SegsvcError) -> ItemResult:
    """The result of a batch item refused with `exc` (InvalidArgument or NotFound)."""
    if isinstance(exc, InvalidArgument):
        v = exc.violations[0]
        return ItemResult(index, key, "invalid", v.description, v.field)
    return ItemResult(index, key, "not_found", str(exc))


def page_size(requested: int, default: int, maximum: int) -> int:
    if requested <= 0:
        return default
    return min(requested, maximum)


def page_token(token: str, maximum: int) -> int:
    """The id or ordinal (at most `maximum`) a page token of a previous response holds.
    ASCII digits only: str.isdigit() also accepts "²" and "①", which int() refuses."""
    if not token:
        return 0
    if not (token.isascii() and token.isdigit()) or len(token) > 20 or int(token) > maximum:
        raise InvalidArgument("not a page token from a previous response", "page_token")
    return int(token)
