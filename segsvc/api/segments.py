"""segsvc.v1.SegmentsService: definitions, members, imports and questions about membership."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc

from segsvc.api import convert
from segsvc.api.base import EngineServicer
from segsvc.api.batches import decode_batch, outcome_counts
from segsvc.api.csv_import import import_members, read_rows
from segsvc.engine.errors import InvalidArgument, ResourceExhausted
from segsvc.engine.model import ItemResult
from segsvc.v1 import segments_pb2, segments_pb2_grpc


class SegmentsServicer(EngineServicer, segments_pb2_grpc.SegmentsServiceServicer):
    def CreateSegment(
        self, request: segments_pb2.CreateSegmentRequest, context: grpc.ServicerContext
    ) -> segments_pb2.CreateSegmentResponse:
        definition = convert.optional_condition(request)
        dynamic = convert.segment_type(request.type, definition is not None)
        info = self._workspace().create_segment(
            request.name, request.description, dynamic, definition
        )
        return segments_pb2.CreateSegmentResponse(segment=convert.segment_to_proto(info))

    def GetSegment(
        self, request: segments_pb2.GetSegmentRequest, context: grpc.ServicerContext
    ) -> segments_pb2.GetSegmentResponse:
        info = self._workspace().get_segment(request.segment_id)
        return segments_pb2.GetSegmentResponse(segment=convert.segment_to_proto(info))

    def UpdateSegment(
        self, request: segments_pb2.UpdateSegmentRequest, context: grpc.ServicerContext
    ) -> segments_pb2.UpdateSegmentResponse:
        info = self._workspace().update_segment(
            request.segment_id,
            request.name if request.HasField("name") else None,
            request.description if request.HasField("description") else None,
            convert.optional_condition(request),
        )
        return segments_pb2.UpdateSegmentResponse(segment=convert.segment_to_proto(info))

    def DeleteSegments(
        self, request: segments_pb2.DeleteSegmentsRequest, context: grpc.ServicerContext
    ) -> segments_pb2.DeleteSegmentsResponse:
        results = self._workspace().delete_segments(list(request.segment_ids))
        return segments_pb2.DeleteSegmentsResponse(results=convert.item_results_to_proto(results))

    def ArchiveSegments(
        self, request: segments_pb2.ArchiveSegmentsRequest, context: grpc.ServicerContext
    ) -> segments_pb2.ArchiveSegmentsResponse:
        results = self._workspace().archive_segments(
            list(request.segment_ids), archived=not request.unarchive
        )
        return segments_pb2.ArchiveSegmentsResponse(results=convert.item_results_to_proto(results))

    def ListSegments(
        self, request: segments_pb2.ListSegmentsRequest, context: grpc.ServicerContext
    ) -> segments_pb2.ListSegmentsResponse:
        rows, next_token = self._workspace().list_segments(
            name_contains=request.name_contains,
            dynamic=convert.type_filter(request.type),
            archived=convert.archived_filter(request.archived),
            page_size=request.page_size,
            page_token=self._open("segments", request.page_token, "page_token"),
        )
        return segments_pb2.ListSegmentsResponse(
            segments=[convert.segment_to_proto(info) for info in rows],
            next_page_token=self._seal("segments", next_token),
        )

    def PreviewSegment(
        self, request: segments_pb2.PreviewSegmentRequest, context: grpc.ServicerContext
    ) -> segments_pb2.PreviewSegmentResponse:
        count, sample = self._workspace().preview(
            convert.optional_condition(request), request.sample_size
        )
        return segments_pb2.PreviewSegmentResponse(count=count, sample=sample)

    def ExplainMembership(
        self, request: segments_pb2.ExplainMembershipRequest, context: grpc.ServicerContext
    ) -> segments_pb2.ExplainMembershipResponse:
        member, root = self._workspace().explain(
            convert.person_key(request.person, "person"), request.segment_id
        )
        return segments_pb2.ExplainMembershipResponse(
            member=member, root=convert.explain_to_proto(root)
        )

    def GetSegmentHistory(
        self, request: segments_pb2.GetSegmentHistoryRequest, context: grpc.ServicerContext
    ) -> segments_pb2.GetSegmentHistoryResponse:
        points = self._workspace().history(
            request.segment_id,
            convert.optional_timestamp(request, "start"),
            convert.optional_timestamp(request, "end"),
        )
        return segments_pb2.GetSegmentHistoryResponse(
            points=[
                segments_pb2.SizePoint(at=convert.timestamp_to_proto(at), member_count=count)
                for at, count in points
            ]
        )

    # -- manual membership ---------------------------------------------------------------------

    def AddMembers(
        self, request: segments_pb2.AddMembersRequest, context: grpc.ServicerContext
    ) -> segments_pb2.AddMembersResponse:
        results, counts = self._change_members(request, add=True)
        return segments_pb2.AddMembersResponse(
            results=convert.item_results_to_proto(results),
            added=counts["added"],
            unchanged=counts["already_member"],
            rejected=counts["rejected"],
        )

    def RemoveMembers(
        self, request: segments_pb2.RemoveMembersRequest, context: grpc.ServicerContext
    ) -> segments_pb2.RemoveMembersResponse:
        results, counts = self._change_members(request, add=False)
        return segments_pb2.RemoveMembersResponse(
            results=convert.item_results_to_proto(results),
            removed=counts["removed"],
            unchanged=counts["not_a_member"],
            rejected=counts["rejected"],
        )

    def _change_members(
        self, request: segments_pb2.AddMembersRequest | segments_pb2.RemoveMembersRequest, add: bool
    ) -> tuple[list[ItemResult], Counter[str]]:
        batch = decode_batch(request.people, convert.person_key, convert.person_ref_label, "people")
        results = batch.merge(
            self._workspace().change_members(request.segment_id, batch.items, add, "people")
        )
        return results, outcome_counts(results)

    def ImportMembers(
        self, request_iterator: Iterator[segments_pb2.ImportMembersRequest], context: Any
    ) -> segments_pb2.ImportMembersResponse:
        requests = iter(request_iterator)
        first = next(requests, None)
        if first is None or first.WhichOneof("part") != "options":
            raise InvalidArgument(
                "the first message carries the options, the file follows in chunks", "options"
            )
        options = first.options
        kind = convert.lookup_kind(options.by)
        settings = convert.csv_settings(options)
        workspace = self._workspace()
        # Adding nobody checks that the segment exists and is manual before a byte is read.
        workspace.add_ordinals(options.segment_id, ())
        report = import_members(
            read_rows(_file_chunks(requests, workspace.limits.max_csv_bytes), settings),
            kind,
            workspace.resolve_keys,
            lambda ordinals: workspace.add_ordinals(options.segment_id, ordinals),
        )
        return segments_pb2.ImportMembersResponse(
            rows=report.rows,
            added=report.added,
            already_members=report.already_members,
            rejected=report.rejected,
            rejected_rows=[convert.rejected_row_to_proto(row) for row in report.rejected_rows],
        )

    def ClearSegment(
        self, request: segments_pb2.ClearSegmentRequest, context: grpc.ServicerContext
    ) -> segments_pb2.ClearSegmentResponse:
        return segments_pb2.ClearSegmentResponse(
            removed=self._workspace().clear_segment(request.segment_id)
        )

    # -- questions -----------------------------------------------------------------------------

    def ListMembers(
        self, request: segments_pb2.ListMembersRequest, context: grpc.ServicerContext
    ) -> segments_pb2.ListMembersResponse:
        # A token pages one segment: it names the segment it was made for.
        kind = f"members/{request.segment_id}"
        members, next_token, total = self._workspace().list_members(
            request.segment_id,
            request.page_size,
            self._open(kind, request.page_token, "page_token"),
        )
        return segments_pb2.ListMembersResponse(
            members=[convert.member_to_proto(m) for m in members],
            next_page_token=self._seal(kind, next_token),
            total=total,
        )

    def CheckMembership(
        self, request: segments_pb2.CheckMembershipRequest, context: grpc.ServicerContext
    ) -> segments_pb2.CheckMembershipResponse:
        person_id, checks = self._workspace().check_membership(
            convert.person_key(request.person, "person"), list(request.segment_ids)
        )
        return segments_pb2.CheckMembershipResponse(
            person_id=person_id,
            results=[
                segments_pb2.MembershipCheck(segment_id=sid, member=member)
                for sid, member in checks
            ],
        )


def _file_chunks(
    requests: Iterator[segments_pb2.ImportMembersRequest], max_bytes: int
) -> Iterator[bytes]:
    """The file's bytes after the options message, refused past `max_bytes` in all."""
    total = 0
    for request in requests:
        part = request.WhichOneof("part")
        if part == "options":
            raise InvalidArgument("send the options once, in the first message only", "options")
        if part != "chunk":
            continue
        total += len(request.chunk)
        if total > max_bytes:
            raise ResourceExhausted(
                f"the file is larger than {max_bytes} bytes: split it into several imports"
            )
        yield request.chunk
