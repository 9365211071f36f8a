"""A brute-force model of segsvc, over plain Python data, written from DESIGN.md "Exact
semantics" and nothing else.

It shares no code with the engine: the only engine imports are the condition dataclasses (the
input tree type) and `Timestamp` (the value type). People are plain dicts, segments are plain
objects, and every question is answered by looking at every person. It is slow on purpose and
simple on purpose: the property tests compare the engine's bitmaps with it after every step.

A person is a dict:

    {"id": str, "email": str | None, "phone": str | None, "created_at": Timestamp,
     "unsubscribed": bool, "attributes": {name: value}, "tags": set[str],
     "devices": {device_id: platform}, "events": [Event]}

Events are modelled (and their conditions evaluated) from the spec already, so that the event,
page view and message conditions can join the generators as soon as the engine has them.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import phonenumbers

from segsvc.engine.conditions import (
    AttributeCondition,
    DeviceCondition,
    EventCondition,
    Group,
    MessageCondition,
    PageViewCondition,
    SegmentCondition,
    TagCondition,
    Window,
)
from segsvc.engine.values import Timestamp

Person = dict[str, Any]

# ---------------------------------------------------------------------------------------------
# Values


def kind(value: object) -> str | None:
    """The segsvc type of a value, decided by its Python type and never by `==`: in Python
    True == 1.0 == Timestamp(1), and here those are three different values."""
    if type(value) is bool:
        return "bool"
    if type(value) is Timestamp:
        return "timestamp"
    if type(value) is float:
        return "number"
    if type(value) is str:
        return "string"
    return None


def same_value(a: object, b: object) -> bool:
    """Typed equality: equal types and equal values."""
    return kind(a) is not None and kind(a) == kind(b) and a == b


def utc_date(ts: int) -> datetime:
    # Arithmetic from the epoch rather than fromtimestamp, so the brute force has no platform
    # limit on early dates.
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=int(ts))


def is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def anniversary_today(ts: int, now: int) -> bool:
    """Month and day equal today's in UTC; 29 February falls on 28 February in other years."""
    date, today = utc_date(ts), utc_date(now)
    if (date.month, date.day) == (today.month, today.day):
        return True
    return (
        (date.month, date.day) == (2, 29)
        and (today.month, today.day) == (2, 28)
        and not is_leap(today.year)
    )


def anniversary_this_month(ts: int, now: int) -> bool:
    return utc_date(ts).month == utc_date(now).month


# ---------------------------------------------------------------------------------------------
# Keys: emails and phones as the design stores them


def normalize_email(raw: str) -> str | None:
    """Trimmed and case-folded; None when it is not name@domain.tld."""
    email = raw.strip().casefold()
    if email.count("@") != 1 or any(c.isspace() or unicodedata.category(c) == "Cc" for c in email):
        return None
    local, domain = email.split("@")
    if not local or "." not in domain:
        return None
    head, _, tld = domain.rpartition(".")
    if not head or not tld or len(email) > 254:
        return None
    return email


# The engine harness's server region (Config's default): where numbers without a country code
# are placed.
DEFAULT_REGION = "US"


def normalize_phone(raw: str, region: str | None = DEFAULT_REGION) -> str | None:
    """E.164 (phonenumbers), None when the number cannot be placed. Spaces and ( ) . - / are
    dropped and a leading 00 becomes +. Already E.164 (+, a country code, a national number
    of a length phonenumbers calls possible for it, 15 digits at most): kept as written.
    Otherwise phonenumbers reads it, without a + as a number of `region` (None: refused),
    and the result must be possible there, without an extension, and E.164 itself."""
    text = "".join(c for c in raw.strip() if not c.isspace() and c not in "().-/")
    if text.startswith("00"):
        text = "+" + text[2:]
    if is_e164(text):
        return text
    if not text.startswith("+") and region is None:
        return None
    try:
        number = phonenumbers.parse(text, None if text.startswith("+") else region)
    except phonenumbers.NumberParseException:
        return None
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    possible = phonenumbers.is_possible_number_with_reason(number)
    if number.extension or possible != phonenumbers.ValidationResult.IS_POSSIBLE:
        return None
    return e164 if is_e164(e164) else None


def is_e164(text: str) -> bool:
    """+ and at most 15 digits, whose country code phonenumbers finds and whose national part
    has a length it calls possible for that country."""
    if not re.fullmatch(r"\+[0-9]{2,15}", text):
        return False
    try:
        code = phonenumbers.parse(text).country_code or 0
    except phonenumbers.NumberParseException:
        return False
    national = text[1 + len(str(code)) :]
    # Possible lengths depend on the number of digits only.
    same_length = phonenumbers.PhoneNumber(
        country_code=code, national_number=int("1" * len(national))
    )
    return (
        phonenumbers.is_possible_number_with_reason(same_length)
        == phonenumbers.ValidationResult.IS_POSSIBLE
    )


# ---------------------------------------------------------------------------------------------
# Conditions

BUILTIN_KINDS = {
    "id": "string",
    "email": "string",
    "phone": "string",
    "created_at": "timestamp",
    "unsubscribed": "bool",
}


def target_value(person: Person, cond: AttributeCondition) -> object | None:
    """The value the condition looks at, or None when the person has none."""
    if cond.field is not None:
        return person[cond.field]
    return person["attributes"].get(cond.attribute)


def positive_attribute(op: str, v: object | None, cond: AttributeCondition, now: int) -> bool:
    """The operators that have no negative twin (or the positive twin of one), on the value
    `v` (None: absent)."""
    x, upper = cond.value, cond.upper
    if op == "equals":
        return v is not None and same_value(v, x)
    if op == "one_of":
        return v is not None and any(same_value(v, candidate) for candidate in cond.values)
    if op in ("contains", "starts_with", "ends_with"):
        if kind(v) != "string" or kind(x) != "string":
            return False
        assert isinstance(v, str) and isinstance(x, str)
        hay, needle = v.casefold(), x.casefold()
        if op == "contains":
            return needle in hay
        if op == "starts_with":
            return hay.startswith(needle)
        return hay.endswith(needle)
    if op == "exists":
        return v is not None
    if op in ("greater_than", "greater_or_equal", "less_than", "less_or_equal", "between"):
        if v is None or kind(v) not in ("number", "timestamp") or kind(v) != kind(x):
            return False
        a, b = _ordered(v), _ordered(x)
        if op == "greater_than":
            return a > b
        if op == "greater_or_equal":
            return a >= b
        if op == "less_than":
            return a < b
        if op == "less_or_equal":
            return a <= b
        if kind(upper) != kind(x):
            return False
        return b <= a <= _ordered(upper)
    if op == "is_true":
        return kind(v) == "bool" and v is True
    if op == "is_false":
        return kind(v) == "bool" and v is False
    if kind(v) != "timestamp":
        return False
    assert isinstance(v, Timestamp)
    t = int(v)
    if op == "before":
        return kind(x) == "timestamp" and t < int(x)  # type: ignore[arg-type]
    if op == "after":
        return kind(x) == "timestamp" and t > int(x)  # type: ignore[arg-type]
    if op == "within_last":
        return now - cond.seconds <= t <= now
    if op == "more_than_ago":
        return t < now - cond.seconds
    if op == "anniversary_today":
        return anniversary_today(t, now)
    if op == "anniversary_this_month":
        return anniversary_this_month(t, now)
    raise ValueError(f"unknown operator {op!r}")


def _ordered(v: object) -> float | int:
    # Numbers compare as 64-bit floats, timestamps as whole seconds.
    return float(v) if kind(v) == "number" else int(v)  # type: ignore[arg-type]


# Each negative operator is the complement of its positive twin within the live people.
NEGATIVE_TWIN = {"not_equals": "equals", "not_contains": "contains", "not_exists": "exists"}


def normalized_operands(cond: AttributeCondition) -> AttributeCondition:
    """Equality on the built-in email or phone compares the operand in the stored form
    (trimmed and case-folded; E.164), so "Ann@X.io" finds ann@x.io."""
    normalize = {"email": normalize_email, "phone": normalize_phone}.get(cond.field or "")
    if normalize is None or cond.operator not in ("equals", "not_equals", "one_of"):
        return cond
    value = normalize(cond.value) if isinstance(cond.value, str) else cond.value
    values = tuple(normalize(v) if isinstance(v, str) else v for v in cond.values)
    return replace(cond, value=value, values=values)


def attribute_holds(person: Person, cond: AttributeCondition, now: int) -> bool:
    cond = normalized_operands(cond)
    v = target_value(person, cond)
    twin = NEGATIVE_TWIN.get(cond.operator)
    if twin is not None:
        return not positive_attribute(twin, v, cond, now)
    return positive_attribute(cond.operator, v, cond, now)


def property_holds(props: dict[str, Any], cond: AttributeCondition, now: int) -> bool:
    """An event property filter: the same operators as attributes, on the event's
    properties."""
    v = props.get(cond.attribute or "")
    twin = NEGATIVE_TWIN.get(cond.operator)
    if twin is not None:
        return not positive_attribute(twin, v, cond, now)
    return positive_attribute(cond.operator, v, cond, now)


@dataclass(frozen=True)
class Event:
    name: str
    at: int
    properties: dict[str, Any] = field(default_factory=dict)


def in_window(at: int, window: Window, now: int) -> bool:
    if window.within_last_seconds is not None:
        return now - window.within_last_seconds <= at <= now
    if window.start is not None and window.end is not None:
        return int(window.start) <= at <= int(window.end)
    return True


def count_holds(n: int, operator: str, count: int | None) -> bool:
    """at least / at most / exactly N; "at least" defaults to 1 (did it at all), and so a
    person who never did the event matches "at most N" and "exactly 0"."""
    if operator == "at_least":
        return n >= (1 if count is None else count)
    wanted = 0 if count is None else count
    if operator == "at_most":
        return n <= wanted
    return n == wanted


def event_count(
    person: Person,
    name: str,
    filters: Callable[[dict[str, Any]], bool],
    window: Window,
    now: int,
    oldest: int | None = None,
) -> int:
    """How many of the person's events count; none before `oldest` (retention)."""
    return sum(
        1
        for e in person.get("events", ())
        if e.name == name
        and in_window(e.at, window, now)
        and (oldest is None or e.at >= oldest)
        and filters(e.properties)
    )


class Evaluator:
    """Evaluates condition trees over live people at one `now`; segment conditions use the
    brute-force membership of the referenced segment, computed recursively."""

    def __init__(self, world: World, now: int) -> None:
        self.world = world
        self.now = now
        retention = world.event_retention
        self.oldest_event = None if retention is None else now - retention
        self._members: dict[int, frozenset[str]] = {}
        self._computing: set[int] = set()

    def members(self, segment_id: int) -> frozenset[str]:
        if segment_id not in self._members:
            seg = self.world.segments[segment_id]
            if segment_id in self._computing:
                raise AssertionError(f"segment {segment_id} references itself (a cycle)")
            self._computing.add(segment_id)
            try:
                if seg.dynamic:
                    assert seg.definition is not None
                    result = frozenset(
                        pid for pid, p in self.world.people.items() if self.holds(seg.definition, p)
                    )
                else:
                    result = frozenset(m for m in seg.members if m in self.world.people)
            finally:
                self._computing.discard(segment_id)
            self._members[segment_id] = result
        return self._members[segment_id]

    def matching(self, node: Any) -> frozenset[str]:
        return frozenset(pid for pid, p in self.world.people.items() if self.holds(node, p))

    def holds(self, node: Any, person: Person) -> bool:
        now = self.now
        if isinstance(node, Group):
            results = [self.holds(child, person) for child in node.children]
            value = all(results) if node.combinator == "all" else any(results)
            return value != node.negate
        if isinstance(node, AttributeCondition):
            return attribute_holds(person, node, now)
        if isinstance(node, TagCondition):
            return (node.tag in person["tags"]) != node.negate
        if isinstance(node, DeviceCondition):
            platforms = set(person["devices"].values())
            has = node.platform in platforms if node.platform else bool(platforms)
            return has != node.negate
        if isinstance(node, SegmentCondition):
            return (person["id"] in self.members(node.segment_id)) != node.negate
        if isinstance(node, EventCondition):

            def filters(props: dict[str, Any]) -> bool:
                return all(property_holds(props, f, now) for f in node.filters)

            n = event_count(person, node.name, filters, node.window, now, self.oldest_event)
            return count_holds(n, node.count_operator, node.count)
        if isinstance(node, PageViewCondition):

            def url_filter(props: dict[str, Any]) -> bool:
                url = props.get("url")
                if kind(url) != "string":
                    return False
                if node.match == "equals":
                    return bool(url == node.url)
                folded, needle = url.casefold(), node.url.casefold()
                if node.match == "contains":
                    return needle in folded
                return bool(folded.startswith(needle))

            n = event_count(person, "page", url_filter, node.window, now, self.oldest_event)
            return count_holds(n, node.count_operator, node.count)
        if isinstance(node, MessageCondition):

            def message_filter(props: dict[str, Any]) -> bool:
                return all(
                    not wanted or same_value(props.get(key), wanted)
                    for key, wanted in (
                        ("campaign_id", node.campaign_id),
                        ("message_id", node.message_id),
                    )
                )

            n = event_count(
                person,
                f"message_{node.action}",
                message_filter,
                node.window,
                now,
                self.oldest_event,
            )
            return count_holds(n, node.count_operator, node.count)
        raise TypeError(f"not a condition node: {node!r}")


# ---------------------------------------------------------------------------------------------
# The world: people and segments, and the writes the engine accepts


@dataclass
class SegmentModel:
    id: int
    name: str
    dynamic: bool
    definition: Any = None
    members: set[str] = field(default_factory=set)  # manual segments only


@dataclass
class World:
    people: dict[str, Person] = field(default_factory=dict)
    segments: dict[int, SegmentModel] = field(default_factory=dict)
    # Events older than this many seconds before now count for nothing (None: all count).
    event_retention: int | None = None

    # -- reading ---------------------------------------------------------------------------

    def memberships(self, now: int) -> dict[int, frozenset[str]]:
        ev = Evaluator(self, now)
        return {sid: ev.members(sid) for sid in self.segments}

    def find(self, kind_: str, raw: str) -> str | bool | None:
        """The id of the person with this id / email / phone; None when nobody; False when the
        key is malformed."""
        if kind_ == "id":
            return raw if raw in self.people else None
        value = normalize_email(raw) if kind_ == "email" else normalize_phone(raw)
        if value is None:
            return False
        for pid, p in self.people.items():
            if p[kind_] == value:
                return pid
        return None

    def references(self, segment_id: int) -> set[int]:
        seg = self.segments.get(segment_id)
        return set() if seg is None or seg.definition is None else set(refs_of(seg.definition))

    def would_cycle(self, segment_id: int, definition: Any) -> bool:
        """Would giving `segment_id` this definition make it reach itself?"""
        stack = list(refs_of(definition))
        seen: set[int] = set()
        while stack:
            current = stack.pop()
            if current == segment_id:
                return True
            if current not in seen:
                seen.add(current)
                stack.extend(self.references(current))
        return False

    def referencing(self, segment_id: int) -> set[int]:
        return {sid for sid in self.segments if segment_id in self.references(sid)}

    # -- people ----------------------------------------------------------------------------

    def upsert(self, items: Iterable[Any], now: int) -> list[str]:
        """Applies a batch of PersonUpsert items one after another; returns for each "ok",
        "invalid" or "conflict" (an item that is refused changes nothing)."""
        outcomes = []
        for item in items:
            outcome = self._upsert_one(item, now)
            outcomes.append(outcome)
        return outcomes

    def _upsert_one(self, u: Any, now: int) -> str:
        if not u.id or not u.id.strip():
            return "invalid"
        email = phone = None
        if u.email:
            email = normalize_email(u.email)
            if email is None:
                return "invalid"
        if u.phone:
            phone = normalize_phone(u.phone)
            if phone is None:
                return "invalid"
        for key, value in u.attributes.items():
            if not key or not key.strip() or kind(value) is None:
                return "invalid"
            if kind(value) == "number" and not math.isfinite(value):
                return "invalid"
        if set(u.attributes) & set(u.remove_attributes):
            return "invalid"
        if any(not t or not t.strip() for t in u.add_tags) or set(u.add_tags) & set(u.remove_tags):
            return "invalid"
        old = self.people.get(u.id)
        if old is None or u.replace:
            base: Person = {
                "id": u.id,
                "email": old["email"] if old else None,
                "phone": old["phone"] if old else None,
                "created_at": old["created_at"] if old else Timestamp(now),
                "unsubscribed": old["unsubscribed"] if old else False,
                "attributes": {},
                "tags": set(),
                "devices": {},
                "events": old["events"] if old else [],
            }
        else:
            base = old
        new: Person = {
            "id": u.id,
            "email": base["email"] if u.email is None else (email or None),
            "phone": base["phone"] if u.phone is None else (phone or None),
            "created_at": base["created_at"] if u.created_at is None else u.created_at,
            "unsubscribed": base["unsubscribed"] if u.unsubscribed is None else u.unsubscribed,
            "attributes": {
                **{k: v for k, v in base["attributes"].items() if k not in u.remove_attributes},
                # Numbers are IEEE doubles: -0.0 is stored as 0.0.
                **{k: (v + 0.0 if kind(v) == "number" else v) for k, v in u.attributes.items()},
            },
            "tags": (set(base["tags"]) | set(u.add_tags)) - set(u.remove_tags),
            "devices": {
                d: p
                for d, p in {**base["devices"], **dict(u.devices)}.items()
                if d not in u.remove_device_ids
            },
            "events": base["events"],
        }
        for key in ("email", "phone"):
            value = new[key]
            if value and value != (old[key] if old else None):
                holder = next(
                    (pid for pid, p in self.people.items() if p[key] == value and pid != u.id),
                    None,
                )
                if holder is not None:
                    return "conflict"
        self.people[u.id] = new
        return "ok"

    def track(
        self,
        events: Iterable[tuple[tuple[str, str], str, int | None, dict[str, Any]]],
        now: int,
        create_missing: bool = False,
        retention: int = 10**10,
        future_skew: int = 3600,
    ) -> list[str]:
        """Records events given as ((key kind, key value), name, time or None for now,
        properties); "tracked", "invalid" or "not_found" each. With `create_missing`, an
        unknown id is created bare (no email, phone, attributes) at `now`."""
        outcomes = []
        for (kind_, raw), name, at, props in events:
            at = now if at is None else at
            bad_value = any(
                kind(v) is None or (kind(v) == "number" and not math.isfinite(v))
                for v in props.values()
            )
            if not name.strip() or bad_value or not now - retention <= at <= now + future_skew:
                outcomes.append("invalid")
                continue
            pid = self.find(kind_, raw)
            if pid is False:
                outcomes.append("invalid")
                continue
            if pid is None:
                if not (create_missing and kind_ == "id"):
                    outcomes.append("not_found")
                    continue
                pid = raw
                self.people[pid] = person_dict(pid, created_at=now)
            assert isinstance(pid, str)
            canonical = {k: (v + 0.0 if kind(v) == "number" else v) for k, v in props.items()}
            self.people[pid]["events"].append(Event(name, at, canonical))
            outcomes.append("tracked")
        return outcomes

    def delete(self, keys: Iterable[tuple[str, str]]) -> list[str]:
        """Deletes people by (kind, value); "deleted", "not_found" or "invalid" each. A deleted
        person leaves every manual segment (a new person with the same id is someone else)."""
        outcomes = []
        for kind_, raw in keys:
            pid = self.find(kind_, raw)
            if pid is False:
                outcomes.append("invalid")
                continue
            if pid is None:
                outcomes.append("not_found")
                continue
            assert isinstance(pid, str)
            del self.people[pid]
            for seg in self.segments.values():
                seg.members.discard(pid)
            outcomes.append("deleted")
        return outcomes

    def change_members(
        self, segment_id: int, keys: Iterable[tuple[str, str]], add: bool
    ) -> list[str]:
        seg = self.segments[segment_id]
        assert not seg.dynamic
        outcomes = []
        for kind_, raw in keys:
            pid = self.find(kind_, raw)
            if pid is False:
                outcomes.append("invalid")
                continue
            if pid is None:
                outcomes.append("not_found")
                continue
            assert isinstance(pid, str)
            if add:
                outcomes.append("already_member" if pid in seg.members else "added")
                seg.members.add(pid)
            else:
                outcomes.append("removed" if pid in seg.members else "not_a_member")
                seg.members.discard(pid)
        return outcomes


def refs_of(node: Any) -> Iterable[int]:
    if isinstance(node, SegmentCondition):
        yield node.segment_id
    elif isinstance(node, Group):
        for child in node.children:
            yield from refs_of(child)


def person_dict(
    pid: str,
    *,
    created_at: int,
    email: str | None = None,
    phone: str | None = None,
    unsubscribed: bool = False,
    attributes: dict[str, Any] | None = None,
    tags: Iterable[str] = (),
    devices: dict[str, str] | None = None,
    events: Iterable[Event] = (),
) -> Person:
    """A person as the brute force sees them, for hand-written cases."""
    return {
        "id": pid,
        "email": email,
        "phone": phone,
        "created_at": Timestamp(created_at),
        "unsubscribed": unsubscribed,
        "attributes": dict(attributes or {}),
        "tags": set(tags),
        "devices": dict(devices or {}),
        "events": list(events),
    }
