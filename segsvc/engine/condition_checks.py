"""Validation of condition trees: every problem of a definition, each with the field path the
client sent (`conditions.group.children[2].attribute.value`), before anything is saved or
compiled. Operators are checked against the value type they compare, segment references
against the segments that exist (and against cycles), sizes against the limits.

Apart from segsvc.engine.conditions (the trees and their compilation) because it is a
different question, asked once per write of a definition: is this tree one the engine can
evaluate? Only the words of the two size limits stay there, shared with the API's decoding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from segsvc.config import Limits
from segsvc.engine import values
from segsvc.engine.conditions import (
    BUILTINS,
    COUNT_OPERATORS,
    MAX_DURATION,
    MAX_ONE_OF,
    MESSAGE_ACTIONS,
    NODE_FIELD,
    OPERATORS,
    URL_MATCHES,
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
    children_paths,
    too_deep,
    too_many_nodes,
)
from segsvc.engine.errors import InvalidArgument, Violation
from segsvc.engine.leaves import builtin_kind
from segsvc.engine.values import Kind, Value, kind_of


@dataclass
class ValidationContext:
    limits: Limits
    # Does the segment exist (and is it not being deleted)?
    segment_exists: Callable[[int], bool]
    # The segments a segment's conditions reference, for cycle detection.
    references_of: Callable[[int], frozenset[int]]
    # Where phone operands without a country code are placed (values.normalize_phone).
    default_region: str | None
    # The segment being defined (None for a preview or a new segment).
    defining: int | None = None


def validate(node: Node | None, ctx: ValidationContext, path: str = "conditions") -> None:
    """Raises InvalidArgument listing every problem, each with its field path."""
    violations: list[Violation] = []
    if node is None:
        raise InvalidArgument("a dynamic segment needs a condition tree", path)
    count = _walk(node, path, 1, ctx, violations)
    if count > ctx.limits.max_tree_nodes:
        violations.append(too_many_nodes(path, ctx.limits.max_tree_nodes, count))
    if violations:
        raise InvalidArgument(violations)


def _walk(node: Node, path: str, depth: int, ctx: ValidationContext, out: list[Violation]) -> int:
    here = f"{path}.{NODE_FIELD[type(node)]}"
    if depth > ctx.limits.max_tree_depth:
        out.append(too_deep(here, ctx.limits.max_tree_depth))
        return 1
    if isinstance(node, Group):
        if node.combinator not in ("all", "any"):
            out.append(Violation(f"{here}.combinator", "choose ALL or ANY"))
        if not node.children:
            out.append(
                Violation(f"{here}.children", "an empty group matches nothing: add a condition")
            )
        total = 1
        for child_path, child in children_paths(node, path):
            total += _walk(child, child_path, depth + 1, ctx, out)
        return total
    if isinstance(node, AttributeCondition):
        if node.attribute is None and node.field is None:
            out.append(Violation(here, "name an attribute or a built-in field"))
            return 1
        if node.field is not None and node.field not in BUILTINS:
            out.append(Violation(f"{here}.field", f"unknown built-in field {node.field!r}"))
            return 1
        if node.attribute is not None:
            _check_text(node.attribute, f"{here}.attribute", "the attribute name", ctx, out)
        _check_operator(node, here, builtin_kind(node.field), ctx, out)
        return 1
    if isinstance(node, TagCondition):
        _check_text(node.tag, f"{here}.tag", "the tag", ctx, out)
        return 1
    if isinstance(node, DeviceCondition):
        if node.platform:
            _check_text(node.platform, f"{here}.platform", "the platform", ctx, out)
        return 1
    if isinstance(node, SegmentCondition):
        _check_segment(node.segment_id, f"{here}.segment_id", ctx, out)
        return 1
    if isinstance(node, EventCondition):
        _check_text(node.name, f"{here}.name", "the event name", ctx, out)
        for i, f in enumerate(node.filters):
            fpath = f"{here}.filters[{i}]"
            if f.field is not None or not f.attribute:
                out.append(Violation(f"{fpath}.attribute", "name the event property to filter on"))
                continue
            _check_operator(f, fpath, None, ctx, out)
    elif isinstance(node, PageViewCondition):
        _check_text(node.url, f"{here}.url", "the url", ctx, out)
        if node.match not in URL_MATCHES:
            out.append(Violation(f"{here}.match", "choose EQUALS, CONTAINS or STARTS_WITH"))
    elif isinstance(node, MessageCondition) and node.action not in MESSAGE_ACTIONS:
        out.append(Violation(f"{here}.action", "choose SENT, DELIVERED, OPENED or CLICKED"))
    if node.count_operator not in COUNT_OPERATORS:
        out.append(Violation(f"{here}.count_operator", "choose AT_LEAST, AT_MOST or EXACTLY"))
    if node.count is not None and node.count > 1_000_000:
        out.append(Violation(f"{here}.count", "counts above 1000000 are not supported"))
    _check_window(node.window, f"{here}.window", out)
    return 1


def _check_text(
    text: str, path: str, what: str, ctx: ValidationContext, out: list[Violation]
) -> None:
    if not text:
        out.append(Violation(path, f"{what} is empty"))
    elif len(text) > ctx.limits.max_string_length:
        out.append(Violation(path, f"{what} is longer than {ctx.limits.max_string_length}"))


def _check_window(window: Window, path: str, out: list[Violation]) -> None:
    if window.within_last_seconds is not None and window.within_last_seconds <= 0:
        out.append(Violation(f"{path}.within_last", "must be at least 1 second"))
    elif window.within_last_seconds is not None and window.within_last_seconds > MAX_DURATION:
        out.append(Violation(f"{path}.within_last", f"longer than the calendar ({MAX_DURATION} s)"))
    for name, edge in (("start", window.start), ("end", window.end)):
        if edge is not None:
            try:
                values.check_value(edge, f"{path}.between.{name}", 0)
            except InvalidArgument as exc:
                out.extend(exc.violations)
    if (window.start is None) != (window.end is None):
        out.append(Violation(f"{path}.between", "give both start and end"))
    elif window.start is not None and window.end is not None and window.start > window.end:
        out.append(Violation(f"{path}.between", "start is after end"))


def _check_segment(
    segment_id: int, path: str, ctx: ValidationContext, out: list[Violation]
) -> None:
    if segment_id == 0:
        out.append(Violation(path, "name a segment id"))
    elif segment_id == ctx.defining:
        out.append(Violation(path, "a segment cannot reference itself"))
    elif not ctx.segment_exists(segment_id):
        out.append(Violation(path, f"segment {segment_id} does not exist"))
    elif ctx.defining is not None and _reaches(segment_id, ctx.defining, ctx):
        out.append(
            Violation(path, f"segment {segment_id} references segment {ctx.defining}: a cycle")
        )


def _reaches(start: int, target: int, ctx: ValidationContext) -> bool:
    seen: set[int] = set()
    stack = [start]
    while stack:
        current = stack.pop()
        if current == target:
            return True
        if current not in seen:
            seen.add(current)
            stack.extend(ctx.references_of(current))
    return False


_NO_OPERAND = {
    "exists",
    "not_exists",
    "is_true",
    "is_false",
    "anniversary_today",
    "anniversary_this_month",
}
_TEXT = {"contains", "not_contains", "starts_with", "ends_with"}
_ORDERED = {"greater_than", "greater_or_equal", "less_than", "less_or_equal", "between"}
_TIME_ONLY = {
    "before",
    "after",
    "within_last",
    "more_than_ago",
    "anniversary_today",
    "anniversary_this_month",
}


def _check_operator(
    node: AttributeCondition,
    here: str,
    fixed_kind: Kind | None,
    ctx: ValidationContext,
    out: list[Violation],
) -> None:
    op = node.operator
    target = f"built-in field {node.field}" if node.field else f"attribute {node.attribute!r}"
    if op not in OPERATORS:
        out.append(Violation(f"{here}.operator", "choose an operator"))
        return

    def want_kind(kind: Kind, path: str, value: Value | None) -> None:
        if value is None:
            out.append(Violation(path, f"{op} needs a {kind} value"))
        elif kind_of(value) != kind:
            out.append(Violation(path, f"{op} compares {kind}s, got a {kind_of(value)}"))
        else:
            check_value(path, value)

    def check_value(path: str, value: Value) -> None:
        # The same bounds as stored values: an operand no value can equal or order against
        # (NaN, a time outside years 1-9999) is a mistake to report, not a query to answer.
        try:
            values.check_value(value, path, ctx.limits.max_string_length)
        except InvalidArgument as exc:
            out.extend(exc.violations)
        if fixed_kind is not None and kind_of(value) != fixed_kind:
            out.append(Violation(path, f"{target} holds {fixed_kind}s, got a {kind_of(value)}"))

    if fixed_kind is not None:
        allowed = _allowed_for(fixed_kind)
        if op not in allowed:
            out.append(
                Violation(f"{here}.operator", f"{op} does not apply to {target} ({fixed_kind})")
            )
            return
    if op in _NO_OPERAND:
        if op in ("is_true", "is_false") and fixed_kind not in (None, "bool"):
            out.append(Violation(f"{here}.operator", f"{op} applies to bool values"))
        return
    if op in ("within_last", "more_than_ago"):
        if node.seconds <= 0:
            out.append(Violation(f"{here}.duration", f"{op} needs a duration of at least 1 second"))
        elif node.seconds > MAX_DURATION:
            out.append(
                Violation(f"{here}.duration", f"longer than the calendar ({MAX_DURATION} s)")
            )
        return
    if node.field in ("email", "phone") and op in ("equals", "not_equals", "one_of"):
        operands = (
            [(f"{here}.value", node.value)]
            if op != "one_of"
            else [(f"{here}.values[{i}]", v) for i, v in enumerate(node.values)]
        )
        for path, operand in operands:
            if isinstance(operand, str):
                try:
                    if node.field == "email":
                        values.normalize_email(operand, path)
                    else:
                        values.normalize_phone(operand, path, ctx.default_region)
                except InvalidArgument as exc:
                    out.extend(exc.violations)
    if op == "one_of":
        if not node.values:
            out.append(Violation(f"{here}.values", "one_of needs at least one value"))
        elif len(node.values) > MAX_ONE_OF:
            out.append(Violation(f"{here}.values", f"more than {MAX_ONE_OF} values"))
        for i, v in enumerate(node.values):
            check_value(f"{here}.values[{i}]", v)
        return
    if op in _TEXT:
        want_kind("string", f"{here}.value", node.value)
        if node.value == "":
            out.append(Violation(f"{here}.value", f"{op} needs a non-empty string"))
        return
    if op in ("before", "after"):
        want_kind("timestamp", f"{here}.value", node.value)
        return
    if node.value is None:
        out.append(Violation(f"{here}.value", f"{op} needs a value"))
        return
    check_value(f"{here}.value", node.value)
    if op in _ORDERED:
        kind = kind_of(node.value)
        if kind not in ("number", "timestamp"):
            out.append(
                Violation(f"{here}.value", f"{op} compares numbers or timestamps, got a {kind}")
            )
            return
        if op == "between":
            want_kind(kind, f"{here}.upper", node.upper)
            upper = node.upper
            if upper is not None and kind_of(upper) == kind and float(upper) < float(node.value):
                out.append(Violation(f"{here}.upper", "the upper bound is below the lower bound"))


def _allowed_for(kind: Kind) -> set[str]:
    common = {"equals", "not_equals", "one_of", "exists", "not_exists"}
    if kind == "string":
        return common | _TEXT
    if kind == "bool":
        return common | {"is_true", "is_false"}
    if kind == "timestamp":
        return common | _ORDERED | _TIME_ONLY
    return common | _ORDERED
