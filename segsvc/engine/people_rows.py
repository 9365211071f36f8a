"""The rows a write of people stores, as the commit path takes them (the layout itself is
segsvc.engine.record_rows), and the batched lookups a bulk load plans with (`BulkReader`,
the Reader of segsvc.engine.bulk)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

import numpy as np

from segsvc.engine.bulk import Plan, Reader
from segsvc.engine.core import Persist, WorkspaceCore
from segsvc.engine.ops import BulkRows
from segsvc.engine.people import PersonRecord, unpack_record
from segsvc.engine.record_rows import LOOKUP_CHAR, lookup_keys, store_bulk, store_people
from segsvc.storage.store import U32, Txn, read_u32, u32

# Lookup keys built at a time when they are written once.
KEYS_CHUNK = 4096


def persist_people(
    core: WorkspaceCore,
    people: Sequence[tuple[int, PersonRecord | None, PersonRecord | None]],
) -> Persist:
    """The rows of people written one by one: (ordinal, record before or None, record after
    or None)."""
    return lambda txn: store_people(txn, core.prefix, people)


def persist_plan(core: WorkspaceCore, plan: Plan) -> Persist:
    """The rows of a bulk load's plan (segsvc.engine.bulk)."""
    claimed = [(kind, values, owners) for kind, (values, owners) in plan.claims.items()]
    return lambda txn: store_bulk(
        txn, core.prefix, plan.frees, plan.ordinals, plan.records, claimed
    )


def bulk_rows(plan: Plan) -> BulkRows:
    """A plan's rows as a record carries them (for a shared log)."""
    return BulkRows(
        tuple(plan.frees),
        tuple(plan.ordinals),
        tuple(plan.records),
        tuple(
            (kind, tuple(keys), tuple(owners))
            for claims in (plan.claimed_early, plan.claims)
            for kind, (keys, owners) in claims.items()
        ),
    )


class BulkReader(Reader):
    """Batched lookups for plan_columns, inside the write transaction."""

    def __init__(self, core: WorkspaceCore) -> None:
        self.core = core
        self.txn: Txn | None = None

    def keys(self, kind: str, values: Sequence[str]) -> list[bytes]:
        return lookup_keys(self.core.prefix + LOOKUP_CHAR[kind], values)

    def ordinals(self, kind: str, values: Sequence[str]) -> list[int | None]:
        assert self.txn is not None
        keys = self.keys(kind, values)
        if not keys:
            return []
        # Sorted with numpy (fixed-width bytes sort as the keys do: they hold no NUL), so
        # that when everyone is found (events of known people, a re-import) the values
        # come back in that order and are decoded and put back in place in one go.
        order = np.argsort(np.array(keys), kind="stable")
        in_order = [keys[i] for i in order.tolist()]
        every = self.txn.values_of("lookup", in_order)
        if every is not None:
            ordinals = np.empty(len(keys), dtype=np.int64)
            ordinals[order] = np.frombuffer(b"".join(every), dtype=">u4")
            return list(ordinals.tolist())
        found = self.txn.get_many("lookup", in_order)
        if not found:  # a load of new people
            return [None] * len(keys)
        return [None if (raw := found.get(k)) is None else read_u32(raw) for k in keys]

    def claim_new(self, claims: Mapping[str, tuple[Sequence[str], Sequence[int]]]) -> bool:
        assert self.txn is not None
        written: list[tuple[str, Sequence[str], Sequence[int]]] = []
        for kind, (values, ordinals) in claims.items():
            head = self.core.prefix + LOOKUP_CHAR[kind]
            # Keys written once: built a chunk at a time, so that one chunk's memory serves
            # the next (as the records, see bulk._records).
            keys = chain.from_iterable(
                lookup_keys(head, values[start : start + KEYS_CHUNK])
                for start in range(0, len(values), KEYS_CHUNK)
            )
            rows = zip(keys, map(U32.pack, ordinals), strict=True)
            added = self.txn.insert_many("lookup", rows)
            if added:
                written.append((kind, values, ordinals))
            if added != len(values):
                # Take back the rows this wrote: those holding the ordinal they were given
                # (new ordinals, so no earlier row holds one). A re-import of existing
                # people wrote none.
                for kind_written, values_written, ordinals_written in written:
                    keys_written = self.keys(kind_written, values_written)
                    held = self.txn.get_many("lookup", sorted(keys_written))
                    for key, ordinal in zip(keys_written, ordinals_written, strict=True):
                        if held.get(key) == U32.pack(ordinal):
                            self.txn.delete("lookup", key)
                return False
        return True

    def records(self, ordinals: Sequence[int]) -> list[list[Any]]:
        assert self.txn is not None
        p = self.core.prefix
        keys = [p + u32(o) for o in ordinals]
        found = self.txn.get_many("people", sorted(keys))
        try:
            return [unpack_record(found[k]) for k in keys]
        except Exception:
            # Someone's record is damaged: the person-by-person path reports them alone.
            for ordinal, k in zip(ordinals, keys, strict=True):
                self.core.person_of(ordinal, found.get(k))
            raise
