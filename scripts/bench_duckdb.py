"""The DuckDB peer of the benchmark: the generated people in DuckDB's best layout, and the
segment condition trees translated to SQL with segsvc's exact semantics (DESIGN.md).

Layout: one row per person, one typed column per attribute (VARCHAR, DOUBLE, BOOLEAN,
TIMESTAMP; an absent attribute is NULL), `tags` and `platforms` as VARCHAR[] lists, the
built-in fields as columns, `pid` (the person's index, the same as segsvc's ordinal) first
and in insertion order so that its zone maps make point lookups cheap. Manual segment members
are a table (seg, pid).

Events are one table `events(pid, name, ts, p_<property>...)`: `ts` in UTC seconds (BIGINT,
so windows compare integers), one typed column per event property (NULL where an event does
not have it), sorted by (name, ts) so that the zone maps skip every other name and every row
outside a window. An event leaf is a per-person count over it:
`pid IN (SELECT pid FROM events WHERE name = ... AND <window> AND <filters> GROUP BY pid
HAVING count(*) >= N)`; "at most N" and "exactly 0" are `pid NOT IN (... >= N + 1)`, so people
who never did the event (no rows at all) are counted as 0 and included.

Loading goes through a tab-separated file that DuckDB's parallel CSV reader ingests (no pandas,
numpy or Arrow needed): the Python side writes the file while the same chunks are fed to
segsvc, and only DuckDB's ingest is timed.

Semantics of the translation:
- every negative (not equals, not contains, not exists, has not tag, no device, not in segment,
  a negated group) is the complement within all people, NULLs included: `NOT coalesce(x, false)`
  or `x IS DISTINCT FROM v`;
- contains / starts with / ends with compare `lower()` of both sides (the data is ASCII, where
  lower() and casefold() agree);
- a reference to a dynamic segment is the referenced segment's own predicate inlined on the same
  row (membership of a dynamic segment is a function of the row, so this is exact and is the
  fastest plan DuckDB can get); a reference to a manual segment is `pid IN (SELECT pid FROM
  manual_members WHERE seg = k)`;
- an event property filter compares only values of its own type (a number filter on a string
  property matches no event), like the engine's typed comparisons.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import duckdb
from gen_data import ATTRIBUTES, EVENT_PROPERTIES, SegmentSpec, event_pid

from segsvc.engine.conditions import (
    AttributeCondition,
    DeviceCondition,
    EventCondition,
    Group,
    MessageCondition,
    Node,
    PageViewCondition,
    SegmentCondition,
    TagCondition,
    Window,
)
from segsvc.engine.events import EventInput
from segsvc.engine.index import is_leap
from segsvc.engine.people import PersonUpsert
from segsvc.engine.values import Timestamp, Value, kind_of

_SQL_TYPE = {"string": "VARCHAR", "number": "DOUBLE", "bool": "BOOLEAN", "timestamp": "BIGINT"}
_BUILTIN_COLUMN = {
    "id": "id",
    "email": "email",
    "phone": "phone",
    "created_at": "created_at",
    "unsubscribed": "unsubscribed",
}


def q(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


# ---------------------------------------------------------------------------------------------
# Loading


def _cell(value: Value | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Timestamp):
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    return value


def write_rows(out: IO[str], batch: Sequence[PersonUpsert], first_pid: int) -> None:
    """Appends people (fresh creates, as `gen_data.people` makes them) to the TSV file."""
    names = list(ATTRIBUTES)
    lines = []
    for offset, person in enumerate(batch):
        attrs = person.attributes
        cells = [
            str(first_pid + offset),
            person.id,
            person.email or "",
            person.phone or "",
            str(int(person.created_at or 0)),
            "true" if person.unsubscribed else "false",
            *(_cell(attrs.get(name)) for name in names),
            "|".join(person.add_tags),
            "|".join(platform for _, platform in person.devices),
        ]
        lines.append("\t".join(cells))
    out.write("\n".join(lines))
    out.write("\n")


def load(con: duckdb.DuckDBPyConnection, tsv: Path) -> float:
    """Creates and fills `people` from the TSV file; returns the seconds it took."""
    columns: dict[str, str] = {
        "pid": "INTEGER",
        "id": "VARCHAR",
        "email": "VARCHAR",
        "phone": "VARCHAR",
        "created_at": "BIGINT",
        "unsubscribed": "BOOLEAN",
        **{"a_" + name: _SQL_TYPE[kind] for name, kind in ATTRIBUTES.items()},
        "tags": "VARCHAR",
        "platforms": "VARCHAR",
    }

    def as_ts(col: str) -> str:
        return f"make_timestamp({col} * 1000000)"

    def as_list(col: str) -> str:
        return f"CASE WHEN {col} IS NULL THEN []::VARCHAR[] ELSE string_split({col}, '|') END"

    select = [
        "pid",
        "id",
        "email",
        "phone",
        f"{as_ts('created_at')} AS created_at",
        "unsubscribed",
    ]
    for name, kind in ATTRIBUTES.items():
        src = q("a_" + name)
        select.append(f"{as_ts(src) if kind == 'timestamp' else src} AS {q(name)}")
    select += [f"{as_list('tags')} AS tags", f"{as_list('platforms')} AS platforms"]
    spec = "{" + ", ".join(f"'{k}': '{v}'" for k, v in columns.items()) + "}"
    t0 = time.perf_counter()
    con.execute("DROP TABLE IF EXISTS people")
    con.execute(
        f"CREATE TABLE people AS SELECT {', '.join(select)} FROM read_csv('{tsv}', delim='\\t', "
        f"header=false, quote='', escape='', nullstr='', auto_detect=false, columns={spec})"
    )
    con.execute("CHECKPOINT")
    return time.perf_counter() - t0


def load_manual(con: duckdb.DuckDBPyConnection, members: dict[int, list[int]]) -> None:
    """Manual members as (seg, pid) rows; `members` maps spec index -> people."""
    con.execute("CREATE OR REPLACE TABLE manual_members (seg INTEGER, pid INTEGER)")
    for seg, pids in members.items():
        for start in range(0, len(pids), 50_000):
            values = ",".join(f"({seg},{p})" for p in pids[start : start + 50_000])
            if values:
                con.execute(f"INSERT INTO manual_members VALUES {values}")


# ---------------------------------------------------------------------------------------------
# Events


def event_columns() -> dict[str, str]:
    """Column -> SQL type of the events TSV file, in its order."""
    return {
        "pid": "INTEGER",
        "name": "VARCHAR",
        "ts": "BIGINT",
        **{"p_" + name: _SQL_TYPE[kind] for name, kind in EVENT_PROPERTIES.items()},
    }


def _event_table_types() -> dict[str, str]:
    types = event_columns()
    for name, kind in EVENT_PROPERTIES.items():
        if kind == "timestamp":
            types["p_" + name] = "TIMESTAMP"
    return types


def write_events(out: IO[str], batch: Sequence[EventInput]) -> None:
    """Appends generated events (people named `p<index>`) to a TSV file."""
    names = list(EVENT_PROPERTIES)
    lines = []
    for event in batch:
        props = event.properties
        cells = [str(event_pid(event)), event.name, str(int(event.timestamp or 0))]
        cells += [_cell(props.get(name)) for name in names]
        lines.append("\t".join(cells))
    if lines:
        out.write("\n".join(lines))
        out.write("\n")


def _read_events(tsv: Path) -> str:
    """A SELECT of the events in a TSV file, timestamp properties as TIMESTAMP (like the
    people's timestamp attributes, so that one translation serves both)."""
    spec = "{" + ", ".join(f"'{k}': '{v}'" for k, v in event_columns().items()) + "}"
    select = ["pid", "name", "ts"]
    for name, kind in EVENT_PROPERTIES.items():
        col = q("p_" + name)
        select.append(f"make_timestamp({col} * 1000000) AS {col}" if kind == "timestamp" else col)
    return (
        f"SELECT {', '.join(select)} FROM read_csv('{tsv}', delim='\\t', header=false, "
        f"quote='', escape='', nullstr='', auto_detect=false, columns={spec})"
    )


def load_events(con: duckdb.DuckDBPyConnection, tsv: Path) -> float:
    """Creates and fills `events` from the TSV file, sorted by (name, ts); returns the
    seconds it took (ingest and sort)."""
    t0 = time.perf_counter()
    con.execute("DROP TABLE IF EXISTS events")
    con.execute(f"CREATE TABLE events AS {_read_events(tsv)} ORDER BY name, ts")
    con.execute("CHECKPOINT")
    return time.perf_counter() - t0


def create_empty_events(con: duckdb.DuckDBPyConnection) -> None:
    cols = ", ".join(f"{q(k)} {v}" for k, v in _event_table_types().items())
    con.execute(f"CREATE OR REPLACE TABLE events ({cols})")


def append_events(con: duckdb.DuckDBPyConnection, tsv: Path) -> float:
    """Appends the events of a TSV file (new events, as tracking sends them)."""
    t0 = time.perf_counter()
    con.execute(f"INSERT INTO events {_read_events(tsv)}")
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# Condition trees to SQL


def _iso(ts: int) -> str:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=ts)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def lit(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Timestamp):
        return f"TIMESTAMP '{_iso(int(value))}'"
    if isinstance(value, float):
        return f"{value!r}::DOUBLE"
    return "'" + value.replace("'", "''") + "'"


def _not(sql: str) -> str:
    """The complement within everyone: NULL (unknown) counts as not matching."""
    return f"NOT coalesce({sql}, false)"


class SqlCompiler:
    """Translates the definitions of `specs` (segment references by placeholder id, spec
    index + 1) into WHERE predicates over `people` as of `now`."""

    def __init__(self, specs: Sequence[SegmentSpec], now: int) -> None:
        self.specs = specs
        self.now = now
        self._cache: dict[int, str] = {}

    def segment(self, index: int) -> str:
        """The predicate of membership in spec `index`."""
        cached = self._cache.get(index)
        if cached is None:
            spec = self.specs[index]
            if spec.dynamic:
                assert spec.conditions is not None
                cached = self.where(spec.conditions)
            else:
                cached = f"pid IN (SELECT pid FROM manual_members WHERE seg = {index})"
            self._cache[index] = cached
        return cached

    def where(self, node: Node) -> str:
        if isinstance(node, Group):
            joiner = " AND " if node.combinator == "all" else " OR "
            inner = "(" + joiner.join(self.where(c) for c in node.children) + ")"
            return _not(inner) if node.negate else inner
        if isinstance(node, TagCondition):
            sql = f"list_contains(tags, {lit(node.tag)})"
            return f"NOT {sql}" if node.negate else sql
        if isinstance(node, DeviceCondition):
            sql = (
                f"list_contains(platforms, {lit(node.platform)})"
                if node.platform
                else "len(platforms) > 0"
            )
            return f"NOT {sql}" if node.negate else sql
        if isinstance(node, SegmentCondition):
            sql = f"coalesce({self.segment(node.segment_id - 1)}, false)"
            return f"NOT {sql}" if node.negate else sql
        if isinstance(node, AttributeCondition):
            return self._attribute(node)
        if isinstance(node, EventCondition | PageViewCondition | MessageCondition):
            return self._event(node)
        raise NotImplementedError(f"no SQL for {type(node).__name__} yet")

    def _event(self, node: EventCondition | PageViewCondition | MessageCondition) -> str:
        """Membership of people by their count of matching events (see the module doc)."""
        if isinstance(node, EventCondition):
            name = node.name
            filters = [self._property(f) for f in node.filters]
        elif isinstance(node, PageViewCondition):
            name = "page"
            url = AttributeCondition(node.match, attribute="url", value=node.url)
            filters = [self._property(url)]
        else:
            name = f"message_{node.action}"
            filters = [
                f"{q('p_' + prop)} = {lit(wanted)}"
                for prop, wanted in (
                    ("campaign_id", node.campaign_id),
                    ("message_id", node.message_id),
                )
                if wanted
            ]
        where = " AND ".join([f"name = {lit(name)}", *self._window(node.window), *filters])
        op = node.count_operator
        n = node.count if node.count is not None else (1 if op == "at_least" else 0)

        def having(test: str) -> str:
            # "at least 1" needs no count: a semi-join on who did it at all.
            if test == ">= 1":
                return f"SELECT pid FROM events WHERE {where}"
            return f"SELECT pid FROM events WHERE {where} GROUP BY pid HAVING count(*) {test}"

        if op == "at_least":
            return f"pid IN ({having(f'>= {n}')})" if n > 0 else "true"
        if op == "at_most" or n == 0:
            return f"pid NOT IN ({having(f'>= {n + 1}')})"
        return f"pid IN ({having(f'= {n}')})"

    def _window(self, window: Window) -> list[str]:
        if window.within_last_seconds is not None:
            return [f"ts BETWEEN {self.now - window.within_last_seconds} AND {self.now}"]
        if window.start is not None and window.end is not None:
            return [f"ts BETWEEN {int(window.start)} AND {int(window.end)}"]
        return []

    def _property(self, node: AttributeCondition) -> str:
        """An event property filter over the events table's typed column."""
        name = node.attribute or ""
        kind = EVENT_PROPERTIES.get(name)
        col = q("p_" + name)
        if kind is None:
            # No event has it: only the negative operators hold (for every event).
            negative = node.operator in ("not_equals", "not_contains", "not_exists")
            return "true" if negative else "false"
        operands = [v for v in (node.value, node.upper, *node.values) if v is not None]
        if any(kind_of(v) != kind for v in operands):
            # A comparison matches only values of its own type: none here; its negation all.
            if node.operator == "one_of":
                operands = [v for v in node.values if kind_of(v) == kind]
                if operands:
                    return self._attribute(
                        AttributeCondition("one_of", attribute=name, values=tuple(operands)), col
                    )
            return "true" if node.operator in ("not_equals", "not_contains") else "false"
        return self._attribute(node, col)

    def _attribute(self, node: AttributeCondition, column: str | None = None) -> str:
        col = column or q(_BUILTIN_COLUMN[node.field] if node.field else node.attribute or "")
        op, v = node.operator, node.value
        now = self.now
        if op == "equals":
            assert v is not None
            return f"{col} = {lit(v)}"
        if op == "not_equals":
            assert v is not None
            return f"{col} IS DISTINCT FROM {lit(v)}"
        if op == "one_of":
            return f"{col} IN ({', '.join(lit(x) for x in node.values)})"
        if op in ("contains", "not_contains", "starts_with", "ends_with"):
            assert isinstance(v, str)
            fn = {"contains": "contains", "not_contains": "contains"}.get(op, op)
            sql = f"{fn}(lower({col}), {lit(v.lower())})"
            return _not(sql) if op == "not_contains" else sql
        if op == "exists":
            return f"{col} IS NOT NULL"
        if op == "not_exists":
            return f"{col} IS NULL"
        if op == "is_true":
            return f"{col} IS TRUE"
        if op == "is_false":
            return f"{col} IS FALSE"
        if op in ("greater_than", "after"):
            assert v is not None
            return f"{col} > {lit(v)}"
        if op == "greater_or_equal":
            assert v is not None
            return f"{col} >= {lit(v)}"
        if op in ("less_than", "before"):
            assert v is not None
            return f"{col} < {lit(v)}"
        if op == "less_or_equal":
            assert v is not None
            return f"{col} <= {lit(v)}"
        if op == "between":
            assert v is not None and node.upper is not None
            return f"{col} BETWEEN {lit(v)} AND {lit(node.upper)}"
        if op == "within_last":
            low, high = Timestamp(now - node.seconds), Timestamp(now)
            return f"{col} BETWEEN {lit(low)} AND {lit(high)}"
        if op == "more_than_ago":
            return f"{col} < {lit(Timestamp(now - node.seconds))}"
        if op in ("anniversary_today", "anniversary_this_month"):
            today = datetime.fromtimestamp(now, UTC)
            if op == "anniversary_this_month":
                return f"month({col}) = {today.month}"
            sql = f"(month({col}) = {today.month} AND day({col}) = {today.day})"
            # 29 February falls on 28 February in other years.
            if today.month == 2 and today.day == 28 and not is_leap(today.year):
                sql = f"({sql} OR (month({col}) = 2 AND day({col}) = 29))"
            return sql
        raise NotImplementedError(f"no SQL for operator {op}")


def count(con: duckdb.DuckDBPyConnection, where: str) -> int:
    row = con.execute(f"SELECT count(*) FROM people WHERE {where}").fetchone()
    assert row is not None
    return int(row[0])


def audience_sql(
    compiler: SqlCompiler,
    include: Iterable[int],
    require: Iterable[int] = (),
    exclude: Iterable[int] = (),
    include_unsubscribed: bool = False,
) -> str:
    """The WHERE of an audience over spec indices: union of include, intersected with every
    require, minus the union of exclude, minus unsubscribed people."""
    parts = ["(" + " OR ".join(f"coalesce({compiler.segment(i)}, false)" for i in include) + ")"]
    parts += [f"coalesce({compiler.segment(i)}, false)" for i in require]
    excluded = list(exclude)
    if excluded:
        parts.append(_not("(" + " OR ".join(compiler.segment(i) for i in excluded) + ")"))
    if not include_unsubscribed:
        parts.append("NOT unsubscribed")
    return " AND ".join(parts)


# ---------------------------------------------------------------------------------------------
# Updates (the shape `gen_data.updates` makes)


def _update_values(upsert: PersonUpsert, pid: int) -> str:
    a = upsert.attributes
    nps = a.get("nps")
    cells = [
        str(pid),
        lit(a["last_login"]),
        lit(a["orders"]),
        lit(a["lifetime_value"]),
        lit(a["plan"]),
        "NULL::DOUBLE" if nps is None else lit(nps),
        lit(upsert.add_tags[0]),
        lit(upsert.remove_tags[0]) if upsert.remove_tags else "NULL::VARCHAR",
    ]
    return "(" + ", ".join(cells) + ")"


_SET = """
    last_login = u.last_login, orders = u.orders, lifetime_value = u.lifetime_value,
    plan = u.plan, nps = u.nps,
    tags = list_filter(list_distinct(list_append(people.tags, u.add_tag)),
                       lambda t: t IS DISTINCT FROM u.remove_tag)
"""
_U_COLUMNS = "u(pid, last_login, orders, lifetime_value, plan, nps, add_tag, remove_tag)"


def apply_updates(
    con: duckdb.DuckDBPyConnection, batch: Sequence[tuple[int, PersonUpsert]]
) -> None:
    """Applies (pid, update) pairs with one UPDATE ... FROM (VALUES ...)."""
    values = ", ".join(_update_values(u, pid) for pid, u in batch)
    con.execute(
        f"UPDATE people SET {_SET} FROM (VALUES {values}) AS {_U_COLUMNS} WHERE people.pid = u.pid"
    )


def memberships(
    con: duckdb.DuckDBPyConnection, predicates: Sequence[str], pids: Sequence[int]
) -> list[Any]:
    """Every segment's truth for some people: what re-evaluating them after an update means."""
    cols = ", ".join(f"coalesce({p}, false)" for p in predicates)
    where = f"pid = {pids[0]}" if len(pids) == 1 else f"pid IN ({', '.join(map(str, pids))})"
    return con.execute(f"SELECT pid, {cols} FROM people WHERE {where}").fetchall()


def insert_events(con: duckdb.DuckDBPyConnection, batch: Sequence[EventInput]) -> None:
    """Appends a few events with one INSERT ... VALUES (what a point write costs)."""
    types = _event_table_types()
    rows = []
    for event in batch:
        props = event.properties
        cells = [str(event_pid(event)), lit(event.name), str(int(event.timestamp or 0))]
        for name in EVENT_PROPERTIES:
            value = props.get(name)
            cells.append(f"NULL::{types['p_' + name]}" if value is None else lit(value))
        rows.append("(" + ", ".join(cells) + ")")
    con.execute(f"INSERT INTO events VALUES {', '.join(rows)}")
