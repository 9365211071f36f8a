"""Audiences: the people a campaign sends to, from include / require / exclude segments,
subscription and channel; frozen snapshots of them that a sender pages through and resumes
after a disconnect or a restart; the attributes a sender asks of the people it sends to.

Snapshots are stored (`snapshots` table) and the recently used ones kept decoded here, so
paging does not decode one per chunk; a tick prunes them past their retention."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import Any

import msgpack
from pyroaring import BitMap

from segsvc.engine.core import WorkspaceCore
from segsvc.engine.errors import FailedPrecondition, InvalidArgument, NotFound, from_storage
from segsvc.engine.index import PeopleIndex
from segsvc.engine.model import AudienceSpec
from segsvc.engine.values import Value
from segsvc.storage.errors import CorruptRecordError, StorageError
from segsvc.storage.records import reason, seal, unseal
from segsvc.storage.store import Txn, describe_key, u32

log = logging.getLogger(__name__)

# Decoded snapshots kept for paging (each a bitmap of up to the whole workspace).
KEPT_SNAPSHOTS = 8


class Audiences:
    def __init__(self, core: WorkspaceCore) -> None:
        self.core = core
        # Recently used audience snapshots, so paging does not decode one per chunk.
        self._snapshots: dict[str, BitMap] = {}

    def audience(self, spec: AudienceSpec) -> BitMap:
        core = self.core
        with core.lock:
            segs = core.state.segments
            for group, ids in (
                ("include", spec.include),
                ("require", spec.require),
                ("exclude", spec.exclude),
            ):
                for i, sid in enumerate(ids):
                    seg = segs.get(sid)
                    if seg is None:
                        raise NotFound(f"segment {sid} does not exist (audience.{group}[{i}])")
                    if seg.archived:
                        raise FailedPrecondition(
                            f"segment {sid} ({seg.name!r}) is archived (audience.{group}[{i}]): "
                            "unarchive it to send to it"
                        )
            if not spec.include:
                raise InvalidArgument("name at least one segment to include", "audience.include")
            result = BitMap.union(*(segs[s].members for s in spec.include))
            for sid in spec.require:
                result &= segs[sid].members
            if spec.exclude:
                result -= BitMap.union(*(segs[s].members for s in spec.exclude))
            index = core.state.index
            if not spec.include_unsubscribed:
                unsub = index.field("$unsubscribed")
                if unsub is not None:
                    result -= unsub.bools.get(True, BitMap())
            if spec.channel == "email":
                result &= _exists(index, "$email")
            elif spec.channel == "phone":
                result &= _exists(index, "$phone")
            elif spec.channel == "device":
                result &= (
                    index.platforms.get(spec.device_platform, BitMap())
                    if spec.device_platform
                    else index.any_device
                )
            return result

    def snapshot_audience(self, spec: AudienceSpec) -> tuple[str, int]:
        core = self.core
        members = self.audience(spec)
        members.run_optimize()
        snapshot_id = secrets.token_hex(12)
        record = seal(msgpack.packb([core.clock.now(), members.serialize()], use_bin_type=True))
        try:
            with core.store.write() as txn:
                txn.put("snapshots", core.prefix + snapshot_id.encode(), record)
        except StorageError as exc:
            # A read still answers when storage takes no writes: the snapshot lives in
            # memory only, and a resume after a restart is told to resolve again.
            log.warning("workspace %s: audience snapshot kept in memory only: %s", core.name, exc)
        self._snapshots[snapshot_id] = members
        return snapshot_id, len(members)

    def snapshot_page(
        self, snapshot_id: str, after: int, limit: int
    ) -> tuple[list[tuple[int, str, str | None, str | None]], int, int, int]:
        core = self.core
        members = self._snapshots.get(snapshot_id)
        if members is None:
            key = core.prefix + snapshot_id.encode()
            with core.store.read() as txn:
                raw = txn.get("snapshots", key)
            if raw is None:
                raise NotFound(
                    f"audience snapshot {snapshot_id} does not exist or has expired "
                    f"(snapshots are kept {core.config.snapshot_retention_seconds} s): "
                    "resolve the audience again"
                )
            try:
                members = BitMap.deserialize(_snapshot_fields(raw)[1])
            except Exception as exc:
                where = describe_key("snapshots", key)
                raise from_storage(
                    CorruptRecordError("snapshots", where, reason(exc)), core.store.path
                ) from exc
            if len(self._snapshots) >= KEPT_SNAPSHOTS:
                self._snapshots.pop(next(iter(self._snapshots)))
            self._snapshots[snapshot_id] = members
        start = members.rank(after) if after >= 0 else 0
        page = members[start : start + limit]
        index = core.state.index
        ids, emails, phones = index.ids, index.emails, index.phones
        next_after = page.max() if page else after
        remaining = len(members) - start - len(page)
        # People deleted since the snapshot was taken are not sent to.
        with core.lock:
            page &= index.live
        rows = [(o, ids[o] or "", emails[o], phones[o]) for o in page]
        return rows, len(members), remaining, next_after

    def attributes_of(
        self, ordinals: Sequence[int], names: Sequence[str]
    ) -> list[dict[str, Value]]:
        core = self.core
        out: list[dict[str, Value]] = []
        with core.store.read() as txn:
            for ordinal in ordinals:
                raw = txn.get("people", core.prefix + u32(ordinal))
                if raw is None:
                    out.append({})
                    continue
                attributes = core.person_of(ordinal, raw).attributes
                out.append({n: attributes[n] for n in names if n in attributes})
        return out

    def stored_snapshots(self) -> int:
        """How many audience snapshots are stored (resumable) now."""
        with self.core.store.read() as txn:
            return sum(1 for _ in txn.scan("snapshots", self.core.prefix))

    def prune(self, txn: Txn, now: int) -> None:
        """Drops the snapshots past their retention, stored and kept."""
        p = self.core.prefix
        cutoff = now - self.core.config.snapshot_retention_seconds
        doomed = [key for key, value in txn.scan("snapshots", p) if _snapshot_time(value) < cutoff]
        for key in doomed:
            txn.delete("snapshots", key)
            self._snapshots.pop(key[len(p) :].decode(), None)


def _snapshot_fields(raw: bytes) -> list[Any]:
    """[time taken, serialized bitmap] of a stored audience snapshot."""
    fields: list[Any] = msgpack.unpackb(unseal(raw))
    return fields


def _snapshot_time(raw: bytes) -> int:
    """When a stored snapshot was taken; a damaged one counts as expired (a sender resolves
    the audience again)."""
    try:
        return int(_snapshot_fields(raw)[0])
    except Exception:
        return -1


def _exists(index: PeopleIndex, key: str) -> BitMap:
    fi = index.field(key)
    return BitMap() if fi is None else fi.exists
