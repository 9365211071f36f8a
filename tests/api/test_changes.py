"""WatchChanges: replay, then live; filters; retention; resume after a restart."""

from __future__ import annotations

import queue
import threading
import time

import grpc
from api_harness import (
    add_members,
    dynamic_segment,
    equals,
    manual_segment,
    person,
    status_of,
    stored_changes,
    upsert,
)

from segsvc.v1 import changes_pb2

CH = changes_pb2


class Follower:
    """A following WatchChanges call consumed on a thread."""

    def __init__(self, api, **request):
        self.call = api.changes.WatchChanges(CH.WatchChangesRequest(**request))
        self.received: queue.Queue = queue.Queue()
        self.error: list[grpc.RpcError] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            for response in self.call:
                for change in response.changes:
                    self.received.put(change)
        except grpc.RpcError as error:
            self.error.append(error)

    def take(self, count, timeout=10.0):
        deadline = time.monotonic() + timeout
        got = []
        while len(got) < count:
            got.append(self.received.get(timeout=max(0.01, deadline - time.monotonic())))
        return got

    def assert_quiet(self, seconds=0.3):
        time.sleep(seconds)
        assert self.received.empty()

    def close(self):
        self.call.cancel()
        self._thread.join(5)


def _ids(changes):
    return [(c.segment_id, c.person_id, c.kind) for c in changes]


def test_replay_then_live_without_gaps(api):
    upsert(api, person("u1"), person("u2"), person("u3"))
    vip = manual_segment(api, "VIP")
    add_members(api, vip, "u1")
    follower = Follower(api, after_seq=0)
    try:
        first = follower.take(1)
        assert _ids(first) == [(vip, "u1", CH.CHANGE_KIND_ENTERED)]
        assert first[0].cause == CH.CHANGE_CAUSE_MANUAL
        assert first[0].at.seconds == api.clock.now()
        add_members(api, vip, "u2", "u3")
        live = follower.take(2)
        assert _ids(live) == [
            (vip, "u2", CH.CHANGE_KIND_ENTERED),
            (vip, "u3", CH.CHANGE_KIND_ENTERED),
        ]
        assert [c.seq for c in first + live] == [1, 2, 3]
        follower.assert_quiet()
    finally:
        follower.close()


def test_filters_from_now_and_no_follow(api):
    upsert(api, person("u1", plan="pro"), person("u2"))
    pro = dynamic_segment(api, "Pro", equals("plan", "pro"))
    vip = manual_segment(api, "VIP")
    add_members(api, vip, "u2")
    assert _ids(stored_changes(api, segment_ids=[vip])) == [(vip, "u2", CH.CHANGE_KIND_ENTERED)]
    everything = stored_changes(api)
    assert _ids(everything) == [
        (pro, "u1", CH.CHANGE_KIND_ENTERED),
        (vip, "u2", CH.CHANGE_KIND_ENTERED),
    ]
    assert everything[0].cause == CH.CHANGE_CAUSE_DEFINITION
    assert _ids(stored_changes(api, after_seq=everything[0].seq)) == _ids(everything[1:])

    follower = Follower(api, from_now=True, segment_ids=[pro])
    try:
        time.sleep(0.2)  # let the call start before the next write
        add_members(api, vip, "u1")  # another segment: filtered out
        upsert(api, person("u2", plan="pro"))
        (change,) = follower.take(1)
        assert (change.person_id, change.cause) == ("u2", CH.CHANGE_CAUSE_DATA)
        assert change.seq == everything[-1].seq + 2
        follower.assert_quiet()
    finally:
        follower.close()


def test_start_before_retention_is_out_of_range(api_servers):
    api = api_servers.start(api_servers.config(change_retention_seconds=60))
    upsert(api, person("u1"), person("u2"))
    vip = manual_segment(api, "VIP")
    add_members(api, vip, "u1")
    api.clock.advance(120)
    add_members(api, vip, "u2")  # written after the advance: kept
    api.engine.tick()
    code, message = status_of(lambda: stored_changes(api, after_seq=0))
    assert code == grpc.StatusCode.OUT_OF_RANGE
    assert "after_seq >= 1" in message
    assert _ids(stored_changes(api, after_seq=1)) == [(vip, "u2", CH.CHANGE_KIND_ENTERED)]


def test_resume_after_restart_from_the_last_seq(api_servers):
    api = api_servers.start()
    upsert(api, person("u1", plan="pro"), person("u2"), person("u3"))
    pro = dynamic_segment(api, "Pro", equals("plan", "pro"))
    vip = manual_segment(api, "VIP")
    add_members(api, vip, "u1", "u2")
    before = stored_changes(api)
    api = api_servers.restart(api)
    upsert(api, person("u3", plan="pro"))
    add_members(api, vip, "u3")
    after = stored_changes(api, after_seq=before[-1].seq)
    assert _ids(after) == [
        (pro, "u3", CH.CHANGE_KIND_ENTERED),
        (vip, "u3", CH.CHANGE_KIND_ENTERED),
    ]
    seqs = [c.seq for c in before + after]
    assert seqs == list(range(1, len(seqs) + 1))
    assert _ids(stored_changes(api)) == _ids(before + after)


def test_shutdown_ends_followers_with_unavailable(api_servers):
    api = api_servers.start()
    follower = Follower(api, after_seq=0)
    time.sleep(0.2)
    started = time.monotonic()
    # A long grace: the follower must end at once anyway, not hold the shutdown.
    stopped = api.server.stop(grace=30)
    follower._thread.join(5)
    assert stopped.wait(5)
    assert time.monotonic() - started < 3
    assert follower.error and follower.error[0].code() == grpc.StatusCode.UNAVAILABLE


def test_followers_are_bounded_so_other_calls_keep_a_thread(api_servers):
    # Six workers: two for streams, four kept for unary calls (segsvc/api/admission.py).
    api = api_servers.start(api_servers.config(workers=6))
    followers = [Follower(api, after_seq=0), Follower(api, after_seq=0)]
    try:
        time.sleep(0.3)
        extra = Follower(api, after_seq=0)
        extra._thread.join(5)
        assert extra.error and extra.error[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many open streams (2" in (extra.error[0].details() or "")
        # A replay is a stream too, and shares the same budget; unary calls keep a thread.
        code, message = status_of(lambda: stored_changes(api))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, message
        manual_segment(api, "still writable")
    finally:
        for follower in followers:
            follower.close()
    # A cancelled follower gives its place back (the engine notices within 0.5 s).
    deadline = time.monotonic() + 5
    while True:
        again = Follower(api, after_seq=0)
        time.sleep(0.2)
        if not again.error:
            again.close()
            break
        assert time.monotonic() < deadline, again.error
