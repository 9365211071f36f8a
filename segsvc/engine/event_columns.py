"""Events as columns: the bulk form of tracking (`EventColumns`, each row standing for one
`EventInput` naming its person by id), the checks of every column in one pass each (with the
errors `track_events` would give), and how the accepted rows become the operation log's
`EventRows`, one per event name, with numpy gathers rather than a loop per event.

Apart from segsvc.engine.event_writes, which resolves the people against storage and
commits, as bulk_columns is apart from bulk: the API builds these straight from the wire.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np

from segsvc.config import Limits
from segsvc.engine.bulk_columns import (
    AttributeColumn,
    Column,
    TypedRules,
    check_keys,
    check_typed_columns,
    column_of,
    typed_columns_of,
    values_at,
)
from segsvc.engine.events import MAX_PROPERTIES, EventInput, EventRows, PropertyValues
from segsvc.engine.index import FieldValues
from segsvc.engine.model import PersonKey
from segsvc.engine.values import Timestamp, check_key

PROPERTY_RULES = TypedRules("property", "properties", MAX_PROPERTIES, check_key)


@dataclass(frozen=True)
class EventColumns:
    """Many events as columns: row i is person_ids[i] doing names[i] at timestamps[i] (now
    where the row has none) with the row's values of `properties`. `path` names the whole
    for errors."""

    person_ids: list[str]
    names: list[str]
    timestamps: Column | None = None
    properties: tuple[AttributeColumn, ...] = ()
    path: str = "columns"

    def __len__(self) -> int:
        return len(self.person_ids)

    def slice(self, start: int, stop: int) -> EventColumns:
        return EventColumns(
            person_ids=self.person_ids[start:stop],
            names=self.names[start:stop],
            timestamps=None if self.timestamps is None else self.timestamps.slice(start, stop),
            properties=tuple(
                replace(p, column=p.column.slice(start, stop)) for p in self.properties
            ),
            path=self.path,
        )

    @staticmethod
    def from_events(events: Sequence[EventInput], path: str = "columns") -> EventColumns:
        """Events that name their person by id, as columns (named as the wire form names
        them)."""
        assert all(e.person.kind == "id" for e in events), "columns name people by id"
        stamps = [None if e.timestamp is None else int(e.timestamp) for e in events]
        return EventColumns(
            person_ids=[e.person.value for e in events],
            names=[e.name for e in events],
            timestamps=column_of("timestamp", stamps, f"{path}.timestamps.seconds"),
            properties=typed_columns_of([e.properties for e in events], path, "properties"),
            path=path,
        )

    def events(self) -> list[EventInput]:
        """Row by row, the EventInput each row stands for."""
        stamps = self.timestamps
        return [
            EventInput(
                person=PersonKey("id", pid),
                name=name,
                timestamp=None if stamps is None else cast("Timestamp | None", stamps.value(row)),
                properties=values_at(self.properties, row),
            )
            for row, (pid, name) in enumerate(zip(self.person_ids, self.names, strict=True))
        ]


@dataclass
class CheckedEvents:
    """The rows that failed validation (row -> (what is wrong, field path)): `errors` of the
    name and properties, `person_errors` of the person ids, which `track_events` finds
    after the times; and the property columns in canonical form (-0.0 folded into 0.0)."""

    errors: dict[int, tuple[str, str]]
    person_errors: dict[int, tuple[str, str]]
    properties: list[AttributeColumn]


def check_event_columns(cols: EventColumns, limits: Limits, first_index: int) -> CheckedEvents:
    """Validates every row as `track_events` does: the first problem of a row, in the order
    name, properties (then times, against the clock when the write runs), person id, is its
    error."""
    n = len(cols)
    errors: dict[int, tuple[str, str]] = {}
    person_errors: dict[int, tuple[str, str]] = {}

    def fail(row: int, description: str, path: str) -> None:
        errors.setdefault(row, (description, path))

    def person_fail(row: int, description: str, path: str) -> None:
        person_errors[row] = (description, path)

    def at(path: str, row: int) -> str:
        return f"{path}[{first_index + row}]"

    check_keys(cols.person_ids, "the person id", f"{cols.path}.person_ids", person_fail, at)
    check_keys(cols.names, "the event name", f"{cols.path}.names", fail, at)
    canonical = check_typed_columns(
        cols.properties, n, PROPERTY_RULES, f"{cols.path}.properties", limits, fail, at
    )
    properties = [
        replace(typed, column=column)
        for typed, column in zip(cols.properties, canonical, strict=True)
    ]
    return CheckedEvents(errors, person_errors, properties)


def event_rows(
    cols: EventColumns,
    properties: Sequence[AttributeColumn],
    accepted: np.ndarray,
    ordinals: np.ndarray,
    times: np.ndarray,
) -> list[EventRows]:
    """The `accepted` rows (ascending) as one EventRows per event name, names in order of
    first appearance and rows in request order within a name: what the same events one by
    one make (EventRows.group). `ordinals` and `times` are per accepted row."""
    names = take(cols.names, accepted)
    # Codes in order of first appearance (dict.fromkeys keeps it), looked up in C.
    code_of = {name: code for code, name in enumerate(dict.fromkeys(names))}
    codes = np.fromiter(map(code_of.__getitem__, names), np.int64, len(names))
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate(([0], np.cumsum(np.bincount(codes, minlength=len(code_of)))))
    merged = _merged(properties, len(cols))
    out = []
    for code, name in enumerate(code_of):
        chosen = order[bounds[code] : bounds[code + 1]]
        rows = accepted[chosen]
        found = []
        for key, column in merged:
            here = (
                np.arange(len(rows))
                if column.present is None
                else np.flatnonzero(column.present[rows])
            )
            if len(here):
                values = take(column.values, rows[here])
                if column.kind != "string":
                    values = np.asarray(values)
                found.append(
                    PropertyValues(key, FieldValues(column.kind, here.astype(np.uint32), values))
                )
        out.append(EventRows(name, ordinals[chosen], times[chosen], tuple(found)))
    return out


def take(values: Any, rows: np.ndarray) -> Any:
    """values[rows]: a numpy gather, for lists of strings through an object array."""
    if isinstance(values, np.ndarray):
        return values[rows]
    if len(rows) == len(values):
        return list(values)  # every row, in order: rows is ascending and complete
    picked: list[Any] = np.array(values, dtype=object)[rows].tolist()
    return picked


def _merged(properties: Sequence[AttributeColumn], n: int) -> list[tuple[str, Column]]:
    """One column per property name and kind: columns sharing both (allowed when no row
    has a value in both) become one, so that a property's values are stored in row order
    as the one-by-one path stores them."""
    by_key: dict[tuple[str, str], list[Column]] = {}
    for typed in properties:
        by_key.setdefault((typed.name, typed.column.kind), []).append(typed.column)
    out = []
    for (name, _), columns in by_key.items():
        column = columns[0]
        for other in columns[1:]:
            mine = np.ones(n, bool) if column.present is None else column.present
            theirs = np.ones(n, bool) if other.present is None else other.present
            if column.kind == "string":
                values: Any = np.where(
                    theirs, np.array(other.values, object), np.array(column.values, object)
                ).tolist()
            else:
                values = np.where(theirs, other.values, column.values)
            column = Column(column.kind, values, mine | theirs, column.path)
        out.append((name, column))
    return out
