"""TokenSealer: tokens open only in the workspace and for the kind of call they were made for,
and any change to them is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segsvc.api.tokens import TokenSealer
from segsvc.engine.errors import InvalidArgument

SEALER = TokenSealer(b"k" * 32)


def test_a_token_opens_where_it_was_made():
    token = SEALER.seal("acme", "members", "4711")
    assert "4711" not in token
    assert SEALER.open(token, "acme", "members", "page_token") == "4711"
    assert SEALER.seal("acme", "members", "") == ""


@pytest.mark.parametrize(
    ("workspace", "kind", "key"),
    [
        ("other", "members", b"k" * 32),
        ("acme", "segments", b"k" * 32),
        ("acme", "members", b"x" * 32),
    ],
)
def test_another_workspace_kind_or_key_is_refused(workspace, kind, key):
    token = SEALER.seal("acme", "members", "4711")
    with pytest.raises(InvalidArgument) as refused:
        TokenSealer(key).open(token, workspace, kind, "page_token")
    assert refused.value.violations[0].field == "page_token"


@given(position=st.text(min_size=1, max_size=40), cut=st.integers(0, 60), flip=st.integers(0, 400))
def test_truncated_or_edited_tokens_are_refused(position, cut, flip):
    token = SEALER.seal("acme", "members", position)
    truncated = token[: min(cut, len(token) - 1)]
    with pytest.raises(InvalidArgument):
        SEALER.open(truncated, "acme", "members", "page_token")
    raw = bytearray(token.encode())
    at = flip % len(raw)
    raw[at] = ord("A") if raw[at] != ord("A") else ord("B")
    edited = raw.decode()
    try:
        opened = SEALER.open(edited, "acme", "members", "page_token")
    except InvalidArgument:
        return
    # Base64's last character may carry unused bits: an edit there can decode to the same
    # bytes, and then it is the same token.
    assert opened == position


@given(garbage=st.text(max_size=2000))
def test_arbitrary_text_is_refused_never_crashes(garbage):
    try:
        SEALER.open(garbage, "acme", "members", "page_token")
    except InvalidArgument:
        return
    raise AssertionError(f"{garbage!r} opened")
