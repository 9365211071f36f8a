"""The rows an operation record stores besides itself: people records in the `people` table
and the id, email and phone lookups that name them. They are a function of the record alone
(applied to the store as it was before it), so the node that wrote a record, a node that
reads it from a shared log, and a restart that finds a record whose commit was lost all
store the same rows the same way.

Kept apart from the requests because the row layout is one thing to get right once: a
person and their lookup keys are freed and claimed together."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from segsvc.engine.ops import EventsOp, Op, PeopleOp
from segsvc.engine.people import PersonRecord
from segsvc.storage.store import U32, Txn, u32

LOOKUP_CHAR = {"id": b"i", "email": b"e", "phone": b"p"}


def store_rows(txn: Txn, prefix: bytes, op: Op) -> None:
    """Stores the rows `op` carries (people and their lookups); other records have none."""
    if isinstance(op, PeopleOp):
        if op.rows is not None:
            rows = op.rows
            store_bulk(txn, prefix, rows.frees, rows.ordinals, rows.records, rows.claims)
        store_people(txn, prefix, op.people)
    elif isinstance(op, EventsOp):
        store_people(txn, prefix, op.people)


def store_people(
    txn: Txn,
    prefix: bytes,
    people: Sequence[tuple[int, PersonRecord | None, PersonRecord | None]],
) -> None:
    """The rows of people written one by one: (ordinal, record before or None, record after
    or None)."""
    p = prefix
    # Free every key first, then claim: within a batch one person may take over an email
    # another just gave up.
    for ordinal, old, new in people:
        if old is None:
            continue
        for kind, value in (("email", old.email), ("phone", old.phone)):
            if value and (new is None or getattr(new, kind) != value):
                txn.delete("lookup", p + LOOKUP_CHAR[kind] + value.encode())
        if new is None:
            txn.delete("lookup", p + b"i" + old.id.encode())
            txn.delete("people", p + u32(ordinal))
    for ordinal, old, new in people:
        if new is None:
            continue
        txn.put("people", p + u32(ordinal), new.encode())
        if old is None:
            txn.put("lookup", p + b"i" + new.id.encode(), u32(ordinal))
        for kind, value in (("email", new.email), ("phone", new.phone)):
            if value and (old is None or getattr(old, kind) != value):
                txn.put("lookup", p + LOOKUP_CHAR[kind] + value.encode(), u32(ordinal))


def store_bulk(
    txn: Txn,
    prefix: bytes,
    frees: Iterable[tuple[str, str]],
    ordinals: Sequence[int],
    records: Iterable[bytes],
    claimed: Iterable[tuple[str, Sequence[str], Sequence[int]]],
) -> None:
    """The rows of a bulk load: frees the keys people gave up, stores the records (given
    as they are packed, lazily) and the keys people take."""
    p = prefix
    for kind, value in frees:
        txn.delete("lookup", p + LOOKUP_CHAR[kind] + value.encode())
    people = map(p.__add__, map(U32.pack, ordinals))
    txn.put_many("people", zip(people, records, strict=True))
    for kind, values, owners in claimed:
        keys = lookup_keys(p + LOOKUP_CHAR[kind], values)
        txn.put_many("lookup", zip(keys, map(U32.pack, owners), strict=True))


def lookup_keys(head: bytes, values: Sequence[str]) -> list[bytes]:
    """`head + value` as UTF-8 for many values: joined with a separator, encoded once and
    split (keys hold no control characters, so the split gives one key per value; when it
    does not, map over built-in methods)."""
    if not values:
        return []
    text = head.decode()
    keys = (text + ("\x01" + text).join(values)).encode().split(b"\x01")
    if len(keys) == len(values):
        return keys
    return list(map(head.__add__, map(str.encode, values)))
