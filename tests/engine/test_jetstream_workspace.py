"""A workspace whose operation log is on JetStream (a real nats-server): writes go through
the stream, a node that missed another's record is refused with nothing applied, NATS
unreachable is reported as unavailable with nothing applied, and a restart on the same data
directory, or on an empty one, rebuilds the state from the stream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from engine_harness import make_config
from nats_harness import NatsServer

from segsvc.engine.clock import FakeClock
from segsvc.engine.errors import ConcurrentWrite, Unavailable
from segsvc.engine.jetstream_log import JetStreamOperationLog, open_stream
from segsvc.engine.model import PersonKey
from segsvc.engine.people import PersonUpsert
from segsvc.engine.workspace import Workspace
from segsvc.storage.nats import JetStream, NatsOptions
from segsvc.storage.store import Store, prefix


class Node:
    """One segsvc node's workspace `w`: its own store, its own connection to NATS."""

    def __init__(self, data_dir: Path, server: NatsServer, clock: FakeClock) -> None:
        self.config = make_config(data_dir)
        self.store = Store(data_dir, self.config.map_size)
        self.js = JetStream(NatsOptions((server.url,), timeout=2.0))
        open_stream(self.js)
        log = JetStreamOperationLog(self.js, "w", prefix("w"))
        self.ws = Workspace("w", self.store, clock, self.config, log)

    def close(self) -> None:
        self.js.close()
        self.store.close()


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


def test_a_node_that_missed_a_write_is_refused_with_nothing_applied(node_at: NodeAt) -> None:
    a, b = node_at("a"), node_at("b")
    a.ws.upsert_people([PersonUpsert("p1")])
    with pytest.raises(ConcurrentWrite, match="another node wrote to workspace 'w' first"):
        b.ws.upsert_people([PersonUpsert("p2")])
    assert ids(b.ws) == set() and b.ws.state.op_seq == 0
    assert ids(a.ws) == {"p1"}


def test_nats_unreachable_is_unavailable_and_nothing_is_applied(
    node_at: NodeAt, nats_server: NatsServer
) -> None:
    a = node_at("a")
    a.ws.upsert_people([PersonUpsert("p1")])
    nats_server.kill()
    with pytest.raises(Unavailable, match="operation log of workspace 'w' is unreachable"):
        a.ws.upsert_people([PersonUpsert("p2")])
    assert ids(a.ws) == {"p1"} and a.ws.state.op_seq == 1
