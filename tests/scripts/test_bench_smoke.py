"""The benchmark's own correctness on a tiny data set: the generator is deterministic, and
segsvc and the DuckDB peer agree on every segment's count (the event segments included) after
loading, after updates, after new events and after time moves on. No timings are asserted
here (they belong to scripts/bench.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import bench_duckdb as peer
import gen_data
from bench_setup import Setup, build, choose_audience, is_event_spec, verify
from bench_writes import append_to_peer

from segsvc.engine.model import AudienceSpec
from segsvc.engine.values import Timestamp

PEOPLE = 2000
SEGMENTS = 20
EVENT_SEGMENTS = 20
EVENTS_PER_PERSON = 10.0


def test_generator_is_deterministic() -> None:
    first = [p for batch in gen_data.people(300, chunk=100) for p in batch]
    again = [p for batch in gen_data.people(300, chunk=100) for p in batch]
    assert first == again
    assert [p.id for p in first] == [gen_data.person_id(i) for i in range(300)]
    assert gen_data.segments(SEGMENTS) == gen_data.segments(SEGMENTS)
    assert gen_data.updates(50, 300) == gen_data.updates(50, 300)


def test_every_attribute_has_one_type() -> None:
    kinds = {"string": str, "number": float, "bool": bool, "timestamp": Timestamp}
    for batch in gen_data.people(500):
        for person in batch:
            for name, value in person.attributes.items():
                assert type(value) is kinds[gen_data.ATTRIBUTES[name]], (name, value)


def test_events_are_deterministic_typed_and_in_the_window() -> None:
    first = [e for batch in gen_data.events(300, chunk=100) for e in batch]
    again = [e for batch in gen_data.events(300) for e in batch]
    assert first == again
    assert all(len(b) <= 100 for b in gen_data.events(300, chunk=100))
    assert 5 * 300 < len(first) < 20 * 300
    kinds = {"string": str, "number": float, "bool": bool, "timestamp": Timestamp}
    for event in first:
        assert event.name in gen_data.EVENT_NAMES
        assert event.timestamp is not None
        oldest = gen_data.NOW - gen_data.EVENT_DAYS * gen_data.DAY
        assert oldest <= event.timestamp <= gen_data.NOW
        for name, value in event.properties.items():
            assert type(value) is kinds[gen_data.EVENT_PROPERTIES[name]], (name, value)
    assert {e.name for e in first} == set(gen_data.EVENT_NAMES)
    live = gen_data.live_events(100, 300, gen_data.NOW)
    assert live == gen_data.live_events(100, 300, gen_data.NOW)
    assert all(gen_data.NOW - 3600 < int(e.timestamp or 0) <= gen_data.NOW for e in live)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("bench")
    specs = gen_data.segments(SEGMENTS, events=EVENT_SEGMENTS)
    built = build(
        PEOPLE, specs, root, gen_data.DEFAULT_SEED, False, events_per_person=EVENTS_PER_PERSON
    )
    yield built
    built.engine.close(checkpoint=False)
    built.con.close()


def test_counts_agree_after_load(setup: Setup) -> None:
    kinds = {s.dynamic for s in setup.specs}
    assert kinds == {True, False}, "the sample should hold manual and dynamic segments"
    assert setup.events > 5 * PEOPLE
    mismatches, _ = verify(setup, setup.compiler(), "load")
    assert mismatches == []
    sizes = [setup.ws.get_segment(setup.sid(k)).member_count for k in range(SEGMENTS)]
    assert any(0 < n < PEOPLE for n in sizes)
    events = [k for k, s in enumerate(setup.specs) if is_event_spec(s)]
    assert len(events) == EVENT_SEGMENTS
    sizes = [setup.ws.get_segment(setup.sid(k)).member_count for k in events]
    # Most event segments hold some people but not everyone, at this size too.
    assert sum(0 < n < PEOPLE for n in sizes) >= EVENT_SEGMENTS * 3 // 4, sizes


def test_audience_agrees(setup: Setup) -> None:
    include, require, exclude = choose_audience(setup)
    spec = AudienceSpec(
        include=tuple(setup.sid(k) for k in include),
        require=tuple(setup.sid(k) for k in require),
        exclude=tuple(setup.sid(k) for k in exclude),
    )
    ours = len(setup.ws.audience(spec))
    theirs = peer.count(setup.con, peer.audience_sql(setup.compiler(), include, require, exclude))
    assert ours == theirs


def test_counts_agree_after_updates_and_time(setup: Setup) -> None:
    for stream in ("a", "b"):
        batch = gen_data.updates(300, PEOPLE, stream=stream)
        results = setup.ws.upsert_people(batch)
        assert all(not r.rejected for r in results)
        peer.apply_updates(setup.con, [(int(u.id[1:]), u) for u in batch])
    for upsert in gen_data.updates(20, PEOPLE, stream="single"):
        setup.ws.upsert_people([upsert])
        peer.apply_updates(setup.con, [(int(upsert.id[1:]), upsert)])
    assert verify(setup, setup.compiler(), "updates")[0] == []
    # New events while the segments are live: in batches, and one at a time.
    live = gen_data.live_events(3000, PEOPLE, setup.clock.now())
    for start in range(0, len(live), 1000):
        results = setup.ws.track_events(live[start : start + 1000])
        assert all(r.outcome == "tracked" for r in results)
    append_to_peer(setup, live, "live.tsv", setup.compiler(), ())
    for event in gen_data.live_events(20, PEOPLE, setup.clock.now(), stream="single"):
        assert setup.ws.track_events([event])[0].outcome == "tracked"
        peer.insert_events(setup.con, [event])
    assert verify(setup, setup.compiler(), "events")[0] == []
    setup.clock.advance(2 * gen_data.DAY)
    setup.ws.tick()
    assert verify(setup, setup.compiler(setup.clock.now()), "tick")[0] == []


def test_every_benchmark_script_imports() -> None:
    """Each benchmark script imports (a part that lost a name it takes from another, after a
    rename in one branch, raises ImportError here, not in the next long run)."""
    import importlib

    for name in ("bench_imports", "bench_ops", "bench_nats", "bench_relay"):
        importlib.import_module(name)
    assert callable(importlib.import_module("bench").main)
