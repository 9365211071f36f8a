"""The in-memory state of one workspace and the one function that changes it: `apply(op)`.

The write path and crash recovery both call `apply`, so memberships after a restart are exactly
what they were: the state is a deterministic function of the operation log. `apply` reads no
clock and no storage; everything it needs is in the record.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
from pyroaring import BitMap

from segsvc.engine import conditions
from segsvc.engine.conditions import (
    All,
    Any_,
    Expr,
    Node,
    Not,
    compile_node,
    leaves_of,
)
from segsvc.engine.conditions import canonical as leaf_id
from segsvc.engine.event_index import EventLeafIndex, LeafMove
from segsvc.engine.events import EventStore
from segsvc.engine.index import IndexDelta, PeopleIndex
from segsvc.engine.leaves import EventLeaf, IndexLeaf, Leaf, SegmentLeaf
from segsvc.engine.ops import (
    ArchiveSegmentsOp,
    CreateSegmentOp,
    DeleteSegmentsOp,
    EventsOp,
    MembersOp,
    Op,
    PeopleOp,
    TickOp,
    UpdateSegmentOp,
)
from segsvc.engine.people import PersonRecord
from segsvc.engine.state_snapshot import StateSnapshot
from segsvc.storage.records import seal, unseal

ENTERED, EXITED = 1, 2
CAUSE_DATA, CAUSE_DEFINITION, CAUSE_MANUAL, CAUSE_TIME, CAUSE_DELETED = 1, 2, 3, 4, 5
CHECKPOINT_VERSION = 4

# Above this many people changed on one key, a leaf is recomputed from the index (bitmap
# operations) instead of checking each person's record.
BULK_THRESHOLD = 256
# Up to this many changed people, segments are re-evaluated person by person.
FEW_PEOPLE = 8


@dataclass
class ChangeBatch:
    """Changes of one kind and cause for one segment from one operation; the people get the
    sequence numbers first_seq, first_seq + 1, ... in ordinal order."""

    first_seq: int
    segment_id: int
    kind: int
    cause: int
    at: int
    ordinals: BitMap

    def encode(self) -> bytes:
        return seal(
            msgpack.packb(
                [self.segment_id, self.kind, self.cause, self.at, self.ordinals.serialize()],
                use_bin_type=True,
            )
        )

    @staticmethod
    def decode(first_seq: int, data: bytes) -> ChangeBatch:
        segment_id, kind, cause, at, ordinals = msgpack.unpackb(unseal(data), raw=False)
        return ChangeBatch(first_seq, segment_id, kind, cause, at, BitMap.deserialize(ordinals))


@dataclass
class SegmentState:
    id: int
    name: str
    description: str
    dynamic: bool
    created_at: int
    updated_at: int
    archived: bool = False
    definition: Node | None = None
    expr: Expr | None = None
    members: BitMap = field(default_factory=BitMap)
    # True when the expression holds for a person none of whose leaves hold (e.g. "has not
    # tag x"): such a segment must look at every new person, whatever data they came with.
    matches_blank: bool = False


class WorkspaceState:
    def __init__(self) -> None:
        self.index = PeopleIndex()
        self.segments: dict[int, SegmentState] = {}
        self.leaves: dict[IndexLeaf | EventLeaf, BitMap] = {}
        self.leaf_users: dict[IndexLeaf | EventLeaf, set[int]] = defaultdict(set)
        self.leaves_by_dep: dict[str, set[IndexLeaf | EventLeaf]] = defaultdict(set)
        # segment id -> dynamic segments whose conditions name it
        self.referenced_by: dict[int, set[int]] = defaultdict(set)
        self.op_seq = 0
        self.change_seq = 1
        self.next_ordinal = 0
        self.next_segment_id = 1
        self.now = 0
        self.events = EventStore()
        self.event_leaves = EventLeafIndex(self.events)
        self._topo: list[int] | None = None

    # -- reading ---------------------------------------------------------------------------

    def leaf_bitmap(self, leaf: Leaf) -> BitMap:
        if isinstance(leaf, SegmentLeaf):
            return self.segments[leaf.segment_id].members
        return self.leaves[leaf]

    def fresh_leaf(self, leaf: Leaf, now: int) -> BitMap:
        """A leaf's answer computed afresh as of `now`, whether or not a segment keeps it."""
        if isinstance(leaf, SegmentLeaf):
            return self.segments[leaf.segment_id].members
        if isinstance(leaf, EventLeaf):
            return self.event_leaves.fresh(leaf, now, self.next_ordinal) & self.index.live
        return leaf.full(self.index, now)

    def evaluate(
        self, expr: Expr, universe: BitMap, leaf_bitmap: Callable[[Leaf], BitMap] | None = None
    ) -> BitMap:
        """The people of `universe` the expression holds for."""
        get = leaf_bitmap or self.leaf_bitmap
        if isinstance(expr, All):
            if not expr.children:
                return BitMap(universe)
            parts = [self.evaluate(c, universe, get) for c in expr.children]
            return BitMap.intersection(*parts) if len(parts) > 1 else parts[0]
        if isinstance(expr, Any_):
            parts = [self.evaluate(c, universe, get) for c in expr.children]
            if not parts:
                return BitMap()
            return BitMap.union(*parts) if len(parts) > 1 else parts[0]
        if isinstance(expr, Not):
            return universe - self.evaluate(expr.child, universe, get)
        return get(expr) & universe

    def holds_for(self, expr: Expr, ordinal: int) -> bool:
        """The expression's truth for one person, from the maintained leaf bitmaps."""
        if isinstance(expr, All):
            return all(self.holds_for(c, ordinal) for c in expr.children)
        if isinstance(expr, Any_):
            return any(self.holds_for(c, ordinal) for c in expr.children)
        if isinstance(expr, Not):
            return ordinal in self.index.live and not self.holds_for(expr.child, ordinal)
        return ordinal in self.leaf_bitmap(expr)

    def topo_order(self) -> list[int]:
        """Segment ids with every segment after the segments its conditions name."""
        if self._topo is None:
            order: list[int] = []
            seen: set[int] = set()

            def visit(sid: int) -> None:
                if sid in seen:
                    return
                seen.add(sid)
                seg = self.segments[sid]
                if seg.expr is not None:
                    for leaf in leaves_of(seg.expr):
                        if isinstance(leaf, SegmentLeaf) and leaf.segment_id in self.segments:
                            visit(leaf.segment_id)
                order.append(sid)

            for sid in sorted(self.segments):
                visit(sid)
            self._topo = order
        return self._topo

    # -- applying ----------------------------------------------------------------------------

    def apply(self, seq: int, op: Op) -> list[ChangeBatch]:
        """Applies one logged operation; returns the membership changes it made."""
        out: list[ChangeBatch] = []
        if isinstance(op, PeopleOp):
            self._apply_people(op, out)
        elif isinstance(op, MembersOp):
            self._apply_members(op, out)
        elif isinstance(op, CreateSegmentOp):
            self._apply_create(op, out)
        elif isinstance(op, UpdateSegmentOp):
            self._apply_update(op, out)
        elif isinstance(op, DeleteSegmentsOp):
            self._apply_delete(op, out)
        elif isinstance(op, ArchiveSegmentsOp):
            for sid in op.segment_ids:
                self.segments[sid].archived = op.archived
                self.segments[sid].updated_at = op.at
        elif isinstance(op, EventsOp):
            if op.people:
                self._apply_people(PeopleOp(op.at, op.people), out)
            self._apply_events(op, out)
        elif isinstance(op, TickOp):
            self._apply_tick(op, out)
        self.op_seq = seq
        return out

    def _emit(
        self, out: list[ChangeBatch], sid: int, kind: int, cause: int, at: int, who: BitMap
    ) -> None:
        if not who:
            return
        out.append(ChangeBatch(self.change_seq, sid, kind, cause, at, BitMap(who)))
        self.change_seq += len(who)

    def _apply_people(self, op: PeopleOp, out: list[ChangeBatch]) -> None:
        # A bulk load carries its index changes; other writes carry records.
        delta = op.delta if op.delta is not None else IndexDelta.of_records(op.people)
        touched = self.index.apply_delta(delta)
        records: dict[int, PersonRecord | None] | None = None
        if op.delta is None:
            records = {ordinal: new for ordinal, _old, new in op.people}
        created, deleted = BitMap(delta.born), BitMap(delta.died)
        if created:
            self.next_ordinal = max(self.next_ordinal, created.max() + 1)
        # Only people with a leaf bit that moved (or who arrived or left) can change segment.
        seeds, moved = self._refresh_leaves(touched, records, op.at)
        if created:
            moved |= created
            seeds |= {s.id for s in self.segments.values() if s.matches_blank}
        if deleted:
            moved |= deleted
            # Their events stay in the logs (dropped later, off the write lock) and in the
            # counts, but an answer only ever holds for live people.
            for leaf in self.event_leaves.tracked:
                bitmap = self.leaves[leaf]
                if bitmap.intersect(deleted):
                    bitmap -= deleted
                    seeds |= self.leaf_users[leaf]
            for seg in self.segments.values():
                if not seg.members.intersect(deleted):
                    continue
                if seg.dynamic:
                    seeds.add(seg.id)
                else:
                    gone = seg.members & deleted
                    seg.members -= gone
                    self._emit(out, seg.id, EXITED, CAUSE_DELETED, op.at, gone)
                    seeds |= self.referenced_by[seg.id]
        self._refresh_segments(seeds, moved, op.at, CAUSE_DATA, out, deleted)

    def _refresh_leaves(
        self,
        touched: dict[str, Sequence[int]],
        records: dict[int, PersonRecord | None] | None,
        now: int,
    ) -> tuple[set[int], BitMap]:
        """Brings the leaves that depend on the touched keys up to date for those people
        (from their records when few and known, else from the index); returns the segments
        using a leaf whose bits moved, and the people they moved for."""
        seeds: set[int] = set()
        moved = BitMap()
        for key, ordinals in touched.items():
            for leaf in self.leaves_by_dep.get(key, ()):
                if isinstance(leaf, EventLeaf):
                    continue
                bitmap = self.leaves[leaf]
                if records is None or len(ordinals) > BULK_THRESHOLD:
                    people = BitMap(ordinals)
                    fresh = leaf.full(self.index, now, people)
                    flipped = fresh ^ (bitmap & people)
                    if flipped:
                        bitmap -= people
                        bitmap |= fresh
                else:
                    flipped = BitMap()
                    for ordinal in ordinals:
                        record = records[ordinal]
                        holds = record is not None and leaf.match(record, now)
                        if holds != (ordinal in bitmap):
                            flipped.add(ordinal)
                            if holds:
                                bitmap.add(ordinal)
                            else:
                                bitmap.discard(ordinal)
                if flipped:
                    moved |= flipped
                    seeds |= self.leaf_users[leaf]
        return seeds, moved

    def _refresh_segments(
        self,
        seeds: Iterable[int],
        people: BitMap,
        at: int,
        cause: int,
        out: list[ChangeBatch],
        deleted: BitMap | None = None,
    ) -> None:
        """Re-evaluates the seeded dynamic segments (and, in dependency order, the segments
        that name them) for `people` only, and emits the differences."""
        pending = set(seeds)
        if not pending or not people:
            return
        universe = people & self.index.live
        few = len(people) <= FEW_PEOPLE
        for sid in self.topo_order():
            if sid not in pending:
                continue
            seg = self.segments[sid]
            if not seg.dynamic or seg.expr is None:
                continue
            if few:
                # A handful of people: membership tests on the leaf bitmaps cost less than
                # bitmap algebra over the whole tree.
                expr = seg.expr
                now_in = BitMap(p for p in universe if self.holds_for(expr, p))
            else:
                now_in = self.evaluate(seg.expr, universe)
            was_in = seg.members & people
            entered, exited = now_in - was_in, was_in - now_in
            if not entered and not exited:
                continue
            seg.members |= entered
            seg.members -= exited
            self._emit(out, sid, ENTERED, cause, at, entered)
            if deleted:
                self._emit(out, sid, EXITED, cause, at, exited - deleted)
                self._emit(out, sid, EXITED, CAUSE_DELETED, at, exited & deleted)
            else:
                self._emit(out, sid, EXITED, cause, at, exited)
            pending |= self.referenced_by[sid]

    def _apply_members(self, op: MembersOp, out: list[ChangeBatch]) -> None:
        seg = self.segments[op.segment_id]
        if op.clear:
            moved = BitMap(seg.members)
            seg.members.clear()
        else:
            people = BitMap(op.ordinals) & self.index.live
            moved = people - seg.members if op.add else people & seg.members
            if op.add:
                seg.members |= moved
            else:
                seg.members -= moved
        self._emit(
            out, seg.id, ENTERED if op.add and not op.clear else EXITED, CAUSE_MANUAL, op.at, moved
        )
        self._refresh_segments(self.referenced_by[seg.id], moved, op.at, CAUSE_DATA, out)

    def _register(self, seg: SegmentState, now: int) -> None:
        """Links a segment to its leaves, computing the leaves no segment had yet."""
        self._link(seg, lambda leaf: self._compute_leaf(leaf, now))

    def _compute_leaf(self, leaf: IndexLeaf | EventLeaf, now: int) -> None:
        if isinstance(leaf, EventLeaf):
            fresh = self.event_leaves.add(leaf, now, self.next_ordinal) & self.index.live
            self.leaves[leaf] = fresh
        else:
            self.leaves[leaf] = leaf.full(self.index, now)

    def _link(self, seg: SegmentState, fill: Callable[[IndexLeaf | EventLeaf], None]) -> None:
        """Records which leaves and segments `seg` uses; `fill` gives a leaf no other segment
        uses yet its bitmap (and counts): computed now, or read from a checkpoint."""
        assert seg.expr is not None
        for leaf in leaves_of(seg.expr):
            if isinstance(leaf, SegmentLeaf):
                self.referenced_by[leaf.segment_id].add(seg.id)
                continue
            if leaf not in self.leaves:
                fill(leaf)
                self.leaves_by_dep[leaf.dep].add(leaf)
            self.leaf_users[leaf].add(seg.id)
        # With every leaf false (and every referenced segment empty), does it hold?
        seg.matches_blank = bool(self.evaluate(seg.expr, BitMap([0]), lambda _leaf: BitMap()))
        self._topo = None

    def _unregister(self, seg: SegmentState) -> None:
        if seg.expr is None:
            return
        for leaf in leaves_of(seg.expr):
            if isinstance(leaf, SegmentLeaf):
                self.referenced_by[leaf.segment_id].discard(seg.id)
                continue
            users = self.leaf_users.get(leaf)
            if users is None:
                continue
            users.discard(seg.id)
            if not users:
                del self.leaf_users[leaf]
                del self.leaves[leaf]
                if isinstance(leaf, EventLeaf):
                    self.event_leaves.remove(leaf)
                self.leaves_by_dep[leaf.dep].discard(leaf)
                if not self.leaves_by_dep[leaf.dep]:
                    del self.leaves_by_dep[leaf.dep]
        self._topo = None

    def _apply_create(self, op: CreateSegmentOp, out: list[ChangeBatch]) -> None:
        seg = SegmentState(op.segment_id, op.name, op.description, op.dynamic, op.at, op.at)
        self.segments[seg.id] = seg
        self.next_segment_id = max(self.next_segment_id, seg.id + 1)
        self._topo = None
        if op.dynamic and op.definition is not None:
            seg.definition = op.definition
            seg.expr = compile_node(op.definition)
            self._register(seg, op.at)
            seg.members = self.evaluate(seg.expr, self.index.live)
            self._emit(out, seg.id, ENTERED, CAUSE_DEFINITION, op.at, seg.members)

    def _apply_update(self, op: UpdateSegmentOp, out: list[ChangeBatch]) -> None:
        seg = self.segments[op.segment_id]
        seg.updated_at = op.at
        if op.name is not None:
            seg.name = op.name
        if op.description is not None:
            seg.description = op.description
        if op.definition is None:
            return
        self._unregister(seg)
        seg.definition = op.definition
        seg.expr = compile_node(op.definition)
        self._register(seg, op.at)
        # The edited segment and everything that names it, over everyone.
        self._refresh_segments(
            [seg.id], self.index.live | seg.members, op.at, CAUSE_DEFINITION, out
        )

    def _apply_delete(self, op: DeleteSegmentsOp, out: list[ChangeBatch]) -> None:
        for sid in op.segment_ids:
            seg = self.segments.pop(sid)
            self._unregister(seg)
            self.referenced_by.pop(sid, None)
            self._emit(out, sid, EXITED, CAUSE_DELETED, op.at, seg.members)
        self._topo = None

    def _apply_events(self, op: EventsOp, out: list[ChangeBatch]) -> None:
        ranges = self.events.append(op.rows())
        moved = BitMap()
        seeds: set[int] = set()
        for leaf, holds in self.event_leaves.on_append(ranges, op.at, self.next_ordinal).items():
            # New events only add: among the people they touch, a leaf can only turn on.
            turned_on = self._settle(leaf, LeafMove(holds, holds))
            if turned_on:
                moved |= turned_on
                seeds |= self.leaf_users[leaf]
        self._refresh_segments(seeds, moved, op.at, CAUSE_DATA, out)

    def _apply_tick(self, op: TickOp, out: list[ChangeBatch]) -> None:
        self.now = op.at
        moved = BitMap()
        seeds: set[int] = set()
        floor = op.event_cutoff or None
        event_moves = self.event_leaves.advance(op.at, floor, self.next_ordinal)
        for leaf in list(self.leaves):
            if isinstance(leaf, EventLeaf):
                move = event_moves.get(leaf)
                if move is None:
                    continue
                flipped = self._settle(leaf, move)
            elif leaf.time_dependent:
                old = self.leaves[leaf]
                fresh = self.leaves[leaf] = leaf.full(self.index, op.at)
                flipped = fresh ^ old
            else:
                continue
            if flipped:
                moved |= flipped
                seeds |= self.leaf_users[leaf]
        self._refresh_segments(seeds, moved, op.at, CAUSE_TIME, out)

    def _settle(self, leaf: EventLeaf, move: LeafMove) -> BitMap:
        """Applies an event leaf's new answer; returns the people whose bit flipped."""
        old = self.leaves[leaf]
        holds = move.holds & self.index.live
        if move.scope is None:
            self.leaves[leaf] = holds
            return holds ^ old
        turned_off = (old & move.scope) - holds
        turned_on = holds - old
        old -= turned_off
        old |= turned_on
        return turned_off | turned_on

    def has_time_dependent(self) -> bool:
        return any(leaf.time_dependent for leaf in self.leaves)

    # -- checkpoints ------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        return self.snapshot().to_bytes()

    def snapshot(self) -> StateSnapshot:
        """What a checkpoint of the state stores, taken in milliseconds (under the workspace
        lock) and packed later, while writes go on: bitmaps are serialised now (cheaper
        than copying them), the id / email / phone lists copied, event arrays kept as
        views of rows that never change. Nothing in it is shared with what `apply`
        changes."""
        segments = [
            [
                s.id,
                s.name,
                s.description,
                s.dynamic,
                s.created_at,
                s.updated_at,
                s.archived,
                None if s.definition is None else conditions.to_plain(s.definition),
                s.members.serialize(),
            ]
            for s in self.segments.values()
        ]
        leaves = {leaf_id(leaf): bm.serialize() for leaf, bm in self.leaves.items()}
        body = [
            CHECKPOINT_VERSION,
            self.op_seq,
            self.change_seq,
            self.next_ordinal,
            self.next_segment_id,
            self.now,
            self.index.to_plain(),
            segments,
            leaves,
            self.events.to_plain(),
            self.event_leaves.to_plain(),
        ]
        return StateSnapshot(self.op_seq, body)

    @classmethod
    def from_bytes(cls, data: bytes) -> WorkspaceState:
        """The state of a stored checkpoint (DamagedRecord when its checksum fails)."""
        body: list[Any] = msgpack.unpackb(unseal(data), raw=False, strict_map_key=False)
        if body[0] != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint version {body[0]} is not {CHECKPOINT_VERSION}")
        state = cls()
        (
            _,
            state.op_seq,
            state.change_seq,
            state.next_ordinal,
            state.next_segment_id,
            state.now,
        ) = body[:6]
        state.index = PeopleIndex.from_plain(body[6])
        leaf_bitmaps: dict[str, bytes] = body[8]
        state.events = EventStore.from_plain(body[9])
        state.event_leaves = EventLeafIndex.from_plain(state.events, body[10])
        for sid, name, desc, dynamic, created, updated, archived, definition, members in body[7]:
            seg = SegmentState(sid, name, desc, dynamic, created, updated, archived)
            seg.members = BitMap.deserialize(members)
            state.segments[sid] = seg
            if definition is not None:
                seg.definition = conditions.from_plain(definition)
                seg.expr = compile_node(seg.definition)

        def stored(leaf: IndexLeaf | EventLeaf) -> None:
            name = leaf_id(leaf)
            state.leaves[leaf] = BitMap.deserialize(leaf_bitmaps[name])
            if isinstance(leaf, EventLeaf):
                state.event_leaves.restore(leaf, state.next_ordinal)

        for seg in state.segments.values():
            if seg.expr is not None:
                state._link(seg, stored)
        return state
