"""The people index follows a delta's moves of $id, $email and $phone for its key lists, and
reads the operation log of older versions, whose deltas listed every person's keys too."""

from __future__ import annotations

import msgpack

from segsvc.engine.index import IndexDelta, PeopleIndex
from segsvc.engine.people import PersonRecord
from segsvc.engine.values import Timestamp

T = Timestamp(1_700_000_000)


def person(pid: str, email: str | None = None, phone: str | None = None) -> PersonRecord:
    return PersonRecord(pid, T, T, email=email, phone=phone)


def applied(index: PeopleIndex, delta: IndexDelta) -> PeopleIndex:
    """The delta through the log's form, as replay sees it."""
    index.apply_delta(IndexDelta.from_plain(msgpack.unpackb(msgpack.packb(delta.to_plain()))))
    return index


def test_key_lists_follow_creation_changes_and_deletion() -> None:
    index = PeopleIndex()
    applied(
        index,
        IndexDelta.of_records(
            [
                (0, None, person("a", "a@x.io")),
                (1, None, person("b", phone="+15550000001")),
                (2, None, person("c", "c@x.io", "+15550000002")),
            ]
        ),
    )
    assert (index.ids, index.emails, index.phones) == (
        ["a", "b", "c"],
        ["a@x.io", None, "c@x.io"],
        [None, "+15550000001", "+15550000002"],
    )
    applied(
        index,
        IndexDelta.of_records(
            [
                # Out of ordinal order on purpose: no slice may be assumed.
                (2, person("c", "c@x.io", "+15550000002"), person("c", "new@x.io")),
                (0, person("a", "a@x.io"), None),
                (1, person("b", phone="+15550000001"), person("b", "b@x.io", "+15550000001")),
            ]
        ),
    )
    # A deleted person keeps their id (the change feed names who left), not their keys.
    assert index.ids == ["a", "b", "c"]
    assert index.emails == [None, "b@x.io", "new@x.io"]
    assert index.phones == [None, "+15550000001", None]
    assert list(index.live) == [1, 2]
    assert list(index.fields["$email"].exists) == [1, 2]
    assert list(index.fields["$phone"].exists) == [1]


def test_older_log_entries_with_key_lists_still_replay() -> None:
    delta = IndexDelta.of_records([(0, None, person("a", "a@x.io")), (1, None, person("b"))])
    older = [*delta.to_plain(), b"\x00\x00\x00\x00\x01\x00\x00\x00", ["a", "b"], ["a@x.io", None]]
    older.append([None, None])
    index = PeopleIndex()
    index.apply_delta(IndexDelta.from_plain(msgpack.unpackb(msgpack.packb(older))))
    assert (index.ids, index.emails, index.phones) == (["a", "b"], ["a@x.io", None], [None, None])
    assert list(index.live) == [0, 1]
