"""segsvc.v1.People: people in, people out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc

from segsvc.api import convert
from segsvc.api.base import EngineServicer
from segsvc.api.batches import decode_batch, outcome_counts
from segsvc.engine.errors import Unimplemented
from segsvc.engine.model import ItemResult
from segsvc.v1 import people_pb2, people_pb2_grpc

# A bulk summary lists at most this many rejected items (the counts stay exact), so a stream
# of millions of bad rows still gets an answer that fits in a message.
MAX_LISTED_ERRORS = 10_000

_EVENTS_UNAVAILABLE = (
    "events are not stored yet: TrackEvents and StreamTrackEvents will come with event, page "
    "view and message conditions"
)


def _upsert_key(msg: people_pb2.PersonUpsert) -> str:
    return str(msg.id)


class PeopleServicer(EngineServicer, people_pb2_grpc.PeopleServicer):
    def UpsertPeople(
        self, request: people_pb2.UpsertPeopleRequest, context: grpc.ServicerContext
    ) -> people_pb2.UpsertPeopleResponse:
        batch = decode_batch(request.people, convert.person_upsert, _upsert_key, "people")
        results = batch.merge(self._workspace().upsert_people(batch.items, "people"))
        counts = outcome_counts(results)
        return people_pb2.UpsertPeopleResponse(
            results=convert.item_results_to_proto(results),
            created=counts["created"],
            updated=counts["updated"],
            unchanged=counts["unchanged"],
            rejected=counts["rejected"],
        )

    def StreamUpsertPeople(
        self, request_iterator: Iterator[people_pb2.UpsertPeopleRequest], context: Any
    ) -> people_pb2.BulkSummary:
        workspace = self._workspace()
        # A message may hold more than the engine takes per call; each engine call is one
        # all-or-nothing unit per item, so cutting a message in parts changes nothing visible.
        part_size = workspace.limits.max_batch_items
        received = 0
        counts: Counter[str] = Counter()
        errors: list[ItemResult] = []
        for request in request_iterator:
            people = request.people
            for start in range(0, len(people), part_size):
                part = people[start : start + part_size]
                batch = decode_batch(
                    part, convert.person_upsert, _upsert_key, "people", first_index=received
                )
                results = batch.merge(workspace.upsert_people(batch.items, "people"))
                received += len(part)
                counts.update(outcome_counts(results))
                room = MAX_LISTED_ERRORS - len(errors)
                errors.extend([r for r in results if r.rejected][:room])
        return people_pb2.BulkSummary(
            received=received,
            created=counts["created"],
            updated=counts["updated"],
            unchanged=counts["unchanged"],
            rejected=counts["rejected"],
            errors=convert.item_results_to_proto(errors),
        )

    def GetPerson(
        self, request: people_pb2.GetPersonRequest, context: grpc.ServicerContext
    ) -> people_pb2.Person:
        key = convert.person_key(request.person, "person")
        return convert.person_to_proto(self._workspace().get_person(key))

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
        raise Unimplemented(_EVENTS_UNAVAILABLE)

    def StreamTrackEvents(
        self, request_iterator: Iterator[people_pb2.TrackEventsRequest], context: Any
    ) -> people_pb2.BulkSummary:
        raise Unimplemented(_EVENTS_UNAVAILABLE)
