"""A node that joins after the stream dropped a workspace's first records (retention, or an
operator's purge) starts from the checkpoint another node published to JetStream's object
store, then reads the stream after it: it stores the same people rows, lookups and change
feed, and holds the same memberships and events, as the writer, on random histories of
every kind of write. Without a published checkpoint that covers the gap it refuses to start,
naming the gap."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from engine_harness import all_members, make_config, replay_feed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import STARTS
from test_jetstream_rebuild import RETAIN_ALL, _workspaces, histories, run, stored

from segsvc.engine.clock import FakeClock
from segsvc.engine.jetstream_log import DEFAULT_STREAM, JetStreamOperationLog
from segsvc.engine.people import PersonUpsert
from segsvc.engine.shared_checkpoints import CheckpointPublisher, Covered, bucket_for
from segsvc.engine.workspace import Workspace
from segsvc.storage.errors import CorruptRecordError
from segsvc.storage.nats import JetStream
from segsvc.storage.store import Store, prefix

pytest_plugins = ["test_jetstream_rebuild"]


def open_node(
    data_dir: Path, js: JetStream, workspace: str, clock: FakeClock, publisher: CheckpointPublisher
) -> Workspace:
    config = make_config(data_dir, change_retention_seconds=RETAIN_ALL)
    store = Store(data_dir, config.map_size)
    oplog = JetStreamOperationLog(js, workspace, prefix(workspace), DEFAULT_STREAM, publisher)
    return Workspace(workspace, store, clock, config, oplog)


def checkpoint_and_publish(ws: Workspace, publisher: CheckpointPublisher) -> Covered:
    assert ws.checkpoint()
    assert publisher.wait(60)
    found = Covered.parse(publisher.js.object_description(publisher.bucket, ws.name))
    assert found is not None and found.op_seq == ws.state.op_seq
    return found


def drop_before(js: JetStream, ws: Workspace, stream_seq: int) -> None:
    """Purges the workspace's subject below `stream_seq`, as retention would."""
    oplog = ws.core.oplog
    assert isinstance(oplog, JetStreamOperationLog)
    js.purge(DEFAULT_STREAM, oplog.subject, stream_seq)


@settings(
    max_examples=int(os.environ.get("REBUILD_EXAMPLES", "15")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(start=st.sampled_from(STARTS), data=st.data())
def test_a_node_joining_after_a_purge_starts_from_the_published_checkpoint(
    shared_js: JetStream, start: int, data: st.DataObject
) -> None:
    before, after = data.draw(histories(start)), data.draw(histories(start))
    workspace = f"c{next(_workspaces)}"
    clock = FakeClock(start)
    publisher = CheckpointPublisher(shared_js, DEFAULT_STREAM)
    with tempfile.TemporaryDirectory() as tmp:
        writer = open_node(Path(tmp) / "a", shared_js, workspace, clock, publisher)
        try:
            # A first record, so that the purge below always drops something.
            writer.upsert_people([PersonUpsert("first", email="first@x.io")])
            run(writer, clock, before)
            covered = checkpoint_and_publish(writer, publisher)
            run(writer, clock, after)
            # Everything the checkpoint covers goes; what came after stays.
            drop_before(shared_js, writer, covered.stream_seq + 1)
            joiner = open_node(Path(tmp) / "b", shared_js, workspace, clock, publisher)
            try:
                assert joiner.state.op_seq == writer.state.op_seq
                assert all_members(joiner) == all_members(writer)
                assert len(joiner.state.index.live) == len(writer.state.index.live)
                assert replay_feed(joiner) == replay_feed(writer)
                # The in-memory event columns are compared through what they decide (the
                # memberships and the feed above), not byte for byte: each node compacts
                # them on its own schedule, from different histories of rows, so an
                # all-absent property column or a string vocabulary may differ.
                joined, written = stored(joiner), stored(writer)
                del joined["events"], written["events"]
                assert joined == written
            finally:
                joiner.store.close()
        finally:
            writer.store.close()


def test_the_checkpoint_bucket_is_named_after_the_stream_and_says_what_it_covers(
    shared_js: JetStream, tmp_path: Path
) -> None:
    assert bucket_for("SEGSVC_OPS") == "SEGSVC_CHECKPOINTS"
    assert bucket_for("ORDERS") == "ORDERS_CHECKPOINTS"
    publisher = CheckpointPublisher(shared_js, DEFAULT_STREAM)
    ws = open_node(tmp_path / "a", shared_js, "bucket", FakeClock(STARTS[0]), publisher)
    try:
        ws.upsert_people([PersonUpsert("p1")])
        oplog = ws.core.oplog
        assert isinstance(oplog, JetStreamOperationLog)
        checkpoint_and_publish(ws, publisher)
        # The object says which record and which stream sequence it covers.
        assert shared_js.object_description("SEGSVC_CHECKPOINTS", "bucket") == (
            f"op 1 stream {oplog.tail}"
        )
    finally:
        ws.store.close()


def test_an_older_checkpoint_does_not_replace_a_newer_one(
    shared_js: JetStream, tmp_path: Path
) -> None:
    publisher = CheckpointPublisher(shared_js, DEFAULT_STREAM)
    clock = FakeClock(STARTS[0])
    ahead = open_node(tmp_path / "a", shared_js, "older", clock, publisher)
    behind = open_node(tmp_path / "b", shared_js, "older", clock, publisher)
    try:
        ahead.upsert_people([PersonUpsert("p1")])
        behind.core.catch_up()
        ahead.upsert_people([PersonUpsert("p2")])
        assert checkpoint_and_publish(ahead, publisher).op_seq == 2
        # The node one record behind checkpoints later: the object keeps record 2.
        assert behind.state.op_seq == 1 and behind.checkpoint()
        assert publisher.wait(60)
        found = Covered.parse(shared_js.object_description(publisher.bucket, "older"))
        assert found is not None and found.op_seq == 2
    finally:
        ahead.store.close()
        behind.store.close()


def test_without_a_published_checkpoint_the_gap_is_named(
    shared_js: JetStream, tmp_path: Path
) -> None:
    publisher = CheckpointPublisher(shared_js, DEFAULT_STREAM)
    clock = FakeClock(STARTS[0])
    writer = open_node(tmp_path / "a", shared_js, "nockpt", clock, publisher)
    try:
        for i in range(3):
            writer.upsert_people([PersonUpsert(f"p{i}")])
        oplog = writer.core.oplog
        assert isinstance(oplog, JetStreamOperationLog)
        drop_before(shared_js, writer, oplog.tail)  # only record 3 is left
    finally:
        writer.store.close()
    with pytest.raises(CorruptRecordError) as raised:
        open_node(tmp_path / "b", shared_js, "nockpt", clock, publisher)
    assert "records 1 to 2 of workspace 'nockpt' are no longer in the stream" in str(raised.value)
