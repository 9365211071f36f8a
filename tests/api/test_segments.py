"""Segments over gRPC: definitions, validation errors with exact field paths, bulk calls,
previews, explanations, history, manual members."""

from __future__ import annotations

import grpc
from api_harness import (
    C,
    add_members,
    all_of,
    any_of,
    attr,
    by_id,
    dynamic_segment,
    equals,
    in_segment,
    manual_segment,
    members_of,
    person,
    rpc_error,
    status_of,
    stored_changes,
    upsert,
    value,
    violation_fields,
    violations,
)
from google.protobuf import timestamp_pb2

from segsvc.v1 import changes_pb2, people_pb2, segments_pb2, types_pb2

S = segments_pb2
OUTCOME = types_pb2.Outcome


def _load_people(api):
    upsert(
        api,
        person("u1", plan="pro", seats=10),
        person("u2", plan="pro", seats=2),
        person("u3", plan="free", seats=1),
        person("u4", plan="team"),
    )


def test_create_get_update_dynamic_segment(api):
    _load_people(api)
    pro = api.segments.CreateSegment(
        S.CreateSegmentRequest(
            name="Pro plan",
            description="paying",
            type=S.SEGMENT_TYPE_DYNAMIC,
            conditions=equals("plan", "pro"),
        )
    ).segment
    assert (pro.name, pro.description, pro.type, pro.member_count) == (
        "Pro plan",
        "paying",
        S.SEGMENT_TYPE_DYNAMIC,
        2,
    )
    assert pro.conditions == equals("plan", "pro")
    assert pro.created_at.seconds == api.clock.now()

    big = dynamic_segment(
        api,
        "Big pro",
        all_of(in_segment(pro.id), attr("seats", C.OPERATOR_GREATER_OR_EQUAL, 5)),
    )
    got = api.segments.GetSegment(S.GetSegmentRequest(segment_id=big)).segment
    assert got.member_count == 1
    assert [(r.id, r.name) for r in got.references] == [(pro.id, "Pro plan")]
    assert got.conditions.group.children[1].attribute.value.number_value == 5.0
    got = api.segments.GetSegment(S.GetSegmentRequest(segment_id=pro.id)).segment
    assert [(r.id, r.name) for r in got.referenced_by] == [(big, "Big pro")]

    api.clock.advance(60)
    updated = api.segments.UpdateSegment(
        S.UpdateSegmentRequest(
            segment_id=pro.id,
            name="Paying",
            conditions=any_of(equals("plan", "pro"), equals("plan", "team")),
        )
    ).segment
    assert (updated.name, updated.description, updated.member_count) == ("Paying", "paying", 3)
    assert updated.updated_at.seconds == api.clock.now()
    entered = [
        (c.person_id, c.cause)
        for c in stored_changes(api, segment_ids=[pro.id])
        if c.kind == changes_pb2.CHANGE_KIND_ENTERED
    ]
    assert entered[-1] == ("u4", changes_pb2.CHANGE_CAUSE_DEFINITION)
    # Unset conditions keep the tree; description alone can change.
    again = api.segments.UpdateSegment(
        S.UpdateSegmentRequest(segment_id=pro.id, description="")
    ).segment
    assert again.description == ""
    assert again.conditions == updated.conditions


def test_type_follows_conditions_when_unspecified(api):
    dynamic = api.segments.CreateSegment(
        S.CreateSegmentRequest(name="d", conditions=equals("plan", "pro"))
    ).segment
    manual = api.segments.CreateSegment(S.CreateSegmentRequest(name="m")).segment
    assert (dynamic.type, manual.type) == (S.SEGMENT_TYPE_DYNAMIC, S.SEGMENT_TYPE_MANUAL)
    assert not manual.HasField("conditions")


def test_duplicate_name_is_already_exists(api):
    manual_segment(api, "Newsletter")
    code, message = status_of(lambda: manual_segment(api, "newsletter"))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert "Newsletter" in message


def test_unknown_segment_is_not_found(api):
    for call in (
        lambda: api.segments.GetSegment(S.GetSegmentRequest(segment_id=42)),
        lambda: api.segments.UpdateSegment(S.UpdateSegmentRequest(segment_id=42, name="x")),
        lambda: api.segments.ListMembers(S.ListMembersRequest(segment_id=42)),
        lambda: add_members(api, 42, "u1"),
        lambda: api.segments.ClearSegment(S.ClearSegmentRequest(segment_id=42)),
    ):
        code, message = status_of(call)
        assert code == grpc.StatusCode.NOT_FOUND
        assert "segment 42" in message


def test_bad_condition_trees_name_the_exact_field(api):
    _load_people(api)
    manual = manual_segment(api, "Manual")

    def create(conditions):
        return lambda: dynamic_segment(api, "bad", conditions)

    # A type mismatch in the second child.
    assert violation_fields(
        create(all_of(equals("plan", "pro"), attr("seats", C.OPERATOR_CONTAINS, 5)))
    ) == ["conditions.group.children[1].attribute.value"]
    # An empty group, nested.
    assert violation_fields(create(all_of(equals("plan", "pro"), all_of()))) == [
        "conditions.group.children[1].group.children"
    ]
    # A reference to a segment that does not exist.
    error = rpc_error(create(any_of(in_segment(manual), in_segment(999))))
    assert violations(error) == [
        ("conditions.group.children[1].segment.segment_id", "segment 999 does not exist")
    ]
    # A node with nothing set, and an operator left UNSPECIFIED, in one tree: both reported.
    empty_node = C.Condition()
    no_operator = C.Condition(attribute=C.AttributeCondition(attribute="plan"))
    assert violation_fields(create(all_of(no_operator, equals("plan", "x"), empty_node))) == [
        "conditions.group.children[2]"
    ]
    assert violation_fields(create(all_of(no_operator, all_of(), equals("seats", 1)))) == [
        "conditions.group.children[0].attribute.operator",
        "conditions.group.children[1].group.children",
    ]
    # A combinator left UNSPECIFIED, an operator that does not fit a built-in field.
    assert violation_fields(
        create(
            C.Condition(
                group=C.Group(
                    children=[
                        C.Condition(
                            attribute=C.AttributeCondition(
                                field=C.BUILTIN_FIELD_EMAIL,
                                operator=C.OPERATOR_GREATER_THAN,
                                value=value(3),
                            )
                        )
                    ]
                )
            )
        )
    ) == ["conditions.group.combinator", "conditions.group.children[0].attribute.operator"]
    # A Value with no kind inside ONE_OF cannot be decoded.
    one_of = C.Condition(
        attribute=C.AttributeCondition(
            attribute="plan", operator=C.OPERATOR_ONE_OF, values=[value("a"), types_pb2.Value()]
        )
    )
    assert violation_fields(create(one_of)) == ["conditions.attribute.values[1]"]
    # A dynamic segment without conditions.
    error = rpc_error(
        lambda: api.segments.CreateSegment(
            S.CreateSegmentRequest(name="bad", type=S.SEGMENT_TYPE_DYNAMIC)
        )
    )
    assert [f for f, _ in violations(error)] == ["conditions"]
    # Nothing was saved.
    listed = api.segments.ListSegments(S.ListSegmentsRequest(archived=S.ARCHIVED_FILTER_ALL))
    assert [s.name for s in listed.segments] == ["Manual"]


def test_cycles_are_refused_on_update(api):
    a = manual_segment(api, "A")
    b = dynamic_segment(api, "B", in_segment(a))
    c = dynamic_segment(api, "C", in_segment(b))
    d = dynamic_segment(api, "D", equals("plan", "pro"))
    error = rpc_error(
        lambda: api.segments.UpdateSegment(
            S.UpdateSegmentRequest(segment_id=b, conditions=all_of(in_segment(d), in_segment(c)))
        )
    )
    assert violations(error) == [
        (
            "conditions.group.children[1].segment.segment_id",
            f"segment {c} references segment {b}: a cycle",
        )
    ]
    error = rpc_error(
        lambda: api.segments.UpdateSegment(
            S.UpdateSegmentRequest(segment_id=d, conditions=in_segment(d))
        )
    )
    assert violations(error) == [
        ("conditions.segment.segment_id", "a segment cannot reference itself")
    ]
    assert api.segments.GetSegment(
        S.GetSegmentRequest(segment_id=b)
    ).segment.conditions == in_segment(a)


def test_manual_segments_take_no_conditions(api):
    error = rpc_error(
        lambda: api.segments.CreateSegment(
            S.CreateSegmentRequest(
                name="m", type=S.SEGMENT_TYPE_MANUAL, conditions=equals("plan", "pro")
            )
        )
    )
    assert [f for f, _ in violations(error)] == ["conditions"]
    manual = manual_segment(api, "m")
    code, _ = status_of(
        lambda: api.segments.UpdateSegment(
            S.UpdateSegmentRequest(segment_id=manual, conditions=equals("plan", "pro"))
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_delete_and_archive_report_per_item(api):
    base = manual_segment(api, "Base")
    user = dynamic_segment(api, "User", in_segment(base))
    lone = manual_segment(api, "Lone")
    response = api.segments.DeleteSegments(S.DeleteSegmentsRequest(segment_ids=[base, lone, 77]))
    results = [(r.index, r.key, OUTCOME.Name(r.outcome)) for r in response.results]
    assert results == [
        (0, str(base), "OUTCOME_FAILED_PRECONDITION"),
        (1, str(lone), "OUTCOME_DELETED"),
        (2, "77", "OUTCOME_NOT_FOUND"),
    ]
    assert f"{user} ('User')" in response.results[0].error
    assert response.results[0].field == "segment_ids[0]"
    # Deleting the user and the used segment together is fine.
    response = api.segments.DeleteSegments(S.DeleteSegmentsRequest(segment_ids=[base, user]))
    assert [OUTCOME.Name(r.outcome) for r in response.results] == ["OUTCOME_DELETED"] * 2

    kept = manual_segment(api, "Kept")
    old = manual_segment(api, "Old")
    response = api.segments.ArchiveSegments(S.ArchiveSegmentsRequest(segment_ids=[old, 99]))
    assert [OUTCOME.Name(r.outcome) for r in response.results] == [
        "OUTCOME_ARCHIVED",
        "OUTCOME_NOT_FOUND",
    ]

    def names(**request):
        page = api.segments.ListSegments(S.ListSegmentsRequest(**request))
        return [s.name for s in page.segments]

    assert names() == ["Kept"]
    assert names(archived=S.ARCHIVED_FILTER_ARCHIVED) == ["Old"]
    assert names(archived=S.ARCHIVED_FILTER_ALL) == ["Kept", "Old"]
    response = api.segments.ArchiveSegments(
        S.ArchiveSegmentsRequest(segment_ids=[old], unarchive=True)
    )
    assert OUTCOME.Name(response.results[0].outcome) == "OUTCOME_UNARCHIVED"
    assert names() == ["Kept", "Old"]
    assert kept < old


def test_list_segments_filters_and_pages(api):
    _load_people(api)
    for i in range(5):
        manual_segment(api, f"Manual {i}")
    dynamic_segment(api, "Pro people", equals("plan", "pro"))
    page = api.segments.ListSegments(S.ListSegmentsRequest(page_size=2))
    seen = [s.name for s in page.segments]
    while page.next_page_token:
        page = api.segments.ListSegments(
            S.ListSegmentsRequest(page_size=2, page_token=page.next_page_token)
        )
        seen += [s.name for s in page.segments]
    assert seen == [f"Manual {i}" for i in range(5)] + ["Pro people"]
    page = api.segments.ListSegments(S.ListSegmentsRequest(type=S.SEGMENT_TYPE_DYNAMIC))
    assert [(s.name, s.member_count, s.HasField("conditions")) for s in page.segments] == [
        ("Pro people", 2, False)
    ]
    page = api.segments.ListSegments(S.ListSegmentsRequest(name_contains="MANUAL 3"))
    assert [s.name for s in page.segments] == ["Manual 3"]
    code, _ = status_of(
        lambda: api.segments.ListSegments(S.ListSegmentsRequest(page_token="garbage"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_preview_counts_an_unsaved_tree(api):
    _load_people(api)
    preview = api.segments.PreviewSegment(
        S.PreviewSegmentRequest(conditions=equals("plan", "pro"), sample_size=1)
    )
    assert preview.count == 2
    assert len(preview.sample) == 1 and preview.sample[0] in {"u1", "u2"}
    error = rpc_error(
        lambda: api.segments.PreviewSegment(
            S.PreviewSegmentRequest(conditions=all_of(equals("plan", "pro"), C.Condition()))
        )
    )
    assert [f for f, _ in violations(error)] == ["conditions.group.children[1]"]
    assert api.segments.ListSegments(S.ListSegmentsRequest()).segments == []


def test_explain_membership_gives_every_node(api):
    _load_people(api)
    big_pro = dynamic_segment(
        api,
        "Big pro",
        all_of(equals("plan", "pro"), attr("seats", C.OPERATOR_GREATER_THAN, 5)),
    )
    answer = api.segments.ExplainMembership(
        S.ExplainMembershipRequest(person=by_id("u2"), segment_id=big_pro)
    )
    assert answer.member is False
    assert (answer.root.path, answer.root.matched) == ("conditions.group", False)
    assert [(c.path, c.matched) for c in answer.root.children] == [
        ("conditions.group.children[0].attribute", True),
        ("conditions.group.children[1].attribute", False),
    ]
    assert "plan" in answer.root.children[0].description
    answer = api.segments.ExplainMembership(
        S.ExplainMembershipRequest(person=by_id("u1"), segment_id=big_pro)
    )
    assert answer.member is True
    manual = manual_segment(api, "m")
    code, _ = status_of(
        lambda: api.segments.ExplainMembership(
            S.ExplainMembershipRequest(person=by_id("u1"), segment_id=manual)
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    code, _ = status_of(
        lambda: api.segments.ExplainMembership(
            S.ExplainMembershipRequest(person=by_id("ghost"), segment_id=big_pro)
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND


def test_segment_history_records_sizes(api):
    _load_people(api)
    start = api.clock.now()
    pro = dynamic_segment(api, "Pro", equals("plan", "pro"))
    api.clock.advance(3600)
    upsert(api, person("u3", plan="pro"))
    api.engine.tick()
    points = api.segments.GetSegmentHistory(S.GetSegmentHistoryRequest(segment_id=pro)).points
    assert [(p.at.seconds, p.member_count) for p in points] == [
        (start, 2),
        (start + 3600, 3),
    ]
    later = api.segments.GetSegmentHistory(
        S.GetSegmentHistoryRequest(segment_id=pro, start=timestamp_pb2.Timestamp(seconds=start + 1))
    ).points
    assert [p.member_count for p in later] == [3]
    code, _ = status_of(
        lambda: api.segments.GetSegmentHistory(S.GetSegmentHistoryRequest(segment_id=9))
    )
    assert code == grpc.StatusCode.NOT_FOUND


def test_manual_members_per_item_results(api):
    _load_people(api)
    vip = manual_segment(api, "VIP")
    response = api.segments.AddMembers(
        S.AddMembersRequest(
            segment_id=vip,
            people=[
                by_id("u1"),
                by_id("u1"),
                by_id("ghost"),
                types_pb2.PersonRef(email="bad"),
                types_pb2.PersonRef(),
                by_id("u2"),
            ],
        )
    )
    assert [(r.index, OUTCOME.Name(r.outcome), r.field) for r in response.results] == [
        (0, "OUTCOME_ADDED", ""),
        (1, "OUTCOME_ALREADY_MEMBER", ""),
        (2, "OUTCOME_NOT_FOUND", ""),
        (3, "OUTCOME_INVALID", "people[3]"),
        (4, "OUTCOME_INVALID", "people[4]"),
        (5, "OUTCOME_ADDED", ""),
    ]
    assert (response.added, response.unchanged, response.rejected) == (2, 1, 3)
    assert members_of(api, vip) == {"u1", "u2"}

    response = api.segments.RemoveMembers(
        S.RemoveMembersRequest(segment_id=vip, people=[by_id("u1"), by_id("u3")])
    )
    assert [OUTCOME.Name(r.outcome) for r in response.results] == [
        "OUTCOME_REMOVED",
        "OUTCOME_NOT_A_MEMBER",
    ]
    assert (response.removed, response.unchanged) == (1, 1)

    check = api.segments.CheckMembership(
        S.CheckMembershipRequest(person=types_pb2.PersonRef(id="u2"), segment_ids=[vip])
    )
    assert check.person_id == "u2"
    assert [(r.segment_id, r.member) for r in check.results] == [(vip, True)]
    code, _ = status_of(
        lambda: api.segments.CheckMembership(
            S.CheckMembershipRequest(person=by_id("u2"), segment_ids=[vip, 404])
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND

    manual_changes = [
        (c.person_id, c.kind, c.cause) for c in stored_changes(api, segment_ids=[vip])
    ]
    assert manual_changes == [
        ("u1", changes_pb2.CHANGE_KIND_ENTERED, changes_pb2.CHANGE_CAUSE_MANUAL),
        ("u2", changes_pb2.CHANGE_KIND_ENTERED, changes_pb2.CHANGE_CAUSE_MANUAL),
        ("u1", changes_pb2.CHANGE_KIND_EXITED, changes_pb2.CHANGE_CAUSE_MANUAL),
    ]
    cleared = api.segments.ClearSegment(S.ClearSegmentRequest(segment_id=vip))
    assert cleared.removed == 1
    assert members_of(api, vip) == set()


def test_dynamic_segments_refuse_manual_changes(api):
    _load_people(api)
    pro = dynamic_segment(api, "Pro", equals("plan", "pro"))
    for call in (
        lambda: add_members(api, pro, "u3"),
        lambda: api.segments.RemoveMembers(
            S.RemoveMembersRequest(segment_id=pro, people=[by_id("u1")])
        ),
        lambda: api.segments.ClearSegment(S.ClearSegmentRequest(segment_id=pro)),
    ):
        code, message = status_of(call)
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "dynamic" in message
    assert members_of(api, pro) == {"u1", "u2"}


def test_list_members_pages_with_emails(api):
    upsert(
        api,
        *[people_pb2.PersonUpsert(id=f"p{i:02}", email=f"p{i}@example.com") for i in range(25)],
    )
    seg = manual_segment(api, "All")
    add_members(api, seg, *[f"p{i:02}" for i in range(25)])
    seen = []
    token = ""
    while True:
        page = api.segments.ListMembers(
            S.ListMembersRequest(segment_id=seg, page_size=10, page_token=token)
        )
        assert page.total == 25
        seen += [(m.id, m.email) for m in page.members]
        token = page.next_page_token
        if not token:
            break
    assert seen == [(f"p{i:02}", f"p{i}@example.com") for i in range(25)]
