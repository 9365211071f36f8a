"""The contract of segsvc.engine.oplog.OperationLog: what the commit path relies on from a
log. Every implementation passes these: the embedded LMDB log, and the JetStream log against
a real nats-server (tests/nats_harness.py). Where the two differ on purpose (when a record
becomes durable), each has its own test below the contract."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterator

import pytest
from nats_harness import NatsServer

from segsvc.engine.errors import ConcurrentWrite
from segsvc.engine.jetstream_log import JetStreamOperationLog, open_stream, subject_token
from segsvc.engine.oplog import LmdbOperationLog, OperationLog, load_state, replay_weight
from segsvc.engine.ops import CreateSegmentOp, MembersOp, Op, TickOp
from segsvc.engine.state import WorkspaceState
from segsvc.storage.errors import CorruptRecordError
from segsvc.storage.nats import JetStream, NatsOptions
from segsvc.storage.store import Store, prefix, u64

LogFor = Callable[[str], OperationLog]


@pytest.fixture(params=["lmdb", "jetstream"])
def log_for(request: pytest.FixtureRequest) -> Iterator[LogFor]:
    """A workspace's log by workspace name."""
    if request.param == "lmdb":
        yield lambda workspace: LmdbOperationLog(prefix(workspace))
        return
    js: JetStream = request.getfixturevalue("js")
    yield lambda workspace: JetStreamOperationLog(js, workspace, prefix(workspace))


def connect(server: NatsServer) -> JetStream:
    js = JetStream(NatsOptions((server.url,)))
    open_stream(js)
    return js


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


def test_an_embedded_record_is_kept_only_when_its_transaction_commits(store: Store) -> None:
    log = LmdbOperationLog(prefix("w"))
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
        # The covered ones are not replayed (the LMDB log drops them; the stream keeps them).
        assert list(log.read_from(txn, 0)) == [(3, ops[2])]
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


def test_a_checkpoint_survives_a_new_log_object(store: Store, log_for: LogFor) -> None:
    # What a restart does: a new log (and, for JetStream, a new connection) finds where the
    # checkpoint left off and replays only what came after.
    log = log_for("w")
    ops: list[Op] = [manual(1), manual(2), manual(3), manual(4)]
    append_all(store, log, ops[:2])
    state = WorkspaceState()
    for seq, op in enumerate(ops[:2], start=1):
        state.apply(seq, op)
    with store.write() as txn:
        log.checkpoint(txn, state.to_bytes(), 2)
    append_all(store, log, ops[2:], first=3)
    with store.read() as txn:
        rebuilt, replayed, _ = load_state(log_for("w"), txn)
    assert (rebuilt.op_seq, replayed) == (4, 2)
    assert sorted(seg.name for seg in rebuilt.segments.values()) == ["s1", "s2", "s3", "s4"]


# -- JetStream only -------------------------------------------------------------------------


@pytest.fixture
def js(nats_server: NatsServer) -> Iterator[JetStream]:
    connection = connect(nats_server)
    try:
        yield connection
    finally:
        connection.close()


def test_an_acknowledged_record_stays_when_the_local_transaction_fails(
    store: Store, js: JetStream
) -> None:
    # Unlike the LMDB log, the stream holds the record once append returned: a node that
    # dies before its LMDB commit replays it at the next start.
    log = JetStreamOperationLog(js, "w", prefix("w"))
    with pytest.raises(RuntimeError), store.write() as txn:
        log.append(txn, 1, manual(1))
        raise RuntimeError("the write failed after the append")
    with store.read() as txn:
        assert list(JetStreamOperationLog(js, "w", prefix("w")).read_from(txn, 0)) == [
            (1, manual(1))
        ]


def test_a_node_that_missed_a_record_is_refused_and_stores_nothing(
    store: Store, js: JetStream
) -> None:
    node_a = JetStreamOperationLog(js, "w", prefix("w"))
    node_b = JetStreamOperationLog(js, "w", prefix("w"))
    append_all(store, node_a, [manual(1)])
    with pytest.raises(ConcurrentWrite, match="another node wrote to workspace 'w' first"):
        append_all(store, node_b, [manual(9)])
    with store.read() as txn:
        # Caught up, node B writes record 2 after A's record 1.
        assert [seq for seq, _ in node_b.read_from(txn, 0)] == [1]
    append_all(store, node_b, [manual(2)], first=2)
    with store.read() as txn:
        assert list(node_a.read_from(txn, 0)) == [(1, manual(1)), (2, manual(2))]


def test_a_record_larger_than_one_message_goes_in_parts(store: Store, js: JetStream) -> None:
    log = JetStreamOperationLog(js, "w", prefix("w"))
    # Random text: compression cannot bring it under one message.
    noise = base64.b64encode(os.urandom(3 * js.max_payload)).decode()
    big = CreateSegmentOp(1, 1, "big", noise, False, None)
    append_all(store, log, [big, manual(2)])
    assert len(list(js.read(log.stream, log.subject, 0))) > 3
    with store.read() as txn:
        assert list(JetStreamOperationLog(js, "w", prefix("w")).read_from(txn, 0)) == [
            (1, big),
            (2, manual(2)),
        ]


def test_a_record_cut_short_is_dropped_and_the_next_writer_follows_it(
    store: Store, js: JetStream
) -> None:
    # A writer died between the parts of record 2: readers drop the part, and a node that
    # read it writes record 2 after it.
    log = JetStreamOperationLog(js, "w", prefix("w"))
    append_all(store, log, [manual(1)])
    js.publish(
        log.subject,
        b"half",
        {
            "Segsvc-Op-Seq": "2",
            "Segsvc-Part": "0/2",
            "Nats-Expected-Last-Subject-Sequence": str(log.tail),
        },
    )
    other = JetStreamOperationLog(js, "w", prefix("w"))
    with store.read() as txn:
        assert [seq for seq, _ in other.read_from(txn, 0)] == [1]
    append_all(store, other, [manual(2)], first=2)
    with store.read() as txn:
        assert list(JetStreamOperationLog(js, "w", prefix("w")).read_from(txn, 0)) == [
            (1, manual(1)),
            (2, manual(2)),
        ]


def test_a_damaged_record_in_the_stream_is_reported(store: Store, js: JetStream) -> None:
    log = JetStreamOperationLog(js, "w", prefix("w"))
    append_all(store, log, [manual(1)])
    js.publish(log.subject, b"\x00not a record", {"Segsvc-Op-Seq": "2"})
    with store.read() as txn, pytest.raises(CorruptRecordError) as caught:
        load_state(JetStreamOperationLog(js, "w", prefix("w")), txn)
    assert caught.value.table == "ops" and "SEGSVC_OPS" in caught.value.key


def test_workspace_names_become_distinct_subject_tokens() -> None:
    assert subject_token("default") == "default"
    assert subject_token("a.b") != subject_token("a_b")
    assert "." not in subject_token("a.b") and subject_token("a.b").startswith("~")


def test_a_large_record_goes_compressed_and_reads_back_the_same(
    store: Store, js: JetStream
) -> None:
    log = JetStreamOperationLog(js, "w", prefix("w"))
    large = CreateSegmentOp(1, 1, "large", "y" * (2 * js.max_payload), False, None)
    append_all(store, log, [large])
    messages = list(js.read(log.stream, log.subject, 0))
    assert [m.headers.get("Segsvc-Encoding") for m in messages] == ["zlib"]
    with store.read() as txn:
        assert list(JetStreamOperationLog(js, "w", prefix("w")).read_from(txn, 0)) == [(1, large)]
