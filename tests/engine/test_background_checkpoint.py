"""Checkpoints taken from a snapshot while writes go on: the snapshot keeps the state as it
was, and a restart from a checkpoint written in the background, plus the log after it, is
the state a full rebuild from the log makes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_harness import Harness, all_members, harness, replay_feed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import STARTS
from test_jetstream_rebuild import RETAIN_ALL, Step, histories, run, state_parts

from segsvc.engine import core as core_module
from segsvc.engine.oplog import is_checkpoint_part
from segsvc.engine.people import PersonUpsert
from segsvc.engine.workspace import Workspace
from segsvc.storage.store import Store

# No automatic checkpoint: the tests say when one starts.
NEVER = 10**9


def everything(ws: Workspace) -> dict[str, Any]:
    # Deleted people's events leave memory at a compaction, which runs on its own schedule.
    ws.compact_events(force=True)
    _, changes = replay_feed(ws)
    return {
        "memberships": all_members(ws),
        "feed": [(c.seq, c.segment_id, c.person_id, c.entered, c.cause) for c in changes],
        **state_parts(ws),
    }


class HeldStaging:
    """Holds a background checkpoint before it stages its parts, until `release`: the test
    writes meanwhile, as writers do while a large checkpoint is packed and stored."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.released = threading.Event()
        self.reached = threading.Event()
        stage = core_module.stage_checkpoint

        def held(store: Store, workspace_prefix: bytes, parts: list[bytes]) -> bytes:
            self.reached.set()
            assert self.released.wait(30)
            return stage(store, workspace_prefix, parts)

        monkeypatch.setattr(core_module, "stage_checkpoint", held)

    def release(self) -> None:
        self.released.set()


@pytest.fixture
def hold(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldStaging]:
    held = HeldStaging(monkeypatch)
    yield held
    held.release()  # a failing test must not leave the checkpoint thread waiting


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=st.sampled_from(STARTS), data=st.data())
def test_a_snapshot_packs_the_state_as_it_was_whatever_writes_follow(
    start: int, data: st.DataObject
) -> None:
    before: list[Step] = data.draw(histories(start))
    after: list[Step] = data.draw(histories(start))
    with harness(start, checkpoint_every_ops=NEVER) as h:
        run(h.ws, h.clock, before)
        expected = h.ws.state.to_bytes()
        snapshot = h.ws.state.snapshot()
        run(h.ws, h.clock, after)
        assert snapshot.to_bytes() == expected


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=st.sampled_from(STARTS), data=st.data())
def test_a_restart_from_a_background_checkpoint_equals_a_full_rebuild(
    start: int, data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    before: list[Step] = data.draw(histories(start))
    during: list[Step] = data.draw(histories(start))
    with pytest.MonkeyPatch.context() as monkeypatch:
        hold = HeldStaging(monkeypatch)
        config = {"checkpoint_every_ops": NEVER, "change_retention_seconds": RETAIN_ALL}
        with harness(start, **config) as h, harness(start, **config) as full:
            try:
                run(h.ws, h.clock, before)
                run(full.ws, full.clock, before)
                covered = h.ws.state.op_seq
                with h.ws.core.lock:
                    assert h.ws.core.start_checkpoint()
                assert hold.reached.wait(30)
                # Writes go on while the checkpoint waits to be stored.
                run(h.ws, h.clock, during)
                run(full.ws, full.clock, during)
            finally:
                hold.release()
            h.ws.core.finish_checkpoint()
            assert logged_after(h) == covered
            # As after a crash: no checkpoint on the way down.
            h.reopen(checkpoint=False)
            full.reopen(checkpoint=False)
            assert h.ws.state.op_seq == full.ws.state.op_seq
            assert everything(h.ws) == everything(full.ws)


def logged_after(h: Harness) -> int:
    """The sequence before the first record still in the log (what the checkpoint covers)."""
    ws = h.ws
    with ws.store.read() as txn:
        first = next(ws.core.oplog.read_from(txn, 0), None)
    return ws.state.op_seq if first is None else first[0] - 1


def test_writes_commit_while_a_checkpoint_waits_and_it_covers_only_what_came_before(
    h: Harness, hold: HeldStaging
) -> None:
    ws = h.ws
    ws.upsert_people([PersonUpsert(f"p{i}", attributes={"n": float(i)}) for i in range(50)])
    covered = ws.state.op_seq
    with ws.core.lock:
        assert ws.core.start_checkpoint()
        # One at a time: a second one waits for the first to be stored.
        assert not ws.core.start_checkpoint()
    assert hold.reached.wait(30)
    for i in range(50, 60):
        ws.upsert_people([PersonUpsert(f"p{i}", attributes={"n": float(i)})])
    assert ws.state.op_seq == covered + 10
    hold.release()
    ws.core.finish_checkpoint()
    assert logged_after(h) == covered
    assert ws.core.items_since_checkpoint == 10
    h.reopen(checkpoint=False)
    assert len(h.ws.state.index.live) == 60


def test_a_failed_checkpoint_keeps_the_log_and_the_next_one_stores_it(
    tmp_path: Path, h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = h.ws
    ws.upsert_people([PersonUpsert(f"p{i}") for i in range(20)])
    stage = core_module.stage_checkpoint

    def failing(store: Store, workspace_prefix: bytes, parts: list[bytes]) -> bytes:
        stage(store, workspace_prefix, parts)  # parts staged, then the process "fails"
        raise RuntimeError("disk went away")

    monkeypatch.setattr(core_module, "stage_checkpoint", failing)
    assert not ws.checkpoint()
    assert logged_after(h) == 0
    monkeypatch.setattr(core_module, "stage_checkpoint", stage)
    assert ws.checkpoint()
    assert logged_after(h) == ws.state.op_seq
    with ws.store.read() as txn:
        parts = [k for k, _ in txn.scan("checkpoints", b"default\x00") if is_checkpoint_part(k)]
    # Only the stored checkpoint's parts (one stamp): the failed one's went with it.
    stamps = {key[:-4] for key in parts}
    assert len(stamps) == 1, parts
    h.reopen(checkpoint=False)
    assert len(h.ws.state.index.live) == 20
