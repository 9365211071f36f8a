"""Offline verification of a store (`segsvc check`): what is damaged, where, and why.

First LMDB's own structure, walked by py-lmdb's byte verifier without mapping the file (a
damaged page cannot crash the check); then, when the structure is sound, every record: its
checksum and its decoding, the lookups against the people they name, and the state the
checkpoint and the log rebuild against the people table. Nothing is created or written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import lmdb.verify
import msgpack
from pyroaring import BitMap

from segsvc.engine.core import MATERIALISED
from segsvc.engine.oplog import (
    LmdbOperationLog,
    checkpoint_bytes,
    is_checkpoint_part,
    load_state,
)
from segsvc.engine.ops import decode
from segsvc.engine.people import PersonRecord
from segsvc.engine.state import ChangeBatch, WorkspaceState
from segsvc.storage.errors import CorruptRecordError, StoreDamagedError
from segsvc.storage.records import reason, unseal
from segsvc.storage.store import (
    DATA_FILE,
    U32,
    U64,
    Store,
    Txn,
    at_rest,
    describe_key,
    prefix,
    read_u32,
)


@dataclass(frozen=True)
class Damage:
    table: str  # a table, or "lmdb" for the file's own structure
    key: str  # the key in words
    why: str

    def __str__(self) -> str:
        return f"{self.table} {self.key}: {self.why}"


@dataclass
class Report:
    workspaces: list[str] = field(default_factory=list)
    records: int = 0
    damage: list[Damage] = field(default_factory=list)
    # (table, stored key) of every damaged record, for the checks that follow
    damaged: set[tuple[str, bytes]] = field(default_factory=set)


# py-lmdb's byte verifier (untyped): a list of problems, empty for a sound file.
_verify = cast(Callable[..., list[str]], lmdb.verify.verify)

_LOOKUP_KINDS = {b"i": "id", b"e": "email", b"p": "phone"}


def check_store(path: Path) -> Report:
    """Verifies the store in `path`. Raises StorageError when it cannot be examined (not a
    store, in use by a server); damage, including a missing, empty or truncated data file,
    is in the report."""
    report = Report()
    try:
        with at_rest(path):
            try:
                problems = _verify(str(path / DATA_FILE), subdir=False)
            except lmdb.verify.VerifyError as exc:
                problems = [str(exc)]
            if problems:
                report.damage.extend(Damage("lmdb", DATA_FILE, p) for p in problems)
                return report
            store = Store(path, readonly=True)
    except StoreDamagedError as exc:
        report.damage.append(Damage("lmdb", DATA_FILE, str(exc)))
        return report
    try:
        with store.read() as txn:
            report.workspaces = [
                k[len(b"ws:") :].decode(errors="replace") for k, _ in txn.scan("meta", b"ws:")
            ]
            _check_records(txn, report)
            for name in report.workspaces:
                _check_rebuild(txn, name, report)
    finally:
        store.close()
    return report


def _check_records(txn: Txn, report: Report) -> None:
    def each(table: str, check: Callable[[bytes, bytes], Any]) -> Iterator[tuple[bytes, Any]]:
        for key, value in txn.scan(table, b""):
            report.records += 1
            try:
                yield key, check(key, value)
            except Exception as exc:
                report.damage.append(Damage(table, describe_key(table, key), reason(exc)))
                report.damaged.add((table, key))

    def checkpoint(key: bytes, stored: bytes) -> WorkspaceState | None:
        # Staged parts are read as part of the checkpoint whose manifest names them.
        if is_checkpoint_part(key):
            return None
        return WorkspaceState.from_bytes(checkpoint_bytes(txn, key, stored))

    for _ in each("checkpoints", checkpoint):
        pass
    for _ in each("ops", lambda _, v: decode(v)):
        pass
    for _ in each("changes", lambda k, v: ChangeBatch.decode(0, v)):
        pass
    for _ in each("snapshots", lambda _, v: BitMap.deserialize(msgpack.unpackb(unseal(v))[1])):
        pass
    for _ in each("history", _eight_bytes):
        pass
    people: dict[bytes, PersonRecord] = dict(each("people", lambda _, v: PersonRecord.decode(v)))
    for key, ordinal in each("lookup", _ordinal):
        workspace, _, rest = key.partition(b"\x00")
        person_key = workspace + b"\x00" + U32.pack(ordinal)
        record = people.get(person_key)
        kind = _LOOKUP_KINDS.get(rest[:1])
        value = rest[1:].decode(errors="replace")
        if kind is None:
            why = "not a lookup kind"
        elif record is not None and getattr(record, kind) == value:
            continue
        elif record is not None:
            why = f"names ordinal {ordinal}, whose {kind} is {getattr(record, kind)!r}"
        elif ("people", person_key) in report.damaged:
            continue  # the person's own record is reported
        else:
            why = f"names ordinal {ordinal}, which has no record"
        report.damage.append(Damage("lookup", describe_key("lookup", key), why))
    for person_key, record in people.items():
        workspace = person_key[: -U32.size]
        for kind, char in (("id", b"i"), ("email", b"e"), ("phone", b"p")):
            value = getattr(record, kind)
            if not value:
                continue
            found = txn.get("lookup", workspace + char + value.encode())
            if found != person_key[-U32.size :]:
                report.damage.append(
                    Damage(
                        "people",
                        describe_key("people", person_key),
                        f"its {kind} {value!r} has no lookup naming it",
                    )
                )


def _check_rebuild(txn: Txn, name: str, report: Report) -> None:
    """The state the checkpoint and the log rebuild knows the same people as the table."""
    p = prefix(name)
    if any(table in ("checkpoints", "ops") and key.startswith(p) for table, key in report.damaged):
        return  # reported already: nothing to rebuild from
    if txn.get("meta", MATERIALISED + p) is not None:
        # The workspace's log is on JetStream (serve --nats): the people stored after the
        # checkpoint come from records this offline check does not read.
        return
    try:
        state, _, _ = load_state(LmdbOperationLog(p), txn)
    except CorruptRecordError as exc:
        report.damage.append(Damage(exc.table, exc.key, exc.reason))
        return
    stored = BitMap(read_u32(key, len(p)) for key, _ in txn.scan("people", p))
    for ordinal in state.index.live - stored:
        report.damage.append(
            Damage(
                "people",
                describe_key("people", p + U32.pack(ordinal)),
                "missing, though the log and checkpoint say the person exists",
            )
        )
    for ordinal in stored - state.index.live:
        report.damage.append(
            Damage(
                "people",
                describe_key("people", p + U32.pack(ordinal)),
                "a record the log and checkpoint know nothing of",
            )
        )


def _ordinal(_: bytes, value: bytes) -> int:
    if len(value) != U32.size:
        raise ValueError(f"{len(value)} bytes where an ordinal takes {U32.size}")
    return read_u32(value)


def _eight_bytes(_: bytes, value: bytes) -> None:
    if len(value) != U64.size:
        raise ValueError(f"{len(value)} bytes where a count takes {U64.size}")
