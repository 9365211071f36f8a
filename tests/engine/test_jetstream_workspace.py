"""A workspace whose operation log is on JetStream (a real nats-server): writes go through
the stream; a node that missed another's record is refused by JetStream, catches up and
validates again (and gives up with nothing applied when overtaken every time); NATS
unreachable is reported as unavailable with nothing applied; a node with an empty data
directory rebuilds the state from the stream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from engine_harness import make_config
from nats_harness import NatsServer

from segsvc.engine.check import check_store
from segsvc.engine.clock import FakeClock
from segsvc.engine.errors import ConcurrentWrite, Unavailable
from segsvc.engine.jetstream_log import JetStreamOperationLog, open_stream
from segsvc.engine.model import PersonKey
from segsvc.engine.ops import Op
from segsvc.engine.people import PersonUpsert
from segsvc.engine.workspace import Workspace
from segsvc.storage.nats import JetStream, NatsOptions
from segsvc.storage.store import Store, Txn, prefix


class Node:
    """One segsvc node's workspace `w`: its own store, its own connection to NATS."""

    def __init__(self, data_dir: Path, server: NatsServer, clock: FakeClock) -> None:
        self.config = make_config(data_dir)
        self.store = Store(data_dir, self.config.map_size)
        self.store_closed = False
        self.js = JetStream(NatsOptions((server.url,), timeout=2.0))
        open_stream(self.js)
        log = JetStreamOperationLog(self.js, "w", prefix("w"))
        self.ws = Workspace("w", self.store, clock, self.config, log)

    def close(self) -> None:
        self.js.close()
        self.close_store()

    def close_store(self) -> None:
        if not self.store_closed:
            self.store.close()
            self.store_closed = True


NodeAt = Callable[[str], Node]


@pytest.fixture
def node_at(tmp_path: Path, nats_server: NatsServer) -> Iterator[NodeAt]:
    clock = FakeClock(1_767_225_600)
    opened: list[Node] = []

    def node_at(name: str) -> Node:
        node = Node(tmp_path / name, nats_server, clock)
        opened.append(node)
        return node

    yield node_at
    for node in opened:
        node.close()


def ids(ws: Workspace) -> set[str]:
    index = ws.state.index
    return {index.ids[o] for o in index.live}


def test_writes_go_through_the_stream_and_a_new_node_rebuilds_from_it(node_at: NodeAt) -> None:
    a = node_at("a")
    a.ws.upsert_people([PersonUpsert("p1", email="p1@x.io"), PersonUpsert("p2")])
    seg = a.ws.create_segment("s", "", False, None)
    a.ws.change_members(seg.id, [PersonKey("id", "p1")], add=True)
    # A node with an empty data directory reads the same state from the stream alone.
    b = node_at("b")
    assert ids(b.ws) == {"p1", "p2"}
    assert b.ws.state.op_seq == a.ws.state.op_seq == 3
    assert set(b.ws.state.segments[seg.id].members) == set(a.ws.state.segments[seg.id].members)


def test_a_node_that_missed_a_write_catches_up_and_writes_after_it(node_at: NodeAt) -> None:
    a, b = node_at("a"), node_at("b")
    a.ws.upsert_people([PersonUpsert("p1", email="one@x.io")])
    # B validated against a state without p1: refused by JetStream, it catches up and
    # validates again, so the email p1 holds is refused for p2 as it would be on A.
    results = b.ws.upsert_people([PersonUpsert("p2", email="one@x.io"), PersonUpsert("p3")])
    assert [r.outcome for r in results] == ["conflict", "created"]
    assert ids(b.ws) == {"p1", "p3"} and b.ws.state.op_seq == 2
    assert b.ws.get_person(PersonKey("email", "one@x.io")).record.id == "p1"


def test_a_write_overtaken_every_time_is_aborted_with_nothing_applied(node_at: NodeAt) -> None:
    a, b = node_at("a"), node_at("b")

    class Overtaken(JetStreamOperationLog):
        def append(self, txn: Txn, seq: int, op: Op) -> None:
            # Node A writes just before each of B's attempts.
            a.ws.upsert_people([PersonUpsert(f"a{seq}-{a.ws.state.op_seq}")])
            super().append(txn, seq, op)

    b.ws.core.oplog = Overtaken(b.js, "w", prefix("w"))
    with pytest.raises(ConcurrentWrite, match="other nodes wrote to workspace 'w' first 5 times"):
        b.ws.upsert_people([PersonUpsert("b")])
    assert "b" not in ids(b.ws) and "b" not in ids(a.ws)
    # What B caught up on meanwhile is applied and stored.
    assert b.ws.state.op_seq == 4 and ids(b.ws) <= ids(a.ws)


def test_nats_unreachable_is_unavailable_and_nothing_is_applied(
    node_at: NodeAt, nats_server: NatsServer
) -> None:
    a = node_at("a")
    a.ws.upsert_people([PersonUpsert("p1")])
    nats_server.kill()
    with pytest.raises(Unavailable, match="operation log of workspace 'w' is unreachable"):
        a.ws.upsert_people([PersonUpsert("p2")])
    assert ids(a.ws) == {"p1"} and a.ws.state.op_seq == 1
    nats_server.start()
    # NATS may have stored p2 after all (the client flushes what it buffered): the next
    # write catches up on it first.
    a.ws.upsert_people([PersonUpsert("p3")])
    assert ids(a.ws) >= {"p1", "p3"}
    assert ids(node_at("fresh").ws) == ids(a.ws)


def test_check_of_a_node_store_reports_no_damage(node_at: NodeAt, tmp_path: Path) -> None:
    # People stored after the checkpoint come from the stream, which `segsvc check` does
    # not read: they are not "records the log knows nothing of".
    a = node_at("a")
    a.ws.upsert_people([PersonUpsert("p1")])
    a.ws.checkpoint()
    a.ws.upsert_people([PersonUpsert("p2")])
    a.close_store()
    report = check_store(tmp_path / "a")
    assert report.damage == []
