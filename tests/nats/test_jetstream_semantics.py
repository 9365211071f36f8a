"""What the replicated operation log relies on in JetStream itself, checked against the real
nats-server the tests start: a publish that names the last sequence of its subject is refused
when another writer got there first, a repeated message id is stored once, and a stream of
three replicas keeps acknowledging after one server is killed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
import pytest
from nats.js.api import StreamConfig
from nats.js.errors import APIError
from nats_harness import NatsCluster, NatsServer

T = TypeVar("T")


def run(make: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(make(), 60))  # type: ignore[arg-type]


def test_expected_last_subject_sequence_refuses_a_stale_writer(nats_server: NatsServer) -> None:
    async def scenario() -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="OPS", subjects=["ops.>"]))
        first = await js.publish(
            "ops.w1", b"a", headers={"Nats-Expected-Last-Subject-Sequence": "0"}
        )
        # Another subject in the same stream does not count against w1's expectation.
        await js.publish("ops.w2", b"x")
        second = await js.publish(
            "ops.w1", b"b", headers={"Nats-Expected-Last-Subject-Sequence": str(first.seq)}
        )
        # A writer that has not seen `second` is refused, and nothing is stored.
        with pytest.raises(APIError) as refused:
            await js.publish(
                "ops.w1", b"stale", headers={"Nats-Expected-Last-Subject-Sequence": str(first.seq)}
            )
        assert refused.value.err_code == 10071  # wrong last sequence
        info = await js.stream_info("OPS")
        assert info.state.messages == 3
        assert (await js.get_last_msg("OPS", "ops.w1")).seq == second.seq
        await nc.close()

    run(scenario)


def test_a_repeated_message_id_is_stored_once(nats_server: NatsServer) -> None:
    async def scenario() -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="OPS", subjects=["ops.>"]))
        first = await js.publish("ops.w1", b"a", headers={"Nats-Msg-Id": "w1-1"})
        again = await js.publish("ops.w1", b"a", headers={"Nats-Msg-Id": "w1-1"})
        assert again.duplicate and again.seq == first.seq
        assert (await js.stream_info("OPS")).state.messages == 1
        await nc.close()

    run(scenario)


def test_three_replicas_acknowledge_with_one_server_killed(nats_cluster: NatsCluster) -> None:
    async def scenario() -> None:
        nc = await nats.connect(servers=nats_cluster.urls.split(","))
        js = nc.jetstream(timeout=10)
        await js.add_stream(StreamConfig(name="OPS", subjects=["ops.>"], num_replicas=3))
        acks = [await js.publish("ops.w1", str(i).encode()) for i in range(10)]
        leader = (await js.stream_info("OPS")).cluster
        assert leader is not None and len(leader.replicas or []) == 2
        # Kill a server that is not the one this client talks to, leader or not.
        assert nc.connected_url is not None
        connected = nc.connected_url.port
        victim = next(s for s in nats_cluster.servers if s.port != connected)
        victim.kill()
        for i in range(10, 20):
            for _ in range(50):  # the stream may be electing a new leader for a moment
                try:
                    acks.append(await js.publish("ops.w1", str(i).encode()))
                    break
                except (nats.errors.TimeoutError, APIError, nats.js.errors.NoStreamResponseError):
                    await asyncio.sleep(0.2)
        assert [a.seq for a in acks] == list(range(1, 21))
        await nc.close()

    run(scenario)
