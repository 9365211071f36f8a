"""The CLI against a real `segsvc serve`: `segsvc members import` of an N-row CSV, timed end
to end, with the server's resident memory sampled throughout.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import bench_duckdb as peer
import gen_data
import psutil
from bench_report import Report, Row, faster, ms, rate, timed, verdict
from bench_setup import WORKSPACE, Setup, anon_bytes, open_engine


def _segsvc_command() -> list[str] | None:
    script = Path(sys.executable).with_name("segsvc")
    return [str(script)] if script.exists() else None


class _MemoryWatch:
    """Samples a process's resident memory every 50 ms; remembers the peak."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        rss = int(self.process.memory_info().rss)
        self.peak = max(self.peak, rss)
        return rss

    def anon(self) -> int:
        return anon_bytes(self.process)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.now()
            except psutil.Error:
                return

    def __enter__(self) -> _MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _start_segsvc_serve(
    command: list[str], data: Path, log: Path
) -> tuple[subprocess.Popen[str], int, float]:
    """`segsvc serve` on a free loopback port; returns the process, the port and the seconds
    until it printed that it listens. The ticker is slowed to a day: the server runs on
    today's clock, and a tick would move the data's time windows (and drop its events, which
    are older than the retention by today's clock) in the middle of the measurement."""
    t0 = time.perf_counter()
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [*command, "serve", "--data", str(data), "--listen", "127.0.0.1:0",
             "--tick-seconds", "86400"],
            stdout=subprocess.DEVNULL,
            stderr=sink,
            text=True,
        )  # fmt: skip
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if "listening on" in line:
                port = int(line.split("listening on ", 1)[1].split()[0].rsplit(":", 1)[1])
                return proc, port, time.perf_counter() - t0
        if proc.poll() is not None:
            raise RuntimeError(f"segsvc serve exited {proc.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    proc.terminate()
    raise RuntimeError("segsvc serve did not start listening in 10 minutes")


def bench_cli_import(setup: Setup, report: Report, seed: int) -> None:
    """`segsvc members import SEGMENT FILE --by id --header` of an N-row CSV (every person,
    in a shuffled order) into a manual segment, the real CLI against a real server process;
    and that server's resident memory. DuckDB's peer: read_csv of the same file joined to
    the people."""
    command = _segsvc_command()
    if command is None:
        report.notes.append(f"CLI figures skipped: no segsvc script beside {sys.executable}")
        return
    name = "bench-import"
    segment = setup.ws.create_segment(name, "", False, None).id
    order = list(range(setup.people))
    random.Random(f"{seed}:cli-import").shuffle(order)
    csv_path = setup.data_dir / "members.csv"
    with csv_path.open("w") as out:
        out.write("id\n")
        for start in range(0, len(order), 100_000):
            out.write("".join(gen_data.person_id(i) + "\n" for i in order[start : start + 100_000]))
    setup.engine.close()
    log = setup.data_dir / "segsvc-serve.log"
    proc, port, ready = _start_segsvc_serve(command, setup.data_dir / "segsvc", log)
    mib = 2**20
    try:
        with _MemoryWatch(proc.pid) as memory:
            started, started_anon = memory.now(), memory.anon()
            cli = [*command, "--server", f"127.0.0.1:{port}", "members", "import", name]
            cli += [str(csv_path), "--by", "id", "--header"]
            elapsed, done = timed(
                lambda: subprocess.run(cli, capture_output=True, text=True, check=False)
            )
            after, after_anon = memory.now(), memory.anon()
    finally:
        proc.terminate()
        proc.wait(timeout=300)
    if done.returncode != 0:
        report.mismatches.append(
            f"segsvc members import exited {done.returncode}: {done.stderr[-1000:]}"
        )
    setup.engine = open_engine(setup.data_dir / "segsvc", setup.clock)
    setup.ws = setup.engine.workspace(WORKSPACE)
    added = setup.ws.get_segment(segment).member_count
    if added != setup.people:
        report.mismatches.append(f"CLI import: {added} members of {setup.people}")
    theirs, _ = timed(
        lambda: setup.con.execute(
            "CREATE TEMP TABLE imported AS SELECT p.pid FROM read_csv("
            f"'{csv_path}', header=true, auto_detect=false, columns={{'id': 'VARCHAR'}}) c "
            "JOIN people p ON p.id = c.id"
        )
    )
    duck = peer.count(setup.con, "pid IN (SELECT pid FROM imported)")
    setup.con.execute("DROP TABLE imported")
    if duck != setup.people:
        report.mismatches.append(f"DuckDB CSV import: {duck} members of {setup.people}")
    csv_path.unlink()
    report.add(
        Row(
            f"CLI: segsvc members import of a {setup.people:,}-row CSV (--by id --header) "
            "into segsvc serve",
            f"{ms(elapsed)} ({rate(setup.people, elapsed)})",
            f"{ms(theirs)} (read_csv + join)",
            faster(elapsed, theirs),
            "1M in < 15 s",
            verdict(elapsed * 1_000_000 / setup.people < 15),
        )
    )
    report.add(
        Row(
            "segsvc serve: start until listening (new process, after a checkpoint)",
            ms(ready),
            "",
            "",
            "< 3 s",
            verdict(ready < 3),
        )
    )
    report.add(
        Row(
            f"resident memory of segsvc serve at {setup.people:,} people"
            + (f" and {setup.events:,}+ events" if setup.events else "")
            + ": RSS started / after the import (peak); own started / after",
            f"{started / mib:,.0f} / {after / mib:,.0f} ({memory.peak / mib:,.0f}) MiB; "
            f"{started_anon / mib:,.0f} / {after_anon / mib:,.0f} MiB",
            "",
            "",
            "< 1 GiB",
            verdict(memory.peak < 2**30),
        )
    )
