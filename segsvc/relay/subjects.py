"""The layout of the change feed on JetStream: one subject per workspace and segment, the
message id that makes a republished change a duplicate, and the headers consumers filter
and trace on. Consumers in other languages rely on exactly this (README, "Change feed on
NATS"); change it only together with that section.
"""

from __future__ import annotations

import functools

from segsvc.v1 import changes_pb2

DEFAULT_STREAM = "SEGSVC_CHANGES"
SUBJECT_PREFIX = "segsvc.changes"
# Everything the relay publishes, for every workspace: the stream's subjects.
STREAM_SUBJECTS = f"{SUBJECT_PREFIX}.>"

# Bytes a subject token may hold as they are. NATS reserves '.', '*' and '>' and forbids
# whitespace; keeping to letters, digits, '-' and '_' also keeps tokens portable to every
# client and to file-system-backed tooling.
_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


# A relay asks for its one workspace's token once per change.
@functools.lru_cache(maxsize=256)
def subject_token(workspace: str) -> str:
    """`workspace` as one subject token: letters, digits, '-' and '_' stay as they are;
    every other byte of its UTF-8 becomes '~' and two upper-case hex digits, so
    `acme.eu` is `acme~2Eeu`. Different names never share a token ('~' is encoded too)."""
    return "".join(
        chr(byte) if byte in _PLAIN else f"~{byte:02X}" for byte in workspace.encode("utf-8")
    )


def workspace_subjects(workspace: str) -> str:
    """The filter of every change of `workspace`, all segments."""
    return f"{SUBJECT_PREFIX}.{subject_token(workspace)}.>"


def change_subject(workspace: str, segment_id: int) -> str:
    return f"{SUBJECT_PREFIX}.{subject_token(workspace)}.{segment_id}"


def message_id(workspace: str, seq: int) -> str:
    """`Nats-Msg-Id`: JetStream stores a second message with the same id (within the
    stream's duplicate window) once, so a change published again is not seen twice."""
    return f"{workspace}:{seq}"


def change_headers(workspace: str, change: changes_pb2.Change) -> dict[str, str]:
    """What a consumer can route or trace on without decoding the payload."""
    return {
        "Nats-Msg-Id": message_id(workspace, change.seq),
        "Segsvc-Workspace": workspace,
        "Segsvc-Seq": str(change.seq),
        "Segsvc-Segment": str(change.segment_id),
        "Segsvc-Kind": changes_pb2.ChangeKind.Name(change.kind).removeprefix("CHANGE_KIND_"),
        "Segsvc-Cause": changes_pb2.ChangeCause.Name(change.cause).removeprefix("CHANGE_CAUSE_"),
    }
