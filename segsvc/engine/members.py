"""Members of segments: adding and removing people by hand (manual segments only: one by
one, from resolved CSV rows, or clearing all), paging through any segment's members, and
asking whether one person is in some segments.

A dynamic segment's members are whoever matches its conditions: a change by hand is refused
with FAILED_PRECONDITION naming what to do instead."""

from __future__ import annotations

from collections.abc import Sequence

from pyroaring import BitMap

from segsvc.engine.core import WorkspaceCore
from segsvc.engine.errors import FailedPrecondition, InvalidArgument
from segsvc.engine.model import ItemResult, Member, PersonKey
from segsvc.engine.ops import MembersOp, Op
from segsvc.engine.requests import MAX_U32, page_size, page_token
from segsvc.storage.store import Txn


class Members:
    def __init__(self, core: WorkspaceCore) -> None:
        self.core = core

    def _manual(self, segment_id: int) -> None:
        self.core.segment(segment_id)
        if self.core.state.segments[segment_id].dynamic:
            raise FailedPrecondition(
                f"segment {segment_id} is dynamic: its members are whoever matches its conditions; "
                "change the conditions instead of adding or removing people"
            )

    def change_members(
        self, segment_id: int, keys: Sequence[PersonKey], add: bool, path: str
    ) -> list[ItemResult]:
        core = self.core
        core.check_batch(len(keys), path)

        def resolve(txn: Txn) -> tuple[Op | None, list[ItemResult], None]:
            self._manual(segment_id)
            members = core.state.segments[segment_id].members
            results: list[ItemResult] = []
            chosen: dict[int, None] = {}
            for i, key, ordinal in core.find_each(txn, keys, path, results):
                is_member = ordinal in members or ordinal in chosen
                if add:
                    outcome = "already_member" if is_member else "added"
                else:
                    outcome = (
                        "removed"
                        if ordinal in members and ordinal not in chosen
                        else "not_a_member"
                    )
                if outcome in ("added", "removed"):
                    chosen[ordinal] = None
                results.append(ItemResult(i, str(key), outcome))
            op = MembersOp(core.clock.now(), segment_id, add, tuple(chosen)) if chosen else None
            return op, results, None

        return core.commit(resolve, frees=not add)

    def add_ordinals(self, segment_id: int, ordinals: Sequence[int]) -> int:
        core = self.core

        def resolve(txn: Txn) -> tuple[Op | None, int, None]:
            self._manual(segment_id)
            new = BitMap(ordinals) - core.state.segments[segment_id].members
            op = MembersOp(core.clock.now(), segment_id, True, tuple(new)) if new else None
            return op, len(new), None

        return core.commit(resolve)

    def resolve_keys(self, kind: str, values: Sequence[str]) -> list[int | str | None]:
        core = self.core
        out: list[int | str | None] = []
        with core.store.read() as txn:
            for value in values:
                try:
                    key = core.normalize_key(PersonKey(kind, value), "")  # type: ignore[arg-type]
                except InvalidArgument as exc:
                    out.append(exc.violations[0].description)
                    continue
                out.append(core.lookup(txn, key.kind, key.value))
        return out

    def clear_segment(self, segment_id: int) -> int:
        core = self.core

        def resolve(txn: Txn) -> tuple[Op | None, int, None]:
            self._manual(segment_id)
            count = len(core.state.segments[segment_id].members)
            op = MembersOp(core.clock.now(), segment_id, False, (), clear=True) if count else None
            return op, count, None

        return core.commit(resolve, frees=True)

    def list_members(
        self, segment_id: int, requested_size: int, token: str
    ) -> tuple[list[Member], str, int]:
        core = self.core
        size = page_size(requested_size, 1000, core.limits.max_page_size)
        after = page_token(token, MAX_U32) if token else -1
        with core.lock:
            core.segment(segment_id)
            members = core.state.segments[segment_id].members
            start = members.rank(after) if after >= 0 else 0
            page = members[start : start + size]
            index = core.state.index
            rows = [Member(index.ids[o] or "", index.emails[o], index.phones[o]) for o in page]
            more = start + size < len(members)
            return rows, (str(page[-1]) if more and len(page) else ""), len(members)

    def check_membership(
        self, key: PersonKey, segment_ids: Sequence[int]
    ) -> tuple[str, list[tuple[int, bool]]]:
        core = self.core
        with core.lock, core.store.read() as txn:
            ordinal = core.find(txn, key, "person")
            for i, sid in enumerate(segment_ids):
                core.segment(sid, f"segment_ids[{i}]")
            segs = core.state.segments
            return core.state.index.ids[ordinal] or "", [
                (sid, ordinal in segs[sid].members) for sid in segment_ids
            ]
