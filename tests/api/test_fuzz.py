"""Fuzzing a real `segsvc serve` process, every method of the four segsvc services: no client
input may be answered INTERNAL or UNKNOWN, garbage must not grow the server, and the server
still shuts down cleanly on SIGTERM afterwards. The machinery is scripts/fuzz.py (its longer
run prints figures); this is the CI-sized run, about 3,000 calls in all.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import grpc
from server_harness import ServerProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from fuzz import Tally, measure_raw, run_generated, seed_data, segsvc_methods

RAW_PER_METHOD = 80
GENERATED_PER_METHOD = 40


def _no_internal(tally: Tally, server: ServerProcess) -> None:
    assert not tally.bad, "\n".join(tally.bad[:20]) + "\n" + server.log()[-10_000:]
    assert "internal error" not in server.log()


def test_every_method_has_a_fuzz_round() -> None:
    methods = segsvc_methods()
    assert len(methods) == 24
    assert {m.client_streaming for m in methods} == {True, False}
    assert {m.server_streaming for m in methods} == {True, False}


def test_random_bytes_to_every_method(
    server_processes: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_processes(tmp_path / "data")
    methods = segsvc_methods()
    with grpc.insecure_channel(server.address) as channel:
        seed_data(channel)
        tally, figures = measure_raw(server, channel, methods, per_method=RAW_PER_METHOD)
    assert tally.calls() == RAW_PER_METHOD * len(methods)
    assert set(tally.codes) == {m.name for m in methods}
    _no_internal(tally, server)
    # Each undecodable call used to keep ~19 KiB in grpc (36 MiB for these calls); now they
    # keep next to nothing. The bound leaves room for the allocator's own noise.
    grown = figures.rss_after - figures.rss_before
    assert grown < 12, f"{grown:.1f} MiB over {figures.calls} calls"
    assert server.terminate() == 0


def test_generated_messages_to_every_method(
    server_processes: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_processes(tmp_path / "data")
    methods = segsvc_methods()
    tally = Tally()
    with grpc.insecure_channel(server.address) as channel:
        seed_data(channel)
        run_generated(channel, methods, GENERATED_PER_METHOD, tally, fail_fast=True)
    assert set(tally.codes) == {m.name for m in methods}
    # Some generated requests get through validation (the fuzz reaches the engine).
    assert sum(codes["OK"] for codes in tally.codes.values()) > 0
    _no_internal(tally, server)
    assert server.terminate() == 0
