"""Request bytes -> request messages, for every method of the server, limits checked first.

grpc parses a request with the handler's `request_deserializer` before any of our code runs,
and when that raises it answers INTERNAL "Exception deserializing request!" and keeps about
19 KiB per call (measured: 20,000 garbage calls grew the server from 61 to 435 MiB), for
callers not even authenticated yet. So every handler takes the raw bytes instead
(`request_deserializer=None`, which grpc passes through untouched) and `DecodingInterceptor`
parses them inside the call, after authentication, where a failure is a domain error like any
other: INVALID_ARGUMENT saying which message could not be read (which message of the stream,
for client streams), mapped by ErrorInterceptor.

Before parsing, what would cost the server more than the client are refused:
- a condition tree deeper or larger than the limits. The tree is counted on the wire bytes,
  node by node, stopping at the limit, so a million-node tree costs what 200 nodes cost;
  protobuf itself would parse it whole (and refuse depth beyond ~50 levels only with a bare
  "max depth" error). The field paths and words are the engine's (conditions.too_deep ...);
- a request carrying a tree above `Limits.max_definition_bytes`: within the node limit a
  definition is small, and such a request is parsed, converted and validated in full.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor, descriptor_pool, message, message_factory

from segsvc.api.calls import note_items_in
from segsvc.api.interception import HandlerInterceptor, rewrap_requests
from segsvc.config import Limits
from segsvc.engine import conditions
from segsvc.engine.errors import InvalidArgument, ResourceExhausted, Violation
from segsvc.v1 import conditions_pb2

_CONDITION = conditions_pb2.Condition.DESCRIPTOR
_GROUP = conditions_pb2.Group.DESCRIPTOR
# The Condition oneof member that holds a group, and the Group field of its children.
_GROUP_NUMBER = _CONDITION.fields_by_name["group"].number
_CHILDREN_NUMBER = _GROUP.fields_by_name["children"].number
# Condition oneof members by field number: the last one on the wire is the one set.
_NODE_KINDS = {f.number: f.name for f in _CONDITION.oneofs_by_name["node"].fields}
# Wire fields a tree's encoding may take per node (a node needs 1 to 3; unknown fields of a
# newer client a few more) before the tree is refused unread.
_FIELDS_PER_NODE = 16

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class _Malformed(Exception):
    """The bytes are not protobuf wire format: left to the parser to refuse."""


class _Stop(Exception):
    """A tree is over a limit: counting stops here, with this violation."""

    def __init__(self, violation: Violation) -> None:
        super().__init__(violation.description)
        self.violation = violation


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise _Malformed


def _fields(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value start, value end) of each field in data[start:end];
    the value span of a varint is not needed and is empty."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos, end)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            _, pos = _varint(data, pos, end)
            yield number, wire_type, pos, pos
            continue
        if wire_type == _LEN:
            length, pos = _varint(data, pos, end)
            value_start, pos = pos, pos + length
        elif wire_type in (_I64, _I32):
            value_start, pos = pos, pos + (8 if wire_type == _I64 else 4)
        else:  # groups (deprecated) and invalid wire types: nothing a segsvc message holds
            raise _Malformed
        if pos > end:
            raise _Malformed
        yield number, wire_type, value_start, pos


Spans = list[tuple[int, int]]


class _TreeCounter:
    """Counts the nodes of condition trees on the wire, as conditions.validate counts them:
    every node down to the depth limit, nothing below a node past it."""

    def __init__(self, data: bytes, limits: Limits) -> None:
        self._data = data
        self._limits = limits
        self._nodes = 0
        self._fields_left = _FIELDS_PER_NODE * limits.max_tree_nodes
        self.violations: list[Violation] = []
        # The request field of the tree being counted ("" while reading the request itself).
        self.tree = ""

    def fields(self, spans: Spans) -> Iterator[tuple[int, int, int, int]]:
        """The fields of one message encoded in `spans`: protobuf merges the occurrences of
        a singular message field, which is parsing their concatenation."""
        for start, end in spans:
            for found in _fields(self._data, start, end):
                self._fields_left -= 1
                if self._fields_left < 0:
                    raise _Stop(
                        Violation(
                            self.tree,
                            f"more than {_FIELDS_PER_NODE * self._limits.max_tree_nodes} wire "
                            "fields: far more than a tree within the limits needs",
                        )
                    )
                yield found

    def tree_at(self, name: str, spans: Spans) -> None:
        """Counts the tree in the request field `name` (encoded in `spans`)."""
        self.tree = name
        self._nodes = 0
        self.condition(spans, name, 1)

    def condition(self, spans: Spans, path: str, depth: int) -> None:
        self._nodes += 1
        if self._nodes > self._limits.max_tree_nodes:
            raise _Stop(conditions.too_many_nodes(self.tree, self._limits.max_tree_nodes))
        kind = ""
        group: Spans = []
        for number, wire_type, start, end in self.fields(spans):
            if number not in _NODE_KINDS or wire_type != _LEN:
                continue
            if number != _GROUP_NUMBER:
                group = []
            elif kind != "group":
                group = []  # setting another member of the oneof cleared the group
            kind = _NODE_KINDS[number]
            if number == _GROUP_NUMBER:
                group.append((start, end))
        here = f"{path}.{kind}" if kind else path
        if depth > self._limits.max_tree_depth:
            self.violations.append(conditions.too_deep(here, self._limits.max_tree_depth))
            return
        index = 0
        for number, wire_type, start, end in self.fields(group):
            if number == _CHILDREN_NUMBER and wire_type == _LEN:
                self.condition([(start, end)], f"{here}.children[{index}]", depth + 1)
                index += 1


@dataclass(frozen=True)
class RequestDecoder:
    """Parses one method's request messages, after the checks its type calls for."""

    message_class: type[message.Message]
    limits: Limits
    # Top-level fields holding a condition tree: field number -> field name (the path).
    tree_fields: dict[int, str]
    # Top-level repeated fields: their lengths are the request's items in the access log.
    batch_fields: tuple[str, ...] = ()

    @staticmethod
    def for_type(message_type: descriptor.Descriptor, limits: Limits) -> RequestDecoder:
        tree_fields = {
            f.number: f.name for f in message_type.fields if f.message_type is _CONDITION
        }
        for f in message_type.fields:
            # The counter reads one tree per field, at the top level of a request only.
            nested = f.message_type is not None and f.message_type is not _CONDITION
            assert not (f.number in tree_fields and f.is_repeated), f"repeated tree {f.name}"
            assert not (nested and _reaches_condition(f.message_type, set())), (
                f"{message_type.full_name}.{f.name} holds a condition tree below the top "
                "level: teach decoding.RequestDecoder to find it"
            )
        batch_fields = tuple(f.name for f in message_type.fields if f.is_repeated)
        return RequestDecoder(
            message_factory.GetMessageClass(message_type), limits, tree_fields, batch_fields
        )

    @property
    def type_name(self) -> str:
        return str(self.message_class.DESCRIPTOR.full_name)

    def decode(self, data: bytes, stream_index: int | None = None) -> message.Message:
        """The request message; InvalidArgument or ResourceExhausted when it cannot be had
        (`stream_index`: the position of the message in a client stream)."""
        which = "the request" if stream_index is None else f"message {stream_index} of the stream"
        if self.tree_fields:
            self._check_trees(data)
            if len(data) > self.limits.max_definition_bytes:
                raise ResourceExhausted(
                    f"{which} is {len(data)} bytes; a request with a condition tree may have "
                    f"at most {self.limits.max_definition_bytes}"
                )
        try:
            decoded = self.message_class.FromString(data)
        except message.Error as exc:
            raise InvalidArgument(
                f"{which} is not a {self.type_name} message ({exc}): is the client built "
                "from the same segsvc .proto files?"
            ) from None
        if self.batch_fields:
            note_items_in(sum(len(getattr(decoded, name)) for name in self.batch_fields))
        return decoded

    def _check_trees(self, data: bytes) -> None:
        counter = _TreeCounter(data, self.limits)
        spans: dict[int, Spans] = {}
        try:
            for number, wire_type, start, end in counter.fields([(0, len(data))]):
                if number in self.tree_fields and wire_type == _LEN:
                    spans.setdefault(number, []).append((start, end))
            for number, field_spans in spans.items():
                counter.tree_at(self.tree_fields[number], field_spans)
        except _Malformed:
            return  # the parser refuses it, with its own words
        except _Stop as stop:
            counter.violations.append(stop.violation)
        if counter.violations:
            raise InvalidArgument(counter.violations)

    def decode_stream(self, requests: Iterator[bytes]) -> Iterator[message.Message]:
        for index, data in enumerate(requests):
            yield self.decode(data, index)


def _reaches_condition(message_type: descriptor.Descriptor | None, seen: set[str]) -> bool:
    if message_type is None:
        return False
    if message_type is _CONDITION:
        return True
    if message_type.full_name in seen:
        return False
    seen.add(message_type.full_name)
    return any(
        f.message_type is not None and _reaches_condition(f.message_type, seen)
        for f in message_type.fields
    )


class DecodingInterceptor(HandlerInterceptor):
    """Makes every protobuf method take raw bytes and parse them with a RequestDecoder.

    Place it inside ErrorInterceptor (which maps its errors) and inside AuthInterceptor, so
    a caller that is not authenticated gets nothing parsed at all.
    """

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._decoders: dict[str, RequestDecoder | None] = {}

    def wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], call: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        decoder = self._decoder(call.method)
        if decoder is None:
            return handler
        return rewrap_requests(handler, decoder.decode, decoder.decode_stream)

    def _decoder(self, method: str) -> RequestDecoder | None:
        """The decoder of "/package.Service/Method", None for a method protobuf does not
        describe (left as grpc built it). Built once per method; a race builds it twice."""
        if method not in self._decoders:
            try:
                found = descriptor_pool.Default().FindMethodByName(
                    method.lstrip("/").replace("/", ".")
                )
            except KeyError:
                self._decoders[method] = None
            else:
                self._decoders[method] = RequestDecoder.for_type(found.input_type, self._limits)
        return self._decoders[method]
