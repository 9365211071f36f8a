"""Storage faults inside one process: checksummed records (and the unframed records of
stores written before checksums), a disk failing commits, and checkpoints storage refuses.
The same faults against real server processes are in tests/api/test_storage_faults.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import pytest

from segsvc.config import Config
from segsvc.engine.check import check_store
from segsvc.engine.clock import FakeClock
from segsvc.engine.conditions import AttributeCondition
from segsvc.engine.engine import Engine
from segsvc.engine.errors import DataLoss, Unavailable
from segsvc.engine.model import AudienceSpec, PersonKey
from segsvc.engine.oplog import is_checkpoint_part
from segsvc.engine.people import PersonRecord, PersonUpsert
from segsvc.engine.values import Timestamp
from segsvc.storage.errors import CorruptRecordError
from segsvc.storage.records import HEAD_SIZE, MARK, DamagedRecord, reading, seal, unseal
from segsvc.storage.store import Store, prefix, u32

# -- the frame -------------------------------------------------------------------------------


def test_a_sealed_record_reads_back_and_any_changed_byte_is_caught() -> None:
    payload = b"\x93\x01\x02\x03some payload"
    stored = seal(payload)
    assert stored[0] == MARK and len(stored) == HEAD_SIZE + len(payload)
    assert bytes(unseal(stored)) == payload
    for i in range(1, len(stored)):
        damaged = bytearray(stored)
        damaged[i] ^= 0x01
        with pytest.raises(DamagedRecord, match="checksum mismatch"):
            unseal(bytes(damaged))
    with pytest.raises(DamagedRecord, match="shorter than its checksum"):
        unseal(stored[:3])


def test_an_unframed_record_of_the_first_schema_is_read_as_it_is() -> None:
    legacy = b"\x93\x01\x02\x03"  # msgpack never starts with the mark
    assert unseal(legacy) == legacy


def test_reading_names_the_table_and_key_of_what_failed() -> None:
    with pytest.raises(CorruptRecordError) as caught, reading("ops", "seq 4 of 'w'"):
        unseal(seal(b"abc")[:-1] + b"x")
    assert str(caught.value) == "the ops record seq 4 of 'w' is damaged (checksum mismatch)"
    with pytest.raises(CorruptRecordError, match=r"cannot be decoded: KeyError"), reading("t", "k"):
        {}["missing"]


# -- engines over real stores ------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(data_dir=tmp_path / "data", map_size=1 << 28)


@pytest.fixture
def engine(config: Config) -> Iterator[Engine]:
    engine = Engine(config, FakeClock())
    yield engine
    engine.close(checkpoint=False)


def upsert(engine: Engine, *ids: str, **attributes: Any) -> list[str]:
    results = engine.workspace("default").upsert_people(
        [PersonUpsert(i, email=f"{i}@x.io", attributes=attributes) for i in ids]
    )
    return [r.outcome for r in results]


def get(engine: Engine, person_id: str) -> Any:
    return engine.workspace("default").get_person(PersonKey("id", person_id)).record


def _unframed(table: str, payload: bytes) -> bytes:
    """A record as the first schema stored it: an operation's people records unframed too."""
    if table != "ops":
        return payload
    body = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    if body[0] == "people":
        body[2] = [
            [o, *(None if r is None else bytes(unseal(r)) for r in rs)] for o, *rs in body[2]
        ]
    return bytes(msgpack.packb(body, use_bin_type=True))


def test_a_store_written_before_checksums_reads_as_before(config: Config) -> None:
    engine = Engine(config, FakeClock())
    ws = engine.workspace("default")
    noted = ws.create_segment("n", "", True, AttributeCondition("exists", attribute="n")).id
    upsert(engine, "a", "b", n=1.0)
    engine.close()  # a checkpoint holds these two
    engine = Engine(config, FakeClock())
    upsert(engine, "c", n=2.0)
    engine.close(checkpoint=False)  # the log holds this one
    # Strip every frame, as the first schema stored records.
    env = lmdb.open(str(config.data_dir), max_dbs=16)
    stripped = 0
    with env.begin(write=True) as txn:
        # The first schema stored a checkpoint whole, not in parts.
        checkpoints = env.open_db(b"checkpoints", txn=txn)
        parts = b"".join(v for k, v in txn.cursor(db=checkpoints) if is_checkpoint_part(k))
        for key, _ in list(txn.cursor(db=checkpoints)):
            if is_checkpoint_part(key):
                txn.delete(key, db=checkpoints)
            else:
                txn.put(key, parts, db=checkpoints)
        for table in ("people", "ops", "checkpoints", "changes"):
            db = env.open_db(table.encode(), txn=txn)
            for key, value in list(txn.cursor(db=db)):
                assert value[0] == MARK
                txn.put(key, _unframed(table, bytes(unseal(value))), db=db)
                stripped += 1
    env.close()
    assert stripped == 3 + 1 + 1 + 2  # people, op, checkpoint, change batches

    engine = Engine(config, FakeClock())
    try:
        assert [get(engine, i).attributes for i in "abc"] == [{"n": 1.0}, {"n": 1.0}, {"n": 2.0}]
        ws = engine.workspace("default")
        assert len(ws.state.segments[noted].members) == 3
        changes, _ = ws.read_changes(0, frozenset())
        assert [c.person_id for c in changes] == ["a", "b", "c"]
        assert upsert(engine, "a", n=3.0) == ["updated"]  # rewritten with its checksum
        assert get(engine, "a").attributes == {"n": 3.0}
    finally:
        engine.close()


class FailingCommits:
    """An LMDB environment whose next `failures` write commits fail as a failing disk's do
    (LMDB's EIO), after everything of the transaction was put."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.failures = 0

    def begin(self, **options: Any) -> Any:
        txn = self.env.begin(**options)
        return _FailingTxn(txn, self) if options.get("write") else txn

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)


class _FailingTxn:
    def __init__(self, txn: Any, owner: FailingCommits) -> None:
        self.txn = txn
        self.owner = owner

    def commit(self) -> None:
        if self.owner.failures:
            self.owner.failures -= 1
            self.txn.abort()
            raise lmdb.Error("mdb_txn_commit: Input/output error")
        self.txn.commit()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.txn, name)


def test_a_commit_the_disk_fails_is_unavailable_and_memory_is_as_before(engine: Engine) -> None:
    ws = engine.workspace("default")
    upsert(engine, "kept", n=1.0)
    failing = FailingCommits(engine.store._env)
    engine.store._env = failing
    failing.failures = 1
    with pytest.raises(Unavailable, match="storage failed: the disk failed a write") as caught:
        upsert(engine, "lost", n=2.0)
    assert "nothing was written" in str(caught.value)
    # Applied in memory before the commit failed: memory was reloaded (counted), and reads
    # answer as before the write.
    assert ws.reloads == 1
    assert len(ws.state.index.live) == 1
    assert get(engine, "kept").attributes == {"n": 1.0}
    with pytest.raises(Exception, match="no person with id 'lost'"):
        get(engine, "lost")
    assert upsert(engine, "lost", n=2.0) == ["created"]  # the disk works again
    assert ws.reloads == 1


def test_a_checkpoint_storage_refuses_is_skipped_and_the_write_stands(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    engine = Engine(config, FakeClock())
    ws = engine.workspace("default")
    failing = FailingCommits(engine.store._env)
    engine.store._env = failing
    upsert(engine, "a")
    failing.failures = 1
    assert ws.checkpoint() is False
    assert "skipped, the log keeps it" in caplog.text
    assert ws.reloads == 0
    # And the close: its checkpoint fails too, the store is closed all the same.
    failing.failures = 1
    engine.close()
    engine = Engine(config, FakeClock())  # the log had it all
    try:
        assert get(engine, "a").email == "a@x.io"
    finally:
        engine.close()


def test_a_damaged_person_is_data_loss_and_others_are_served(engine: Engine) -> None:
    upsert(engine, "a", "b")
    ws = engine.workspace("default")
    key = prefix("default") + u32(0)
    with engine.store.write() as txn:
        raw = txn.get("people", key)
        assert raw is not None
        txn.put("people", key, raw[:-1] + bytes([raw[-1] ^ 1]))
    with pytest.raises(DataLoss, match=r"ordinal 0 of workspace 'default' \(person 'a'\)"):
        get(engine, "a")
    assert get(engine, "b").id == "b"
    assert upsert(engine, "a", "b", n=1.0) == ["failed_precondition", "updated"]
    assert ws.attributes_of([1], ["n"]) == [{"n": 1.0}]
    with pytest.raises(DataLoss):
        ws.attributes_of([0], ["n"])


def test_check_names_every_kind_of_damage_and_a_whole_store_is_clean(config: Config) -> None:
    engine = Engine(config, FakeClock())
    ws = engine.workspace("default")
    noted = ws.create_segment("n", "", True, AttributeCondition("exists", attribute="n")).id
    upsert(engine, "a", "b", n=1.0)
    engine.close()
    assert check_store(config.data_dir).damage == []

    p = prefix("default")
    store = Store(config.data_dir)
    with store.write() as txn:
        first_change = next(txn.scan("changes", p))[0]
        txn.put("changes", first_change, flip_last(txn.get("changes", first_change)))
        txn.put("lookup", p + b"e" + b"ghost@x.io", u32(41))  # names nobody
        txn.put("lookup", p + b"e" + b"a@x.io", u32(1))  # names b, whose email differs
        stray = PersonRecord("stray", Timestamp(0), Timestamp(0))
        txn.put("people", p + u32(7), stray.encode())  # unknown to the log
        txn.put("snapshots", p + b"s1", b"\xc1junk")
    store.close()
    report = check_store(config.data_dir)
    found = sorted(str(d) for d in report.damage)
    assert found == sorted(
        [
            f"changes seq {int.from_bytes(first_change[-8:], 'big')} of workspace 'default': "
            "checksum mismatch",
            "lookup email 'ghost@x.io' of workspace 'default': names ordinal 41, which has no "
            "record",
            "lookup email 'a@x.io' of workspace 'default': names ordinal 1, whose email is "
            "'b@x.io'",
            "people ordinal 0 of workspace 'default': its email 'a@x.io' has no lookup naming it",
            "people ordinal 7 of workspace 'default': its id 'stray' has no lookup naming it",
            "people ordinal 7 of workspace 'default': a record the log and checkpoint know "
            "nothing of",
            "snapshots 's1' of workspace 'default': checksum mismatch",
        ]
    )
    # The server reading that change batch answers DATA_LOSS naming it.
    engine = Engine(config, FakeClock())
    try:
        with pytest.raises(DataLoss, match=r"the changes record seq \d+ .* is damaged"):
            engine.workspace("default").read_changes(0, frozenset({noted}))
    finally:
        engine.close(checkpoint=False)


def flip_last(value: bytes | None) -> bytes:
    assert value is not None
    return value[:-1] + bytes([value[-1] ^ 1])


def test_an_audience_snapshot_storage_refuses_is_kept_in_memory(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    ws = engine.workspace("default")
    noted = ws.create_segment("n", "", True, AttributeCondition("exists", attribute="n")).id
    upsert(engine, "a", "b", n=1.0)
    failing = FailingCommits(engine.store._env)
    engine.store._env = failing
    failing.failures = 1
    snapshot, size = ws.snapshot_audience(AudienceSpec(include=(noted,)))
    assert size == 2
    assert "audience snapshot kept in memory only" in caplog.text
    rows, total, remaining, _ = ws.snapshot_page(snapshot, -1, 10)
    assert ([r[1] for r in rows], total, remaining) == (["a", "b"], 2, 0)
