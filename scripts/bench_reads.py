"""Read figures: creating segments, counting dynamic and event segments, and counting a
10-segment audience, each beside DuckDB answering the same question.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import bench_duckdb as peer
import gen_data
from bench_report import Report, Row, describe, faster, ms, pct, timed, verdict
from bench_setup import Setup, choose_audience, is_event_spec
from gen_data import DAY

from segsvc.engine.conditions import (
    AttributeCondition,
    Group,
    Node,
    TagCondition,
)
from segsvc.engine.model import AudienceSpec


def five_condition(variant: int, pools: gen_data.Pools) -> Node:
    """A 5-condition dynamic segment with operands none of the 100 segments use, so that all
    its leaves are new (nothing is shared with existing segments)."""
    countries = pools.country.values
    return Group(
        "all",
        (
            AttributeCondition(
                "one_of", attribute="country", values=tuple(countries[2 + variant : 5 + variant])
            ),
            AttributeCondition("between", attribute="age", value=25.0 + variant, upper=47.0),
            AttributeCondition("greater_than", attribute="lifetime_value", value=1234.56 + variant),
            AttributeCondition(
                "within_last", attribute="last_login", seconds=(20 + variant) * DAY + 17
            ),
            TagCondition(gen_data.TAG_NAMES[1 + variant], negate=True),
        ),
    )


def bench_create(setup: Setup, report: Report, runs: int = 5) -> None:
    pools = gen_data.pools()
    ours: list[float] = []
    theirs: list[float] = []
    compiler = setup.compiler()
    for v in range(runs):
        node = five_condition(v, pools)
        elapsed, info = timed(
            lambda n=node, v=v: setup.ws.create_segment(f"bench-five-{v}", "", True, n)
        )
        ours.append(elapsed)
        where = compiler.where(node)
        t, _ = timed(
            lambda w=where: setup.con.execute(
                f"CREATE TEMP TABLE five AS SELECT pid FROM people WHERE {w}"
            )
        )
        theirs.append(t)
        duck = peer.count(setup.con, "pid IN (SELECT pid FROM five)")
        setup.con.execute("DROP TABLE five")
        if duck != info.member_count:
            report.mismatches.append(
                f"5-condition segment {v}: segsvc {info.member_count}, DuckDB {duck}"
            )
        setup.ws.delete_segments([info.id])
    report.add(
        Row(
            "create a 5-condition dynamic segment (median / max of 5)",
            f"{ms(statistics.median(ours))} / {ms(max(ours))}",
            f"{ms(statistics.median(theirs))} / {ms(max(theirs))}",
            faster(statistics.median(ours), statistics.median(theirs)),
            "< 100 ms",
            verdict(max(ours) < 0.1),
        )
    )


def count_samples(setup: Setup, indices: Sequence[int], rounds: int) -> list[float]:
    """Seconds of `rounds` member counts of each of the segments (spec indices)."""
    samples: list[float] = []
    get = setup.ws.get_segment
    for _ in range(rounds):
        for k in indices:
            sid = setup.sid(k)
            t0 = time.perf_counter()
            get(sid).member_count  # noqa: B018
            samples.append(time.perf_counter() - t0)
    return samples


def bench_counts(setup: Setup, report: Report, duck_by_spec: dict[int, float], rounds: int) -> None:
    """Counts of the attribute-level dynamic segments (the event ones have their own row)."""
    chosen = [k for k, s in enumerate(setup.specs) if s.dynamic and not is_event_spec(s)]
    samples = count_samples(setup, chosen, rounds)
    duck_times = [duck_by_spec[k] for k in chosen]
    p50, p99 = pct(samples, 50), pct(samples, 99)
    d50, d99 = pct(duck_times, 50), pct(duck_times, 99)
    setup.duck_count_p50 = d50
    report.add(
        Row(
            f"count a dynamic segment p50 / p99 ({len(samples)} / {len(duck_times)} runs)",
            f"{ms(p50)} / {ms(p99)}",
            f"{ms(d50)} / {ms(d99)}",
            faster(p50, d50),
            "< 1 ms, >= 50x",
            verdict(p99 < 0.001 and d50 / p50 >= 50),
        )
    )


def event_indices(setup: Setup) -> list[int]:
    return [k for k, s in enumerate(setup.specs) if is_event_spec(s)]


def bench_event_segments(
    setup: Setup, report: Report, duck_by_spec: dict[int, float], rounds: int
) -> None:
    """Creation (the first count over the whole log, timed in build) and counts of the
    event segments, beside DuckDB materialising and counting the same members."""
    chosen = event_indices(setup)
    if not chosen:
        return
    created = dict(zip(setup.create_names, setup.create_seconds, strict=True))
    ours = [created[setup.specs[k].name] for k in chosen]
    compiler = setup.compiler()
    theirs: list[float] = []
    for k in chosen:
        where = compiler.segment(k)
        elapsed, _ = timed(
            lambda w=where: setup.con.execute(
                f"CREATE TEMP TABLE ev AS SELECT pid FROM people WHERE {w}"
            )
        )
        setup.con.execute("DROP TABLE ev")
        theirs.append(elapsed)
    m_ours, m_theirs = statistics.median(ours), statistics.median(theirs)
    report.add(
        Row(
            f"create an event segment over {setup.events:,} events: median / max of {len(chosen)}",
            f"{ms(m_ours)} / {ms(max(ours))}",
            f"{ms(m_theirs)} / {ms(max(theirs))}",
            faster(m_ours, m_theirs),
            "< 100 ms",
            verdict(max(ours) < 0.1),
        )
    )
    slowest = sorted(zip(ours, chosen, strict=True), reverse=True)[:3]
    report.notes.append(
        "slowest event segment creations: "
        + "; ".join(
            f"{setup.specs[k].name} {ms(t)}: {describe(setup.specs[k].conditions)}"
            for t, k in slowest
        )
    )
    samples = count_samples(setup, chosen, rounds)
    duck = [duck_by_spec[k] for k in chosen]
    p50, p99 = pct(samples, 50), pct(samples, 99)
    d50, d99 = pct(duck, 50), pct(duck, 99)
    report.add(
        Row(
            f"count an event segment p50 / p99 ({len(samples)} / {len(duck)} runs)",
            f"{ms(p50)} / {ms(p99)}",
            f"{ms(d50)} / {ms(d99)}",
            faster(p50, d50),
            "< 1 ms, >= 50x",
            verdict(p99 < 0.001 and d50 / p50 >= 50),
        )
    )
    sizes = ", ".join(
        f"{setup.specs[k].name} {setup.ws.get_segment(setup.sid(k)).member_count:,}" for k in chosen
    )
    report.notes.append(f"event segment sizes after load: {sizes}")


def bench_audience(setup: Setup, report: Report, rounds: int = 300) -> None:
    include, require, exclude = choose_audience(setup)
    spec = AudienceSpec(
        include=tuple(setup.sid(k) for k in include),
        require=tuple(setup.sid(k) for k in require),
        exclude=tuple(setup.sid(k) for k in exclude),
    )
    samples = []
    size = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        size = len(setup.ws.audience(spec))
        samples.append(time.perf_counter() - t0)
    where = peer.audience_sql(setup.compiler(), include, require, exclude)
    duck = []
    theirs = 0
    for _ in range(5):
        elapsed, theirs = timed(lambda: peer.count(setup.con, where))
        duck.append(elapsed)
    if size != theirs:
        report.mismatches.append(f"10-segment audience: segsvc {size}, DuckDB {theirs}")
        print(f"!!! MISMATCH audience: segsvc {size}, DuckDB {theirs}", flush=True)
    p50, p99 = pct(samples, 50), pct(samples, 99)
    d50 = setup.duck_audience_p50 = statistics.median(duck)
    report.add(
        Row(
            f"count a 10-segment audience p50 / p99 ({size:,} people)",
            f"{ms(p50)} / {ms(p99)}",
            f"{ms(d50)} / {ms(max(duck))}",
            faster(p50, d50),
            "< 1 ms, >= 50x",
            verdict(p99 < 0.001 and d50 / p50 >= 50),
        )
    )
