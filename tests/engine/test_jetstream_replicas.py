"""Several nodes on one JetStream log: random writes of every kind through two nodes give,
once both have applied everything, identical memberships, counts, change feeds (same seq,
person, kind, cause), stored rows and state; and two nodes claiming the same emails at the
same moment: exactly one person gets each, nobody half-applied, both nodes agree."""

from __future__ import annotations

import itertools
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_harness import make_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats_harness import NatsServer, start_nats
from strategies import STARTS
from test_jetstream_rebuild import RETAIN_ALL, histories, run, stored

from segsvc.config import Replication
from segsvc.engine.clock import FakeClock
from segsvc.engine.engine import Engine
from segsvc.engine.model import PersonKey
from segsvc.engine.people import PersonUpsert
from segsvc.engine.workspace import Workspace

_workspaces = itertools.count()


class Nodes:
    """Two engines, each on its own data directory, on one nats-server, sharing a clock."""

    def __init__(self, root: Path, server: NatsServer) -> None:
        self.clock = FakeClock(STARTS[0])
        replication = Replication(servers=(server.url,))
        self.engines = [
            Engine(
                make_config(
                    root / name, change_retention_seconds=RETAIN_ALL, replication=replication
                ),
                self.clock,
            )
            for name in ("a", "b")
        ]

    def workspaces(self, name: str) -> list[Workspace]:
        return [engine.workspace(name) for engine in self.engines]

    @staticmethod
    def wait_applied(ws: Workspace, seq: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while ws.state.op_seq < seq:
            assert time.monotonic() < deadline, f"record {seq} not applied"
            time.sleep(0.005)

    def quiesce(self, name: str, timeout: float = 20.0) -> list[Workspace]:
        """Both nodes' workspace once each has applied every record either wrote."""
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.workspaces(name)
            seqs = {ws.state.op_seq for ws in nodes}
            if len(seqs) == 1:
                return nodes
            assert time.monotonic() < deadline, f"nodes did not converge: {seqs}"
            time.sleep(0.02)

    def close(self) -> None:
        for engine in self.engines:
            engine.close(checkpoint=False)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    server = start_nats(tmp_path_factory.mktemp("nats"))
    pair = Nodes(tmp_path_factory.mktemp("nodes"), server)
    try:
        yield pair
    finally:
        pair.close()
        server.stop()


@settings(
    max_examples=int(os.environ.get("REPLICA_EXAMPLES", "10")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_two_nodes_writing_at_random_end_identical(nodes: Nodes, data: st.DataObject) -> None:
    name = f"r{next(_workspaces)}"
    # Each example has a workspace of its own, so its time may start over.
    nodes.clock.set(STARTS[0])
    steps = data.draw(histories(nodes.clock.now()))
    writers = data.draw(st.lists(st.integers(0, 1), min_size=len(steps), max_size=len(steps)))
    written = 0
    for step, writer in zip(steps, writers, strict=True):
        ws = nodes.engines[writer].workspace(name)
        # As a client passing segsvc-min-seq would: the node has seen the last write (a
        # step may name a segment the other node just created). The records the other
        # node wrote meanwhile are still new to it when it writes: refused, caught up.
        nodes.wait_applied(ws, written)
        run(ws, nodes.clock, [step])
        written = max(written, ws.state.op_seq)
    a, b = nodes.quiesce(name)
    assert stored(a) == stored(b)
    assert {sid: len(s.members) for sid, s in a.state.segments.items()} == {
        sid: len(s.members) for sid, s in b.state.segments.items()
    }


def test_two_nodes_claiming_the_same_emails_at_once_one_wins_each(nodes: Nodes) -> None:
    name = f"c{next(_workspaces)}"
    emails = [f"e{i}@x.io" for i in range(40)]
    outcomes: dict[int, list[str]] = {}
    start = threading.Barrier(2)

    def claim(node: int) -> None:
        ws = nodes.engines[node].workspace(name)
        start.wait()
        got: list[str] = []
        for i, email in enumerate(emails):
            result = ws.upsert_people([PersonUpsert(f"n{node}-{i}", email=email)])
            got.append(result[0].outcome)
        outcomes[node] = got

    threads = [threading.Thread(target=claim, args=(node,)) for node in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    a, b = nodes.quiesce(name)
    assert stored(a) == stored(b)
    for i, email in enumerate(emails):
        won = [node for node in (0, 1) if outcomes[node][i] == "created"]
        lost = [node for node in (0, 1) if outcomes[node][i] == "conflict"]
        assert len(won) == 1 and len(lost) == 1, (email, outcomes[0][i], outcomes[1][i])
        winner = f"n{won[0]}-{i}"
        for ws in (a, b):
            assert ws.get_person(PersonKey("email", email)).record.id == winner
            # The loser was refused whole: no person without the email was created.
            with pytest.raises(Exception, match="no person"):
                ws.get_person(PersonKey("id", f"n{lost[0]}-{i}"))


def test_a_node_started_later_follows_the_workspaces_of_others(
    nodes: Nodes, tmp_path: Path
) -> None:
    name = f"l{next(_workspaces)}"
    nodes.engines[0].workspace(name).upsert_people([PersonUpsert("early")])
    with tempfile.TemporaryDirectory() as tmp:
        assert nodes.engines[0].config.replication is not None
        late = Engine(
            make_config(Path(tmp), replication=nodes.engines[0].config.replication), nodes.clock
        )
        try:
            nodes.engines[1].workspace(name).upsert_people([PersonUpsert("later")])
            deadline = time.monotonic() + 20
            while late.workspace(name).state.op_seq < 2:
                assert time.monotonic() < deadline, "the late node did not follow"
                time.sleep(0.02)
            index = late.workspace(name).state.index
            assert {index.ids[o] for o in index.live} == {"early", "later"}
        finally:
            late.close(checkpoint=False)
