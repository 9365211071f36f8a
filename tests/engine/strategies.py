"""Hypothesis strategies for people, updates, deletions and condition trees.

The pools are small on purpose, so that random data collides: updates hit existing people,
emails clash, conditions name attributes people have, and values of different types that are
equal in Python (1.0, True, "1", Timestamp(1)) meet in the same attribute.

Timestamps are drawn around a given `now` (with the edges of the time windows the conditions
use), so strategies that produce timestamps are functions of `now`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st

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
from segsvc.engine.people import PersonUpsert
from segsvc.engine.values import Timestamp


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


DAY = 86_400
# Clock starts: a plain new year, the last seconds of 27 February and 28 February of a year
# without 29 February (anniversaries of leap-day people fall on the 28th), and 28 February of a
# leap year; advancing from them crosses days, months and the leap day.
STARTS = (
    ts("2026-01-01T00:00:00"),
    ts("2027-02-27T23:59:00"),
    ts("2027-02-28T00:00:00"),
    ts("2028-02-28T23:00:00"),
    ts("2027-01-31T23:59:59"),
)
ADVANCES = (1, 59, 60, 61, 3600, 86_399, DAY, DAY + 1, 7 * DAY, 31 * DAY)
DURATIONS = (1, 60, 3600, DAY, 7 * DAY, 30 * DAY, 365 * DAY)
# Offsets from now: the edges of every duration above, and a little either side.
OFFSETS = sorted(
    {0, 1, -1, 3600, DAY} | {s * d + e for d in DURATIONS for s in (-1,) for e in (-1, 0, 1)}
)
# Dates for anniversaries: leap days, month ends, ordinary days, one before 1970.
SPECIAL_DATES = tuple(
    Timestamp(ts(t))
    for t in (
        "2024-02-29T12:00:00",
        "2000-02-29T00:00:00",
        "2023-02-28T23:59:59",
        "1999-03-01T00:00:00",
        "1990-01-31T08:00:00",
        "1985-12-31T23:59:59",
        "1969-07-20T20:17:40",
    )
)
MIN_TIMESTAMP = Timestamp(-62_135_596_800)  # 0001-01-01
MAX_TIMESTAMP = Timestamp(253_402_300_799)  # 9999-12-31T23:59:59

ID_POOL = tuple(f"p{i}" for i in range(8))
ATTRIBUTES = ("a", "b", "c")
TAGS = ("vip", "VIP", "beta", "Straße", "strasse")
PLATFORMS = ("ios", "android", "web", "IOS")
DEVICE_IDS = ("d1", "d2", "d3")

# Valid emails, several of which are the same address once trimmed and case-folded.
EMAILS = (
    "ann@x.io",
    " Ann@X.io ",
    "ANN@x.io",
    "bob@x.io",
    "Bob@x.io",
    "Straße@x.de",
    "STRASSE@x.de",
    "cy@y.org",
)
BAD_EMAILS = ("not-an-email", "a@b", "x@@y.io", "sp ace@x.io", "   ", "a\x01b@x.io")
# Valid phones: "+1 555 010 0001" and "+15550100001" are the same number; those without a
# country code are numbers of the server's default region (US), "(555) 010-0002" is
# +15550100002; "+5550100004" is a Brazilian number (what the old rule made of a US one).
PHONES = (
    "+1 555 010 0001",
    "+15550100001",
    "(555) 010-0002",
    "+1 (555) 010-0002",
    "0044 20 7946 0958",
    "555.010.0003",
    "+5550100004",
)
# Too short, not a number, too short for +1, 16 digits, a UK-local number read as a US one, a
# US number without its area code, with an extension, an unknown country code.
BAD_PHONES = (
    "12",
    "phone",
    "+12-34",
    "+1234567890123456",
    "020 7946 0958",
    "5550100",
    "555-010-0004 x12",
    "+999 123 4567",
)

COLLIDING: tuple[Any, ...] = (
    1.0,
    True,
    "1",
    Timestamp(1),
    0.0,
    -0.0,
    False,
    "0",
    "",
    Timestamp(0),
    "true",
)
STRINGS = ("Straße", "STRASSE", "strasse", "straße", "abc", "ABC", "aBc", "xabcx", "ß", "SS", "ǅ")
NUMBERS = (-1.5, 2.5, 3.0, 10.0, 1e300, -1e300, 5e-324, -5e-324, 1.7976931348623157e308)
NEEDLES = (
    "ss",
    "SS",
    "ß",
    "Straße",
    "STRASSE",
    "a",
    "B",
    "abc",
    "x",
    "ǆ",
    "1",
    "@x.io",
    "ANN",
    "+1",
    "555",
    "p",
)


def timestamps(now: int) -> st.SearchStrategy[Timestamp]:
    return st.one_of(
        st.sampled_from(OFFSETS).map(lambda off: Timestamp(now + off)),
        st.sampled_from(SPECIAL_DATES),
        st.integers(now - 400 * DAY, now + 10 * DAY).map(Timestamp),
        st.sampled_from((MIN_TIMESTAMP, MAX_TIMESTAMP)),
    )


def numbers() -> st.SearchStrategy[float]:
    return st.one_of(
        st.sampled_from(NUMBERS),
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(-3, 3).map(float),
    )


def values(now: int) -> st.SearchStrategy[Any]:
    """A typed value of any kind."""
    return st.one_of(
        st.sampled_from(COLLIDING),
        st.sampled_from(STRINGS),
        numbers(),
        timestamps(now),
        st.booleans(),
    )


# ---------------------------------------------------------------------------------------------
# People


@st.composite
def upserts(draw: st.DrawFn, now: int, allow_invalid: bool = True) -> PersonUpsert:
    """A partial update of one person from the id pool; now and then an invalid one (bad
    email or phone, NaN, an attribute or tag both set and removed)."""
    invalid = allow_invalid and draw(st.integers(0, 14)) == 0
    attributes = draw(st.dictionaries(st.sampled_from(ATTRIBUTES), values(now), max_size=3))
    remove = draw(st.lists(st.sampled_from(ATTRIBUTES), max_size=2, unique=True))
    add_tags = draw(st.lists(st.sampled_from(TAGS), max_size=3, unique=True))
    remove_tags = draw(st.lists(st.sampled_from(TAGS), max_size=2, unique=True))
    email = draw(st.one_of(st.none(), st.just(""), st.sampled_from(EMAILS)))
    phone = draw(st.one_of(st.none(), st.none(), st.just(""), st.sampled_from(PHONES)))
    if invalid:
        how = draw(st.integers(0, 4))
        if how == 0:
            email = draw(st.sampled_from(BAD_EMAILS))
        elif how == 1:
            phone = draw(st.sampled_from(BAD_PHONES))
        elif how == 2:
            attributes["a"] = draw(st.sampled_from((float("nan"), float("inf"))))
        elif how == 3:
            attributes["a"] = 1.0
            remove = ["a"]
        else:
            add_tags, remove_tags = ["vip"], ["vip"]
    else:
        remove = [k for k in remove if k not in attributes]
        remove_tags = [t for t in remove_tags if t not in add_tags]
    devices = draw(
        st.lists(
            st.tuples(st.sampled_from(DEVICE_IDS), st.sampled_from(PLATFORMS)),
            max_size=2,
            unique_by=lambda d: d[0],
        )
    )
    remove_devices = [
        d
        for d in draw(st.lists(st.sampled_from(DEVICE_IDS), max_size=2, unique=True))
        if d not in {i for i, _ in devices}
    ]
    return PersonUpsert(
        id=draw(st.sampled_from(ID_POOL)),
        email=email,
        phone=phone,
        unsubscribed=draw(st.one_of(st.none(), st.booleans())),
        attributes=attributes,
        remove_attributes=tuple(remove),
        add_tags=tuple(add_tags),
        remove_tags=tuple(remove_tags),
        devices=tuple(devices),
        remove_device_ids=tuple(remove_devices),
        created_at=draw(st.one_of(st.none(), st.none(), st.none(), timestamps(now))),
        replace=draw(st.integers(0, 9)) == 0,
    )


def person_keys(include_bad: bool = True) -> st.SearchStrategy[tuple[str, str]]:
    """(kind, value) naming a person by id, email or phone."""
    emails = EMAILS + BAD_EMAILS[:1] if include_bad else EMAILS
    phones = PHONES + BAD_PHONES[:1] if include_bad else PHONES
    return st.one_of(
        st.tuples(st.just("id"), st.sampled_from(ID_POOL)),
        st.tuples(st.just("id"), st.sampled_from(ID_POOL)),
        st.tuples(st.just("email"), st.sampled_from(emails)),
        st.tuples(st.just("phone"), st.sampled_from(phones)),
    )


# ---------------------------------------------------------------------------------------------
# Condition trees

# Which operators apply to which kind of value, from DESIGN.md: every kind has equality,
# one of and existence; strings the text operators; numbers and timestamps the ranges;
# timestamps the time operators; bools is true / is false.
COMMON = ("equals", "not_equals", "one_of", "exists", "not_exists")
TEXT = ("contains", "not_contains", "starts_with", "ends_with")
RANGES = ("greater_than", "greater_or_equal", "less_than", "less_or_equal", "between")
TIME = (
    "before",
    "after",
    "within_last",
    "more_than_ago",
    "anniversary_today",
    "anniversary_this_month",
)
BOOL = ("is_true", "is_false")
BUILTIN_OPERATORS = {
    "id": COMMON + TEXT,
    "email": COMMON + TEXT,
    "phone": COMMON + TEXT,
    "created_at": COMMON + RANGES + TIME,
    "unsubscribed": COMMON + BOOL,
}
CUSTOM_OPERATORS = COMMON + TEXT + RANGES + TIME + BOOL


@st.composite
def ordered_operand(draw: st.DrawFn, now: int, kind: str | None = None) -> tuple[Any, Any]:
    """A (value, upper) pair of one ordered kind, value <= upper."""
    kind = kind or draw(st.sampled_from(("number", "timestamp")))
    strategy = numbers() if kind == "number" else timestamps(now)
    a, b = draw(strategy), draw(strategy)
    return (a, b) if a <= b else (b, a)


@st.composite
def attribute_conditions(
    draw: st.DrawFn, now: int, names: tuple[str, ...] = ATTRIBUTES, builtins: bool = True
) -> AttributeCondition:
    """A comparison on an attribute from `names` or (when `builtins`) a built-in field; also
    used for event property filters."""
    builtin = builtins and draw(st.integers(0, 3)) == 0
    if builtin:
        name = draw(st.sampled_from(tuple(BUILTIN_OPERATORS)))
        op = draw(st.sampled_from(BUILTIN_OPERATORS[name]))
        target: dict[str, Any] = {"field": name}
    else:
        name = draw(st.sampled_from(names))
        op = draw(st.sampled_from(CUSTOM_OPERATORS))
        target = {"attribute": name}
    fixed = (
        {
            "id": "string",
            "email": "string",
            "phone": "string",
            "created_at": "timestamp",
            "unsubscribed": "bool",
        }.get(name)
        if builtin
        else None
    )

    def value_of(kind: str | None) -> Any:
        if kind == "string":
            pool: tuple[Any, ...] = {
                "id": (*ID_POOL, "P1", "p", ""),
                "email": tuple(e.strip().casefold() for e in EMAILS) + EMAILS,
                "phone": ("+15550100001", "+15550100002", "+442079460958", "+1 555 010 0001"),
            }.get(name, STRINGS)
            return draw(st.sampled_from(pool))
        if kind == "timestamp":
            return draw(timestamps(now))
        if kind == "bool":
            return draw(st.booleans())
        return draw(values(now))

    if op in ("equals", "not_equals"):
        return AttributeCondition(op, value=value_of(fixed), **target)
    if op == "one_of":
        n = draw(st.integers(1, 4))
        return AttributeCondition(op, values=tuple(value_of(fixed) for _ in range(n)), **target)
    if op in TEXT:
        return AttributeCondition(op, value=draw(st.sampled_from(NEEDLES)), **target)
    if op in RANGES:
        low, high = draw(ordered_operand(now, fixed))
        if op == "between":
            return AttributeCondition(op, value=low, upper=high, **target)
        return AttributeCondition(op, value=low, **target)
    if op in ("before", "after"):
        return AttributeCondition(op, value=draw(timestamps(now)), **target)
    if op in ("within_last", "more_than_ago"):
        return AttributeCondition(op, seconds=draw(st.sampled_from(DURATIONS)), **target)
    return AttributeCondition(op, **target)


# ---------------------------------------------------------------------------------------------
# Events

EVENT_NAMES = ("purchase", "signup", "page", "message_opened", "message_clicked")
PROPERTIES = ("plan", "amount", "url", "campaign_id", "message_id")
URLS = ("/pricing", "/Pricing/team", "/blog/pricing", "https://x.io/pricing")
CAMPAIGNS = ("c1", "c2")
COUNT_OPERATORS = ("at_least", "at_most", "exactly")


def event_times(now: int) -> st.SearchStrategy[int | None]:
    """None (now), a time in the past with the edges of the windows and of the UTC days the
    index buckets events by, or up to an hour ahead (counted once the clock gets there)."""
    midnight = now - now % DAY
    return st.one_of(
        st.none(),
        st.sampled_from([o for o in OFFSETS if o <= 0]).map(lambda off: now + off),
        st.sampled_from([midnight + e for d in (0, -DAY, -7 * DAY) for e in (d - 1, d, d + 1)]),
        st.sampled_from((1, 59, 3600)).map(lambda ahead: now + ahead),
        st.integers(now - 60 * DAY, now),
    )


@st.composite
def event_properties(draw: st.DrawFn, now: int) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(PROPERTIES), max_size=3, unique=True)):
        pool = {
            "url": st.sampled_from(URLS),
            "campaign_id": st.sampled_from(CAMPAIGNS),
            "message_id": st.sampled_from(("m1", "m2")),
        }.get(name, values(now))
        props[name] = draw(st.one_of(pool, values(now)) if name in ("url",) else pool)
    return props


@st.composite
def event_inputs(
    draw: st.DrawFn, now: int
) -> tuple[tuple[str, str], str, int | None, dict[str, Any]]:
    """((key kind, key value), name, time or None, properties) of one event."""
    return (
        draw(person_keys()),
        draw(st.sampled_from(EVENT_NAMES)),
        draw(event_times(now)),
        draw(event_properties(now)),
    )


@st.composite
def windows(draw: st.DrawFn, now: int) -> Window:
    choice = draw(st.integers(0, 2))
    if choice == 0:
        return Window()
    if choice == 1:
        return Window(within_last_seconds=draw(st.sampled_from(DURATIONS)))
    a, b = draw(timestamps(now)), draw(timestamps(now))
    return Window(start=min(a, b), end=max(a, b))


@st.composite
def counts(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "count_operator": draw(st.sampled_from(COUNT_OPERATORS)),
        "count": draw(st.one_of(st.none(), st.integers(0, 3))),
    }


@st.composite
def behaviour_conditions(draw: st.DrawFn, now: int) -> Node:
    """An event, page view or message condition."""
    kind = draw(st.integers(0, 2))
    window = draw(windows(now))
    if kind == 0:
        filters = draw(st.lists(attribute_conditions(now, PROPERTIES, builtins=False), max_size=2))
        return EventCondition(
            draw(st.sampled_from(EVENT_NAMES)), tuple(filters), window=window, **draw(counts())
        )
    if kind == 1:
        return PageViewCondition(
            draw(st.sampled_from((*URLS, "/PRICING", "pricing"))),
            draw(st.sampled_from(("equals", "contains", "starts_with"))),
            window=window,
            **draw(counts()),
        )
    return MessageCondition(
        draw(st.sampled_from(("opened", "clicked", "sent"))),
        draw(st.sampled_from(("", *CAMPAIGNS))),
        draw(st.sampled_from(("", "m1"))),
        window=window,
        **draw(counts()),
    )


def leaves(now: int, segment_ids: tuple[int, ...], events: bool = False) -> st.SearchStrategy[Node]:
    options: list[st.SearchStrategy[Node]] = [
        attribute_conditions(now),
        attribute_conditions(now),
        st.builds(TagCondition, st.sampled_from(TAGS), st.booleans()),
        st.builds(DeviceCondition, st.sampled_from(("", *PLATFORMS)), st.booleans()),
    ]
    if segment_ids:
        options.append(st.builds(SegmentCondition, st.sampled_from(segment_ids), st.booleans()))
    if events:
        options.append(behaviour_conditions(now))
    return st.one_of(*options)


def trees(
    now: int, segment_ids: tuple[int, ...] = (), depth: int = 4, events: bool = False
) -> st.SearchStrategy[Node]:
    """A condition tree at most `depth` levels deep (a leaf is one level), naming only the
    given segments; with event, page view and message conditions when `events`."""
    leaf = leaves(now, segment_ids, events)
    if depth <= 1:
        return leaf
    group = st.builds(
        Group,
        st.sampled_from(("all", "any")),
        st.lists(trees(now, segment_ids, depth - 1, events), min_size=1, max_size=3).map(tuple),
        st.booleans(),
    )
    return st.one_of(leaf, group)
