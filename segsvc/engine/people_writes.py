"""Writes of people: upserts one by one, bulk loads as columns, deletions, and reading one
person back. Each resolves the request against storage (validation, who exists, who holds an
email or phone) into a PeopleOp for the commit path (segsvc.engine.core); the rows it stores
are laid out by segsvc.engine.people_rows.

Both ways in give the same outcome on the same rows: a bulk load whose rows depend on each
other (or meet a damaged record) falls back to the person-by-person path."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from segsvc.engine.bulk import (
    OUTCOME_CODES,
    BulkResult,
    Checked,
    PeopleColumns,
    check_columns,
    plan_columns,
    upserts_for_rows,
)
from segsvc.engine.core import Persist, WorkspaceCore
from segsvc.engine.errors import DataLoss, InvalidArgument
from segsvc.engine.model import ItemResult, PersonKey, PersonView
from segsvc.engine.ops import Op, PeopleOp
from segsvc.engine.people import PersonRecord, PersonUpsert, apply_upsert, validate_upsert
from segsvc.engine.people_rows import BulkReader, bulk_rows, persist_people, persist_plan
from segsvc.engine.record_rows import LOOKUP_CHAR
from segsvc.engine.values import Timestamp
from segsvc.storage.store import Txn

# A bulk load takes this many times the batch limit per call: its cost per batch (bitmap
# operations per distinct value, the commit's fsync) is spread over more people.
BULK_BATCH_FACTOR = 5


class PeopleWrites:
    def __init__(self, core: WorkspaceCore) -> None:
        self.core = core

    def upsert_people(self, upserts: Sequence[PersonUpsert], path: str) -> list[ItemResult]:
        core = self.core
        core.check_batch(len(upserts), path)

        def resolve(txn: Txn) -> tuple[Op | None, list[ItemResult], Persist]:
            results: list[ItemResult] = []
            valid: list[tuple[int, PersonUpsert]] = []
            region = core.config.default_region
            for i, raw in enumerate(upserts):
                try:
                    valid.append((i, validate_upsert(raw, f"{path}[{i}]", core.limits, region)))
                except InvalidArgument as exc:
                    v = exc.violations[0]
                    results.append(ItemResult(i, raw.id, "invalid", v.description, v.field))
            op, persist = self._resolve_upserts(
                txn, valid, results, lambda i, kind: f"{path}[{i}].{kind}"
            )
            results.sort(key=lambda r: r.index)
            return op, results, persist

        return core.commit(resolve)

    def _resolve_upserts(
        self,
        txn: Txn,
        upserts: Sequence[tuple[int, PersonUpsert]],
        results: list[ItemResult],
        key_path: Callable[[int, str], str],
    ) -> tuple[Op | None, Persist]:
        """Validated upserts (with their item index), one after the other: appends their
        results and returns the operation and the rows to store. `key_path(i, "email")`
        names the field a conflict is reported on."""
        core = self.core
        now = Timestamp(core.clock.now())
        # person id -> (ordinal, record before the batch, record now)
        pending: dict[str, tuple[int, PersonRecord | None, PersonRecord]] = {}
        owners: dict[bytes, int | None] = {}  # lookup keys claimed or freed in this batch
        next_ordinal = core.state.next_ordinal

        def owner(kind: str, value: str) -> int | None:
            k = LOOKUP_CHAR[kind] + value.encode()
            return owners[k] if k in owners else core.lookup(txn, kind, value)

        for i, upsert in upserts:
            if upsert.id in pending:
                ordinal, before, current = pending[upsert.id]
                old: PersonRecord | None = current
            else:
                found = core.lookup(txn, "id", upsert.id)
                try:
                    before = None if found is None else core.record(txn, found)
                except DataLoss as exc:
                    results.append(ItemResult(i, upsert.id, "failed_precondition", str(exc)))
                    continue
                ordinal = next_ordinal if found is None else found
                old = before
            new = apply_upsert(old, upsert, now)
            conflict = ""
            for kind, value, old_value in (
                ("email", new.email, old.email if old else None),
                ("phone", new.phone, old.phone if old else None),
            ):
                if value and value != old_value:
                    holder = owner(kind, value)
                    if holder is not None and holder != ordinal:
                        conflict = f"{kind} {value!r} already belongs to another person"
                        results.append(
                            ItemResult(i, upsert.id, "conflict", conflict, key_path(i, kind))
                        )
                        break
            if conflict:
                continue
            if old is not None and new.same_data(old):
                results.append(ItemResult(i, upsert.id, "unchanged"))
                continue
            if old is None and upsert.id not in pending:
                next_ordinal += 1
            for kind, value, old_value in (
                ("email", new.email, old.email if old else None),
                ("phone", new.phone, old.phone if old else None),
            ):
                if value != old_value:
                    if old_value:
                        owners[LOOKUP_CHAR[kind] + old_value.encode()] = None
                    if value:
                        owners[LOOKUP_CHAR[kind] + value.encode()] = ordinal
            pending[upsert.id] = (ordinal, before, new)
            # A second item for someone this batch created updates them.
            results.append(ItemResult(i, upsert.id, "created" if old is None else "updated"))
        changed = tuple(
            (o, b, n) for o, b, n in pending.values() if b is None or not n.same_data(b)
        )
        if not changed:
            return None, persist_people(core, ())
        return PeopleOp(int(now), changed), persist_people(core, changed)

    def upsert_columns(self, columns: PeopleColumns, first_index: int, path: str) -> BulkResult:
        core = self.core
        core.check_batch(len(columns), path, core.limits.max_batch_items * BULK_BATCH_FACTOR)
        checked = check_columns(columns, core.limits, first_index, core.config.default_region)
        reader = BulkReader(core)

        def resolve(txn: Txn) -> tuple[Op | None, BulkResult, Persist | None]:
            now = core.clock.now()
            reader.txn = txn
            try:
                plan = plan_columns(
                    columns, checked, first_index, now, core.state.next_ordinal, reader
                )
            except DataLoss:
                plan = None  # a damaged record: person by person, where it is one row's error
            if plan is None:
                return self._resolve_rows_in_order(txn, columns, checked, first_index)
            if plan.delta is None:
                return None, plan.result, None
            if core.oplog.shared:
                # Other nodes store the rows from the record: it carries them.
                return PeopleOp(now, (), plan.delta, bulk_rows(plan)), plan.result, None
            return PeopleOp(now, (), plan.delta), plan.result, persist_plan(core, plan)

        return core.commit(resolve)

    def _resolve_rows_in_order(
        self, txn: Txn, columns: PeopleColumns, checked: Checked, first_index: int
    ) -> tuple[Op | None, BulkResult, Persist]:
        """A batch whose rows depend on each other, person by person."""
        ids = columns.ids
        results = [
            ItemResult(row, ids[row], "invalid", description, field)
            for row, (description, field) in checked.errors.items()
        ]
        key_columns = {"email": columns.emails, "phone": columns.phones}

        def key_path(row: int, kind: str) -> str:
            column = key_columns[kind]
            assert column is not None
            return f"{column.path}[{first_index + row}]"

        op, persist = self._resolve_upserts(
            txn, upserts_for_rows(columns, checked), results, key_path
        )
        outcomes = np.zeros(len(columns), dtype=np.uint8)
        errors = []
        for result in sorted(results, key=lambda r: r.index):
            if result.rejected:
                errors.append(replace(result, index=first_index + result.index))
            else:
                outcomes[result.index] = OUTCOME_CODES[result.outcome]
        return op, BulkResult(outcomes, errors), persist

    def delete_people(self, keys: Sequence[PersonKey], path: str) -> list[ItemResult]:
        core = self.core
        core.check_batch(len(keys), path)

        def resolve(txn: Txn) -> tuple[Op | None, list[ItemResult], Persist]:
            results: list[ItemResult] = []
            gone: dict[int, PersonRecord] = {}
            for i, key, ordinal in core.find_each(txn, keys, path, results):
                if ordinal in gone:
                    results.append(
                        ItemResult(i, str(key), "not_found", "deleted earlier in this batch")
                    )
                    continue
                try:
                    gone[ordinal] = core.record(txn, ordinal)
                except DataLoss as exc:
                    results.append(ItemResult(i, str(key), "failed_precondition", str(exc)))
                    continue
                results.append(ItemResult(i, gone[ordinal].id, "deleted"))
            people = tuple((o, r, None) for o, r in gone.items())
            op = PeopleOp(core.clock.now(), people) if people else None
            core.deaths += len(people)
            return op, results, persist_people(core, people)

        return core.commit(resolve, frees=True)

    def get_person(self, key: PersonKey) -> PersonView:
        core = self.core
        with core.lock, core.store.read() as txn:
            ordinal = core.find(txn, key, "person")
            record = core.record(txn, ordinal)
            segments = tuple(
                sid for sid, s in sorted(core.state.segments.items()) if ordinal in s.members
            )
            return PersonView(record, segments)
