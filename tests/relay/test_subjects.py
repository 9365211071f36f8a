"""The subject layout consumers rely on: workspace names as subject tokens, message ids and
headers."""

from __future__ import annotations

import re

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from segsvc.relay.subjects import (
    change_headers,
    change_subject,
    message_id,
    subject_token,
    workspace_subjects,
)
from segsvc.v1 import changes_pb2

# What the relay promises a token holds: never NATS's separators or wildcards, nor spaces.
TOKEN = re.compile(r"[A-Za-z0-9_~-]+")


def decode(token: str) -> str:
    """The inverse of subject_token, as a consumer in another language would write it."""
    raw = re.sub(r"~([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), token)
    return raw.encode("latin-1").decode("utf-8")


def test_plain_names_stay_and_others_are_escaped() -> None:
    assert subject_token("acme") == "acme"
    assert subject_token("Acme_EU-2") == "Acme_EU-2"
    assert subject_token("acme.eu") == "acme~2Eeu"
    assert subject_token("a~b") == "a~7Eb"
    assert subject_token("a b*>") == "a~20b~2A~3E"
    assert change_subject("acme.eu", 7) == "segsvc.changes.acme~2Eeu.7"
    assert workspace_subjects("acme.eu") == "segsvc.changes.acme~2Eeu.>"


@given(st.text(min_size=1, max_size=40))
def test_every_name_becomes_one_valid_token_that_gives_the_name_back(name: str) -> None:
    token = subject_token(name)
    assert TOKEN.fullmatch(token)
    assert decode(token) == name


def test_headers_name_the_change_and_the_message_id_dedups_per_workspace() -> None:
    change = changes_pb2.Change(
        seq=42,
        segment_id=7,
        person_id="ann",
        kind=changes_pb2.CHANGE_KIND_EXITED,
        cause=changes_pb2.CHANGE_CAUSE_TIME,
        at=Timestamp(seconds=1_700_000_000),
    )
    assert change_headers("acme.eu", change) == {
        "Nats-Msg-Id": "acme.eu:42",
        "Segsvc-Workspace": "acme.eu",
        "Segsvc-Seq": "42",
        "Segsvc-Segment": "7",
        "Segsvc-Kind": "EXITED",
        "Segsvc-Cause": "TIME",
    }
    assert message_id("acme", 42) != message_id("acme.eu", 42)
