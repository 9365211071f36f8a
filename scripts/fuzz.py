"""Fuzzes a real `segsvc serve` process on 127.0.0.1: every method of the four segsvc services
gets messages generated from its request type (hypothesis, walking the protobuf descriptors)
and raw random bytes, and the figures are printed: calls per method, the status codes seen,
the server's RSS before and after the garbage and KiB per call, and its exit status on
SIGTERM. No client input may produce INTERNAL or UNKNOWN; the script exits 1 if one did.

    .venv/bin/python scripts/fuzz.py                        # 300 + 300 calls per method
    .venv/bin/python scripts/fuzz.py --raw 1000 --generated 0 --seconds 120

tests/api/test_fuzz.py runs the same machinery, smaller, in CI.
"""

from __future__ import annotations

import argparse
import base64
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
from google.protobuf import descriptor, message, message_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from server_harness import ServerProcess  # noqa: E402

from segsvc.v1 import (  # noqa: E402
    audiences_pb2,
    changes_pb2,
    conditions_pb2,
    people_pb2,
    segments_pb2,
    types_pb2,
)

SERVICES = (
    people_pb2.DESCRIPTOR.services_by_name["PeopleService"],
    segments_pb2.DESCRIPTOR.services_by_name["SegmentsService"],
    changes_pb2.DESCRIPTOR.services_by_name["ChangesService"],
    audiences_pb2.DESCRIPTOR.services_by_name["AudiencesService"],
)
# A server stream (a change feed that follows, a long audience) is cut after this long: what
# matters is how it starts, and DEADLINE_EXCEEDED is the client's own doing.
STREAM_SECONDS = 0.3
CALL_SECONDS = 10.0
BAD_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


@dataclass(frozen=True)
class Method:
    path: str
    name: str
    input_class: type[message.Message]
    client_streaming: bool
    server_streaming: bool


def segsvc_methods() -> list[Method]:
    return [
        Method(
            f"/{service.full_name}/{m.name}",
            m.name,
            message_factory.GetMessageClass(m.input_type),
            m.client_streaming,
            m.server_streaming,
        )
        for service in SERVICES
        for m in service.methods
    ]


# -- generated messages --------------------------------------------------------------------------

# Values that have found bugs before, or sit on a boundary, mixed into the random ones.
_EDGE_INTS = (0, 1, 2, 3, -1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1)
_EDGE_UINTS = (*(i for i in _EDGE_INTS if i >= 0), 2**63, 2**64 - 2, 2**64 - 1)


def _cursor(document: str) -> str:
    return base64.urlsafe_b64encode(document.encode()).decode()


_EDGE_STRINGS = (
    "",
    " ",
    "0",
    "1",
    "-1",
    "²",
    "①",
    "1" * 26,
    "x" * 5000,
    "é" * 300,
    "\x00",
    "a\x00b",
    "ann@example.com",
    "+14155550100",
    "u1",
    "plan",
    "utf-8",
    "utf-16",
    "utf-16-le",
    "rot13",
    "base64",
    "zlib",
    "hex",
    "bz2",
    "idna",
    "punycode",
    "unicode_escape",
    "raw_unicode_escape",
    "utf-7",
    "\U0001f600",
    _cursor('{"snapshot":"ab","after":Infinity}'),
    _cursor('{"snapshot":"ab","after":1e400}'),
    _cursor('{"snapshot":"ab","after":4294967296}'),
    _cursor('{"snapshot":"ab","after":-5}'),
    _cursor('{"snapshot":"' + "a" * 600 + '","after":1}'),
    _cursor('{"snapshot":"\\ud800","after":1}'),
    _cursor("[" * 100_000),
    _cursor('{"snapshot":[],"after":[]}'),
)


def _floats(width: int) -> st.SearchStrategy[float]:
    return st.floats(width=width) | st.sampled_from((0.0, -0.0, 1e308, float("inf")))


def _scalar(f: descriptor.FieldDescriptor) -> st.SearchStrategy[Any]:
    t = f.type
    if t == f.TYPE_BOOL:
        return st.booleans()
    if t in (f.TYPE_STRING,):
        return st.sampled_from(_EDGE_STRINGS) | st.text(max_size=40)
    if t == f.TYPE_BYTES:
        return st.binary(max_size=200) | st.sampled_from(
            (b"id\nu1\nu2\n", b"\xff\xfe1\x002\x00", b"a,b\n\x00,1\n", b'"unterminated\n')
        )
    if t == f.TYPE_ENUM:
        numbers = [v.number for v in f.enum_type.values]
        return st.sampled_from(numbers) | st.integers(-3, max(numbers) + 3)
    if t in (f.TYPE_DOUBLE, f.TYPE_FLOAT):
        return _floats(64 if t == f.TYPE_DOUBLE else 32)
    bits = 64 if t in (f.TYPE_INT64, f.TYPE_SINT64, f.TYPE_SFIXED64) else 32
    if t in (f.TYPE_UINT64, f.TYPE_FIXED64, f.TYPE_UINT32, f.TYPE_FIXED32):
        bits = 64 if t in (f.TYPE_UINT64, f.TYPE_FIXED64) else 32
        top = 2**bits - 1
        # Small numbers a third of the time: the ids of the seeded segments.
        edges = st.sampled_from([i for i in _EDGE_UINTS if i <= top])
        return edges | st.integers(0, 5) | st.integers(0, top)
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return st.sampled_from([i for i in _EDGE_INTS if low <= i <= high]) | st.integers(low, high)


def messages(
    message_type: descriptor.Descriptor, depth: int = 0
) -> st.SearchStrategy[message.Message]:
    """Messages of `message_type`: each field set or not, at most one member of each oneof,
    recursion (condition trees) a few levels deep."""
    cls = message_factory.GetMessageClass(message_type)
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for f in message_type.fields:
        if f.message_type is not None and depth >= 4 and not f.message_type.GetOptions().map_entry:
            continue
        parts[f.name] = _field_values(f, depth)

    @st.composite
    def build(draw: st.DrawFn) -> message.Message:
        msg = cls()
        chosen_oneofs: set[str] = set()
        for f in message_type.fields:
            if f.name not in parts or not draw(st.booleans()):
                continue
            oneof = f.containing_oneof
            if oneof is not None and not oneof.name.startswith("_"):
                if oneof.name in chosen_oneofs:
                    continue
                chosen_oneofs.add(oneof.name)
            _assign(msg, f, draw(parts[f.name]))
        return msg

    return build()


def _field_values(f: descriptor.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        key_field = f.message_type.fields_by_name["key"]
        value_field = f.message_type.fields_by_name["value"]
        return st.dictionaries(_scalar(key_field), _single(value_field, depth + 1), max_size=4)
    one = _single(f, depth + 1)
    if f.is_repeated:
        return st.lists(one, max_size=5)
    return one


def _single(f: descriptor.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if f.message_type is None:
        return _scalar(f)
    return st.deferred(lambda: messages(f.message_type, depth))


def _assign(msg: message.Message, f: descriptor.FieldDescriptor, value: Any) -> None:
    target = getattr(msg, f.name)
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        for key, item in value.items():
            if isinstance(item, message.Message):
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif f.is_repeated:
        target.extend(value)
    elif f.message_type is not None:
        target.CopyFrom(value)
    else:
        setattr(msg, f.name, value)


def requests(method: Method) -> st.SearchStrategy[list[bytes]]:
    """The request bytes of one call: one message, or 1-4 for a client stream."""
    one = messages(method.input_class.DESCRIPTOR).map(lambda m: m.SerializeToString())
    return (
        st.lists(one, min_size=1, max_size=4)
        if method.client_streaming
        else st.lists(one, min_size=1, max_size=1)
    )


# -- raw bytes -----------------------------------------------------------------------------------


def random_payloads(rng: random.Random, method: Method) -> list[bytes]:
    """Garbage for one call: random bytes, or a small valid message mangled."""
    count = rng.randint(1, 3) if method.client_streaming else 1
    out = []
    for _ in range(count):
        if rng.random() < 0.7:
            out.append(rng.randbytes(rng.choice((1, 3, 8, 40, 200, 2000))))
        else:
            valid = bytearray(_sample_message(method).SerializeToString() or b"\x08\x01")
            for _ in range(rng.randint(1, 4)):
                valid[rng.randrange(len(valid))] = rng.randrange(256)
            out.append(bytes(valid[: rng.randint(1, len(valid))]))
    return out


def _sample_message(method: Method) -> message.Message:
    msg = method.input_class()
    # A few set fields, so the mangled bytes reach nested messages.
    for f in msg.DESCRIPTOR.fields:
        if f.message_type is not None and not f.is_repeated:
            getattr(msg, f.name).SetInParent()
        elif f.type == f.TYPE_STRING and not f.is_repeated:
            setattr(msg, f.name, "ab")
    return msg


# -- condition trees as wire bytes (protobuf itself will not build one 60 deep) -----------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _message_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


_GROUP = conditions_pb2.Condition.DESCRIPTOR.fields_by_name["group"].number
_CHILDREN = conditions_pb2.Group.DESCRIPTOR.fields_by_name["children"].number
_LEAF = conditions_pb2.Condition(tag=conditions_pb2.TagCondition(tag="x")).SerializeToString()


def nested_tree(depth: int) -> bytes:
    """A Condition `depth` levels deep: ALL groups of one child around a tag leaf."""
    node = _LEAF
    for _ in range(depth - 1):
        group = conditions_pb2.Group(combinator=conditions_pb2.COMBINATOR_ALL).SerializeToString()
        node = _message_field(_GROUP, group + _message_field(_CHILDREN, node))
    return node


def wide_tree(children: int) -> bytes:
    """A Condition: one ANY group of `children` tag leaves (7 bytes a leaf)."""
    group = conditions_pb2.Group(combinator=conditions_pb2.COMBINATOR_ANY).SerializeToString()
    return _message_field(_GROUP, group + _message_field(_CHILDREN, _LEAF) * children)


def with_tree(request: message.Message, tree: bytes) -> bytes:
    """`request` (a message with a `conditions` field) with `tree` as its conditions."""
    number = request.DESCRIPTOR.fields_by_name["conditions"].number
    return request.SerializeToString() + _message_field(number, tree)


# -- calls ---------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Status codes seen per method; thread-safe."""

    codes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    bad: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, method: Method, code: grpc.StatusCode, details: str) -> None:
        with self._lock:
            self.codes[method.name][code.name] += 1
            if code in BAD_CODES:
                self.bad.append(f"{method.name}: {code.name} {details}")

    def calls(self) -> int:
        return sum(sum(c.values()) for c in self.codes.values())


def call(channel: grpc.Channel, method: Method, payloads: Sequence[bytes]) -> tuple[Any, str]:
    """Sends raw request bytes to `method`; the status code and details of the answer."""
    timeout = STREAM_SECONDS if method.server_streaming else CALL_SECONDS
    try:
        if method.client_streaming and method.server_streaming:
            list(channel.stream_stream(method.path)(iter(payloads), timeout=timeout))
        elif method.client_streaming:
            channel.stream_unary(method.path)(iter(payloads), timeout=timeout)
        elif method.server_streaming:
            for _ in channel.unary_stream(method.path)(payloads[0], timeout=timeout):
                pass
        else:
            channel.unary_unary(method.path)(payloads[0], timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def run_generated(
    channel: grpc.Channel,
    methods: Sequence[Method],
    per_method: int,
    tally: Tally,
    fail_fast: bool = False,
) -> None:
    """`per_method` hypothesis-generated calls to each method. With `fail_fast` the first
    INTERNAL or UNKNOWN fails, and hypothesis shrinks it to the smallest request that does."""
    if per_method <= 0:
        return
    # Those that delete go last, so that the seeded people and segments serve the others.
    for method in sorted(methods, key=lambda m: m.name.startswith(_DESTRUCTIVE)):
        _generated_calls(channel, method, per_method, tally, fail_fast)()


_DESTRUCTIVE = ("Delete", "Clear", "Archive")


def _generated_calls(
    channel: grpc.Channel, method: Method, per_method: int, tally: Tally, fail_fast: bool
) -> Callable[[], None]:
    @settings(
        max_examples=per_method,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(requests(method))
    def one(payloads: list[bytes]) -> None:
        code, details = call(channel, method, payloads)
        tally.add(method, code, details)
        assert not (fail_fast and code in BAD_CODES), f"{method.name}: {code.name} {details}"

    return one


def run_raw(
    channel: grpc.Channel,
    methods: Sequence[Method],
    per_method: int,
    tally: Tally,
    seed: int = 0,
    threads: int = 4,
    until: float | None = None,
) -> None:
    """`per_method` calls of random bytes to each method, from `threads` client threads
    (stopping early at monotonic time `until`)."""
    jobs = [(method, i) for method in methods for i in range(per_method)]
    random.Random(seed).shuffle(jobs)

    def worker(share: list[tuple[Method, int]]) -> None:
        for method, i in share:
            if until is not None and time.monotonic() > until:
                return
            rng = random.Random(f"{seed}/{method.name}/{i}")
            tally.add(method, *call(channel, method, random_payloads(rng, method)))

    workers = [threading.Thread(target=worker, args=(jobs[k::threads],)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def seed_data(channel: grpc.Channel) -> None:
    """A few people (u1 ... u5), an event, a manual segment (id 1) with u1 in it and a
    dynamic one (id 2), so that small ids and keys name something."""
    people = people_pb2.UpsertPeopleRequest(
        people=[
            people_pb2.PersonUpsert(
                id=f"u{i}",
                email=f"u{i}@example.com",
                attributes={"plan": types_pb2.Value(string_value="pro")},
                add_tags=["vip"],
            )
            for i in range(1, 6)
        ]
    )
    _unary(channel, "/segsvc.v1.PeopleService/UpsertPeople", people)
    event = people_pb2.Event(person=types_pb2.PersonRef(id="u1"), name="purchase")
    _unary(
        channel,
        "/segsvc.v1.PeopleService/TrackEvents",
        people_pb2.TrackEventsRequest(events=[event]),
    )
    manual = segments_pb2.CreateSegmentRequest(name="manual", type=segments_pb2.SEGMENT_TYPE_MANUAL)
    _unary(channel, "/segsvc.v1.SegmentsService/CreateSegment", manual)
    _unary(
        channel,
        "/segsvc.v1.SegmentsService/AddMembers",
        segments_pb2.AddMembersRequest(segment_id=1, people=[types_pb2.PersonRef(id="u1")]),
    )
    vip = conditions_pb2.Condition(tag=conditions_pb2.TagCondition(tag="vip"))
    dynamic = segments_pb2.CreateSegmentRequest(name="dynamic", conditions=vip)
    _unary(channel, "/segsvc.v1.SegmentsService/CreateSegment", dynamic)


def _unary(channel: grpc.Channel, path: str, request: message.Message) -> None:
    channel.unary_unary(path)(request.SerializeToString(), timeout=CALL_SECONDS)


def rss_mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def print_tally(tally: Tally, out: Callable[[str], None] = print) -> None:
    names = sorted(tally.codes)
    width = max(map(len, names), default=10)
    for name in names:
        codes = tally.codes[name]
        seen = ", ".join(f"{code} {n}" for code, n in codes.most_common())
        out(f"  {name:<{width}} {sum(codes.values()):>6}  {seen}")


@dataclass
class Figures:
    calls: int
    rss_before: float
    rss_after: float

    @property
    def kib_per_call(self) -> float:
        return (self.rss_after - self.rss_before) * 1024 / max(self.calls, 1)


def measure_raw(
    server: ServerProcess, channel: grpc.Channel, methods: Sequence[Method], **kwargs: Any
) -> tuple[Tally, Figures]:
    """A round of garbage to warm the server up, then a measured round; RSS around it."""
    run_raw(channel, methods, max(1, kwargs.get("per_method", 1) // 10), Tally(), seed=1)
    tally = Tally()
    before = rss_mib(server.process.pid)
    run_raw(channel, methods, tally=tally, **kwargs)
    after = rss_mib(server.process.pid)
    return tally, Figures(tally.calls(), before, after)


def huge_trees(server: ServerProcess, channel: grpc.Channel, rounds: int) -> None:
    """A million-node tree sent to PreviewSegment and CreateSegment `rounds` times each while
    one client writes one person in a loop: how each was answered, how long it took, the
    slowest write meanwhile, and the server's RSS around it."""
    tree = wide_tree(1_000_000)
    payloads = {
        "PreviewSegment": with_tree(segments_pb2.PreviewSegmentRequest(), tree),
        "CreateSegment": with_tree(
            segments_pb2.CreateSegmentRequest(name="huge", type=segments_pb2.SEGMENT_TYPE_DYNAMIC),
            tree,
        ),
    }
    write_seconds: list[float] = []
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            upsert = people_pb2.PersonUpsert(
                id="writer", attributes={"n": types_pb2.Value(number_value=n)}
            )
            started = time.perf_counter()
            _unary(
                channel,
                "/segsvc.v1.PeopleService/UpsertPeople",
                people_pb2.UpsertPeopleRequest(people=[upsert]),
            )
            write_seconds.append(time.perf_counter() - started)

    before = rss_mib(server.process.pid)
    thread = threading.Thread(target=writer)
    thread.start()
    answers: list[str] = []
    try:
        for _ in range(rounds):
            for name, payload in payloads.items():
                started = time.perf_counter()
                method = next(m for m in segsvc_methods() if m.name == name)
                code, details = call(channel, method, [payload])
                answers.append(
                    f"  {name}: {len(payload) / 1e6:.1f} MB -> {code.name} in "
                    f"{(time.perf_counter() - started) * 1000:.0f} ms ({details[:80]})"
                )
    finally:
        stop.set()
        thread.join()
    after = rss_mib(server.process.pid)
    print(f"million-node trees, {rounds} rounds:")
    for line in answers:
        print(line)
    write_seconds.sort()
    print(
        f"  one-person writes meanwhile: {len(write_seconds)}, median "
        f"{write_seconds[len(write_seconds) // 2] * 1000:.1f} ms, slowest "
        f"{write_seconds[-1] * 1000:.1f} ms"
    )
    print(f"  server RSS {before:.1f} -> {after:.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw", type=int, default=300, help="random-bytes calls per method")
    parser.add_argument("--generated", type=int, default=300, help="generated calls per method")
    parser.add_argument("--seconds", type=float, default=600, help="stop the raw round after")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--huge", type=int, default=3, help="rounds of million-node trees (0: none)"
    )
    args = parser.parse_args()
    methods = segsvc_methods()
    with tempfile.TemporaryDirectory(prefix="segsvc-fuzz-") as tmp:
        server = ServerProcess(Path(tmp) / "data", Path(tmp) / "server.log")
        try:
            with grpc.insecure_channel(server.address) as channel:
                seed_data(channel)
                started = time.monotonic()
                raw, figures = measure_raw(
                    server,
                    channel,
                    methods,
                    per_method=args.raw,
                    seed=args.seed,
                    threads=args.threads,
                    until=started + args.seconds,
                )
                raw_seconds = time.monotonic() - started
                print(f"raw random bytes: {raw.calls()} calls in {raw_seconds:.1f} s")
                print_tally(raw)
                print(
                    f"server RSS {figures.rss_before:.1f} -> {figures.rss_after:.1f} MiB over "
                    f"the raw calls: {figures.kib_per_call:.2f} KiB per call"
                )
                generated = Tally()
                started = time.monotonic()
                run_generated(channel, methods, args.generated, generated)
                print(
                    f"generated messages: {generated.calls()} calls in "
                    f"{time.monotonic() - started:.1f} s"
                )
                print_tally(generated)
                print(f"server RSS after everything {rss_mib(server.process.pid):.1f} MiB")
                if args.huge:
                    huge_trees(server, channel, args.huge)
        finally:
            code = server.process.poll()
            if code is None:
                try:
                    code = server.terminate(timeout=60)
                except subprocess.TimeoutExpired:
                    print("SIGTERM: the server did not exit within 60 s; killed")
                    server.kill()
                    code = -9
        print(f"SIGTERM: server exited with {code}")
        bad = raw.bad + generated.bad
        for line in bad[:50]:
            print("BAD", line)
        if bad:
            print(f"{len(bad)} calls answered INTERNAL or UNKNOWN; the server log:")
            print(server.log()[-20000:])
        sys.exit(1 if bad or code != 0 else 0)


if __name__ == "__main__":
    main()
