"""Batch calls: items that do not even decode are rejected one by one, the rest go to the
engine, and the answer lists every item in request order.

The engine numbers the items it receives 0, 1, 2 ... and writes field paths such as
`people[1].email`. When some items were held back (they did not decode), or when a stream is
cut into several engine calls, those positions are not the client's. `DecodedBatch.merge`
puts the client's numbers back into both the index and the field path, so a client always
reads the position of the item in what it sent (across the whole stream for streams).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, Protocol, Self, TypeVar

from segsvc.engine.bulk import BulkResult
from segsvc.engine.errors import InvalidArgument
from segsvc.engine.model import ItemResult

Message = TypeVar("Message")
Item = TypeVar("Item")


class Rows(Protocol):
    """Columns of many items (PeopleColumns, EventColumns): cut into parts by row."""

    def __len__(self) -> int: ...

    def slice(self, start: int, stop: int) -> Self: ...


Columns = TypeVar("Columns", bound=Rows)


@dataclass
class DecodedBatch(Generic[Item]):
    path: str
    # What the engine gets, and the client's index of each of those items.
    items: list[Item] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    # The items that did not decode, already as results.
    rejected: list[ItemResult] = field(default_factory=list)

    def merge(self, engine_results: Sequence[ItemResult]) -> list[ItemResult]:
        """The engine's results renumbered to the client's positions, with the rejected
        items, in the client's order."""
        merged = list(self.rejected)
        for result in engine_results:
            position = self.positions[result.index]
            merged.append(
                replace(
                    result,
                    index=position,
                    field=_renumber(result.field, self.path, result.index, position),
                )
            )
        merged.sort(key=lambda r: r.index)
        return merged


def decode_batch(
    messages: Iterable[Message],
    decode: Callable[[Message, str], Item],
    key_of: Callable[[Message], str],
    path: str,
    first_index: int = 0,
) -> DecodedBatch[Item]:
    """Decodes each message with `decode(message, "path[i]")`; an InvalidArgument rejects
    that item only. `first_index` is the position of the first message in the whole stream."""
    batch: DecodedBatch[Item] = DecodedBatch(path)
    for offset, message in enumerate(messages):
        position = first_index + offset
        try:
            item = decode(message, f"{path}[{position}]")
        except InvalidArgument as exc:
            first = exc.violations[0]
            batch.rejected.append(
                ItemResult(position, key_of(message), "invalid", first.description, first.field)
            )
            continue
        batch.items.append(item)
        batch.positions.append(position)
    return batch


def _renumber(field_path: str, path: str, engine_index: int, position: int) -> str:
    engine_step = f"{path}[{engine_index}]"
    if engine_index == position or not field_path.startswith(engine_step):
        return field_path
    return f"{path}[{position}]" + field_path[len(engine_step) :]


def outcome_counts(results: Iterable[ItemResult]) -> Counter[str]:
    """How many items ended in each outcome; every rejection also counts as "rejected"."""
    counts: Counter[str] = Counter()
    for result in results:
        counts[result.outcome] += 1
        if result.rejected:
            counts["rejected"] += 1
    return counts


@dataclass
class BulkTally(Generic[Message, Item]):
    """A client stream of batches applied part by part, summed up for the summary that ends
    the stream.

    Each stream message may hold more items than the engine takes in one call; it is cut
    into parts of `part_size`. Every item is applied whole or not at all either way, so the
    cut is invisible to the client, and item positions count across the whole stream.
    """

    decode: Callable[[Message, str], Item]
    key_of: Callable[[Message], str]
    path: str
    part_size: int
    max_listed_errors: int
    received: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    # The first rejected items (the counts stay exact beyond the listed ones).
    errors: list[ItemResult] = field(default_factory=list)

    def apply(
        self, messages: Sequence[Message], call: Callable[[list[Item], str], list[ItemResult]]
    ) -> None:
        """Decodes and applies one stream message with `call(items, path)`."""
        for start in range(0, len(messages), self.part_size):
            part = messages[start : start + self.part_size]
            batch = decode_batch(part, self.decode, self.key_of, self.path, self.received)
            results = batch.merge(call(batch.items, self.path))
            self._count(len(part), outcome_counts(results), [r for r in results if r.rejected])

    def apply_columns(
        self,
        decode: Callable[[], Columns],
        ids: Sequence[str],
        call: Callable[[Columns, int], BulkResult],
        part_size: int,
    ) -> None:
        """Decodes and applies the columns of one stream message with `call(part,
        first_index)`, in parts of `part_size` rows. Columns that do not decode (a column
        of the wrong length) reject every row of the message."""
        try:
            columns = decode()
        except InvalidArgument as exc:
            first = exc.violations[0]
            rejected = [
                ItemResult(self.received + i, key, "invalid", first.description, first.field)
                for i, key in enumerate(ids)
            ]
            self._count(len(ids), Counter(rejected=len(ids), invalid=len(ids)), rejected)
            return
        for start in range(0, len(columns), part_size):
            part = columns.slice(start, start + part_size)
            result = call(part, self.received)
            counts = Counter(result.counts())
            counts.update(e.outcome for e in result.errors)
            self._count(len(part), counts, result.errors)

    def _count(self, items: int, counts: Counter[str], errors: Sequence[ItemResult]) -> None:
        self.received += items
        self.counts.update(counts)
        room = self.max_listed_errors - len(self.errors)
        self.errors.extend(errors[:room])
