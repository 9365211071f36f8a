"""Segment definitions: create, update, delete and archive segments; read them back (one,
or a filtered page); and the reads about a definition rather than a stored membership:
preview an unsaved tree, explain one person's membership node by node, the size history.

A definition is validated against the segments that exist (references, cycles, limits)
before it becomes an operation; phone operands are stored as this server's default region
places them, so that replaying the log never depends on the replaying server's region."""

from __future__ import annotations

from collections.abc import Sequence

from pyroaring import BitMap

from segsvc.engine import condition_checks, conditions
from segsvc.engine.condition_checks import ValidationContext
from segsvc.engine.conditions import (
    Node,
    children_paths,
    compile_node,
    describe_node,
    referenced_segments,
)
from segsvc.engine.core import WorkspaceCore
from segsvc.engine.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from segsvc.engine.leaves import Leaf, SegmentLeaf
from segsvc.engine.model import ExplainNode, ItemResult, PersonKey, SegmentInfo, SegmentRef
from segsvc.engine.ops import (
    ArchiveSegmentsOp,
    CreateSegmentOp,
    DeleteSegmentsOp,
    Op,
    UpdateSegmentOp,
)
from segsvc.engine.requests import MAX_U64, page_size, page_token
from segsvc.engine.values import check_key, normalize_phone
from segsvc.storage.store import Txn, read_u64, u64


class SegmentDefinitions:
    def __init__(self, core: WorkspaceCore) -> None:
        self.core = core

    # -- validation -----------------------------------------------------------------------

    def _validate_definition(self, definition: Node | None, defining: int | None) -> Node:
        core = self.core
        segments = core.state.segments

        def references_of(sid: int) -> frozenset[int]:
            seg = segments.get(sid)
            if seg is None or seg.definition is None:
                return frozenset()
            return referenced_segments(seg.definition)

        ctx = ValidationContext(
            limits=core.limits,
            segment_exists=lambda sid: sid in segments,
            references_of=references_of,
            default_region=core.config.default_region,
            defining=defining,
        )
        condition_checks.validate(definition, ctx)
        assert definition is not None
        # The log holds phone operands as this server's default region placed them, so that
        # replaying it never depends on the region of the server that replays.
        return conditions.with_stored_phones(
            definition, lambda text: normalize_phone(text, "", core.config.default_region)
        )

    def _check_name(self, name: str, own_id: int | None) -> str:
        name = check_key(name, "the segment name", "name", 256).strip()
        folded = name.casefold()
        for seg in self.core.state.segments.values():
            if seg.id != own_id and seg.name.casefold() == folded:
                raise AlreadyExists(f"a segment named {seg.name!r} already exists (id {seg.id})")
        return name

    def _check_description(self, description: str | None) -> None:
        limit = self.core.limits.max_string_length
        if description is not None and len(description) > limit:
            raise InvalidArgument(f"longer than {limit} characters", "description")

    # -- writes ---------------------------------------------------------------------------

    def create_segment(
        self, name: str, description: str, dynamic: bool, definition: Node | None
    ) -> SegmentInfo:
        core = self.core

        def resolve(txn: Txn) -> tuple[Op | None, int, None]:
            checked_name = self._check_name(name, None)
            self._check_description(description)
            tree: Node | None = None
            if dynamic:
                tree = self._validate_definition(definition, None)
            elif definition is not None:
                raise InvalidArgument(
                    "a manual segment has no conditions: remove them or make it dynamic",
                    "conditions",
                )
            sid = core.state.next_segment_id
            return (
                CreateSegmentOp(core.clock.now(), sid, checked_name, description, dynamic, tree),
                sid,
                None,
            )

        return self.get_segment(core.commit(resolve))

    def update_segment(
        self, segment_id: int, name: str | None, description: str | None, definition: Node | None
    ) -> SegmentInfo:
        core = self.core

        def resolve(txn: Txn) -> tuple[Op | None, None, None]:
            core.segment(segment_id)
            seg = core.state.segments[segment_id]
            checked_name = None if name is None else self._check_name(name, segment_id)
            self._check_description(description)
            tree = None
            if definition is not None:
                if not seg.dynamic:
                    raise FailedPrecondition(
                        f"segment {segment_id} is manual: it has no conditions to change"
                    )
                tree = self._validate_definition(definition, segment_id)
            return (
                UpdateSegmentOp(core.clock.now(), segment_id, checked_name, description, tree),
                None,
                None,
            )

        core.commit(resolve)
        return self.get_segment(segment_id)

    def delete_segments(self, segment_ids: Sequence[int]) -> list[ItemResult]:
        core = self.core
        core.check_batch(len(segment_ids), "segment_ids")

        def resolve(txn: Txn) -> tuple[Op | None, list[ItemResult], None]:
            segments = core.state.segments
            # Only a set closed under "who references me" can go: refusing one segment keeps
            # alive everything it references, so iterate until nothing more drops out.
            doomed = {sid for sid in segment_ids if sid in segments}
            refused: dict[int, list[int]] = {}
            while True:
                blocked = {
                    sid: sorted(core.state.referenced_by.get(sid, set()) - doomed) for sid in doomed
                }
                blocked = {sid: users for sid, users in blocked.items() if users}
                if not blocked:
                    break
                refused.update(blocked)
                doomed -= blocked.keys()
            results: list[ItemResult] = []
            for i, sid in enumerate(segment_ids):
                path = f"segment_ids[{i}]"
                if sid not in segments:
                    error = f"segment {sid} does not exist"
                    results.append(ItemResult(i, str(sid), "not_found", error, path))
                elif sid in refused:
                    names = ", ".join(f"{u} ({segments[u].name!r})" for u in refused[sid])
                    error = (
                        f"segment {sid} is referenced by segments {names}: "
                        "change or delete those first"
                    )
                    results.append(ItemResult(i, str(sid), "failed_precondition", error, path))
                else:
                    results.append(ItemResult(i, str(sid), "deleted"))
            chosen = tuple(sorted(doomed))
            op = DeleteSegmentsOp(core.clock.now(), chosen) if chosen else None
            return op, results, None

        return core.commit(resolve, frees=True)

    def archive_segments(self, segment_ids: Sequence[int], archived: bool) -> list[ItemResult]:
        core = self.core
        core.check_batch(len(segment_ids), "segment_ids")

        def resolve(txn: Txn) -> tuple[Op | None, list[ItemResult], None]:
            results: list[ItemResult] = []
            chosen: list[int] = []
            for i, sid in enumerate(segment_ids):
                seg = core.state.segments.get(sid)
                if seg is None:
                    results.append(
                        ItemResult(
                            i,
                            str(sid),
                            "not_found",
                            f"segment {sid} does not exist",
                            f"segment_ids[{i}]",
                        )
                    )
                    continue
                if seg.archived != archived and sid not in chosen:
                    chosen.append(sid)
                results.append(ItemResult(i, str(sid), "archived" if archived else "unarchived"))
            op = ArchiveSegmentsOp(core.clock.now(), tuple(chosen), archived) if chosen else None
            return op, results, None

        return core.commit(resolve)

    # -- reads ----------------------------------------------------------------------------

    def _info(self, segment_id: int, with_definition: bool = True) -> SegmentInfo:
        segments = self.core.state.segments
        referenced_by = self.core.state.referenced_by
        seg = segments[segment_id]
        refs: tuple[SegmentRef, ...] = ()
        if seg.definition is not None:
            refs = tuple(
                SegmentRef(r, segments[r].name)
                for r in sorted(referenced_segments(seg.definition))
                if r in segments
            )
        users = tuple(
            SegmentRef(u, segments[u].name) for u in sorted(referenced_by.get(segment_id, ()))
        )
        return SegmentInfo(
            seg.id,
            seg.name,
            seg.description,
            seg.dynamic,
            seg.created_at,
            seg.updated_at,
            seg.archived,
            len(seg.members),
            seg.definition if with_definition else None,
            refs,
            users,
        )

    def get_segment(self, segment_id: int) -> SegmentInfo:
        with self.core.lock:
            self.core.segment(segment_id)
            return self._info(segment_id)

    def list_segments(
        self,
        name_contains: str,
        dynamic: bool | None,
        archived: bool | None,
        requested_size: int,
        token: str,
    ) -> tuple[list[SegmentInfo], str]:
        size = page_size(requested_size, 100, 1000)
        after = page_token(token, MAX_U64)
        needle = name_contains.casefold()
        with self.core.lock:
            segments = self.core.state.segments
            rows: list[SegmentInfo] = []
            for sid in sorted(segments):
                seg = segments[sid]
                if sid <= after or (needle and needle not in seg.name.casefold()):
                    continue
                if (dynamic is not None and seg.dynamic != dynamic) or (
                    archived is not None and seg.archived != archived
                ):
                    continue
                if len(rows) == size:
                    return rows, str(rows[-1].id)
                rows.append(self._info(sid, with_definition=False))
            return rows, ""

    def preview(self, definition: Node | None, sample_size: int) -> tuple[int, list[str]]:
        core = self.core
        sample_size = page_size(sample_size, 10, 1000)
        # A read: the lock is held only to validate and to take each leaf's bitmap (writes
        # change the index and the kept bitmaps in place, so those are copied); the tree is
        # combined after it is released.
        with core.lock:
            tree = self._validate_definition(definition, None)
            expr = compile_node(tree)
            now = core.clock.now()
            state = core.state
            taken: dict[Leaf, BitMap] = {}
            for leaf in conditions.leaves_of(expr):
                # Maintained leaves answer as of the last write or tick; time-dependent ones
                # are answered as of now, like the segment would be on the next tick.
                kept = state.leaves.get(leaf) if not isinstance(leaf, SegmentLeaf) else None
                if kept is None or leaf.time_dependent:
                    kept = state.fresh_leaf(leaf, now)
                taken[leaf] = BitMap(kept)
            universe = BitMap(state.index.live)
        members = state.evaluate(expr, universe, taken.__getitem__)
        with core.lock:
            ids = state.index.ids
            return len(members), [ids[o] or "" for o in members[:sample_size]]

    def explain(self, key: PersonKey, segment_id: int) -> tuple[bool, ExplainNode]:
        core = self.core
        with core.lock, core.store.read() as txn:
            definition = core.segment(segment_id)
            if definition is None:
                raise FailedPrecondition(
                    f"segment {segment_id} is manual: membership is who was added, not conditions"
                )
            ordinal = core.find(txn, key, "person")
            state = core.state

            def walk(node: Node, path: str) -> ExplainNode:
                children = tuple(
                    walk(child, child_path) for child_path, child in children_paths(node, path)
                )
                matched = state.holds_for(compile_node(node), ordinal)
                return ExplainNode(
                    f"{path}.{conditions.NODE_FIELD[type(node)]}",
                    describe_node(node),
                    matched,
                    children,
                )

            return ordinal in state.segments[segment_id].members, walk(definition, "conditions")

    def history(self, segment_id: int, start: int | None, end: int | None) -> list[tuple[int, int]]:
        core = self.core
        with core.lock:
            core.segment(segment_id)
        if end is not None and end < 0:
            return []  # sizes are recorded at times after 1970
        base = core.prefix + u64(segment_id)
        with core.store.read() as txn:
            lo = base + u64(min(max(start or 0, 0), MAX_U64))
            hi = base + u64(min(end + 1, MAX_U64)) if end is not None else None
            return [
                (read_u64(k, len(base)), read_u64(v)) for k, v in txn.scan("history", base, lo, hi)
            ]
