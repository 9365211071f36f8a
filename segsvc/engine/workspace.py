"""One workspace: its people, segments and change feed, and every call the API makes on them.

This is the façade the API layer calls; the work lives in one module per concern, each
holding the shared `WorkspaceCore` (segsvc.engine.core: the in-memory state, the lock, the
lookups, and the one path every write takes through the operation log):

    people_writes   upserts, bulk loads as columns, deletions, one person back
    event_writes    events, the tick, dropping events no condition counts any more
    segment_defs    create / update / delete / archive, list, preview, explain, history
    members         manual members, member pages, membership checks
    change_feed     reading, following and pruning the stored membership changes
    audiences       audiences, their frozen snapshots, attributes for senders

Every write is resolved into an operation record, appended to the log, applied in memory and
committed with its rows before it is answered (see segsvc.engine.core).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from threading import Condition

from pyroaring import BitMap

from segsvc.config import Config
from segsvc.engine.audiences import Audiences
from segsvc.engine.bulk import BulkResult, PeopleColumns
from segsvc.engine.change_feed import ChangeFeed
from segsvc.engine.clock import Clock
from segsvc.engine.conditions import Node
from segsvc.engine.core import WorkspaceCore
from segsvc.engine.event_columns import EventColumns
from segsvc.engine.event_writes import EventWrites
from segsvc.engine.events import EventInput
from segsvc.engine.members import Members
from segsvc.engine.model import (
    AudienceSpec,
    Change,
    ExplainNode,
    ItemResult,
    Member,
    PersonKey,
    PersonView,
    SegmentInfo,
)
from segsvc.engine.observer import NO_WORKSPACE_OBSERVER, WorkspaceObserver
from segsvc.engine.oplog import OperationLog
from segsvc.engine.people import PersonUpsert
from segsvc.engine.people_writes import BULK_BATCH_FACTOR, PeopleWrites
from segsvc.engine.requests import MAX_U32
from segsvc.engine.segment_defs import SegmentDefinitions
from segsvc.engine.state import WorkspaceState
from segsvc.engine.stats import WorkspaceStats, workspace_stats
from segsvc.engine.values import Value
from segsvc.storage.store import Store

# Named by the API layer (batch sizes of a bulk load, the largest ordinal of a cursor).
__all__ = ["BULK_BATCH_FACTOR", "MAX_U32", "Workspace"]


class Workspace:
    def __init__(
        self,
        name: str,
        store: Store,
        clock: Clock,
        config: Config,
        oplog: OperationLog | None = None,
        observer: WorkspaceObserver = NO_WORKSPACE_OBSERVER,
    ) -> None:
        self.core = WorkspaceCore(name, store, clock, config, oplog, observer)
        self.name = name
        self.store = store
        self.clock = clock
        self.config = config
        self.limits = config.limits
        self._people = PeopleWrites(self.core)
        self._segments = SegmentDefinitions(self.core)
        self._members = Members(self.core)
        self._feed = ChangeFeed(self.core)
        self._audiences = Audiences(self.core)
        self._events = EventWrites(self.core, self._feed, self._audiences)

    @property
    def state(self) -> WorkspaceState:
        """The in-memory state as of the last commit (read it under no lock only for tests
        and tools: writes change it in place)."""
        return self.core.state

    @property
    def changed(self) -> Condition:
        """Notified after every commit that wrote changes."""
        return self.core.changed

    @property
    def reloads(self) -> int:
        """Reloads from disk after a write failed once applied in memory."""
        return self.core.reloads

    @property
    def refused_full(self) -> int:
        """Writes refused in a row for want of storage room."""
        return self.core.refused_full

    def stats(self) -> WorkspaceStats:
        """Its sizes, log and checkpoint position, followers and snapshots now."""
        return workspace_stats(self.core, self._feed, self._audiences)

    def checkpoint(self) -> bool:
        """Stores the whole in-memory state and drops the log records it covers; says
        whether it did (a refusal is logged and loses nothing)."""
        return self.core.checkpoint()

    # -- people -----------------------------------------------------------------------------

    def upsert_people(
        self, upserts: Sequence[PersonUpsert], path: str = "people"
    ) -> list[ItemResult]:
        return self._people.upsert_people(upserts, path)

    def upsert_columns(
        self, columns: PeopleColumns, first_index: int = 0, path: str = "columns"
    ) -> BulkResult:
        """Bulk load: many upserts as columns (see segsvc.engine.bulk), with the meaning and
        the outcome of `upsert_people` on the same rows. Results count rows from
        `first_index` (a row's position in a longer stream)."""
        return self._people.upsert_columns(columns, first_index, path)

    def delete_people(self, keys: Sequence[PersonKey], path: str = "people") -> list[ItemResult]:
        return self._people.delete_people(keys, path)

    def get_person(self, key: PersonKey) -> PersonView:
        return self._people.get_person(key)

    def track_events(
        self,
        events: Sequence[EventInput],
        create_missing_people: bool = False,
        path: str = "events",
    ) -> list[ItemResult]:
        """Records events. Unknown people are rejected, or created bare (by id only) when
        `create_missing_people` is set."""
        return self._events.track_events(events, create_missing_people, path)

    def track_columns(
        self, columns: EventColumns, create_missing_people: bool = False, first_index: int = 0
    ) -> BulkResult:
        """Bulk tracking: many events as columns (see segsvc.engine.event_columns), with the
        meaning and the outcome of `track_events` on the same rows. Results count rows from
        `first_index` (a row's position in a longer stream)."""
        return self._events.track_columns(columns, create_missing_people, first_index)

    # -- segments ---------------------------------------------------------------------------

    def create_segment(
        self, name: str, description: str, dynamic: bool, definition: Node | None
    ) -> SegmentInfo:
        return self._segments.create_segment(name, description, dynamic, definition)

    def update_segment(
        self, segment_id: int, name: str | None, description: str | None, definition: Node | None
    ) -> SegmentInfo:
        return self._segments.update_segment(segment_id, name, description, definition)

    def delete_segments(self, segment_ids: Sequence[int]) -> list[ItemResult]:
        return self._segments.delete_segments(segment_ids)

    def archive_segments(self, segment_ids: Sequence[int], archived: bool) -> list[ItemResult]:
        return self._segments.archive_segments(segment_ids, archived)

    def get_segment(self, segment_id: int) -> SegmentInfo:
        return self._segments.get_segment(segment_id)

    def list_segments(
        self,
        name_contains: str = "",
        dynamic: bool | None = None,
        archived: bool | None = False,
        page_size: int = 100,
        page_token: str = "",
    ) -> tuple[list[SegmentInfo], str]:
        """Segments in id order after `page_token`; `archived` None lists both."""
        return self._segments.list_segments(name_contains, dynamic, archived, page_size, page_token)

    def preview(self, definition: Node | None, sample_size: int = 10) -> tuple[int, list[str]]:
        """How many people an unsaved definition matches now, and a sample of their ids."""
        return self._segments.preview(definition, sample_size)

    def explain(self, key: PersonKey, segment_id: int) -> tuple[bool, ExplainNode]:
        """Whether a person is in a dynamic segment, and the truth of every node of its tree."""
        return self._segments.explain(key, segment_id)

    def history(self, segment_id: int, start: int | None, end: int | None) -> list[tuple[int, int]]:
        """(time, member count) points of a segment between `start` and `end` inclusive."""
        return self._segments.history(segment_id, start, end)

    # -- manual membership ------------------------------------------------------------------

    def change_members(
        self, segment_id: int, keys: Sequence[PersonKey], add: bool, path: str = "people"
    ) -> list[ItemResult]:
        return self._members.change_members(segment_id, keys, add, path)

    def add_ordinals(self, segment_id: int, ordinals: Sequence[int]) -> int:
        """Adds people already resolved to ordinals (CSV import); returns how many were new."""
        return self._members.add_ordinals(segment_id, ordinals)

    def resolve_keys(self, kind: str, values: Sequence[str]) -> list[int | str | None]:
        """Ordinals for keys (None: unknown; a string: why the key is malformed)."""
        return self._members.resolve_keys(kind, values)

    def clear_segment(self, segment_id: int) -> int:
        return self._members.clear_segment(segment_id)

    def list_members(
        self, segment_id: int, page_size: int = 1000, page_token: str = ""
    ) -> tuple[list[Member], str, int]:
        return self._members.list_members(segment_id, page_size, page_token)

    def check_membership(
        self, key: PersonKey, segment_ids: Sequence[int]
    ) -> tuple[str, list[tuple[int, bool]]]:
        return self._members.check_membership(key, segment_ids)

    # -- time -------------------------------------------------------------------------------

    def tick(self) -> None:
        """Re-checks time-dependent conditions as of now (TIME changes), records segment
        sizes and drops changes past their retention."""
        self._events.tick()

    def compact_events(self, force: bool = False) -> int:
        """Drops from memory the events no condition counts any more (before the retention
        floor, or of deleted people) once they are a sixteenth of a log, or whenever
        `force`d. The copying happens off the write lock, so readers and writers go on;
        the lock is held only to take the log sizes and to swap the new logs in (with the
        events written meanwhile). Returns how many events were dropped."""
        return self._events.compact_events(force)

    # -- change feed ------------------------------------------------------------------------

    def head_seq(self) -> int:
        """The sequence number of the last change committed."""
        return self.core.committed_head

    def read_changes(
        self, after_seq: int, segment_ids: frozenset[int], limit: int = 1000
    ) -> tuple[list[Change], int]:
        """Up to `limit` stored changes with seq > after_seq; returns them and the seq to
        continue after. OUT_OF_RANGE when after_seq is older than what is kept."""
        return self._feed.read_changes(after_seq, segment_ids, limit)

    def watch(
        self,
        after_seq: int,
        segment_ids: frozenset[int],
        stop: Callable[[], bool],
        follow: bool = True,
    ) -> Iterator[list[Change]]:
        """The stored changes after `after_seq`, then live ones as they are committed, in
        order, without gaps or repeats, a run at a time: the live part is read back from
        storage too, so the switch from replay to live needs no hand-over."""
        return self._feed.watch(after_seq, segment_ids, stop, follow)

    # -- audiences --------------------------------------------------------------------------

    def audience(self, spec: AudienceSpec) -> BitMap:
        """The audience as a bitmap of ordinals, computed under the lock: a frozen snapshot."""
        return self._audiences.audience(spec)

    def snapshot_audience(self, spec: AudienceSpec) -> tuple[str, int]:
        """Freezes the audience and stores it, so that a sender can page through it, and
        resume after a disconnect or a server restart, while membership moves on. Returns
        the snapshot id and its size."""
        return self._audiences.snapshot_audience(spec)

    def snapshot_page(
        self, snapshot_id: str, after: int, limit: int
    ) -> tuple[list[tuple[int, str, str | None, str | None]], int, int, int]:
        """The next `limit` people of a snapshot after ordinal `after` (-1: from the start),
        as (ordinal, id, email, phone), less anyone deleted since the snapshot; returns them,
        the snapshot's size, how many remain after this page, and the `after` of the next
        page."""
        return self._audiences.snapshot_page(snapshot_id, after, limit)

    def attributes_of(
        self, ordinals: Sequence[int], names: Sequence[str]
    ) -> list[dict[str, Value]]:
        """The named attributes of each person (empty for people deleted since)."""
        return self._audiences.attributes_of(ordinals, names)
