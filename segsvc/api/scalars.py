"""The scalar half of proto <-> engine conversion: enum numbers and the engine's words for them,
timestamps, durations and typed values. Shared by the condition trees (condition_convert.py)
and everything else (convert.py), so it imports neither."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf import duration_pb2, timestamp_pb2

from segsvc.engine.errors import InvalidArgument, Violation
from segsvc.engine.values import Timestamp, Value, check_value
from segsvc.v1 import audiences_pb2, conditions_pb2, segments_pb2, types_pb2

if TYPE_CHECKING:
    # Only the stubs name the generic wrapper; at run time it is EnumTypeWrapper.
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper


# -- enums -------------------------------------------------------------------------------------
#
# Every proto enum maps to the engine's word by its name: OPERATOR_NOT_EQUALS <-> "not_equals".
# The tables are built from the descriptors so a value added to the proto cannot be forgotten
# here (tests/api/test_convert.py checks that both sides know the same words).


def _words(enum: Any, prefix: str) -> dict[int, str]:
    return {
        number: name.removeprefix(prefix).lower()
        for name, number in enum.items()
        if not name.endswith("_UNSPECIFIED")
    }


OPERATOR_WORDS = _words(conditions_pb2.Operator, "OPERATOR_")
BUILTIN_WORDS = _words(conditions_pb2.BuiltinField, "BUILTIN_FIELD_")
COMBINATOR_WORDS = _words(conditions_pb2.Combinator, "COMBINATOR_")
COUNT_WORDS = _words(conditions_pb2.CountOperator, "COUNT_OPERATOR_")
URL_MATCH_WORDS = _words(conditions_pb2.UrlMatch, "URL_MATCH_")
ACTION_WORDS = _words(conditions_pb2.MessageAction, "MESSAGE_ACTION_")
OUTCOME_WORDS = _words(types_pb2.Outcome, "OUTCOME_")
CHANNEL_WORDS = _words(audiences_pb2.Channel, "CHANNEL_")
LOOKUP_WORDS = _words(segments_pb2.LookupKey, "LOOKUP_KEY_")


_V = TypeVar("_V", bound=int)


def enum_number(enum: _EnumTypeWrapper[_V], prefix: str, word: str) -> _V:
    """The enum value named PREFIX + WORD (the inverse of `_words`)."""
    return enum.Value(prefix + word.upper())


_VALUE_KINDS = "set one of string_value, number_value, bool_value or timestamp_value"


# -- scalars -----------------------------------------------------------------------------------


def timestamp_from_proto(msg: timestamp_pb2.Timestamp) -> Timestamp:
    # segsvc works in whole seconds: nanos are dropped, as the API documents.
    return Timestamp(msg.seconds)


def optional_timestamp(owner: Any, field: str) -> Timestamp | None:
    """`owner.field` in seconds, None when unset; INVALID_ARGUMENT at `field` outside the
    years 1 to 9999 (the range google.protobuf.Timestamp documents)."""
    if not owner.HasField(field):
        return None
    seconds = timestamp_from_proto(getattr(owner, field))
    check_value(seconds, field, 0)
    return seconds


def timestamp_to_proto(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(seconds))


def duration_seconds(msg: duration_pb2.Duration, path: str, out: list[Violation]) -> int:
    """Whole seconds of a Duration; windows are exact to the second, so a fraction is an
    error rather than something to round silently."""
    if msg.nanos:
        out.append(Violation(path, "give whole seconds (nanos must be 0)"))
    return int(msg.seconds)


def value_from_proto(msg: types_pb2.Value) -> Value | None:
    """The typed value, or None when the oneof is unset."""
    kind = msg.WhichOneof("kind")
    if kind == "string_value":
        return str(msg.string_value)
    if kind == "number_value":
        return float(msg.number_value)
    if kind == "bool_value":
        return bool(msg.bool_value)
    if kind == "timestamp_value":
        return timestamp_from_proto(msg.timestamp_value)
    return None


def value_to_proto(value: Value) -> types_pb2.Value:
    # bool and Timestamp before float/str: bool and Timestamp are ints in Python.
    if isinstance(value, bool):
        return types_pb2.Value(bool_value=value)
    if isinstance(value, Timestamp):
        return types_pb2.Value(timestamp_value=timestamp_to_proto(value))
    if isinstance(value, float):
        return types_pb2.Value(number_value=value)
    return types_pb2.Value(string_value=value)


def required_value(msg: types_pb2.Value, path: str, violations: list[Violation]) -> Value | None:
    value = value_from_proto(msg)
    if value is None:
        violations.append(Violation(path, _VALUE_KINDS))
    return value


def values_map(
    msgs: Mapping[str, types_pb2.Value], path: str, violations: list[Violation]
) -> dict[str, Value]:
    # The bulk-load hot path (once per attribute per person): no path string is formatted
    # unless a value is missing.
    out: dict[str, Value] = {}
    for key, msg in msgs.items():
        kind = msg.WhichOneof("kind")
        if kind == "string_value":
            out[key] = msg.string_value
        elif kind == "number_value":
            out[key] = msg.number_value
        elif kind == "bool_value":
            out[key] = msg.bool_value
        elif kind == "timestamp_value":
            out[key] = timestamp_from_proto(msg.timestamp_value)
        else:
            # The same `attributes['plan']` step the engine writes for attribute errors.
            violations.append(Violation(f"{path}[{key!r}]", _VALUE_KINDS))
    return out


def raise_if(violations: list[Violation]) -> None:
    if violations:
        raise InvalidArgument(violations)
