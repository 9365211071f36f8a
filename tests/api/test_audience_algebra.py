"""Audience algebra over the real API against Python set algebra, on random memberships:
(union of include) ∩ (every require) − (union of exclude) − unsubscribed, on a channel."""

from __future__ import annotations

import random

from api_harness import add_members, manual_segment, upsert

from segsvc.v1 import audiences_pb2, people_pb2

A = audiences_pb2
PEOPLE = 80
SEGMENTS = 6
CHANNELS = {
    A.CHANNEL_UNSPECIFIED: lambda p: True,
    A.CHANNEL_EMAIL: lambda p: p["email"],
    A.CHANNEL_PHONE: lambda p: p["phone"],
    A.CHANNEL_DEVICE: lambda p: p["device"],
}


def test_counts_and_resolved_ids_equal_set_algebra_on_random_memberships(api) -> None:
    rng = random.Random(20261122)
    people = {}
    messages = []
    for i in range(PEOPLE):
        person = {
            "email": rng.random() < 0.7,
            "phone": rng.random() < 0.5,
            "device": rng.random() < 0.3,
            "unsubscribed": rng.random() < 0.15,
        }
        people[f"p{i:03}"] = person
        msg = people_pb2.PersonUpsert(id=f"p{i:03}", unsubscribed=person["unsubscribed"])
        if person["email"]:
            msg.email = f"p{i}@example.com"
        if person["phone"]:
            msg.phone = f"+4670001{i:04}"
        if person["device"]:
            msg.devices.add(id=f"d{i}", platform="ios")
        messages.append(msg)
    upsert(api, *messages)
    members: dict[int, set[str]] = {}
    for s in range(SEGMENTS):
        chosen = {p for p in people if rng.random() < rng.choice((0.2, 0.5, 0.8))}
        sid = manual_segment(api, f"random-{s}")
        if chosen:
            add_members(api, sid, *sorted(chosen))
        members[sid] = chosen
    ids = sorted(members)

    for _ in range(60):
        include = rng.sample(ids, rng.randint(1, 3))
        require = rng.sample(ids, rng.randint(0, 2))
        exclude = rng.sample(ids, rng.randint(0, 2))
        with_unsubscribed = rng.random() < 0.3
        channel = rng.choice(list(CHANNELS))
        expected = set().union(*(members[s] for s in include))
        for s in require:
            expected &= members[s]
        for s in exclude:
            expected -= members[s]
        expected = {
            p
            for p in expected
            if (with_unsubscribed or not people[p]["unsubscribed"]) and CHANNELS[channel](people[p])
        }
        spec = A.AudienceSpec(
            include=include,
            require=require,
            exclude=exclude,
            include_unsubscribed=with_unsubscribed,
            channel=channel,
        )
        count = api.audiences.CountAudience(A.CountAudienceRequest(audience=spec)).count
        assert count == len(expected), spec
        chunks = list(
            api.audiences.ResolveAudience(
                A.ResolveAudienceRequest(audience=spec, chunk_size=rng.randint(1, 30))
            )
        )
        resolved = [m.id for c in chunks for m in c.members]
        assert sorted(resolved) == sorted(expected), spec  # everyone once, nobody else
        assert chunks[-1].last and all(c.total == len(expected) for c in chunks)
