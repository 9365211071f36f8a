"""Condition trees of dynamic segments.

Two forms:
- the *definition* (`Node`): what the client wrote, in its order, mirroring segsvc.v1.Condition
  so that validation errors name the same field paths the client sent
  (`conditions.group.children[2].attribute.value`);
- the *expression* (`Expr`): canonical and hashable, built by `compile_node`. Negative operators
  become `Not` of their positive twin and AND/OR children are sets, so identical leaves across
  segments are one key, one maintained bitmap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from segsvc.engine import values
from segsvc.engine.errors import Violation
from segsvc.engine.leaves import (
    AttrAnniversary,
    AttrEquals,
    AttrExists,
    AttrRange,
    AttrRelative,
    AttrText,
    DeviceLeaf,
    EventLeaf,
    Leaf,
    SegmentLeaf,
    TagLeaf,
    field_key,
)
from segsvc.engine.values import Timestamp, Value, describe, kind_of

OPERATORS = (
    "equals",
    "not_equals",
    "one_of",
    "contains",
    "not_contains",
    "starts_with",
    "ends_with",
    "exists",
    "not_exists",
    "greater_than",
    "greater_or_equal",
    "less_than",
    "less_or_equal",
    "between",
    "is_true",
    "is_false",
    "before",
    "after",
    "within_last",
    "more_than_ago",
    "anniversary_today",
    "anniversary_this_month",
)
BUILTINS = ("id", "email", "phone", "created_at", "unsubscribed")
COUNT_OPERATORS = ("at_least", "at_most", "exactly")
URL_MATCHES = ("equals", "contains", "starts_with")
MESSAGE_ACTIONS = ("sent", "delivered", "opened", "clicked")
MAX_ONE_OF = 1000
# Years 1 to 9999: no duration between two storable times is longer.
MAX_DURATION = values.MAX_TIMESTAMP - values.MIN_TIMESTAMP

Combinator = Literal["all", "any"]


@dataclass(frozen=True)
class Window:
    """Which events count: ever (all None), the last `within_last_seconds`, or [start, end]."""

    within_last_seconds: int | None = None
    start: Timestamp | None = None
    end: Timestamp | None = None


@dataclass(frozen=True)
class Group:
    combinator: Combinator
    children: tuple[Node, ...]
    negate: bool = False


@dataclass(frozen=True)
class AttributeCondition:
    """A comparison on `attribute` (custom) or `field` (built-in), or on an event property."""

    operator: str
    attribute: str | None = None
    field: str | None = None
    value: Value | None = None
    upper: Value | None = None
    values: tuple[Value, ...] = ()
    seconds: int = 0


@dataclass(frozen=True)
class TagCondition:
    tag: str
    negate: bool = False


@dataclass(frozen=True)
class DeviceCondition:
    platform: str = ""
    negate: bool = False


@dataclass(frozen=True)
class SegmentCondition:
    segment_id: int
    negate: bool = False


@dataclass(frozen=True)
class EventCondition:
    name: str
    filters: tuple[AttributeCondition, ...] = ()
    count_operator: str = "at_least"
    count: int | None = None
    window: Window = field(default_factory=Window)


@dataclass(frozen=True)
class PageViewCondition:
    url: str
    match: str = "equals"
    count_operator: str = "at_least"
    count: int | None = None
    window: Window = field(default_factory=Window)


@dataclass(frozen=True)
class MessageCondition:
    action: str
    campaign_id: str = ""
    message_id: str = ""
    count_operator: str = "at_least"
    count: int | None = None
    window: Window = field(default_factory=Window)


Node = (
    Group
    | AttributeCondition
    | TagCondition
    | DeviceCondition
    | SegmentCondition
    | EventCondition
    | PageViewCondition
    | MessageCondition
)

# The proto oneof field name of each node kind: the step it adds to a field path.
NODE_FIELD: dict[type, str] = {
    Group: "group",
    AttributeCondition: "attribute",
    TagCondition: "tag",
    DeviceCondition: "device",
    SegmentCondition: "segment",
    EventCondition: "event",
    PageViewCondition: "page_view",
    MessageCondition: "message",
}


def children_paths(node: Node, path: str) -> Iterator[tuple[str, Node]]:
    """(path, child) for each child of a group; nothing for a leaf."""
    if isinstance(node, Group):
        for i, child in enumerate(node.children):
            yield f"{path}.group.children[{i}]", child


# ---------------------------------------------------------------------------------------------
# Canonical expressions


@dataclass(frozen=True)
class All:
    children: frozenset[Expr]


@dataclass(frozen=True)
class Any_:
    children: frozenset[Expr]


@dataclass(frozen=True)
class Not:
    child: Expr


Expr = All | Any_ | Not | Leaf


def _combine(kind: type[All] | type[Any_], parts: list[Expr]) -> Expr:
    flat: set[Expr] = set()
    for part in parts:
        if isinstance(part, kind):
            flat |= part.children
        else:
            flat.add(part)
    if len(flat) == 1:
        return next(iter(flat))
    return kind(frozenset(flat))


def negate(expr: Expr) -> Expr:
    return expr.child if isinstance(expr, Not) else Not(expr)


def leaves_of(expr: Expr) -> Iterator[Leaf]:
    if isinstance(expr, All | Any_):
        for child in expr.children:
            yield from leaves_of(child)
    elif isinstance(expr, Not):
        yield from leaves_of(expr.child)
    else:
        yield expr


def canonical(expr: Expr) -> str:
    """A name for an expression that is the same in every process, for checkpoints: the
    iteration order of a frozenset (event filters, groups) follows string hashes, which change
    from one process to the next, so set members are named in sorted order."""
    if isinstance(expr, All | Any_):
        word = "all" if isinstance(expr, All) else "any"
        return f"{word}({', '.join(sorted(canonical(c) for c in expr.children))})"
    if isinstance(expr, Not):
        return f"not({canonical(expr.child)})"
    if isinstance(expr, EventLeaf):
        window = (expr.within_last_seconds, expr.start, expr.end)
        return f"EventLeaf({event_match_id(expr.name, expr.filters)}, {expr.min_count}, {window!r})"
    # Every other leaf is a flat dataclass of strings and numbers: its repr is stable.
    return repr(expr)


def event_match_id(name: str, filters: frozenset[Any]) -> str:
    """The canonical name of "event `name` with properties passing `filters`"."""
    return f"{name!r}, [{', '.join(sorted(canonical(f) for f in filters))}]"


def compile_node(node: Node) -> Expr:
    """The canonical expression of a validated definition."""
    if isinstance(node, Group):
        parts = [compile_node(c) for c in node.children]
        expr = _combine(All if node.combinator == "all" else Any_, parts)
        return negate(expr) if node.negate else expr
    if isinstance(node, AttributeCondition):
        return _compile_attribute(node, field_key(node.attribute, node.field))
    if isinstance(node, TagCondition):
        leaf: Expr = TagLeaf(node.tag)
        return negate(leaf) if node.negate else leaf
    if isinstance(node, DeviceCondition):
        leaf = DeviceLeaf(node.platform)
        return negate(leaf) if node.negate else leaf
    if isinstance(node, SegmentCondition):
        leaf = SegmentLeaf(node.segment_id)
        return negate(leaf) if node.negate else leaf
    name, filters = _event_of(node)
    return _compile_count(
        name, filters, node.count_operator, _count(node.count_operator, node.count), node.window
    )


def _count(operator: str, count: int | None) -> int:
    # "at least" defaults to 1 (did it at all); a missing count elsewhere means 0.
    if count is not None:
        return count
    return 1 if operator == "at_least" else 0


def _event_of(
    node: EventCondition | PageViewCondition | MessageCondition,
) -> tuple[str, frozenset[Leaf | Expr]]:
    """The event name and the canonical property filters that a behaviour leaf stands for."""
    if isinstance(node, EventCondition):
        filters = [_compile_attribute(f, "p:" + (f.attribute or "")) for f in node.filters]
        return node.name, frozenset(filters)
    if isinstance(node, PageViewCondition):
        op = {"equals": "equals", "contains": "contains", "starts_with": "starts_with"}[node.match]
        url = AttributeCondition(operator=op, attribute="url", value=node.url)
        return "page", frozenset([_compile_attribute(url, "p:url")])
    parts: list[Expr] = []
    for prop, wanted in (("campaign_id", node.campaign_id), ("message_id", node.message_id)):
        if wanted:
            parts.append(AttrEquals("p:" + prop, "string", wanted))
    return f"message_{node.action}", frozenset(parts)


def _compile_count(
    name: str, filters: frozenset[Any], operator: str, count: int, window: Window
) -> Expr:
    def at_least(n: int) -> Expr:
        return EventLeaf(name, filters, n, window.within_last_seconds, window.start, window.end)

    # Every count is built from "at least n" (n >= 1), so people who never did the event are
    # handled by negation: "at most N" is not "at least N+1", "exactly 0" is not "at least 1".
    if operator == "at_least":
        return at_least(count) if count > 0 else _EVERYONE
    if operator == "at_most":
        return Not(at_least(count + 1))
    if count == 0:
        return Not(at_least(1))
    return All(frozenset([at_least(count), Not(at_least(count + 1))]))


# "at least 0 times" matches every live person: an empty ALL is true for everyone.
_EVERYONE: Expr = All(frozenset())


def _canonical(value: Any) -> Any:
    """-0.0 and 0.0 are one number (and one shared leaf); keep one spelling of it."""
    return value + 0.0 if type(value) is float else value


def _stored_form(key: str, value: Any) -> Any:
    """Emails and phones are stored normalised; equality compares the operand the same way,
    so `email equals "Ann@X.io"` finds ann@x.io. Validation has refused operands that do not
    normalise. Phone operands were put in stored form when the definition was saved (it
    takes the server's default region: see with_stored_phones), so compiling needs none."""
    if key == "$email" and isinstance(value, str):
        return values.normalize_email(value, "")
    if key == "$phone" and isinstance(value, str):
        return values.plain_phone(value)
    return value


def with_stored_phones(node: Node, stored: Callable[[str], str]) -> Node:
    """A validated definition with the operands of equality conditions on the built-in phone
    replaced by `stored(operand)`, their stored form."""
    if isinstance(node, Group):
        return replace(node, children=tuple(with_stored_phones(c, stored) for c in node.children))
    if not (
        isinstance(node, AttributeCondition)
        and node.field == "phone"
        and node.operator in ("equals", "not_equals", "one_of")
    ):
        return node
    return replace(
        node,
        value=stored(node.value) if isinstance(node.value, str) else node.value,
        values=tuple(stored(v) if isinstance(v, str) else v for v in node.values),
    )


def _compile_attribute(node: AttributeCondition, key: str) -> Expr:
    op = node.operator
    value = _canonical(node.value)
    if op in ("equals", "not_equals"):
        value = _stored_form(key, value)
    if op in ("equals", "not_equals"):
        assert value is not None
        leaf: Expr = AttrEquals(key, kind_of(value), value)
        return Not(leaf) if op == "not_equals" else leaf
    if op == "one_of":
        operands = [_stored_form(key, _canonical(v)) for v in node.values]
        return _combine(Any_, [AttrEquals(key, kind_of(v), v) for v in operands])
    if op in ("contains", "not_contains", "starts_with", "ends_with"):
        assert isinstance(value, str)
        text_op = "contains" if op == "not_contains" else op
        leaf = AttrText(key, text_op, value.casefold())
        return Not(leaf) if op == "not_contains" else leaf
    if op in ("exists", "not_exists"):
        leaf = AttrExists(key)
        return Not(leaf) if op == "not_exists" else leaf
    if op in ("is_true", "is_false"):
        return AttrEquals(key, "bool", op == "is_true")
    if op in ("within_last", "more_than_ago"):
        return AttrRelative(key, op, node.seconds)
    if op in ("anniversary_today", "anniversary_this_month"):
        return AttrAnniversary(key, "day" if op == "anniversary_today" else "month")
    assert value is not None
    kind = kind_of(value)
    if op in ("greater_than", "after"):
        return AttrRange(key, kind, value, False, None, False)
    if op == "greater_or_equal":
        return AttrRange(key, kind, value, True, None, False)
    if op in ("less_than", "before"):
        return AttrRange(key, kind, None, False, value, False)
    if op == "less_or_equal":
        return AttrRange(key, kind, None, False, value, True)
    if op == "between":
        return AttrRange(key, kind, value, True, _canonical(node.upper), True)
    raise AssertionError(f"unvalidated operator {op}")


# ---------------------------------------------------------------------------------------------
# The words of the two size limits (validation itself is segsvc.engine.condition_checks),
# shared with segsvc/api/decoding.py, which applies them to the wire bytes before a tree is
# parsed.


def too_deep(here: str, max_depth: int) -> Violation:
    """The violation of the node at `here` (path and kind) below the depth limit."""
    return Violation(here, f"nested deeper than {max_depth} levels")


def too_many_nodes(path: str, max_nodes: int, count: int | None = None) -> Violation:
    """The violation of a tree at `path` with `count` nodes (None: not counted to the end)."""
    if count is None:
        return Violation(path, f"the tree has more than {max_nodes} nodes")
    return Violation(path, f"the tree has {count} nodes, more than {max_nodes}")


def referenced_segments(node: Node) -> frozenset[int]:
    if isinstance(node, SegmentCondition):
        return frozenset([node.segment_id])
    if isinstance(node, Group):
        out: set[int] = set()
        for child in node.children:
            out |= referenced_segments(child)
        return frozenset(out)
    return frozenset()


# ---------------------------------------------------------------------------------------------
# Words, for ExplainMembership and the CLI


def describe_node(node: Node) -> str:
    if isinstance(node, Group):
        word = "all of" if node.combinator == "all" else "any of"
        return f"not {word}" if node.negate else word
    if isinstance(node, AttributeCondition):
        target = node.field if node.field else node.attribute
        parts = [str(target), node.operator.replace("_", " ")]
        if node.operator == "one_of":
            parts.append("[" + ", ".join(describe(v) for v in node.values) + "]")
        elif node.operator in ("within_last", "more_than_ago"):
            parts.append(f"{node.seconds}s")
        elif node.value is not None:
            parts.append(describe(node.value))
            if node.upper is not None:
                parts.append(f"and {describe(node.upper)}")
        return " ".join(parts)
    if isinstance(node, TagCondition):
        return f"{'has not' if node.negate else 'has'} tag {node.tag!r}"
    if isinstance(node, DeviceCondition):
        what = f"a {node.platform} device" if node.platform else "a device"
        return f"{'has no' if node.negate else 'has'} {what}".replace("has no a", "has no")
    if isinstance(node, SegmentCondition):
        return f"{'is not' if node.negate else 'is'} in segment {node.segment_id}"
    if isinstance(node, EventCondition):
        head = f"did {node.name!r}"
    elif isinstance(node, PageViewCondition):
        head = f"viewed a page whose url {node.match.replace('_', ' ')} {node.url!r}"
    else:
        head = f"message {node.action}"
    count = _count(node.count_operator, node.count)
    text = f"{head} {node.count_operator.replace('_', ' ')} {count} times"
    w = node.window
    if w.within_last_seconds is not None:
        text += f" in the last {w.within_last_seconds}s"
    elif w.start is not None and w.end is not None:
        text += f" between {describe(w.start)} and {describe(w.end)}"
    return text


# ---------------------------------------------------------------------------------------------
# Storage form (msgpack-ready plain data)


def to_plain(node: Node) -> Any:
    if isinstance(node, Group):
        return ["group", node.combinator, [to_plain(c) for c in node.children], node.negate]
    if isinstance(node, AttributeCondition):
        return ["attribute", _attr_plain(node)]
    if isinstance(node, TagCondition):
        return ["tag", node.tag, node.negate]
    if isinstance(node, DeviceCondition):
        return ["device", node.platform, node.negate]
    if isinstance(node, SegmentCondition):
        return ["segment", node.segment_id, node.negate]
    w = [node.window.within_last_seconds, _ts(node.window.start), _ts(node.window.end)]
    if isinstance(node, EventCondition):
        filters = [_attr_plain(f) for f in node.filters]
        return ["event", node.name, filters, node.count_operator, node.count, w]
    if isinstance(node, PageViewCondition):
        return ["page_view", node.url, node.match, node.count_operator, node.count, w]
    return [
        "message",
        node.action,
        node.campaign_id,
        node.message_id,
        node.count_operator,
        node.count,
        w,
    ]


def from_plain(data: Any) -> Node:
    kind = data[0]
    if kind == "group":
        return Group(data[1], tuple(from_plain(c) for c in data[2]), data[3])
    if kind == "attribute":
        return _attr_from(data[1])
    if kind == "tag":
        return TagCondition(data[1], data[2])
    if kind == "device":
        return DeviceCondition(data[1], data[2])
    if kind == "segment":
        return SegmentCondition(data[1], data[2])
    w = data[-1]
    window = Window(w[0], _from_ts(w[1]), _from_ts(w[2]))
    if kind == "event":
        filters = tuple(_attr_from(f) for f in data[2])
        return EventCondition(data[1], filters, data[3], data[4], window)
    if kind == "page_view":
        return PageViewCondition(data[1], data[2], data[3], data[4], window)
    return MessageCondition(data[1], data[2], data[3], data[4], data[5], window)


def _ts(v: Timestamp | None) -> int | None:
    return None if v is None else int(v)


def _from_ts(v: int | None) -> Timestamp | None:
    return None if v is None else Timestamp(v)


def _pack(v: Value | None) -> Any:
    if v is None:
        return None
    return ["t", int(v)] if isinstance(v, Timestamp) else v


def _unpack(v: Any) -> Value | None:
    if isinstance(v, list):
        return Timestamp(v[1])
    return v  # type: ignore[no-any-return]


def _attr_plain(node: AttributeCondition) -> Any:
    return [
        node.operator,
        node.attribute,
        node.field,
        _pack(node.value),
        _pack(node.upper),
        [_pack(v) for v in node.values],
        node.seconds,
    ]


def _attr_from(d: Any) -> AttributeCondition:
    values = tuple(v for v in (_unpack(x) for x in d[5]) if v is not None)
    return AttributeCondition(d[0], d[1], d[2], _unpack(d[3]), _unpack(d[4]), values, d[6])
