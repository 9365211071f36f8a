"""The benchmark's figures: rows of segsvc beside DuckDB with a ratio, a target and a
verdict, printed as they are measured and as one table at the end; the formatting of times and
rates, and the machine and code a run measured.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import psutil
import pyroaring

from segsvc.engine.conditions import (
    Group,
    Node,
    describe_node,
)


@dataclass
class Row:
    figure: str
    ours: str
    theirs: str = "-"
    ratio: str = ""
    target: str = ""
    verdict: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(
            f"  {row.figure}: segsvc {row.ours} | duckdb {row.theirs} {row.ratio} "
            f"{row.verdict}".rstrip(),
            flush=True,
        )

    def print(self, title: str) -> None:
        headers = ("figure", "segsvc", "duckdb", "ratio", "target", "")
        table = [headers] + [
            (r.figure, r.ours, r.theirs, r.ratio, r.target, r.verdict) for r in self.rows
        ]
        widths = [max(len(str(line[i])) for line in table) for i in range(len(headers))]
        print()
        print(title)
        for n, line in enumerate(table):
            print("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
            if n == 0:
                print("  ".join("-" * w for w in widths))
        for note in self.notes:
            print(f"note: {note}")
        if self.mismatches:
            print(f"\n!!! {len(self.mismatches)} MISMATCHES (segsvc vs DuckDB counts) OR FAILURES:")
            for m in self.mismatches:
                print(f"!!!   {m}")
        else:
            print("\nsegment and audience counts: segsvc == DuckDB everywhere checked")


def ms(seconds: float) -> str:
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def rate(n: float, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s" if seconds > 0 else "inf"


def pct(samples: Sequence[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def faster(ours: float, theirs: float) -> str:
    """How many times less time segsvc took."""
    if math.isnan(ours) or math.isnan(theirs):
        return "-"
    if ours <= 0:
        return "inf"
    ratio = theirs / ours
    return f"{ratio:,.1f}x" if ratio >= 1 else f"{ratio:.2g}x"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def describe(node: Node | None) -> str:
    """A condition tree in words, for notes."""
    if node is None:
        return "manual"
    if isinstance(node, Group):
        inner = ", ".join(describe(c) for c in node.children)
        return f"{describe_node(node)} ({inner})"
    return describe_node(node)


def revision() -> str:
    """The segsvc commit measured, and whether the engine's files differ from it (others
    change them while benchmarks run)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "segsvc"],
            cwd=repo,
            capture_output=True,
            text=True,
        ).stdout.split("\n")
    except OSError:
        return "unknown revision"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"segsvc {head}" + (f" + uncommitted {', '.join(changed)}" if changed else "")


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 1024**3
    with duckdb.connect() as con:
        row = con.execute("SELECT current_setting('threads')").fetchone()
        threads = row[0] if row else "?"
    return (
        f"{model}; {os.cpu_count()} logical cores ({psutil.cpu_count(logical=False)} physical); "
        f"{mem:.1f} GiB RAM; Python {platform.python_version()}; DuckDB {duckdb.__version__} "
        f"(threads {threads}); "
        f"pyroaring {pyroaring.__version__}; {platform.platform()}"
    )
