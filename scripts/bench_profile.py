"""Profiles one engine operation over the benchmark's data, to show where the time goes.

Builds (or, with an existing --data folder, reopens) a workspace with N generated people,
their events and the benchmark's segments (the event segments included), then runs one phase
under cProfile and prints the top functions by cumulative and by own time:

    .venv/bin/python scripts/bench_profile.py --data /tmp/prof-1m --people 1000000 single
    .venv/bin/python scripts/bench_profile.py --data /tmp/prof-1m load --runs 5
    .venv/bin/python scripts/bench_profile.py --data /tmp/prof-1m track --runs 10

Phases: load (batches of 10k new people on top of the N), single (one-person updates),
batch (batches of 1000 updates), audience (10-segment audience counts), tick (time moves an
hour), checkpoint, restart (open the stored state), events (batches of 10k events of the
90 days, for --runs new people: bulk ingestion with the segments live), track (batches of
10k events of the last hour, segments live), track-one (one event per call), event-segment
(create each event segment again under a new name, then delete it), replay (after a
checkpoint, --runs batches of 10k events of the last hour; then close without a checkpoint,
as a crash does, and open the stored state: the replay of that log tail).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen_data
from bench_setup import WORKSPACE, open_engine
from gen_data import NOW

from segsvc.engine.clock import FakeClock
from segsvc.engine.conditions import (
    EventCondition,
    Group,
    MessageCondition,
    Node,
    PageViewCondition,
    Window,
)
from segsvc.engine.engine import Engine
from segsvc.engine.model import AudienceSpec, PersonKey
from segsvc.engine.values import Timestamp
from segsvc.engine.workspace import Workspace


def prepare(
    data: Path,
    people: int,
    segments: int,
    clock: FakeClock,
    events_per_person: float = 0.0,
    event_segments: int = 0,
) -> tuple[Engine, Workspace]:
    """The stored workspace, built on first use (people, their events, then segments and
    manual members)."""
    fresh = not data.exists()
    engine = open_engine(data, clock)
    ws = engine.workspace(WORKSPACE)
    if not fresh:
        print(f"reopened {data}: {len(ws.state.index.live):,} people", flush=True)
        return engine, ws
    t0 = time.perf_counter()
    for batch in gen_data.people(people):
        ws.upsert_people(batch)
    print(f"loaded {people:,} people in {time.perf_counter() - t0:.0f} s", flush=True)
    if events_per_person > 0:
        t0 = time.perf_counter()
        tracked = 0
        for events in gen_data.events(people, events_per_person):
            ws.track_events(events)
            tracked += len(events)
        print(f"tracked {tracked:,} events in {time.perf_counter() - t0:.0f} s", flush=True)
    ids: dict[int, int] = {}
    specs = gen_data.segments(segments, events=event_segments if events_per_person > 0 else 0)
    for k, spec in enumerate(specs):
        definition = gen_data.remap(spec.conditions, ids) if spec.conditions else None
        info = ws.create_segment(spec.name, "", spec.dynamic, definition)
        ids[k + 1] = info.id
        if not spec.dynamic:
            members = gen_data.manual_members(k, spec.manual_fraction, people)
            for start in range(0, len(members), 10_000):
                keys = [
                    PersonKey("id", gen_data.person_id(i)) for i in members[start : start + 10_000]
                ]
                ws.change_members(info.id, keys, True)
    engine.close()
    engine = open_engine(data, clock)
    return engine, engine.workspace(WORKSPACE)


def fresh_windows(node: Node) -> Node:
    """The definition with every event window one second longer ("ever" becomes all time
    as a between), so that its event leaves are not the ones live segments already keep."""
    if isinstance(node, Group):
        return Group(node.combinator, tuple(fresh_windows(c) for c in node.children), node.negate)
    if isinstance(node, EventCondition | PageViewCondition | MessageCondition):
        w = node.window
        if w.within_last_seconds is not None:
            window = Window(w.within_last_seconds + 1)
        elif w.start is not None and w.end is not None:
            window = Window(None, w.start, Timestamp(int(w.end) + 1))
        else:
            window = Window(None, Timestamp(0), Timestamp(2**40))
        return dataclasses.replace(node, window=window)
    return node


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "phase",
        choices=[
            "load",
            "single",
            "batch",
            "audience",
            "tick",
            "checkpoint",
            "restart",
            "events",
            "track",
            "track-one",
            "event-segment",
            "replay",
        ],
    )
    parser.add_argument("--data", required=True, help="workspace folder (built when missing)")
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--segments", type=int, default=100)
    parser.add_argument(
        "--events-per-person",
        type=float,
        default=gen_data.EVENTS_PER_PERSON,
        help="events generated per person when the folder is built (0: none)",
    )
    parser.add_argument("--event-segments", type=int, default=20)
    parser.add_argument("--runs", type=int, default=0, help="repetitions (phase default)")
    parser.add_argument("--top", type=int, default=35)
    args = parser.parse_args()
    clock = FakeClock(NOW)
    engine, ws = prepare(
        Path(args.data),
        args.people,
        args.segments,
        clock,
        args.events_per_person,
        args.event_segments,
    )
    population = len(ws.state.index.live)
    profiler = cProfile.Profile()
    samples: list[float] = []
    unit: float = 1

    def measure(fn: object) -> None:
        t0 = time.perf_counter()
        profiler.runcall(fn)  # type: ignore[arg-type]
        samples.append(time.perf_counter() - t0)

    phase = args.phase
    if phase == "load":
        # New people on top of the stored ones: the cost at this size, not from empty.
        first = max(population, args.people)
        for batch in gen_data.people((args.runs or 5) * 10_000, first=first):
            measure(lambda b=batch: ws.upsert_people(b))
        unit = 10_000
    elif phase == "single":
        stream = f"profile-single-{time.time_ns()}"
        for upsert in gen_data.updates(args.runs or 300, population, stream=stream):
            measure(lambda u=upsert: ws.upsert_people([u]))
        unit = 1
    elif phase == "batch":
        for b in range(args.runs or 5):
            work = gen_data.updates(1000, population, stream=f"profile-batch-{time.time_ns()}-{b}")
            measure(lambda w=work: ws.upsert_people(w))
        unit = 1000
    elif phase == "audience":
        dynamic = sorted(
            (len(s.members), sid) for sid, s in ws.state.segments.items() if s.dynamic and s.members
        )
        n = len(dynamic)
        spec = AudienceSpec(
            include=tuple(dynamic[n // 2 + 3 * i][1] for i in range(4)),
            require=(dynamic[-3][1], dynamic[-4][1]),
            exclude=tuple(dynamic[n // 5 + 2 * i][1] for i in range(4)),
        )
        for _ in range(args.runs or 300):
            measure(lambda: ws.audience(spec))
        unit = 1
    elif phase == "tick":
        for _ in range(args.runs or 3):
            clock.advance(3600)
            measure(ws.tick)
        unit = 1
    elif phase == "events":
        # New people carry these events (created first, not profiled): bulk ingestion of
        # the 90 days of history with every segment live.
        first = max(population, args.people)
        end = first + (args.runs or 5000)
        for carriers in gen_data.people(end - first, first=first):
            ws.upsert_people(carriers)
        tracked = 0
        for events in gen_data.events(end, args.events_per_person or 10.0, first=first):
            measure(lambda b=events: ws.track_events(b))
            tracked += len(events)
        unit = tracked / max(1, len(samples))
    elif phase == "track":
        stream = f"profile-track-{time.time_ns()}"
        count = (args.runs or 10) * 10_000
        live = gen_data.live_events(count, population, clock.now(), stream=stream)
        for start in range(0, len(live), 10_000):
            measure(lambda b=live[start : start + 10_000]: ws.track_events(b))
        unit = 10_000
    elif phase == "track-one":
        stream = f"profile-one-{time.time_ns()}"
        for event in gen_data.live_events(args.runs or 300, population, clock.now(), stream=stream):
            measure(lambda e=event: ws.track_events([e]))
        unit = 1
    elif phase == "event-segment":
        specs = gen_data.segments(args.segments, events=args.event_segments)
        tag = time.time_ns()
        for event_spec in specs:
            if not event_spec.name.startswith("event-") or event_spec.conditions is None:
                continue
            # Spec k got segment id k + 1 in the workspace prepare() built, so the placeholder
            # references are the stored ids; fresh windows make every event leaf a new one.
            created: list[int] = []
            definition = fresh_windows(event_spec.conditions)
            measure(
                lambda d=definition, n=f"{event_spec.name}-again-{tag}", h=created: h.append(
                    ws.create_segment(n, "", True, d).id
                )
            )
            ws.delete_segments(created)
        unit = 1
    elif phase == "replay":
        ws.checkpoint()
        count = (args.runs or 50) * 10_000
        stream = f"profile-replay-{time.time_ns()}"
        live = gen_data.live_events(count, population, clock.now(), stream=stream)
        for start in range(0, len(live), 10_000):
            ws.track_events(live[start : start + 10_000])
        engine.close(checkpoint=False)
        reopened: list[Engine] = []
        measure(lambda: reopened.append(open_engine(Path(args.data), clock)))
        reopened[0].workspace(WORKSPACE).checkpoint()
        reopened[0].close(checkpoint=False)
        unit = count
    elif phase == "checkpoint":
        for _ in range(args.runs or 2):
            measure(ws.checkpoint)
        unit = 1
    else:
        engine.close(checkpoint=False)
        for _ in range(args.runs or 2):
            holder: list[Engine] = []
            measure(lambda h=holder: h.append(open_engine(Path(args.data), clock)))
            holder[0].close(checkpoint=False)
        unit = 1
    ordered = sorted(samples)
    print(
        f"{phase}: {len(samples)} runs over {population:,} people; per run median "
        f"{statistics.median(samples) * 1000:.2f} ms, p99 "
        f"{ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] * 1000:.2f} ms, "
        f"max {ordered[-1] * 1000:.2f} ms; {unit * len(samples) / sum(samples):,.0f} items/s"
    )
    for key in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(key).print_stats(args.top)
        print(out.getvalue())
    if phase not in ("restart", "replay"):
        engine.close(checkpoint=False)


if __name__ == "__main__":
    main()
