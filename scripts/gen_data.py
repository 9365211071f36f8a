"""Deterministic benchmark data: people, their events, segment definitions, manual members
and updates.

Everything is a function of (seed, index), so two runs (or the engine and the DuckDB peer in
one run) see exactly the same people without keeping them all in memory: `people()` yields
lists of `PersonUpsert`, one chunk at a time, and each chunk has its own RNG; `events()`
yields lists of `EventInput` (at most 10,000, the engine's batch limit), each block of people
with its own RNG.

Every attribute and every event property holds values of one type only, so a typed column in
a SQL database can hold it too; strings are ASCII, so SQL `lower()` and Python `casefold()`
agree on them.

    .venv/bin/python scripts/gen_data.py --people 1000 --show 3
    .venv/bin/python scripts/gen_data.py --people 100000 --events-per-person 20 --show 0
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate
from typing import Literal

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
from segsvc.engine.model import PersonKey
from segsvc.engine.people import PersonUpsert
from segsvc.engine.values import Timestamp, Value

# "Now" of the whole data set (2026-03-15T12:00:00Z): the engine runs on a fixed clock set to
# it, and the SQL peer uses the same instant, so time windows agree to the second.
NOW = int(datetime(2026, 3, 15, 12, 0, 0, tzinfo=UTC).timestamp())
DAY = 86_400
DEFAULT_SEED = 20260315
CHUNK = 10_000

AttrType = Literal["string", "number", "bool", "timestamp"]

# name -> type; the order is the column order of the SQL peer.
ATTRIBUTES: dict[str, AttrType] = {
    "plan": "string",
    "country": "string",
    "city": "string",
    "first_name": "string",
    "language": "string",
    "signup_source": "string",
    "industry": "string",
    "company": "string",
    "age": "number",
    "lifetime_value": "number",
    "orders": "number",
    "score": "number",
    "nps": "number",
    "is_vip": "bool",
    "newsletter": "bool",
    "beta_tester": "bool",
    "last_login": "timestamp",
    "birthday": "timestamp",
    "trial_ends": "timestamp",
    "last_purchase": "timestamp",
}

PLATFORMS = ("ios", "android", "web")


# ---------------------------------------------------------------------------------------------
# Value pools


def _names(
    rng: random.Random, count: int, syllables: int, suffixes: tuple[str, ...] = ()
) -> list[str]:
    """`count` distinct pronounceable ASCII names."""
    onsets = ["b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z"]
    onsets += ["br", "ch", "cl", "dr", "fr", "gr", "kr", "pl", "sh", "st", "th", "tr"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou", "y"]
    codas = ["", "", "", "n", "r", "l", "s", "m", "nd", "rt", "x"]
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < count:
        n = rng.randint(max(1, syllables - 1), syllables + 1)
        word = "".join(
            rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(n)
        )
        name = word.capitalize()
        if suffixes:
            name += " " + rng.choice(suffixes)
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out


def _zipf(count: int, s: float = 1.07) -> list[float]:
    """Cumulative Zipf weights for ranks 1..count."""
    return list(accumulate(1.0 / (rank**s) for rank in range(1, count + 1)))


@dataclass(frozen=True)
class Pool:
    values: tuple[str, ...]
    cum_weights: tuple[float, ...]

    def draw(self, rng: random.Random, k: int) -> list[str]:
        return rng.choices(self.values, cum_weights=self.cum_weights, k=k)


def _pool(values: list[str], weights: list[float] | None = None, s: float = 1.07) -> Pool:
    cum = list(accumulate(weights)) if weights is not None else _zipf(len(values), s)
    return Pool(tuple(values), tuple(cum))


@dataclass(frozen=True)
class Pools:
    plan: Pool
    country: Pool
    city: Pool
    first_name: Pool
    language: Pool
    signup_source: Pool
    industry: Pool
    company: Pool
    tags: Pool
    domains: Pool


TAG_NAMES = (
    "newsletter", "active", "mobile-user", "high-intent", "churn-risk", "beta", "promo-2025",
    "support-ticket", "referral", "webinar", "black-friday", "abandoned-cart", "loyalty-gold",
    "loyalty-silver", "loyalty-bronze", "trial", "enterprise-lead", "partner", "reseller",
    "vip", "early-adopter", "survey-done", "onboarded", "power-user", "inactive-30", "inactive-90",
    "app-review", "gift-card", "student", "nonprofit", "press", "investor", "employee",
    "fraud-check", "chargeback", "refund", "upsell", "cross-sell", "winback", "sms-optin",
    "push-optin", "email-bounce", "hard-bounce", "spam-report", "gdpr", "ccpa", "test-account",
    "import-2024", "import-2025", "holiday",
)  # fmt: skip
SIGNUP_SOURCES = (
    "organic", "google_ads", "facebook", "instagram", "tiktok", "referral", "newsletter",
    "partner", "affiliate", "app_store", "play_store", "direct",
)  # fmt: skip
LANGUAGES = (
    "en", "es", "de", "fr", "pt", "it", "nl", "pl", "sv", "ja", "ko", "zh", "ru", "tr", "ar",
    "hi", "da", "fi", "no", "cs",
)  # fmt: skip
PLANS = ("free", "basic", "pro", "team", "enterprise")


def pools(seed: int = DEFAULT_SEED) -> Pools:
    rng = random.Random(seed)
    countries = [
        a + b for a in "ABCDEFGHIJKLMNOPRSTUVWYZ" for b in "ABEILMNORSTUZ"
    ]  # two-letter codes
    rng.shuffle(countries)
    industries = _names(rng, 30, 2)
    company_suffixes = ("Labs", "Inc", "GmbH", "Ltd", "Group", "Studio", "Systems", "Co")
    return Pools(
        plan=_pool(list(PLANS), [0.55, 0.2, 0.15, 0.07, 0.03]),
        country=_pool(countries[:50], s=1.2),
        city=_pool(_names(rng, 2000, 2), s=1.0),
        first_name=_pool(_names(rng, 5000, 2), s=0.9),
        language=_pool(list(LANGUAGES), s=1.3),
        signup_source=_pool(list(SIGNUP_SOURCES), s=0.8),
        industry=_pool(industries, s=0.7),
        company=_pool(_names(rng, 20_000, 3, company_suffixes), s=0.6),
        tags=_pool(list(TAG_NAMES), s=1.1),
        domains=_pool(
            ["gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "icloud.com", "proton.me"]
            + [f"{w.lower()}.com" for w in _names(rng, 200, 2)],
            s=1.3,
        ),
    )


# ---------------------------------------------------------------------------------------------
# People


def person_id(i: int) -> str:
    return f"p{i:08d}"


def _chunk_rng(seed: int, stream: str, chunk: int) -> random.Random:
    return random.Random(f"{seed}:{stream}:{chunk}")


def people(
    count: int,
    seed: int = DEFAULT_SEED,
    chunk: int = CHUNK,
    p: Pools | None = None,
    first: int = 0,
) -> Iterator[list[PersonUpsert]]:
    """People `first` .. `first + count - 1` as lists of at most `chunk` upserts; person i has
    id `person_id(i)` and is the i-th person created (ordinal i in a fresh workspace)."""
    p = p or pools(seed)
    for start in range(first, first + count, chunk):
        yield _people_chunk(p, seed, start, min(chunk, first + count - start))


def _people_chunk(p: Pools, seed: int, start: int, n: int) -> list[PersonUpsert]:
    rng = _chunk_rng(seed, "people", start)
    rand = rng.random

    def mask(rate: float) -> list[bool]:
        return [rand() < rate for _ in range(n)]

    plan = p.plan.draw(rng, n)
    country = p.country.draw(rng, n)
    city = p.city.draw(rng, n)
    first = p.first_name.draw(rng, n)
    language = p.language.draw(rng, n)
    source = p.signup_source.draw(rng, n)
    industry = p.industry.draw(rng, n)
    company = p.company.draw(rng, n)
    domain = p.domains.draw(rng, n)
    has = {
        "country": mask(0.98),
        "city": mask(0.9),
        "first_name": mask(0.95),
        "language": mask(0.85),
        "industry": mask(0.6),
        "company": mask(0.5),
        "age": mask(0.8),
        "score": mask(0.9),
        "nps": mask(0.3),
        "newsletter": mask(0.95),
        "beta_tester": mask(0.2),
        "last_login": mask(0.97),
        "birthday": mask(0.7),
        "trial_ends": mask(0.2),
        "last_purchase": mask(0.6),
    }
    out: list[PersonUpsert] = []
    tag_counts = rng.choices(
        range(9), cum_weights=list(accumulate([20, 20, 18, 14, 10, 8, 5, 3, 2])), k=n
    )
    device_counts = rng.choices(range(4), cum_weights=[30, 70, 90, 100], k=n)
    for j in range(n):
        i = start + j
        attrs: dict[str, Value] = {"plan": plan[j], "signup_source": source[j]}
        if has["country"][j]:
            attrs["country"] = country[j]
        if has["city"][j]:
            attrs["city"] = city[j]
        if has["first_name"][j]:
            attrs["first_name"] = first[j]
        if has["language"][j]:
            attrs["language"] = language[j]
        if has["industry"][j]:
            attrs["industry"] = industry[j]
        if has["company"][j]:
            attrs["company"] = company[j]
        if has["age"][j]:
            attrs["age"] = float(18 + int(rand() * 73))
        # Long-tailed money: most people spend little, a few a lot; in cents.
        attrs["lifetime_value"] = round(min(50_000.0, rng.expovariate(1 / 1500.0)), 2)
        attrs["orders"] = float(min(200, int(rng.expovariate(1 / 8.0))))
        if has["score"][j]:
            attrs["score"] = round(rand() * 100, 2)
        if has["nps"][j]:
            attrs["nps"] = float(int(rand() * 11))
        attrs["is_vip"] = rand() < 0.05
        if has["newsletter"][j]:
            attrs["newsletter"] = rand() < 0.4
        if has["beta_tester"][j]:
            attrs["beta_tester"] = rand() < 0.5
        if has["last_login"][j]:
            attrs["last_login"] = Timestamp(NOW - int(rand() * 90 * DAY))
        if has["birthday"][j]:
            # Midnight UTC of a day between 1940 and 2007.
            days = int(rand() * (68 * 365))
            attrs["birthday"] = Timestamp(-946_771_200 + days * DAY)
        if has["trial_ends"][j]:
            attrs["trial_ends"] = Timestamp(NOW + int((rand() - 0.5) * 60 * DAY))
        if has["last_purchase"][j]:
            attrs["last_purchase"] = Timestamp(NOW - int(rand() * 365 * DAY))
        tags = tuple(dict.fromkeys(p.tags.draw(rng, tag_counts[j]))) if tag_counts[j] else ()
        devices = tuple(
            (f"d{i}-{k}", PLATFORMS[0 if (r := rand()) < 0.45 else 1 if r < 0.85 else 2])
            for k in range(device_counts[j])
        )
        name = (first[j] if has["first_name"][j] else "user").lower()
        out.append(
            PersonUpsert(
                id=person_id(i),
                email=f"{name}.{i}@{domain[j]}" if rand() < 0.9 else None,
                phone=f"+1{2_000_000_000 + i}" if rand() < 0.6 else None,
                unsubscribed=rand() < 0.05,
                attributes=attrs,
                add_tags=tags,
                devices=devices,
                created_at=Timestamp(NOW - int(rand() * 3 * 365 * DAY)),
            )
        )
    return out


# Simple profiles: what a bulk import from a CRM or a sign-up table usually carries (id, email,
# often a phone, a handful of typed attributes, a tag or two). The bulk-load target of
# DESIGN.md is stated for these.
SIMPLE_ATTRIBUTES: dict[str, AttrType] = {
    "plan": "string",
    "country": "string",
    "age": "number",
    "is_vip": "bool",
    "last_login": "timestamp",
}


def simple_people(
    count: int, seed: int = DEFAULT_SEED, chunk: int = CHUNK, first: int = 0, version: int = 0
) -> Iterator[list[PersonUpsert]]:
    """People `first` .. `first + count - 1` with simple profiles (ids as in `people()`).
    `version` > 0 gives the same people with other attribute values and tags (an update
    that changes most of them: a re-import from a newer export)."""
    p = pools(seed)
    for start in range(first, first + count, chunk):
        n = min(chunk, first + count - start)
        rng = _chunk_rng(seed, f"simple:{version}", start)
        rand = rng.random
        plan = p.plan.draw(rng, n)
        country = p.country.draw(rng, n)
        domain = p.domains.draw(_chunk_rng(seed, "simple-domains", start), n)
        out: list[PersonUpsert] = []
        for j in range(n):
            i = start + j
            attrs: dict[str, Value] = {"plan": plan[j], "is_vip": rand() < 0.05}
            if rand() < 0.95:
                attrs["country"] = country[j]
            if rand() < 0.8:
                attrs["age"] = float(18 + int(rand() * 73))
            if rand() < 0.97:
                attrs["last_login"] = Timestamp(NOW - int(rand() * 90 * DAY))
            r = rand()
            tags = () if r < 0.3 else p.tags.draw(rng, 1 if r < 0.75 else 2)
            out.append(
                PersonUpsert(
                    id=person_id(i),
                    # Emails and phones stay the person's own across versions (a re-import
                    # does not move them to someone else).
                    email=f"user.{i}@{domain[j]}" if (i * 7919) % 10 else None,
                    phone=f"+1{2_000_000_000 + i}" if (i * 104_729) % 10 < 6 else None,
                    attributes=attrs,
                    add_tags=tuple(dict.fromkeys(tags)),
                )
            )
        yield out


# ---------------------------------------------------------------------------------------------
# Updates: a few attributes and tags of existing people, as a profile sync would send them


UPDATED_ATTRIBUTES = ("last_login", "orders", "lifetime_value", "plan", "nps")


def updates(
    count: int, population: int, seed: int = DEFAULT_SEED, stream: str = "updates"
) -> list[PersonUpsert]:
    """`count` partial updates of random people among the first `population`. Every update
    has the same shape (the attributes of UPDATED_ATTRIBUTES, `nps` possibly removed, one tag
    added and one removed), so a SQL peer can apply a batch with one UPDATE."""
    rng = random.Random(f"{seed}:{stream}")
    p = pools(seed)
    out: list[PersonUpsert] = []
    # Distinct people, so that a batch never names one person twice.
    for i in rng.sample(range(population), count):
        nps_removed = rng.random() < 0.3
        attrs: dict[str, Value] = {
            "last_login": Timestamp(NOW - int(rng.random() * 3 * DAY)),
            "orders": float(int(rng.random() * 60)),
            "lifetime_value": round(rng.random() * 20_000, 2),
            "plan": p.plan.draw(rng, 1)[0],
        }
        if not nps_removed:
            attrs["nps"] = float(int(rng.random() * 11))
        add, remove = p.tags.draw(rng, 2)
        out.append(
            PersonUpsert(
                id=person_id(i),
                attributes=attrs,
                remove_attributes=("nps",) if nps_removed else (),
                add_tags=(add,),
                remove_tags=(remove,) if remove != add else (),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# Segments


@dataclass(frozen=True)
class SegmentSpec:
    """One segment to create. Segment references name other specs by position: spec k is
    expected to get segment id k + 1 in a fresh workspace (see `remap`)."""

    name: str
    dynamic: bool
    conditions: Node | None = None
    # Manual segments: the share of people added, drawn with `manual_members`.
    manual_fraction: float = 0.0
    tags: tuple[str, ...] = field(default=())


def _ts(days_ago: float) -> Timestamp:
    return Timestamp(NOW - int(days_ago * DAY))


def _attr(op: str, name: str, value: Value | None = None, **kw: object) -> AttributeCondition:
    return AttributeCondition(operator=op, attribute=name, value=value, **kw)  # type: ignore[arg-type]


def _builtin(op: str, name: str, value: Value | None = None, **kw: object) -> AttributeCondition:
    return AttributeCondition(operator=op, field=name, value=value, **kw)  # type: ignore[arg-type]


class _LeafMaker:
    """Random leaf conditions whose operands come from the data's own distributions, so that
    segments match from a handful to most of the people."""

    def __init__(self, rng: random.Random, p: Pools) -> None:
        self.rng = rng
        self.p = p

    def one(self, earlier: list[int]) -> Node:
        rng = self.rng
        kinds = [
            "str_eq", "str_ne", "one_of", "text", "num_range", "num_eq", "between", "bool",
            "within", "ago", "before_after", "anniversary", "exists", "tag", "tag", "device",
            "builtin", "ts_between",
        ]  # fmt: skip
        if earlier:
            kinds += ["segment", "segment"]
        make: Callable[[list[int]], Node] = getattr(self, "_" + rng.choice(kinds))
        return make(earlier)

    def _value(self, attr: str) -> str:
        pool: Pool = getattr(self.p, attr)
        # The head of the distribution usually, sometimes the tail.
        top = 8 if self.rng.random() < 0.7 else len(pool.values)
        return pool.values[self.rng.randrange(min(top, len(pool.values)))]

    def _str_attr(self) -> str:
        return self.rng.choice(
            ["plan", "country", "city", "first_name", "language", "signup_source", "industry"]
        )

    def _str_eq(self, _: list[int]) -> Node:
        a = self._str_attr()
        return _attr("equals", a, self._value(a))

    def _str_ne(self, _: list[int]) -> Node:
        a = self.rng.choice(["plan", "country", "language", "industry"])
        return _attr("not_equals", a, self._value(a))

    def _one_of(self, _: list[int]) -> Node:
        a = self._str_attr()
        values = tuple(dict.fromkeys(self._value(a) for _ in range(self.rng.randint(2, 5))))
        return AttributeCondition(operator="one_of", attribute=a, values=values)

    def _text(self, _: list[int]) -> Node:
        rng = self.rng
        a = rng.choice(["city", "first_name", "company", "industry"])
        word = self._value(a).split(" ")[0]
        op = rng.choice(["contains", "starts_with", "ends_with", "not_contains"])
        if op == "starts_with":
            needle = word[: rng.randint(2, 3)]
        elif op == "ends_with":
            needle = word[-rng.randint(2, 3) :]
        else:
            k = rng.randint(2, 3)
            at = rng.randrange(max(1, len(word) - k + 1))
            needle = word[at : at + k]
        # Mixed case: matching ignores it.
        needle = needle.upper() if rng.random() < 0.3 else needle
        return _attr(op, a, needle)

    def _num_range(self, _: list[int]) -> Node:
        rng = self.rng
        a, lo, hi = rng.choice(
            [("age", 18, 90), ("lifetime_value", 0, 8000), ("orders", 0, 30), ("score", 0, 100)]
        )
        value = (
            float(rng.randint(lo, hi)) if a in ("age", "orders") else round(rng.uniform(lo, hi), 2)
        )
        op = rng.choice(["greater_than", "greater_or_equal", "less_than", "less_or_equal"])
        return _attr(op, a, value)

    def _num_eq(self, _: list[int]) -> Node:
        a, lo, hi = self.rng.choice([("age", 18, 90), ("orders", 0, 12), ("nps", 0, 10)])
        op = "equals" if self.rng.random() < 0.7 else "not_equals"
        return _attr(op, a, float(self.rng.randint(lo, hi)))

    def _between(self, _: list[int]) -> Node:
        rng = self.rng
        a, lo, hi = rng.choice(
            [("age", 18, 90), ("lifetime_value", 0, 10000), ("score", 0, 100), ("nps", 0, 10)]
        )
        x, y = sorted(rng.uniform(lo, hi) for _ in range(2))
        if a in ("age", "nps"):
            x, y = float(int(x)), float(int(y))
        else:
            x, y = round(x, 2), round(y, 2)
        return _attr("between", a, x, upper=y)

    def _bool(self, _: list[int]) -> Node:
        a = self.rng.choice(["is_vip", "newsletter", "beta_tester"])
        return _attr(self.rng.choice(["is_true", "is_false"]), a)

    def _within(self, _: list[int]) -> Node:
        a = self.rng.choice(["last_login", "last_purchase"])
        return _attr("within_last", a, seconds=self.rng.choice([1, 3, 7, 14, 30, 60]) * DAY)

    def _ago(self, _: list[int]) -> Node:
        a = self.rng.choice(["last_login", "last_purchase", "trial_ends"])
        return _attr("more_than_ago", a, seconds=self.rng.choice([7, 30, 60, 180]) * DAY)

    def _before_after(self, _: list[int]) -> Node:
        rng = self.rng
        a = rng.choice(["trial_ends", "last_purchase", "birthday"])
        if a == "birthday":
            when = Timestamp(-946_771_200 + rng.randint(0, 68 * 365) * DAY)
        else:
            when = _ts(rng.uniform(-30, 200))
        return _attr(rng.choice(["before", "after"]), a, when)

    def _ts_between(self, _: list[int]) -> Node:
        a = self.rng.choice(["last_login", "last_purchase"])
        x, y = sorted(self.rng.uniform(0, 120) for _ in range(2))
        return _attr("between", a, _ts(y), upper=_ts(x))

    def _anniversary(self, _: list[int]) -> Node:
        op = self.rng.choice(["anniversary_today", "anniversary_this_month"])
        return _attr(op, "birthday")

    def _exists(self, _: list[int]) -> Node:
        a = self.rng.choice(["nps", "beta_tester", "trial_ends", "company", "age", "industry"])
        return _attr(self.rng.choice(["exists", "not_exists"]), a)

    def _tag(self, _: list[int]) -> Node:
        return TagCondition(self._value("tags"), negate=self.rng.random() < 0.3)

    def _device(self, _: list[int]) -> Node:
        platform = self.rng.choice(["", *PLATFORMS])
        return DeviceCondition(platform, negate=self.rng.random() < 0.3)

    def _builtin(self, _: list[int]) -> Node:
        rng = self.rng
        choice = rng.randrange(5)
        if choice == 0:
            return _builtin(rng.choice(["exists", "not_exists"]), rng.choice(["email", "phone"]))
        if choice == 1:
            return _builtin(rng.choice(["is_true", "is_false"]), "unsubscribed")
        if choice == 2:
            return _builtin("within_last", "created_at", seconds=rng.choice([30, 90, 365]) * DAY)
        if choice == 3:
            return _builtin("after", "created_at", _ts(rng.uniform(30, 900)))
        return _builtin("ends_with", "email", rng.choice(["@gmail.com", "@YAHOO.com", ".me"]))

    def _segment(self, earlier: list[int]) -> Node:
        return SegmentCondition(self.rng.choice(earlier) + 1, negate=self.rng.random() < 0.25)


def _tree(maker: _LeafMaker, leaves: int, earlier: list[int]) -> Node:
    """A tree of `leaves` leaf conditions: a top group, maybe with one nested group (possibly
    negated) of the opposite combinator."""
    rng = maker.rng
    top: Literal["all", "any"] = "all" if rng.random() < 0.7 else "any"
    if leaves == 1:
        return maker.one(earlier)
    children: list[Node] = []
    remaining = leaves
    if leaves >= 3 and rng.random() < 0.45:
        k = rng.randint(2, min(3, leaves - 1))
        inner: Literal["all", "any"] = "any" if top == "all" else "all"
        nested = tuple(maker.one(earlier) for _ in range(k))
        children.append(Group(inner, nested, negate=rng.random() < 0.3))
        remaining -= k
    children += [maker.one(earlier) for _ in range(remaining)]
    rng.shuffle(children)
    return Group(top, tuple(children), negate=rng.random() < 0.05)


def _days(n: float) -> Window:
    return Window(within_last_seconds=int(n * DAY))


def _event(
    name: str,
    *filters: AttributeCondition,
    op: str = "at_least",
    count: int | None = None,
    window: Window | None = None,
) -> EventCondition:
    return EventCondition(name, tuple(filters), op, count, window or Window())


def event_segments(
    base: list[SegmentSpec], count: int = 20, seed: int = DEFAULT_SEED
) -> list[SegmentSpec]:
    """Up to `count` dynamic segments over events, page views and messages, to follow the
    `base` specs (references name base specs by position + 1, and earlier event specs the
    same way): counts in the last 7/30 days, "has not done X" (negated and at_most 0),
    exactly N, between two dates, property filters, combined with attribute leaves."""
    p = pools(seed)
    ep = event_pools(seed)
    first = len(base)
    # A base segment to name: the first dynamic one with a single leaf (one of the larger ones).
    plain = [k for k, s in enumerate(base) if s.conditions and count_leaves(s.conditions) == 1]
    url = ep.urls.values
    campaign = ep.campaigns.values
    between = Window(None, _ts(60), _ts(45))
    trees: list[Node] = [
        # 0: active on login
        _event("login", count=3, window=_days(7)),
        # 1: looked at pricing
        PageViewCondition("pricing", "contains", "at_least", 2, _days(30)),
        # 2: has not purchased in the last 14 days (negation), but has purchased before
        Group(
            "all",
            (
                Group("all", (_event("purchase", window=_days(14)),), negate=True),
                _event("purchase"),
            ),
        ),
        # 3: abandoned cart: added to cart this week, no purchase this week (at_most 0)
        Group(
            "all",
            (
                _event("add_to_cart", window=_days(7)),
                _event("purchase", op="at_most", count=0, window=_days(7)),
            ),
        ),
        # 4: exactly two purchases, ever
        _event("purchase", op="exactly", count=2),
        # 5: exactly 0 searches in the last 30 days, on a paid plan
        Group(
            "all",
            (
                _event("search", op="exactly", count=0, window=_days(30)),
                _attr("one_of", "plan", values=("pro", "team", "enterprise")),
            ),
        ),
        # 6: bought between two dates
        _event("purchase", window=between),
        # 7: bought the pro plan in the last 30 days
        _event("purchase", _attr("equals", "plan", "pro"), window=_days(30)),
        # 8: two big purchases ever
        _event("purchase", _attr("greater_than", "amount", 100.0), count=2),
        # 9: blog reader
        PageViewCondition(SITE + "/blog/", "starts_with", "at_least", 5, _days(30)),
        # 10: exactly one visit to the pricing page this week
        PageViewCondition(SITE + "/pricing", "equals", "exactly", 1, _days(7)),
        # 11: opened a campaign's message this month
        MessageCondition("opened", campaign[2], window=_days(30)),
        # 12: clicked any message in two weeks, on the free plan
        Group(
            "all",
            (
                MessageCondition("clicked", window=_days(14)),
                _attr("equals", "plan", "free"),
            ),
        ),
        # 13: sent but never opened a campaign's message
        Group(
            "all",
            (
                MessageCondition("sent", campaign[0]),
                MessageCondition("opened", campaign[0], count_operator="at_most", count=0),
            ),
        ),
        # 14: at most 2 logins in 30 days (never logging in included), in a big country
        Group(
            "all",
            (
                _event("login", op="at_most", count=2, window=_days(30)),
                _attr("equals", "country", p.country.values[0]),
            ),
        ),
        # 15: put one of the top products in the cart this week
        _event(
            "add_to_cart",
            _attr("one_of", "sku", values=tuple(ep.skus.values[:3])),
            window=_days(7),
        ),
        # 16: searched for shoes (any case), or was sent a message this week with an iOS device
        Group(
            "any",
            (
                _event("search", _attr("contains", "query", "SHOE")),
                Group(
                    "all",
                    (
                        MessageCondition("sent", window=_days(7)),
                        DeviceCondition("ios"),
                    ),
                ),
            ),
        ),
        # 17: logs in on mobile often, or has tag; with a low rating ever
        Group(
            "all",
            (
                Group(
                    "any",
                    (
                        _event("login", _attr("is_true", "mobile"), count=5, window=_days(30)),
                        TagCondition("churn-risk"),
                    ),
                ),
                _event("review", _attr("less_or_equal", "rating", 2.0)),
            ),
        ),
        # 18: mid-size purchases of paid plans in 90 days, in an attribute segment of the base
        Group(
            "all",
            (
                _event(
                    "purchase",
                    _attr("between", "amount", 20.0, upper=80.0),
                    _attr("not_equals", "plan", "free"),
                    window=_days(90),
                ),
                SegmentCondition(plain[0] + 1) if plain else _event("login"),
            ),
        ),
        # 19: checkout intent this week, not an earlier event segment, logged in lately
        Group(
            "all",
            (
                Group(
                    "any",
                    (
                        PageViewCondition(url[5], "equals", "at_least", 3, _days(7)),
                        _event("add_to_cart", count=2, window=_days(7)),
                    ),
                ),
                SegmentCondition(first + 3 + 1, negate=True),
                _attr("within_last", "last_login", seconds=30 * DAY),
            ),
        ),
    ]
    return [
        SegmentSpec(f"event-{first + k:03d}", True, tree) for k, tree in enumerate(trees[:count])
    ]


def segments(count: int = 100, seed: int = DEFAULT_SEED, events: int = 0) -> list[SegmentSpec]:
    """`count` segment definitions: about 8% manual, the rest dynamic with 1 to 6 conditions,
    some nested and negated, some naming earlier segments; then `events` event segments
    (`event_segments`, at most 20) after them, so the first `count` do not depend on it."""
    rng = random.Random(f"{seed}:segments")
    maker = _LeafMaker(rng, pools(seed))
    out: list[SegmentSpec] = []
    for k in range(count):
        if k % 12 == 3:
            out.append(
                SegmentSpec(
                    f"manual-{k:03d}", False, manual_fraction=rng.choice([0.001, 0.01, 0.05, 0.2])
                )
            )
            continue
        earlier = list(range(k)) if k >= 10 and rng.random() < 0.35 else []
        leaves = rng.choice([1, 2, 2, 3, 3, 3, 4, 4, 5, 6])
        out.append(SegmentSpec(f"dynamic-{k:03d}", True, _tree(maker, leaves, earlier)))
    return out + event_segments(out, events, seed) if events else out


def manual_members(
    spec_index: int, fraction: float, population: int, seed: int = DEFAULT_SEED
) -> list[int]:
    """The people (indices) added by hand to a manual segment, sorted."""
    rng = random.Random(f"{seed}:manual:{spec_index}")
    return sorted(rng.sample(range(population), int(population * fraction)))


def remap(node: Node, ids: dict[int, int]) -> Node:
    """`node` with segment references moved from placeholder ids (spec index + 1) to the
    ids the segments actually got."""
    if isinstance(node, SegmentCondition):
        return SegmentCondition(ids[node.segment_id], node.negate)
    if isinstance(node, Group):
        return Group(node.combinator, tuple(remap(c, ids) for c in node.children), node.negate)
    return node


def count_leaves(node: Node) -> int:
    if isinstance(node, Group):
        return sum(count_leaves(c) for c in node.children)
    return 1


# ---------------------------------------------------------------------------------------------
# Events: what people did over the 90 days before NOW, as `Workspace.track_events` takes them.
#
# Every property holds values of one type across every event name (a typed column in SQL can
# hold it). Activity per person is heavy-tailed (a Pareto draw): a fifth of the people did
# nothing, most did a little, a few did hundreds of things. Message activity follows a funnel:
# some sends are opened later, some opens are clicked.

EVENTS_PER_PERSON = 10.0
# People per random stream: a block's events depend on (seed, first person, rate) only.
EVENT_BLOCK = 1000
EVENT_DAYS = 90
EVENT_NAMES = (
    "page", "purchase", "add_to_cart", "login", "search", "message_sent", "message_opened",
    "message_clicked", "signup", "review",
)  # fmt: skip
# name -> type of every event property; the order is the column order of the SQL peer.
EVENT_PROPERTIES: dict[str, AttrType] = {
    "url": "string",
    "plan": "string",
    "amount": "number",
    "sku": "string",
    "campaign_id": "string",
    "message_id": "string",
    "query": "string",
    "mobile": "bool",
    "source": "string",
    "rating": "number",
}
SITE = "https://www.example.com"
# The names drawn directly (message_opened / message_clicked only follow a send).
_DRAWN = ("page", "login", "search", "add_to_cart", "purchase", "message_sent", "signup", "review")
_DRAWN_WEIGHTS = tuple(accumulate([40.0, 14.0, 10.0, 7.0, 3.0, 20.0, 1.0, 1.5]))
_ACTIVE = 0.8
_PARETO_ALPHA = 1.5
_PARETO_CAP = 100.0
# E[min(X, cap)] of a Pareto(alpha) with minimum 1.
_PARETO_MEAN = (_PARETO_ALPHA - _PARETO_CAP ** (1 - _PARETO_ALPHA)) / (_PARETO_ALPHA - 1)
# Exact window edges, so that both systems are checked on inclusive ends to the second.
_EDGES = tuple(
    NOW - d + s for d in (0, DAY, 7 * DAY, 14 * DAY, 30 * DAY) for s in (0, -1, 1) if d or s <= 0
)


@dataclass(frozen=True)
class EventPools:
    urls: Pool
    skus: Pool
    queries: Pool
    campaigns: Pool
    # campaign id -> its message ids
    messages: dict[str, tuple[str, ...]]
    purchase_plan: Pool
    signup_source: Pool


def event_pools(seed: int = DEFAULT_SEED) -> EventPools:
    rng = random.Random(f"{seed}:event-pools")
    fixed = [
        "/", "/pricing", "/features", "/signup", "/login", "/checkout", "/cart", "/account",
        "/account/billing", "/contact", "/about", "/careers", "/docs", "/blog", "/changelog",
        "/integrations", "/security", "/status", "/help", "/download",
    ]  # fmt: skip
    slugs = [w.lower() for w in _names(rng, 180, 2)]
    paths = fixed + [f"/blog/{s}" for s in slugs[:90]]
    paths += [f"/docs/{s}" for s in slugs[90:150]]
    paths += [f"/product/sku-{n:05d}" for n in range(30)]
    adjectives = ["red", "blue", "cheap", "running", "leather", "kids", "winter", "summer"]
    adjectives += ["wireless", "organic", "vintage", "large", "small", "black", "white"]
    nouns = ["shoes", "jacket", "headphones", "backpack", "watch", "desk", "lamp", "mug", "tent"]
    nouns += ["bike", "sofa", "dress", "socks", "charger", "keyboard", "camera", "bottle"]
    nouns += ["scarf", "boots", "pillow"]
    queries = [f"{a} {n}" for a in adjectives for n in nouns]
    rng.shuffle(queries)
    campaigns = [f"cmp-{c:03d}" for c in range(1, 41)]
    messages = {c: tuple(f"{c}-m{k}" for k in range(1, rng.randint(1, 6) + 1)) for c in campaigns}
    return EventPools(
        urls=_pool([SITE + p for p in paths], s=1.0),
        skus=_pool([f"SKU-{n:05d}" for n in range(500)], s=1.1),
        queries=_pool(queries, s=0.9),
        campaigns=_pool(campaigns, s=0.8),
        messages=messages,
        purchase_plan=_pool(["basic", "pro", "team", "enterprise", "free"], [35, 35, 15, 5, 10]),
        signup_source=_pool(list(SIGNUP_SOURCES), s=0.8),
    )


def _event_properties(name: str, rng: random.Random, ep: EventPools) -> dict[str, Value]:
    if name == "page":
        return {"url": ep.urls.draw(rng, 1)[0]}
    if name == "purchase":
        return {
            "plan": ep.purchase_plan.draw(rng, 1)[0],
            "amount": round(5.0 + rng.expovariate(1 / 60.0), 2),
        }
    if name == "add_to_cart":
        return {"sku": ep.skus.draw(rng, 1)[0]}
    if name == "login":
        return {"mobile": rng.random() < 0.45}
    if name == "search":
        return {"query": ep.queries.draw(rng, 1)[0]}
    if name == "signup":
        return {"source": ep.signup_source.draw(rng, 1)[0]}
    if name == "review":
        return {"rating": float(rng.randint(1, 5))}
    campaign = ep.campaigns.draw(rng, 1)[0]
    return {"campaign_id": campaign, "message_id": rng.choice(ep.messages[campaign])}


def _event_time(rng: random.Random, days: float) -> int:
    if rng.random() < 0.003:
        return rng.choice(_EDGES)
    return NOW - int(rng.random() * days * DAY)


def _person_events(
    key: PersonKey, n: int, rng: random.Random, ep: EventPools, out: list[EventInput]
) -> None:
    """Appends `n` events of one person to `out`."""
    made = 0
    signed_up = False
    for name in rng.choices(_DRAWN, cum_weights=_DRAWN_WEIGHTS, k=n):
        if made >= n:
            break
        if name == "signup":
            if signed_up:
                name = "page"
            signed_up = True
        ts = _event_time(rng, EVENT_DAYS)
        props = _event_properties(name, rng, ep)
        out.append(EventInput(key, name, Timestamp(ts), props))
        made += 1
        if name != "message_sent":
            continue
        # The funnel: opened a few hours later (some), clicked after opening (fewer).
        for follow, rate in (("message_opened", 0.4), ("message_clicked", 0.3)):
            if made >= n or rng.random() >= rate:
                break
            ts = min(NOW, ts + int(rng.expovariate(1 / 7200.0)) + 1)
            out.append(EventInput(key, follow, Timestamp(ts), dict(props)))
            made += 1


def events(
    population: int,
    per_person: float = EVENTS_PER_PERSON,
    seed: int = DEFAULT_SEED,
    chunk: int = CHUNK,
    first: int = 0,
) -> Iterator[list[EventInput]]:
    """The events of people `first` .. `population - 1` (about `per_person` each on
    average), in lists of at most `chunk`, ordered by person; timestamps within the
    EVENT_DAYS before NOW (some exactly on window edges)."""
    ep = event_pools(seed)
    scale = per_person / (_ACTIVE * _PARETO_MEAN)
    pending: list[EventInput] = []
    for start in range(first, population, EVENT_BLOCK):
        rng = _chunk_rng(seed, f"events:{per_person}", start)
        rand = rng.random
        for i in range(start, min(population, start + EVENT_BLOCK)):
            if rand() >= _ACTIVE:
                continue
            activity = min(_PARETO_CAP, rng.paretovariate(_PARETO_ALPHA))
            n = int(activity * scale + rand())
            if n:
                _person_events(PersonKey("id", person_id(i)), n, rng, ep, pending)
        while len(pending) >= chunk:
            yield pending[:chunk]
            pending = pending[chunk:]
    if pending:
        yield pending


def live_events(
    count: int, population: int, at: int, seed: int = DEFAULT_SEED, stream: str = "live"
) -> list[EventInput]:
    """`count` events of random people among the first `population`, in the hour before
    `at`: what tracking sends while the segments are live."""
    rng = random.Random(f"{seed}:{stream}")
    ep = event_pools(seed)
    out: list[EventInput] = []
    names = rng.choices(_DRAWN, cum_weights=_DRAWN_WEIGHTS, k=count)
    for name in names:
        i = rng.randrange(population)
        if name == "signup":
            name = "message_opened"  # a second signup would be odd; opens are common
        props = _event_properties("message_sent" if name.startswith("message_") else name, rng, ep)
        out.append(
            EventInput(
                PersonKey("id", person_id(i)), name, Timestamp(at - rng.randrange(3600)), props
            )
        )
    return out


def event_pid(event: EventInput) -> int:
    """The person index of a generated event (ids are `person_id(i)`)."""
    return int(event.person.value[1:])


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--segments", type=int, default=100)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--show", type=int, default=2, help="print this many people")
    parser.add_argument(
        "--events-per-person",
        type=float,
        default=EVENTS_PER_PERSON,
        help="also generate about this many events per person (0: none)",
    )
    parser.add_argument("--event-segments", type=int, default=20)
    args = parser.parse_args()
    import time

    t0 = time.perf_counter()
    total = 0
    shown = 0
    for batch in people(args.people, args.seed):
        total += len(batch)
        for person in batch[: max(0, args.show - shown)]:
            print(person)
            shown += 1
    elapsed = time.perf_counter() - t0
    print(f"{total} people in {elapsed:.1f} s ({total / elapsed:,.0f}/s)")
    with_events = args.events_per_person > 0
    if with_events:
        t0 = time.perf_counter()
        total = 0
        by_name: dict[str, int] = dict.fromkeys(EVENT_NAMES, 0)
        for tracked in events(args.people, args.events_per_person, args.seed):
            for event in tracked[: max(0, args.show * 3 - total)]:
                print(event)
            total += len(tracked)
            for event in tracked:
                by_name[event.name] += 1
        elapsed = time.perf_counter() - t0
        print(f"{total} events in {elapsed:.1f} s ({total / elapsed:,.0f}/s): {by_name}")
    specs = segments(args.segments, args.seed, events=args.event_segments if with_events else 0)
    shown_specs = specs[: args.show * 5] + (specs[args.segments :][: args.show * 2])
    for spec in shown_specs:
        print(spec.name, spec.conditions if spec.dynamic else f"manual {spec.manual_fraction}")


if __name__ == "__main__":
    main()
