"""Event conditions kept current: who did X (with these properties) in the window, as of now.

DESIGN.md asks for "events by name and time bucket → bitmap of who did it then, with counts
kept where thresholds need them". Two structures answer an event leaf:

- Presence ("did X at least once"): per event name and property filters, one bitmap per UTC
  day of the people with a matching event that day. A window is the union of the days it
  covers whole, plus its one or two edge days checked event by event (a log indexes its rows
  by day), so edges are exact to the second.
- Counts ("at least N times" with N > 1, and filters that compare with now): each person's
  number of counting events, moved incrementally with the window: the events that left it are
  subtracted, the events that came in are added.

Each leaf remembers the range of event times [lo, hi] its answer stands for. A write extends
hi to the write's time (events stamped ahead of the clock come due then), a tick moves both
ends, and the retention floor moves lo: an event before the floor counts for no condition, so
dropping it from memory later changes no answer and can happen off the write lock.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyroaring import BitMap

from segsvc.engine.conditions import canonical, event_match_id
from segsvc.engine.events import DAY, MIN_TIME, EventLog, EventStore, group_by_day
from segsvc.engine.leaves import EventLeaf

# (event name, property filters): what one presence structure answers.
Match = tuple[str, frozenset[Any]]
# Above this many events, counts are added with one bincount instead of a scatter-add.
BINCOUNT_ABOVE = 4096


@dataclass
class _Tracked:
    """A kept leaf: the event times its answer covers, and its counts when it needs them."""

    lo: int
    hi: int | None  # None: no upper bound
    counts: np.ndarray | None = None


@dataclass(frozen=True)
class LeafMove:
    """A leaf's new answer after time moved: within `scope` (None: everyone) it now holds
    for exactly `holds`; outside `scope` nothing changed."""

    scope: BitMap | None
    holds: BitMap


def bitmap_of(ordinals: np.ndarray) -> BitMap:
    return BitMap(array("I", ordinals.astype(np.uint32, copy=False).tobytes()))


def counted(leaf: EventLeaf) -> bool:
    """Whether a leaf needs per-person counts rather than the daily presence bitmaps."""
    return leaf.min_count > 1 or leaf.filters_move_with_time


class EventLeafIndex:
    def __init__(self, events: EventStore) -> None:
        self.events = events
        # Events before the floor are past retention: no condition counts them.
        self.floor = MIN_TIME
        self.tracked: dict[EventLeaf, _Tracked] = {}
        self.presence: dict[Match, dict[int, BitMap]] = {}
        self._presence_users: dict[Match, int] = {}
        # From a checkpoint, until the segments that use them link their leaves again.
        self._stored: dict[str, Any] = {}

    def bounds(self, leaf: EventLeaf, now: int) -> tuple[int, int | None]:
        """The event times the leaf counts as of `now`."""
        if leaf.within_last_seconds is not None:
            lo, hi = now - leaf.within_last_seconds, now
        elif leaf.start is not None and leaf.end is not None:
            lo, hi = int(leaf.start), int(leaf.end)
        else:
            lo, hi = self.floor, None
        return max(lo, self.floor), hi

    # -- keeping leaves ---------------------------------------------------------------------

    def add(self, leaf: EventLeaf, now: int, people: int) -> BitMap:
        """Starts keeping a leaf; returns the ordinals it holds for (deleted people too)."""
        lo, hi = self.bounds(leaf, now)
        tracked = self.tracked[leaf] = _Tracked(lo, hi)
        if counted(leaf):
            tracked.counts = self._count(leaf, now, lo, hi, people)
            return _reached(leaf, tracked.counts)
        match = (leaf.name, leaf.filters)
        if match not in self.presence:
            self.presence[match] = self._days_of(match)
        self._presence_users[match] = self._presence_users.get(match, 0) + 1
        return self._present(match, lo, hi)

    def remove(self, leaf: EventLeaf) -> None:
        del self.tracked[leaf]
        if counted(leaf):
            return
        match = (leaf.name, leaf.filters)
        self._presence_users[match] -= 1
        if not self._presence_users[match]:
            del self._presence_users[match]
            del self.presence[match]

    def fresh(self, leaf: EventLeaf, now: int, people: int) -> BitMap:
        """The leaf as of `now` straight from the logs (for leaves no segment keeps)."""
        lo, hi = self.bounds(leaf, now)
        return _reached(leaf, self._count(leaf, now, lo, hi, people))

    # -- new events ---------------------------------------------------------------------------

    def on_append(
        self, ranges: dict[str, tuple[int, int]], at: int, people: int
    ) -> dict[EventLeaf, BitMap]:
        """Takes in the events just appended (rows [start, end) of each name's log) as of
        the write's time `at`. New events only add, so the answer is, per leaf, the people it
        may now hold for that it did not before (among others it already held for)."""
        first_day = self.floor // DAY
        for match, days in self.presence.items():
            span = ranges.get(match[0])
            if span is None:
                continue
            log = self.events.logs[match[0]]
            start, end = span
            rows = np.arange(start, end, dtype=np.uint32)
            rows = rows[log.passes(match[1], at, slice(start, end), end - start)]
            if not len(rows):
                continue
            for day, chosen in group_by_day(log.times[rows] // DAY, rows):
                if day < first_day:
                    continue
                who = log.ordinals[chosen]
                if day in days:
                    days[day].update(array("I", who.tobytes()))
                else:
                    days[day] = bitmap_of(who)
        out: dict[EventLeaf, BitMap] = {}
        for leaf, tracked in self.tracked.items():
            span = ranges.get(leaf.name)
            if span is None:
                continue
            who = self._came_in(leaf, tracked, self.events.logs[leaf.name], span, at)
            if not len(who):
                continue
            if tracked.counts is not None:
                counts = tracked.counts = _fit(tracked.counts, people)
                _add(counts, who, 1)
                who = np.unique(who)
                who = who[counts[who] >= leaf.min_count]
            out[leaf] = bitmap_of(who)
        return out

    def _came_in(
        self, leaf: EventLeaf, tracked: _Tracked, log: EventLog, span: tuple[int, int], at: int
    ) -> np.ndarray:
        """The ordinals of the events that now count for the leaf and did not before: new
        events inside its range and, when the write moves the range's end to `at`, earlier
        events stamped ahead of the clock that have now come due."""
        start, end = span
        _, hi = self.bounds(leaf, at)
        old_hi = tracked.hi
        if hi is not None and old_hi is not None and hi < old_hi:
            hi = old_hi  # a clock that went back never shrinks what was counted
        times = log.times[start:end]
        inside = times >= tracked.lo
        if hi is not None:
            inside &= times <= hi
        rows = np.arange(start, end, dtype=np.uint32)[inside]
        who = log.ordinals_passing(leaf.filters, at, rows)
        if hi is not None and old_hi is not None and hi > old_hi:
            tracked.hi = hi
            if log.max_time_before_append > old_hi:
                due = log.rows_in(max(old_hi + 1, tracked.lo), hi)
                due = due[due < start]
                who = np.concatenate([who, log.ordinals_passing(leaf.filters, at, due)])
        return who

    # -- time ---------------------------------------------------------------------------------

    def advance(self, now: int, floor: int | None, people: int) -> dict[EventLeaf, LeafMove]:
        """Moves every leaf's range to `now` (and the retention floor up to `floor`);
        returns the leaves whose answer may have changed."""
        if floor is not None and floor > self.floor:
            self.floor = floor
            first_day = floor // DAY
            for days in self.presence.values():
                for day in [d for d in days if d < first_day]:
                    del days[day]
        out: dict[EventLeaf, LeafMove] = {}
        for leaf, tracked in self.tracked.items():
            lo, hi = self.bounds(leaf, now)
            if leaf.filters_move_with_time:
                # Which events pass the filters changed with the clock: count again.
                tracked.lo, tracked.hi = lo, hi
                tracked.counts = self._count(leaf, now, lo, hi, people)
                out[leaf] = LeafMove(None, _reached(leaf, tracked.counts))
                continue
            if (lo, hi) == (tracked.lo, tracked.hi):
                continue
            move = self._move(leaf, tracked, lo, hi, now, people)
            tracked.lo, tracked.hi = lo, hi
            if move is not None:
                out[leaf] = move
        return out

    def _move(
        self, leaf: EventLeaf, tracked: _Tracked, lo: int, hi: int | None, now: int, people: int
    ) -> LeafMove | None:
        log = self.events.logs.get(leaf.name)
        old_lo, old_hi = tracked.lo, tracked.hi
        # Ranges only grow forward while the clock does (hi is None for "ever" leaves).
        forward = lo >= old_lo and (hi is None or old_hi is None or hi >= old_hi)
        if not forward:
            # The clock went back: answer afresh.
            if tracked.counts is not None:
                tracked.counts = self._count(leaf, now, lo, hi, people)
                return LeafMove(None, _reached(leaf, tracked.counts))
            return LeafMove(None, self._present((leaf.name, leaf.filters), lo, hi))
        if log is None:
            return None
        # The old range [old_lo, old_hi] becomes [lo, hi]: events in [old_lo, lo) left it,
        # events in (old_hi, hi] came in (when the two do not overlap, all of each).
        left = _NONE
        if lo > old_lo:
            last = lo - 1 if old_hi is None else min(lo - 1, old_hi)
            left = log.ordinals_passing(leaf.filters, now, log.rows_in(old_lo, last))
        came = _NONE
        if old_hi is not None and (hi is None or hi > old_hi):
            came = log.ordinals_passing(leaf.filters, now, log.rows_in(max(old_hi + 1, lo), hi))
        if not len(left) and not len(came):
            return None
        if tracked.counts is not None:
            counts = tracked.counts = _fit(tracked.counts, people)
            _add(counts, left, -1)
            _add(counts, came, 1)
            touched = np.unique(np.concatenate([left, came]))
            return LeafMove(
                bitmap_of(touched), bitmap_of(touched[counts[touched] >= leaf.min_count])
            )
        if len(left):
            # Someone whose event left may have another one inside: the union decides.
            return LeafMove(None, self._present((leaf.name, leaf.filters), lo, hi))
        arrived = bitmap_of(came)
        return LeafMove(arrived, arrived)

    # -- computing from the logs -----------------------------------------------------------

    def _count(self, leaf: EventLeaf, now: int, lo: int, hi: int | None, people: int) -> np.ndarray:
        log = self.events.logs.get(leaf.name)
        counts = np.zeros(people, dtype=np.int32)
        if log is not None and (hi is None or lo <= hi):
            _add(counts, log.matching(leaf.filters, now, lo, hi), 1)
        return counts

    def _days_of(self, match: Match) -> dict[int, BitMap]:
        """The presence bitmaps of one (name, filters), day by day, from the log."""
        log = self.events.logs.get(match[0])
        days: dict[int, BitMap] = {}
        if log is None:
            return days
        first_day = self.floor // DAY
        # The filters once over the whole log (contiguous columns), then day by day only a
        # lookup. Presence filters never compare with now (else the leaf is counted).
        n = log.size
        passing = log.passes(match[1], 0, slice(0, n), n) if match[1] else None
        for day in list(log.day_rows):
            if day >= first_day:
                rows = log.day(day)
                if passing is not None:
                    rows = rows[passing[rows]]
                if len(rows):
                    days[day] = bitmap_of(log.ordinals[rows])
        return days

    def _present(self, match: Match, lo: int, hi: int | None) -> BitMap:
        """Who did the event at least once with lo <= time <= hi: the union of the days
        inside the range, and the edge days event by event."""
        whole: list[BitMap] = []
        edges: list[int] = []
        first, last = lo // DAY, None if hi is None else hi // DAY
        for day, who in self.presence[match].items():
            if day < first or (last is not None and day > last):
                continue
            if day * DAY >= lo and (hi is None or day * DAY + DAY - 1 <= hi):
                whole.append(who)
            else:
                edges.append(day)
        # A new bitmap always: the caller keeps and changes it, the days must not change.
        out = BitMap.union(*whole) if len(whole) > 1 else BitMap(whole[0] if whole else ())
        log = self.events.logs.get(match[0])
        if log is not None:
            for day in edges:
                end = day * DAY + DAY - 1 if hi is None else min(hi, day * DAY + DAY - 1)
                rows = log.rows_in(max(lo, day * DAY), end)
                out |= bitmap_of(log.ordinals_passing(match[1], 0, rows))
        return out

    # -- checkpoints --------------------------------------------------------------------------

    def to_plain(self) -> Any:
        leaves = []
        for leaf, tracked in self.tracked.items():
            counts = None
            if tracked.counts is not None:
                # Sparse: most people never did most events.
                who = np.flatnonzero(tracked.counts).astype(np.uint32)
                counts = [who.tobytes(), tracked.counts[who].astype(np.int32).tobytes()]
            leaves.append([canonical(leaf), tracked.lo, tracked.hi, counts])
        presence = [
            [event_match_id(*match), [[day, who.serialize()] for day, who in sorted(days.items())]]
            for match, days in self.presence.items()
        ]
        return [self.floor, sorted(leaves, key=lambda row: row[0]), sorted(presence)]

    @classmethod
    def from_plain(cls, events: EventStore, data: Any) -> EventLeafIndex:
        index = cls(events)
        index.floor, leaves, presence = data
        index._stored = {name: row for name, *row in leaves}
        index._stored.update({"match:" + name: days for name, days in presence})
        return index

    def restore(self, leaf: EventLeaf, people: int) -> None:
        """Keeps a leaf again as the checkpoint left it (called as segments link)."""
        lo, hi, stored_counts = self._stored[canonical(leaf)]
        tracked = self.tracked[leaf] = _Tracked(lo, hi)
        if stored_counts is not None:
            who, how_many = stored_counts
            counts = np.zeros(people, dtype=np.int32)
            counts[np.frombuffer(who, dtype=np.uint32)] = np.frombuffer(how_many, np.int32)
            tracked.counts = counts
            return
        match = (leaf.name, leaf.filters)
        if match not in self.presence:
            days = self._stored["match:" + event_match_id(*match)]
            self.presence[match] = {day: BitMap.deserialize(who) for day, who in days}
        self._presence_users[match] = self._presence_users.get(match, 0) + 1


_NONE = np.zeros(0, dtype=np.uint32)


def _reached(leaf: EventLeaf, counts: np.ndarray) -> BitMap:
    return bitmap_of(np.flatnonzero(counts >= leaf.min_count))


def _fit(counts: np.ndarray, people: int) -> np.ndarray:
    """`counts` long enough for every ordinal below `people`."""
    if len(counts) >= people:
        return counts
    grown = np.zeros(max(people, len(counts) * 2), dtype=np.int32)
    grown[: len(counts)] = counts
    return grown


def _add(counts: np.ndarray, ordinals: np.ndarray, sign: int) -> None:
    """counts[o] += sign for each ordinal, repeats included."""
    if len(ordinals) > BINCOUNT_ABOVE:
        counts += sign * np.bincount(ordinals, minlength=len(counts))[: len(counts)].astype(
            np.int32
        )
    elif len(ordinals):
        np.add.at(counts, ordinals, sign)
