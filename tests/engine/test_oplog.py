"""The contract of segsvc.engine.oplog.OperationLog: what the commit path relies on from a
log. Every implementation must pass these (parametrise `log_for` to add one, as the
JetStream log will)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from segsvc.engine.oplog import LmdbOperationLog, OperationLog, load_state, replay_weight
from segsvc.engine.ops import CreateSegmentOp, MembersOp, Op, TickOp
from segsvc.engine.state import WorkspaceState
from segsvc.storage.errors import CorruptRecordError
from segsvc.storage.store import Store, prefix, u64

LogFor = Callable[[str], OperationLog]


@pytest.fixture(params=["lmdb"])
def log_for(request: pytest.FixtureRequest) -> LogFor:
    """A workspace's log by workspace name."""
    assert request.param == "lmdb"
    return lambda workspace: LmdbOperationLog(prefix(workspace))


def manual(sid: int) -> CreateSegmentOp:
    return CreateSegmentOp(100 + sid, sid, f"s{sid}", "", False, None)


def append_all(store: Store, log: OperationLog, ops: list[Op], first: int = 1) -> None:
    for seq, op in enumerate(ops, start=first):
        with store.write() as txn:
            log.append(txn, seq, op)


def test_records_read_back_in_order_after_a_sequence(store: Store, log_for: LogFor) -> None:
    log = log_for("w")
    ops: list[Op] = [manual(1), manual(2), TickOp(200, 50), MembersOp(300, 1, True, (0,))]
    append_all(store, log, ops)
    with store.read() as txn:
        assert list(log.read_from(txn, 0)) == list(enumerate(ops, start=1))
        assert list(log.read_from(txn, 2)) == [(3, ops[2]), (4, ops[3])]
        assert list(log.read_from(txn, 4)) == []


def test_a_record_is_kept_only_when_its_transaction_commits(store: Store, log_for: LogFor) -> None:
    log = log_for("w")
    with pytest.raises(RuntimeError), store.write() as txn:
        log.append(txn, 1, manual(1))
        raise RuntimeError("the write failed after the append")
    with store.read() as txn:
        assert list(log.read_from(txn, 0)) == []


def test_workspaces_have_separate_logs(store: Store, log_for: LogFor) -> None:
    # "w" is a prefix of "w2" as text: the logs must not overlap all the same.
    append_all(store, log_for("w"), [manual(1)])
    append_all(store, log_for("w2"), [manual(7), manual(8)])
    with store.read() as txn:
        assert [op for _, op in log_for("w").read_from(txn, 0)] == [manual(1)]
        assert [seq for seq, _ in log_for("w2").read_from(txn, 0)] == [1, 2]


def test_a_checkpoint_covers_its_records_and_replay_resumes_after_it(
    store: Store, log_for: LogFor
) -> None:
    log = log_for("w")
    ops: list[Op] = [manual(1), manual(2), manual(3)]
    append_all(store, log, ops)
    state = WorkspaceState()
    for seq, op in enumerate(ops[:2], start=1):
        state.apply(seq, op)
    with store.write() as txn:
        log.checkpoint(txn, state.to_bytes(), 2)
    with store.read() as txn:
        assert log.latest_checkpoint(txn).op_seq == 2
        assert list(log.read_from(txn, 0)) == [(3, ops[2])]  # the covered ones are gone
        rebuilt, replayed, weight = load_state(log, txn)
    assert (replayed, weight) == (1, replay_weight(ops[2]))
    assert rebuilt.op_seq == 3
    assert sorted(seg.name for seg in rebuilt.segments.values()) == ["s1", "s2", "s3"]


def test_before_any_checkpoint_the_state_is_empty(store: Store, log_for: LogFor) -> None:
    with store.read() as txn:
        state = log_for("w").latest_checkpoint(txn)
    assert state.op_seq == 0 and not state.segments


def test_a_damaged_record_is_reported_not_skipped(store: Store) -> None:
    # The damage is written under the LMDB log's own key layout.
    log = LmdbOperationLog(prefix("w"))
    append_all(store, log, [manual(1)])
    with store.write() as txn:
        txn.put("ops", prefix("w") + u64(2), b"\x00not a record")
    with store.read() as txn, pytest.raises(CorruptRecordError) as caught:
        load_state(log, txn)
    assert caught.value.table == "ops"
