"""segsvc.v1.PeopleService: people and their events, one at a time, in batches and in bulk
streams."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import grpc

from segsvc.api import convert
from segsvc.api.base import EngineServicer
from segsvc.api.batches import BulkTally, decode_batch, outcome_counts
from segsvc.engine.bulk import BulkResult
from segsvc.engine.event_columns import EventColumns
from segsvc.engine.events import EventInput
from segsvc.engine.model import ItemResult
from segsvc.engine.people import PersonUpsert
from segsvc.engine.workspace import BULK_BATCH_FACTOR, Workspace
from segsvc.v1 import people_pb2, people_pb2_grpc

# A bulk summary lists at most this many rejected items (the counts stay exact), so a stream
# of millions of bad rows still gets an answer that fits in a message.
MAX_LISTED_ERRORS = 10_000


def _upsert_key(msg: people_pb2.PersonUpsert) -> str:
    return str(msg.id)


def _event_key(msg: people_pb2.Event) -> str:
    return convert.person_ref_label(msg.person)


class PeopleServicer(EngineServicer, people_pb2_grpc.PeopleServiceServicer):
    def UpsertPeople(
        self, request: people_pb2.UpsertPeopleRequest, context: grpc.ServicerContext
    ) -> people_pb2.UpsertPeopleResponse:
        workspace = self._workspace()
        batch = decode_batch(request.people, convert.person_upsert, _upsert_key, "people")
        results = batch.merge(workspace.upsert_people(batch.items, "people"))
        if request.HasField("columns"):
            # Rows of the columns count on from the people (one index space per request).
            columns = convert.people_columns(request.columns)
            bulk = workspace.upsert_columns(columns, len(request.people))
            results += bulk.results(columns.ids, len(request.people))
        counts = outcome_counts(results)
        return people_pb2.UpsertPeopleResponse(
            results=convert.item_results_to_proto(results),
            created=counts["created"],
            updated=counts["updated"],
            unchanged=counts["unchanged"],
            rejected=counts["rejected"],
        )

    def StreamUpsertPeople(
        self, request_iterator: Iterator[people_pb2.StreamUpsertPeopleRequest], context: Any
    ) -> people_pb2.StreamUpsertPeopleResponse:
        workspace = self._workspace()
        tally: BulkTally[people_pb2.PersonUpsert, PersonUpsert] = BulkTally(
            convert.person_upsert,
            _upsert_key,
            "people",
            workspace.limits.max_batch_items,
            MAX_LISTED_ERRORS,
        )
        part_size = workspace.limits.max_batch_items * BULK_BATCH_FACTOR
        for request in request_iterator:
            tally.apply(request.people, workspace.upsert_people)
            if request.HasField("columns"):
                tally.apply_columns(
                    partial(convert.people_columns, request.columns),
                    request.columns.ids,
                    workspace.upsert_columns,
                    part_size,
                )
        return people_pb2.StreamUpsertPeopleResponse(
            received=tally.received,
            created=tally.counts["created"],
            updated=tally.counts["updated"],
            unchanged=tally.counts["unchanged"],
            rejected=tally.counts["rejected"],
            errors=convert.item_results_to_proto(tally.errors),
        )

    def GetPerson(
        self, request: people_pb2.GetPersonRequest, context: grpc.ServicerContext
    ) -> people_pb2.GetPersonResponse:
        key = convert.person_key(request.person, "person")
        found = self._workspace().get_person(key)
        return people_pb2.GetPersonResponse(person=convert.person_to_proto(found))

    def DeletePeople(
        self, request: people_pb2.DeletePeopleRequest, context: grpc.ServicerContext
    ) -> people_pb2.DeletePeopleResponse:
        batch = decode_batch(request.people, convert.person_key, convert.person_ref_label, "people")
        results = batch.merge(self._workspace().delete_people(batch.items, "people"))
        return people_pb2.DeletePeopleResponse(
            results=convert.item_results_to_proto(results),
            deleted=outcome_counts(results)["deleted"],
        )

    def TrackEvents(
        self, request: people_pb2.TrackEventsRequest, context: grpc.ServicerContext
    ) -> people_pb2.TrackEventsResponse:
        workspace = self._workspace()
        batch = decode_batch(request.events, convert.event_input, _event_key, "events")
        results = batch.merge(
            workspace.track_events(batch.items, request.create_missing_people, "events")
        )
        if request.HasField("columns"):
            # Rows of the columns count on from the events (one index space per request).
            columns = convert.event_columns(request.columns)
            first = len(request.events)
            bulk = workspace.track_columns(columns, request.create_missing_people, first)
            results += bulk.results(columns.person_ids, first)
        counts = outcome_counts(results)
        return people_pb2.TrackEventsResponse(
            results=convert.item_results_to_proto(results),
            tracked=counts["tracked"],
            rejected=counts["rejected"],
        )

    def StreamTrackEvents(
        self, request_iterator: Iterator[people_pb2.StreamTrackEventsRequest], context: Any
    ) -> people_pb2.StreamTrackEventsResponse:
        workspace = self._workspace()
        tally: BulkTally[people_pb2.Event, EventInput] = BulkTally(
            convert.event_input,
            _event_key,
            "events",
            workspace.limits.max_batch_items,
            MAX_LISTED_ERRORS,
        )
        part_size = workspace.limits.max_batch_items * BULK_BATCH_FACTOR
        for request in request_iterator:
            create = request.create_missing_people
            tally.apply(request.events, _tracker(workspace, create))
            if request.HasField("columns"):
                tally.apply_columns(
                    partial(convert.event_columns, request.columns),
                    request.columns.person_ids,
                    _column_tracker(workspace, create),
                    part_size,
                )
        return people_pb2.StreamTrackEventsResponse(
            received=tally.received,
            tracked=tally.counts["tracked"],
            rejected=tally.counts["rejected"],
            errors=convert.item_results_to_proto(tally.errors),
        )


def _tracker(
    workspace: Workspace, create_missing_people: bool
) -> Callable[[list[EventInput], str], list[ItemResult]]:
    def track(events: list[EventInput], path: str) -> list[ItemResult]:
        return workspace.track_events(events, create_missing_people, path)

    return track


def _column_tracker(
    workspace: Workspace, create_missing_people: bool
) -> Callable[[EventColumns, int], BulkResult]:
    def track(columns: EventColumns, first_index: int) -> BulkResult:
        return workspace.track_columns(columns, create_missing_people, first_index)

    return track
