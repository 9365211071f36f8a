"""Workspace calls one by one: people and their validation, batches with per-item outcomes,
manual and dynamic segments, member paging, preview, explain and the change feed."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_harness import Harness, key, make_config, members

from segsvc.engine.clock import FakeClock
from segsvc.engine.conditions import AttributeCondition, Group, SegmentCondition, TagCondition
from segsvc.engine.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
)
from segsvc.engine.model import AudienceSpec
from segsvc.engine.people import PersonUpsert
from segsvc.engine.state import CAUSE_DATA, CAUSE_DEFINITION, CAUSE_DELETED, CAUSE_MANUAL
from segsvc.engine.values import Timestamp
from segsvc.engine.workspace import Workspace


def outcomes(results: list) -> list[str]:  # type: ignore[type-arg]
    return [r.outcome for r in results]


# ---------------------------------------------------------------------------------------------
# People


def test_upsert_outcomes_per_item(ws: Workspace) -> None:
    results = ws.upsert_people(
        [
            PersonUpsert("a", email="a@x.io"),
            PersonUpsert("b", email="not-an-email"),
            PersonUpsert("c", phone="12"),
            PersonUpsert("d", attributes={"n": float("nan")}),
            PersonUpsert("e", attributes={"n": 1.0}, remove_attributes=("n",)),
            PersonUpsert("", email="x@x.io"),
            PersonUpsert("f", email=" A@X.IO "),
        ]
    )
    assert outcomes(results) == [
        "created",
        "invalid",
        "invalid",
        "invalid",
        "invalid",
        "invalid",
        "conflict",
    ]
    assert [r.field for r in results] == [
        "",
        "people[1].email",
        "people[2].phone",
        "people[3].attributes['n']",
        "people[4].remove_attributes",
        "people[5].id",
        "people[6].email",
    ]
    # The valid item was applied, the others changed nothing.
    for pid in "bcdef":
        with pytest.raises(NotFound):
            ws.get_person(key("id", pid))
    assert ws.get_person(key("id", "a")).record.email == "a@x.io"
    again = ws.upsert_people(
        [PersonUpsert("a", email="A@x.io"), PersonUpsert("a", unsubscribed=True)]
    )
    assert outcomes(again) == ["unchanged", "updated"]


def test_email_and_phone_are_normalised_and_found_in_any_spelling(ws: Workspace) -> None:
    ws.upsert_people([PersonUpsert("a", email="  Ann@Example.COM ", phone="+1 (555) 010-0001")])
    record = ws.get_person(key("id", "a")).record
    assert (record.email, record.phone) == ("ann@example.com", "+15550100001")
    assert ws.get_person(key("email", "ANN@example.com")).record.id == "a"
    assert ws.get_person(key("phone", "001 555 010 0001")).record.id == "a"
    with pytest.raises(InvalidArgument):
        ws.get_person(key("email", "nope"))
    with pytest.raises(NotFound):
        ws.get_person(key("email", "bob@example.com"))


def test_email_and_phone_are_unique(ws: Workspace) -> None:
    ws.upsert_people([PersonUpsert("a", email="a@x.io", phone="+15550100001")])
    results = ws.upsert_people(
        [
            PersonUpsert("b", email="A@X.io"),
            PersonUpsert("c", phone="+1 (555) 010-0001"),
            PersonUpsert("a", email="a@x.io", phone="+1 555 010 0001"),
        ]
    )
    assert outcomes(results) == ["conflict", "conflict", "unchanged"]
    assert results[0].field == "people[0].email" and "already belongs" in results[0].error
    assert results[1].field == "people[1].phone"


def test_email_handed_over_within_one_batch(ws: Workspace) -> None:
    ws.upsert_people([PersonUpsert("a", email="shared@x.io", phone="+15550100001")])
    results = ws.upsert_people(
        [
            PersonUpsert("a", email="", phone=""),
            PersonUpsert("b", email="Shared@x.io", phone="+1 555 010 0001"),
        ]
    )
    assert outcomes(results) == ["updated", "created"]
    assert ws.get_person(key("email", "shared@x.io")).record.id == "b"
    assert ws.get_person(key("phone", "+15550100001")).record.id == "b"
    assert ws.get_person(key("id", "a")).record.email is None
    # The other way round in one batch: the claim comes first, so it conflicts.
    results = ws.upsert_people(
        [PersonUpsert("a", email="shared@x.io"), PersonUpsert("b", email="b@x.io")]
    )
    assert outcomes(results) == ["conflict", "updated"]


def test_partial_updates_keep_what_is_not_sent(ws: Workspace) -> None:
    ws.upsert_people(
        [
            PersonUpsert(
                "a",
                email="a@x.io",
                attributes={"x": 1.0, "y": "keep"},
                add_tags=("t1", "t2"),
                devices=(("d1", "ios"), ("d2", "web")),
            )
        ]
    )
    ws.upsert_people(
        [
            PersonUpsert(
                "a",
                attributes={"x": True},
                remove_attributes=("y",),
                add_tags=("t3",),
                remove_tags=("t1",),
                remove_device_ids=("d1",),
            )
        ]
    )
    record = ws.get_person(key("id", "a")).record
    assert record.email == "a@x.io"
    assert record.attributes == {"x": True} and type(record.attributes["x"]) is bool
    assert record.tags == {"t2", "t3"}
    assert record.devices == {"d2": "web"}


def test_deleting_people(ws: Workspace) -> None:
    ws.upsert_people([PersonUpsert("a", email="a@x.io"), PersonUpsert("b", phone="+15550100002")])
    manual = ws.create_segment("m", "", False, None).id
    ws.change_members(manual, [key("id", "a"), key("id", "b")], True)
    tagged = ws.create_segment("everyone", "", True, TagCondition("t", negate=True)).id
    head = ws.head_seq()
    results = ws.delete_people(
        [key("email", "A@X.IO"), key("id", "a"), key("id", "zz"), key("phone", "12")]
    )
    assert outcomes(results) == ["deleted", "not_found", "not_found", "invalid"]
    assert members(ws, manual) == {"b"} and members(ws, tagged) == {"b"}
    changes, _ = ws.read_changes(head, frozenset())
    assert {(c.segment_id, c.person_id, c.entered, c.cause) for c in changes} == {
        (manual, "a", False, CAUSE_DELETED),
        (tagged, "a", False, CAUSE_DELETED),
    }
    # The email is free again, and a new "a" is someone new: not in the manual segment.
    assert outcomes(ws.upsert_people([PersonUpsert("a", email="a@x.io")])) == ["created"]
    assert members(ws, manual) == {"b"} and members(ws, tagged) == {"a", "b"}


def test_batch_size_limit(ws: Workspace) -> None:
    with pytest.raises(InvalidArgument) as exc:
        ws.upsert_people([PersonUpsert(f"p{i}") for i in range(10_001)])
    assert exc.value.violations[0].field == "people"


# ---------------------------------------------------------------------------------------------
# Segments


def test_names_are_unique_ignoring_case(ws: Workspace) -> None:
    ws.create_segment("VIPs", "", False, None)
    with pytest.raises(AlreadyExists):
        ws.create_segment("vips", "", True, TagCondition("x"))
    other = ws.create_segment("others", "", False, None).id
    with pytest.raises(AlreadyExists):
        ws.update_segment(other, " VIPS ", None, None)


def test_manual_and_dynamic_refuse_each_others_operations(ws: Workspace) -> None:
    ws.upsert_people([PersonUpsert("a", add_tags=("t",))])
    manual = ws.create_segment("manual", "", False, None).id
    dynamic = ws.create_segment("dynamic", "", True, TagCondition("t")).id
    with pytest.raises(FailedPrecondition):
        ws.change_members(dynamic, [key("id", "a")], True)
    with pytest.raises(FailedPrecondition):
        ws.change_members(dynamic, [key("id", "a")], False)
    with pytest.raises(FailedPrecondition):
        ws.clear_segment(dynamic)
    with pytest.raises(FailedPrecondition):
        ws.update_segment(manual, None, None, TagCondition("t"))
    with pytest.raises(FailedPrecondition):
        ws.explain(key("id", "a"), manual)
    assert members(ws, dynamic) == {"a"} and members(ws, manual) == set()
    with pytest.raises(NotFound):
        ws.change_members(999, [key("id", "a")], True)


def test_manual_members_outcomes(ws: Workspace) -> None:
    ws.upsert_people([PersonUpsert("a", email="a@x.io"), PersonUpsert("b")])
    sid = ws.create_segment("m", "", False, None).id
    results = ws.change_members(
        sid,
        [
            key("id", "a"),
            key("email", "A@x.io"),
            key("id", "nobody"),
            key("email", "bad"),
            key("id", "b"),
        ],
        True,
    )
    assert outcomes(results) == ["added", "already_member", "not_found", "invalid", "added"]
    results = ws.change_members(sid, [key("id", "b"), key("id", "b"), key("id", "nobody")], False)
    assert outcomes(results) == ["removed", "not_a_member", "not_found"]
    assert members(ws, sid) == {"a"}
    assert ws.clear_segment(sid) == 1
    assert members(ws, sid) == set()
    assert ws.clear_segment(sid) == 0


def test_deleting_a_referenced_segment_is_refused_with_the_referencing_names(
    ws: Workspace,
) -> None:
    base = ws.create_segment("base", "", False, None).id
    user1 = ws.create_segment("first user", "", True, SegmentCondition(base)).id
    user2 = ws.create_segment(
        "second user", "", True, Group("any", (TagCondition("x"), SegmentCondition(base, True)))
    ).id
    [result] = ws.delete_segments([base])
    assert result.outcome == "failed_precondition"
    assert "first user" in result.error and "second user" in result.error
    assert result.field == "segment_ids[0]"
    info = ws.get_segment(base)
    assert [r.name for r in info.referenced_by] == ["first user", "second user"]
    # Deleting the users with it, in one call, is allowed.
    assert outcomes(ws.delete_segments([base, user1, user2])) == ["deleted"] * 3
    assert not ws.state.segments
    assert outcomes(ws.delete_segments([base])) == ["not_found"]


def test_a_refused_deletion_keeps_what_the_refused_segment_references(ws: Workspace) -> None:
    """c -> b -> a; deleting [a, b] while c stays: b is refused (c uses it), so a must stay too
    (b still uses it). The engine deletes a anyway, leaving b naming a segment that no longer
    exists; the next write that re-evaluates b then fails (KeyError) and nothing more can be
    written about the people in it."""
    ws.upsert_people([PersonUpsert("p", add_tags=("t",))])
    a = ws.create_segment("a", "", True, TagCondition("t")).id
    b = ws.create_segment("b", "", True, SegmentCondition(a)).id
    ws.create_segment("c", "", True, SegmentCondition(b))
    results = ws.delete_segments([a, b])
    assert outcomes(results)[1] == "failed_precondition"
    assert outcomes(results)[0] == "failed_precondition", results
    assert ws.get_segment(b).references[0].id == a
    assert outcomes(ws.delete_people([key("id", "p")])) == ["deleted"]


def test_archived_segments_are_listed_apart_and_refused_in_audiences(ws: Workspace) -> None:
    ws.upsert_people([PersonUpsert("a")])
    sid = ws.create_segment("m", "", True, TagCondition("t", negate=True)).id
    assert outcomes(ws.archive_segments([sid, 999], True)) == ["archived", "not_found"]
    assert ws.list_segments()[0] == []
    assert [s.id for s in ws.list_segments(archived=True)[0]] == [sid]
    with pytest.raises(FailedPrecondition):
        ws.audience(AudienceSpec(include=(sid,)))
    ws.archive_segments([sid], False)
    assert len(ws.audience(AudienceSpec(include=(sid,)))) == 1
    # Archived segments keep their membership up to date.
    assert members(ws, sid) == {"a"}


def test_audience_rules(ws: Workspace) -> None:
    ws.upsert_people(
        [
            PersonUpsert("a", email="a@x.io", add_tags=("in",)),
            PersonUpsert("b", add_tags=("in", "out"), devices=(("d", "ios"),)),
            PersonUpsert("c", email="c@x.io", add_tags=("in",), unsubscribed=True),
            PersonUpsert("d", add_tags=("in2",)),
        ]
    )
    seg = {t: ws.create_segment(t, "", True, TagCondition(t)).id for t in ("in", "in2", "out")}
    manual = ws.create_segment("req", "", False, None).id
    ws.change_members(manual, [key("id", p) for p in "abd"], True)

    def audience(**kw: object) -> set[str]:
        bitmap = ws.audience(AudienceSpec(**kw))  # type: ignore[arg-type]
        return {ws.state.index.ids[o] or "" for o in bitmap}

    assert audience(include=(seg["in"], seg["in2"])) == {"a", "b", "d"}
    assert audience(include=(seg["in"],), include_unsubscribed=True) == {"a", "b", "c"}
    assert audience(include=(seg["in"], seg["in2"]), exclude=(seg["out"],)) == {"a", "d"}
    assert audience(include=(seg["in"], seg["in2"]), require=(manual,)) == {"a", "b", "d"}
    assert audience(include=(seg["in"],), channel="email") == {"a"}
    assert audience(include=(seg["in"],), channel="device") == {"b"}
    assert audience(include=(seg["in"],), channel="device", device_platform="web") == set()
    with pytest.raises(InvalidArgument):
        ws.audience(AudienceSpec(include=()))
    with pytest.raises(NotFound):
        ws.audience(AudienceSpec(include=(999,)))


# ---------------------------------------------------------------------------------------------
# Member paging


def test_list_members_pages_are_stable_and_complete(ws: Workspace) -> None:
    ws.upsert_people([PersonUpsert(f"p{i:02}") for i in range(25)])
    sid = ws.create_segment("m", "", False, None).id
    ws.change_members(sid, [key("id", f"p{i:02}") for i in range(0, 25, 2)], True)  # 13
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        rows, token, total = ws.list_members(sid, page_size=4, page_token=token)
        assert total == 13
        seen.extend(r.id for r in rows)
        pages += 1
        if not token:
            break
    assert pages == 4
    assert seen == [f"p{i:02}" for i in range(0, 25, 2)]
    # Same pages when asked again.
    first, token1, _ = ws.list_members(sid, page_size=4)
    assert [r.id for r in first] == seen[:4]
    # Changes between pages: no one twice, no one who stayed is skipped.
    ws.change_members(sid, [key("id", "p00"), key("id", "p02")], False)
    ws.change_members(sid, [key("id", "p01"), key("id", "p24")], True)
    rest: list[str] = []
    token = token1
    while token:
        rows, token, _ = ws.list_members(sid, page_size=4, page_token=token)
        rest.extend(r.id for r in rows)
    assert rest == [f"p{i:02}" for i in range(8, 25, 2)]
    assert not set(rest) & set(seen[:4])


def test_list_members_details_and_bad_token(ws: Workspace) -> None:
    ws.upsert_people([PersonUpsert("a", email="A@x.io", phone="+15550100001")])
    sid = ws.create_segment("m", "", True, TagCondition("t", negate=True)).id
    rows, token, total = ws.list_members(sid)
    assert (rows[0].id, rows[0].email, rows[0].phone, token, total) == (
        "a",
        "a@x.io",
        "+15550100001",
        "",
        1,
    )
    with pytest.raises(InvalidArgument) as exc:
        ws.list_members(sid, page_token="garbage")
    assert exc.value.violations[0].field == "page_token"
    with pytest.raises(NotFound):
        ws.list_members(999)


# ---------------------------------------------------------------------------------------------
# Preview and explain


def test_preview_counts_without_saving(ws: Workspace) -> None:
    ws.upsert_people([PersonUpsert(f"p{i}", attributes={"n": float(i)}) for i in range(10)])
    tree = AttributeCondition("greater_or_equal", attribute="n", value=7.0)
    count, sample = ws.preview(tree, sample_size=2)
    assert count == 3 and len(sample) == 2 and set(sample) <= {"p7", "p8", "p9"}
    assert not ws.state.segments
    with pytest.raises(InvalidArgument) as exc:
        ws.preview(Group("all", ()))
    assert exc.value.violations[0].field == "conditions.group.children"


def test_explain_gives_every_node_its_path_and_truth(ws: Workspace) -> None:
    ws.upsert_people([PersonUpsert("a", attributes={"age": 30.0}, add_tags=("vip",))])
    tree = Group(
        "all",
        (
            AttributeCondition("greater_than", attribute="age", value=18.0),
            Group("any", (TagCondition("beta"), TagCondition("vip", negate=True)), negate=True),
        ),
    )
    sid = ws.create_segment("adults", "", True, tree).id
    member, root = ws.explain(key("id", "a"), sid)
    assert member is True

    def flat(node: object, out: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
        out.append((node.path, node.matched))  # type: ignore[attr-defined]
        for child in node.children:  # type: ignore[attr-defined]
            flat(child, out)
        return out

    assert flat(root, []) == [
        ("conditions.group", True),
        ("conditions.group.children[0].attribute", True),
        ("conditions.group.children[1].group", True),
        ("conditions.group.children[1].group.children[0].tag", False),
        ("conditions.group.children[1].group.children[1].tag", False),
    ]
    assert "age" in root.children[0].description
    with pytest.raises(NotFound):
        ws.explain(key("id", "nobody"), sid)


# ---------------------------------------------------------------------------------------------
# Change feed


def populate_feed(ws: Workspace) -> tuple[int, int]:
    ws.upsert_people([PersonUpsert(f"p{i}", add_tags=("t",) if i % 2 else ()) for i in range(6)])
    tagged = ws.create_segment("tagged", "", True, TagCondition("t")).id
    manual = ws.create_segment("manual", "", False, None).id
    ws.change_members(manual, [key("id", f"p{i}") for i in range(4)], True)
    ws.upsert_people([PersonUpsert("p0", add_tags=("t",)), PersonUpsert("p1", remove_tags=("t",))])
    ws.delete_people([key("id", "p2")])
    return tagged, manual


def test_change_feed_causes_and_order(ws: Workspace) -> None:
    tagged, manual = populate_feed(ws)
    changes, last = ws.read_changes(0, frozenset())
    assert [c.seq for c in changes] == list(range(1, len(changes) + 1))
    assert last == changes[-1].seq == ws.head_seq()
    assert [(c.segment_id, c.person_id, c.entered, c.cause) for c in changes] == [
        (tagged, "p1", True, CAUSE_DEFINITION),
        (tagged, "p3", True, CAUSE_DEFINITION),
        (tagged, "p5", True, CAUSE_DEFINITION),
        (manual, "p0", True, CAUSE_MANUAL),
        (manual, "p1", True, CAUSE_MANUAL),
        (manual, "p2", True, CAUSE_MANUAL),
        (manual, "p3", True, CAUSE_MANUAL),
        (tagged, "p0", True, CAUSE_DATA),
        (tagged, "p1", False, CAUSE_DATA),
        (manual, "p2", False, CAUSE_DELETED),
    ]


@pytest.mark.parametrize("limit", [1, 2, 3, 7])
def test_change_feed_paging_resumes_exactly(ws: Workspace, limit: int) -> None:
    tagged, manual = populate_feed(ws)
    everything, _ = ws.read_changes(0, frozenset(), limit=10**6)
    for segments in (frozenset(), frozenset([tagged]), frozenset([manual])):
        got = []
        cursor = 0
        while True:
            page, cursor = ws.read_changes(cursor, segments, limit=limit)
            assert len(page) <= limit
            if not page:
                break
            got.extend(page)
        assert got == [c for c in everything if not segments or c.segment_id in segments]
        assert cursor == ws.head_seq() or not segments


def test_change_feed_retention(tmp_path: Path) -> None:
    h = Harness(tmp_path, FakeClock(), make_config(tmp_path, change_retention_seconds=100))
    try:
        ws = h.ws
        ws.upsert_people([PersonUpsert("a"), PersonUpsert("b")])
        sid = ws.create_segment("m", "", False, None).id
        ws.change_members(sid, [key("id", "a")], True)  # seq 1
        h.clock.advance(60)
        ws.change_members(sid, [key("id", "b")], True)  # seq 2
        h.clock.advance(60)
        ws.tick()  # seq 1 is 120 s old: pruned; seq 2 is 60 s old: kept
        with pytest.raises(OutOfRange):
            ws.read_changes(0, frozenset())
        changes, _ = ws.read_changes(1, frozenset())
        assert [(c.seq, c.person_id) for c in changes] == [(2, "b")]
        h.clock.advance(100)
        ws.tick()
        with pytest.raises(OutOfRange):
            ws.read_changes(1, frozenset())
        assert ws.read_changes(2, frozenset()) == ([], 2)
        # Membership is not affected by pruning the feed.
        assert members(ws, sid) == {"a", "b"}
    finally:
        h.close()


def test_timestamps_are_accepted_over_the_whole_calendar(ws: Workspace) -> None:
    low, high = Timestamp(-62_135_596_800), Timestamp(253_402_300_799)
    results = ws.upsert_people(
        [
            PersonUpsert("low", attributes={"t": low}),
            PersonUpsert("high", attributes={"t": high}),
            PersonUpsert("bad", attributes={"t": Timestamp(high + 1)}),
        ]
    )
    assert outcomes(results) == ["created", "created", "invalid"]
    sid = ws.create_segment(
        "before", "", True, AttributeCondition("before", attribute="t", value=Timestamp(0))
    ).id
    assert members(ws, sid) == {"low"}


def test_a_second_item_for_a_person_created_in_the_same_batch_is_an_update(
    ws: Workspace,
) -> None:
    results = ws.upsert_people(
        [
            PersonUpsert("p", attributes={"plan": "free"}),
            PersonUpsert("p", attributes={"plan": "pro"}),
            PersonUpsert("p", attributes={"plan": "pro"}),
        ]
    )
    assert outcomes(results) == ["created", "updated", "unchanged"]
    assert ws.get_person(key("id", "p")).record.attributes == {"plan": "pro"}
