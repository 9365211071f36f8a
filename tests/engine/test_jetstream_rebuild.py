"""What a record stores is a function of the record and the local state: a node that starts
with an empty data directory and reads a workspace's JetStream log alone stores the same
people rows, lookups and change feed, and holds the same memberships and events, as the
node that wrote it, on random histories of every kind of write (person by person and bulk
loads, events, segment definitions, manual members, deletions, ticks). And a record
JetStream acknowledged whose local commit was lost is materialised at the next load."""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from engine_harness import all_members, key, make_config, replay_feed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats_harness import NatsServer, start_nats
from strategies import ADVANCES, STARTS, event_inputs, person_keys, trees, upserts

from segsvc.engine import core as core_module
from segsvc.engine.bulk import PeopleColumns
from segsvc.engine.clock import FakeClock
from segsvc.engine.events import EventInput
from segsvc.engine.jetstream_log import JetStreamOperationLog, open_stream
from segsvc.engine.people import PersonUpsert
from segsvc.engine.values import Timestamp
from segsvc.engine.workspace import Workspace
from segsvc.storage.nats import JetStream, NatsOptions
from segsvc.storage.records import unseal
from segsvc.storage.store import Store, prefix

RETAIN_ALL = 10**10
_workspaces = itertools.count()


@pytest.fixture(scope="module")
def shared_js(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JetStream]:
    server: NatsServer = start_nats(tmp_path_factory.mktemp("nats"))
    js = JetStream(NatsOptions((server.url,)))
    try:
        open_stream(js)
        yield js
    finally:
        js.close()
        server.stop()


def open_node(data_dir: Path, js: JetStream, workspace: str, clock: FakeClock) -> Workspace:
    config = make_config(data_dir, change_retention_seconds=RETAIN_ALL)
    store = Store(data_dir, config.map_size)
    return Workspace(
        workspace, store, clock, config, JetStreamOperationLog(js, workspace, prefix(workspace))
    )


def stored(ws: Workspace) -> dict[str, Any]:
    """Everything the node materialised of the workspace, as plain values."""
    p = prefix(ws.name)
    # The events of deleted people stay in memory until a compaction, which each node runs
    # on its own schedule: compacted, both hold exactly the events that still count.
    ws.compact_events(force=True)
    with ws.store.read() as txn:
        # Not the size history: a node also samples it at ticks of its own that change
        # nothing and so write no record.
        tables = {t: dict(txn.scan(t, p)) for t in ("people", "lookup", "changes")}
    _, changes = replay_feed(ws)
    return {
        **tables,
        "memberships": all_members(ws),
        "feed": [(c.seq, c.segment_id, c.person_id, c.entered, c.cause) for c in changes],
        **state_parts(ws),
    }


STATE_PARTS = (
    "version",
    "op_seq",
    "change_seq",
    "next_ordinal",
    "next_segment_id",
    "now",
    "index",
    "segments",
    "leaves",
    "events",
    "event_leaves",
)


def state_parts(ws: Workspace) -> dict[str, Any]:
    """The in-memory state as its checkpoint stores it, part by part."""
    body = msgpack.unpackb(unseal(ws.state.to_bytes()), raw=False, strict_map_key=False)
    return dict(zip(STATE_PARTS, body, strict=True))


Step = tuple[str, Any]


@st.composite
def histories(draw: st.DrawFn, now: int) -> list[Step]:
    steps: list[Step] = []
    segments = 0
    for _ in range(draw(st.integers(3, 12))):
        kind = draw(
            st.sampled_from(("upsert", "bulk", "events", "segment", "members", "delete", "tick"))
        )
        if kind in ("upsert", "bulk"):
            batch = draw(st.lists(upserts(now, allow_invalid=False), min_size=1, max_size=5))
            steps.append((kind, batch))
        elif kind == "events":
            steps.append((kind, draw(st.lists(event_inputs(now), min_size=1, max_size=4))))
        elif kind == "segment":
            dynamic = draw(st.booleans())
            tree = draw(trees(now, tuple(range(1, segments + 1)), events=True)) if dynamic else None
            steps.append((kind, (dynamic, tree)))
            segments += 1
        elif kind == "members":
            steps.append((kind, (draw(st.booleans()), draw(st.lists(person_keys(), max_size=3)))))
        elif kind == "delete":
            steps.append((kind, draw(st.lists(person_keys(), min_size=1, max_size=2))))
        else:
            steps.append((kind, draw(st.sampled_from(ADVANCES))))
    return steps


def run(ws: Workspace, clock: FakeClock, steps: list[Step]) -> None:
    for kind, arg in steps:
        if kind == "upsert":
            ws.upsert_people(arg)
        elif kind == "bulk":
            ws.upsert_columns(PeopleColumns.from_upserts(arg))
        elif kind == "events":
            ws.track_events(
                [
                    EventInput(key(k, v), name, None if at is None else Timestamp(at), props)
                    for (k, v), name, at, props in arg
                ],
                create_missing_people=True,
            )
        elif kind == "segment":
            dynamic, tree = arg
            ws.create_segment(f"s{len(ws.state.segments)}", "", dynamic, tree)
        elif kind == "members":
            add, keys = arg
            manual = [sid for sid, seg in ws.state.segments.items() if seg.definition is None]
            if manual and keys:
                ws.change_members(manual[0], [key(k, v) for k, v in keys], add)
        elif kind == "delete":
            ws.delete_people([key(k, v) for k, v in arg])
        else:
            clock.advance(arg)
            ws.tick()


@settings(
    max_examples=int(os.environ.get("REBUILD_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(start=st.sampled_from(STARTS), data=st.data())
def test_a_new_node_rebuilt_from_the_log_stores_what_the_writer_stored(
    shared_js: JetStream, start: int, data: st.DataObject
) -> None:
    steps = data.draw(histories(start))
    workspace = f"w{next(_workspaces)}"
    clock = FakeClock(start)
    with tempfile.TemporaryDirectory() as tmp:
        writer = open_node(Path(tmp) / "a", shared_js, workspace, clock)
        try:
            run(writer, clock, steps)
            reader = open_node(Path(tmp) / "b", shared_js, workspace, clock)
            try:
                assert reader.state.op_seq == writer.state.op_seq
                assert stored(reader) == stored(writer)
            finally:
                reader.store.close()
        finally:
            writer.store.close()


def test_an_acknowledged_record_whose_commit_was_lost_is_materialised_at_load(
    shared_js: JetStream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(STARTS[0])
    ws = open_node(tmp_path / "a", shared_js, "lost", clock)
    ws.upsert_people([PersonUpsert("p1", email="p1@x.io")])
    original = core_module.WorkspaceCore.materialise

    def crash_once(self: Any, txn: Any, seq: int, op: Any, persist: Any = None) -> Any:
        monkeypatch.setattr(core_module.WorkspaceCore, "materialise", original)
        raise OSError("the process died before its LMDB commit")

    # The second write is acknowledged by JetStream and then lost locally; the reload that
    # follows (as a restart would) materialises it from the stream.
    monkeypatch.setattr(core_module.WorkspaceCore, "materialise", crash_once)
    with pytest.raises(OSError):
        ws.upsert_people([PersonUpsert("p2", email="p2@x.io")])
    ws.store.close()
    again = open_node(tmp_path / "a", shared_js, "lost", clock)
    try:
        person = again.get_person(key("email", "p2@x.io"))
        assert person.record.id == "p2"
        assert again.state.op_seq == 2
    finally:
        again.store.close()
