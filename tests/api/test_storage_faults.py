"""Storage faults against real server processes: a disk or LMDB map filling up, SIGTERM while
storage is full, and data files damaged or lost while the server was stopped. Each fault is
refused clearly, loses nothing acknowledged, keeps reads working, and a restart after it is
clean.

The bounded disk is a tmpfs mounted by the test (the tests run as root, locally and in CI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import lmdb
import pytest
from api_harness import attr, by_id, dynamic_segment, person, status_of
from server_harness import REPO, ServerProcess, Stubs, resize, serve_command

from segsvc.api.convert import people_columns_to_proto
from segsvc.engine.bulk import PeopleColumns
from segsvc.engine.people import PersonUpsert
from segsvc.storage.store import TABLES
from segsvc.v1 import audiences_pb2, people_pb2, segments_pb2, types_pb2
from segsvc.v1 import conditions_pb2 as C

WORKSPACE = b"default\x00"
FULL = grpc.StatusCode.RESOURCE_EXHAUSTED

# -- helpers ---------------------------------------------------------------------------------


def write_until_refused(
    client: Stubs, tag: str, batch: int = 100, note_bytes: int = 1000
) -> tuple[list[str], grpc.RpcError]:
    """Batches of new people with a sizeable attribute until the server refuses one;
    returns the acknowledged ids and the refusal."""
    acknowledged: list[str] = []
    for b in range(100_000):
        ids = [f"{tag}{b}-{j}" for j in range(batch)]
        people = [person(i, note=f"{i}:" + "x" * note_bytes) for i in ids]
        try:
            response = client.people.UpsertPeople(
                people_pb2.UpsertPeopleRequest(people=people), timeout=60
            )
        except grpc.RpcError as error:
            return acknowledged, error
        assert response.created == batch, response
        acknowledged.extend(ids)
    raise AssertionError("storage never filled up")


def one_person(client: Stubs, person_id: str) -> people_pb2.UpsertPeopleResponse:
    return client.people.UpsertPeople(
        people_pb2.UpsertPeopleRequest(people=[person(person_id, note="one")]), timeout=30
    )


def exists(client: Stubs, person_id: str) -> bool:
    try:
        client.people.GetPerson(people_pb2.GetPersonRequest(person=by_id(person_id)))
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND, error
        return False
    return True


def count(client: Stubs, segment_id: int) -> int:
    request = audiences_pb2.CountAudienceRequest(
        audience=audiences_pb2.AudienceSpec(include=[segment_id])
    )
    return int(client.audiences.CountAudience(request).count)


def all_members(client: Stubs, segment_id: int) -> set[str]:
    found: set[str] = set()
    token = ""
    while True:
        page = client.segments.ListMembers(
            segments_pb2.ListMembersRequest(
                segment_id=segment_id, page_size=10_000, page_token=token
            )
        )
        found.update(m.id for m in page.members)
        token = page.next_page_token
        if not token:
            return found


def reads_work(client: Stubs, segment_id: int, acknowledged: list[str]) -> None:
    """Every acknowledged person is there and in the segment; counts and lookups answer."""
    assert all_members(client, segment_id) == set(acknowledged)
    assert count(client, segment_id) == len(acknowledged)
    for person_id in acknowledged[:: max(1, len(acknowledged) // 25)]:
        assert exists(client, person_id)


def log_lines(server: ServerProcess, needle: str) -> int:
    return sum(needle in line for line in server.log().splitlines())


def no_traceback(server: ServerProcess) -> None:
    assert "Traceback" not in server.log(), server.log()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", "from segsvc.cli import main; main()", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def refused_start(data: Path) -> str:
    """Starts `segsvc serve` on `data` expecting a refusal: exit 2, one `segsvc:` line, no
    traceback. Returns that line."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [*serve_command(), "--data", str(data), "--listen", "127.0.0.1:0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    refusals = [line for line in result.stderr.splitlines() if line.startswith("segsvc: ")]
    assert len(refusals) == 1, result.stderr
    assert "listening" not in result.stderr
    return refusals[0]


def check(data: Path) -> subprocess.CompletedProcess[str]:
    return cli("check", "--data", str(data))


def refused_and_listed(data: Path, refusal: str, listed: str) -> None:
    """A record the start needs is damaged: the start is refused naming it (and the check to
    run), and `segsvc check` lists it with exit 1."""
    line = refused_start(data)
    assert refusal in line
    assert f"segsvc check --data {data}" in line
    checked = check(data)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert listed in checked.stdout


# -- a disk filling up (items 3, 4 and 10) -----------------------------------------------------


def test_a_full_disk_refuses_writes_up_front_keeps_reads_and_stops_cleanly(
    server_processes, small_disk
):
    disk = small_disk(24)
    data = disk / "data"
    server = server_processes(data, "--grace-seconds", "2")
    client = Stubs.connect(server.address)
    noted = dynamic_segment(client, "noted", attr("note", C.OPERATOR_EXISTS))

    acknowledged, refusal = write_until_refused(client, "a")
    assert len(acknowledged) >= 1000, "the disk filled up before the test wrote anything"
    assert refusal.code() == FULL, refusal.details()
    assert "storage is full" in refusal.details()
    assert f"free or add space on the disk holding {data}" in refusal.details()
    assert "nothing was written" in refusal.details()

    # Every later write is refused before anything is applied: no reload from disk, and one
    # log line for the whole run of refusals.
    for i in range(200):
        code, details = status_of(lambda i=i: one_person(client, f"late{i}"))
        assert code == FULL, details
    assert log_lines(server, "reloading from disk") == 0, server.log()
    assert log_lines(server, "refusing writes until there is room") == 1, server.log()

    # Reads keep working, and nothing of the refused writes is there. Resolving an audience
    # streams everyone (its snapshot is stored if it fits, else kept in memory).
    reads_work(client, noted, acknowledged)
    assert not exists(client, "late0")
    chunks = client.audiences.ResolveAudience(
        audiences_pb2.ResolveAudienceRequest(
            audience=audiences_pb2.AudienceSpec(include=[noted]), chunk_size=5000
        )
    )
    # (in ordinal order, which is the order they were created in)
    assert [m.id for chunk in chunks for m in chunk.members] == acknowledged
    # A deletion may use the reserve: people can still be erased when the disk is full.
    gone = acknowledged.pop()
    deleted = client.people.DeletePeople(people_pb2.DeletePeopleRequest(people=[by_id(gone)]))
    assert deleted.deleted == 1
    assert not exists(client, gone)

    # SIGTERM while full: the closing checkpoint does not fit, is logged and skipped; exit 0.
    client.channel.close()
    assert server.terminate() == 0, server.log()
    assert log_lines(server, "skipped, the log keeps it") == 1, server.log()
    no_traceback(server)

    # Restart on the still-full disk: clean, everything acknowledged is there, writes are
    # still refused clearly.
    server = server_processes(data)
    client = Stubs.connect(server.address)
    reads_work(client, noted, acknowledged)
    assert status_of(lambda: one_person(client, "still-full"))[0] == FULL

    # The disk grows: writes resume without a restart.
    resize(disk, 64)
    assert one_person(client, "after-growth").created == 1
    acknowledged.append("after-growth")
    more, refusal = write_until_refused(client, "b")
    assert refusal.code() == FULL
    acknowledged.extend(more)
    assert log_lines(server, "reloading from disk") == 0, server.log()
    resize(disk, 128)
    client.channel.close()
    assert server.terminate() == 0
    # With room, the closing checkpoint is written.
    assert server.log().splitlines()[-2].endswith(" bytes)"), server.log()
    assert "checkpoint at op" in server.log().splitlines()[-2]
    no_traceback(server)

    server = server_processes(data)
    client = Stubs.connect(server.address)
    reads_work(client, noted, acknowledged)
    client.channel.close()
    running = check(data)  # a running server's store is not examined
    assert running.returncode == 2 and "in use by another segsvc process" in running.stderr
    assert server.terminate() == 0
    assert check(data).returncode == 0


def serving_one_person(server_processes, disk: Path) -> tuple[ServerProcess, Stubs, int]:
    """A server on `disk` with a segment of who has a note, and "before" in it."""
    server = server_processes(disk / "data")
    client = Stubs.connect(server.address)
    noted = dynamic_segment(client, "noted", attr("note", C.OPERATOR_EXISTS))
    assert one_person(client, "before").created == 1
    return server, client, noted


def fill(disk: Path, leaving: int) -> Path:
    """Takes all but `leaving` bytes of the disk, as another program would."""
    filler = disk / "filler"
    with filler.open("wb") as f:
        os.posix_fallocate(f.fileno(), 0, shutil.disk_usage(disk).free - leaving)
    return filler


def test_a_disk_filled_by_something_else_refuses_writes_until_space_returns(
    server_processes, small_disk
):
    disk = small_disk(32)
    server, client, noted = serving_one_person(server_processes, disk)
    filler = fill(disk, leaving=100 << 10)  # another program takes all but 100 KiB
    code, details = status_of(lambda: one_person(client, "during"))
    assert code == FULL, details
    assert "storage is full" in details and "disk holding" in details
    reads_work(client, noted, ["before"])

    filler.unlink()
    assert one_person(client, "after").created == 1
    reads_work(client, noted, ["before", "after"])
    assert log_lines(server, "reloading from disk") == 0, server.log()
    assert log_lines(server, "writes resume after 1 refused") == 1, server.log()
    client.channel.close()
    assert server.terminate() == 0
    no_traceback(server)


def test_a_write_too_big_for_the_room_left_fails_at_commit_and_changes_nothing(
    server_processes, small_disk
):
    disk = small_disk(16)
    server, client, noted = serving_one_person(server_processes, disk)
    # 3 MiB free, more than the reserve: the write is let through, and finds no room for
    # its 6 MB when it commits (LMDB's short write: EIO, the INTERNAL).
    filler = fill(disk, leaving=3 << 20)
    big = [person(f"big{i}", note="x" * 3000) for i in range(1000)]
    code, details = status_of(
        lambda: client.people.UpsertPeople(people_pb2.UpsertPeopleRequest(people=big))
    )
    assert code == FULL, details
    assert "storage is full" in details and "nothing was written" in details
    # Memory had run ahead of the commit: reloaded once, so reads answer as before.
    assert log_lines(server, "write failed after it was applied in memory") == 1, server.log()
    reads_work(client, noted, ["before"])
    assert not exists(client, "big0")
    filler.unlink()
    assert client.people.UpsertPeople(people_pb2.UpsertPeopleRequest(people=big)).created == 1000
    reads_work(client, noted, ["before", *(f"big{i}" for i in range(1000))])
    client.channel.close()
    assert server.terminate() == 0
    no_traceback(server)


def test_a_full_lmdb_map_is_refused_with_the_remedy_and_a_larger_map_resumes(
    server_processes, tmp_path
):
    data = tmp_path / "data"
    server = server_processes(data, "--map-size", str(4 << 20))
    client = Stubs.connect(server.address)
    noted = dynamic_segment(client, "noted", attr("note", C.OPERATOR_EXISTS))
    acknowledged, refusal = write_until_refused(client, "m", batch=20)
    assert refusal.code() == FULL, refusal.details()
    assert "LMDB map" in refusal.details()
    assert "restart the server with a larger --map-size" in refusal.details()
    for i in range(100):
        assert status_of(lambda i=i: one_person(client, f"late{i}"))[0] == FULL
    assert log_lines(server, "reloading from disk") == 0, server.log()
    reads_work(client, noted, acknowledged)
    client.channel.close()
    assert server.terminate() == 0
    no_traceback(server)

    server = server_processes(data, "--map-size", str(64 << 20))
    client = Stubs.connect(server.address)
    reads_work(client, noted, acknowledged)
    assert one_person(client, "roomier").created == 1
    client.channel.close()
    assert server.terminate() == 0


# -- damaged and lost data files (item 5) ----------------------------------------------------


def populated(server_processes, data: Path, stop: str = "sigterm") -> list[str]:
    """A store with a dynamic segment and 20 people, stopped with SIGTERM (a checkpoint
    holds everything) or SIGKILL (the log holds the writes after the segment)."""
    server = server_processes(data, "--grace-seconds", "1")
    client = Stubs.connect(server.address)
    dynamic_segment(client, "has email", attr("email", C.OPERATOR_EXISTS))
    ids = [f"p{i}" for i in range(20)]
    for i in ids:
        client.people.UpsertPeople(
            people_pb2.UpsertPeopleRequest(
                people=[people_pb2.PersonUpsert(id=i, email=f"{i}@x.io")]
            )
        )
    client.channel.close()
    if stop == "sigterm":
        assert server.terminate() == 0
    else:
        server.kill()
    return ids


def backup(data: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "backup"
    shutil.copytree(data, copy)
    return copy


@pytest.fixture
def stopped_store(server_processes, tmp_path: Path) -> tuple[Path, list[str], Path]:
    """A populated store stopped with SIGTERM: its directory, the people's ids, a backup."""
    data = tmp_path / "data"
    ids = populated(server_processes, data)
    return data, ids, backup(data, tmp_path)


def restore(copy: Path, data: Path) -> None:
    shutil.copy2(copy / "data.mdb", data / "data.mdb")


def restarts_whole(server_processes, data: Path, ids: list[str]) -> None:
    server = server_processes(data)
    client = Stubs.connect(server.address)
    assert all(exists(client, i) for i in ids)
    assert one_person(client, "after-restore").created == 1
    client.channel.close()
    assert server.terminate() == 0
    no_traceback(server)


def put_raw(data: Path, table: str, key: bytes, value: bytes) -> None:
    """Writes straight into LMDB, as damage would, while no server runs."""
    env = lmdb.open(str(data), max_dbs=len(TABLES) + 1)
    try:
        with env.begin(write=True) as txn:
            txn.put(key, value, db=env.open_db(table.encode(), txn=txn))
    finally:
        env.close()


def get_raw(data: Path, table: str, key: bytes) -> bytes:
    env = lmdb.open(str(data), max_dbs=len(TABLES) + 1, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            value = txn.get(key, db=env.open_db(table.encode(), txn=txn))
    finally:
        env.close()
    assert value is not None, (table, key)
    return bytes(value)


def ordinal_of(data: Path, person_id: str) -> int:
    return int.from_bytes(get_raw(data, "lookup", WORKSPACE + b"i" + person_id.encode()), "big")


def flip(value: bytes) -> bytes:
    """The same record with one byte of its payload changed."""
    damaged = bytearray(value)
    damaged[len(damaged) // 2 + 3] ^= 0x5A
    return bytes(damaged)


def test_a_truncated_data_file_is_refused_before_any_page_is_read(server_processes, stopped_store):
    data, ids, copy = stopped_store
    size = (data / "data.mdb").stat().st_size
    os.truncate(data / "data.mdb", size // 2)

    line = refused_start(data)  # not SIGBUS: exit 2 and one line
    assert f"{data / 'data.mdb'} is truncated: {size // 2} bytes" in line
    assert "restore it from a backup" in line
    checked = check(data)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "damaged: lmdb data.mdb" in checked.stdout

    restore(copy, data)
    restarts_whole(server_processes, data, ids)


@pytest.mark.parametrize("loss", ["empty", "deleted"])
def test_a_lost_data_file_is_refused_never_replaced_by_an_empty_store(
    server_processes, stopped_store, loss
):
    data, ids, copy = stopped_store
    if loss == "empty":
        os.truncate(data / "data.mdb", 0)
    else:
        (data / "data.mdb").unlink()

    line = refused_start(data)
    state = "empty (0 bytes)" if loss == "empty" else "missing"
    assert f"{data / 'data.mdb'} is {state}, but {data} held a segsvc store" in line
    assert "will not start an empty database in place of a lost one" in line
    # Nothing was created in its place.
    if loss == "empty":
        assert (data / "data.mdb").stat().st_size == 0
    else:
        assert not (data / "data.mdb").exists()
    checked = check(data)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert state in checked.stdout

    restore(copy, data)
    restarts_whole(server_processes, data, ids)


def test_a_new_empty_directory_starts_an_empty_store(server_processes, tmp_path):
    data = tmp_path / "fresh"
    data.mkdir()
    server = server_processes(data)
    client = Stubs.connect(server.address)
    assert not exists(client, "anyone")
    client.channel.close()
    assert server.terminate() == 0
    assert check(data).returncode == 0


@pytest.mark.parametrize("damage", ["flipped byte", "not a record"])
def test_a_damaged_checkpoint_refuses_the_start_and_check_names_it(
    server_processes, stopped_store, damage
):
    data, ids, copy = stopped_store
    blob = get_raw(data, "checkpoints", WORKSPACE)
    put_raw(data, "checkpoints", WORKSPACE, flip(blob) if damage == "flipped byte" else b"junk")

    why = "checksum mismatch" if damage == "flipped byte" else "cannot be decoded"
    refused_and_listed(
        data,
        f"the checkpoints record of workspace 'default' is damaged ({why}",
        f"damaged: checkpoints of workspace 'default': {why}",
    )
    restore(copy, data)
    restarts_whole(server_processes, data, ids)


def test_a_damaged_log_record_refuses_the_start_and_check_names_it(server_processes, tmp_path):
    data = tmp_path / "data"
    ids = populated(server_processes, data, stop="sigkill")  # the writes are in the log
    copy = backup(data, tmp_path)
    key = WORKSPACE + (5).to_bytes(8, "big")
    put_raw(data, "ops", key, flip(get_raw(data, "ops", key)))

    refused_and_listed(
        data,
        "the ops record seq 5 of workspace 'default' is damaged (checksum mismatch)",
        "damaged: ops seq 5 of workspace 'default': checksum mismatch",
    )
    restore(copy, data)
    restarts_whole(server_processes, data, ids)


def test_a_damaged_person_record_is_data_loss_for_them_alone(server_processes, stopped_store):
    data, ids, copy = stopped_store
    ordinal = ordinal_of(data, "p7")
    key = WORKSPACE + ordinal.to_bytes(4, "big")
    put_raw(data, "people", key, flip(get_raw(data, "people", key)))

    checked = check(data)
    assert checked.returncode == 1
    assert (
        f"damaged: people ordinal {ordinal} of workspace 'default': checksum mismatch"
        in checked.stdout
    )

    server = server_processes(data)
    client = Stubs.connect(server.address)
    code, details = status_of(
        lambda: client.people.GetPerson(people_pb2.GetPersonRequest(person=by_id("p7")))
    )
    assert code == grpc.StatusCode.DATA_LOSS
    assert f"people record ordinal {ordinal} of workspace 'default' (person 'p7')" in details
    assert f"segsvc check --data {data}" in details
    # By email too, and everyone else answers.
    email = people_pb2.GetPersonRequest(person=types_pb2.PersonRef(email="p7@x.io"))
    assert status_of(lambda: client.people.GetPerson(email))[0] == grpc.StatusCode.DATA_LOSS
    assert all(exists(client, i) for i in ids if i != "p7")

    # A batch touching them reports that item and applies the others.
    response = client.people.UpsertPeople(
        people_pb2.UpsertPeopleRequest(
            people=[person("p7", n=1), person("p8", n=1), person("new1", n=1)]
        )
    )
    outcomes = [r.outcome for r in response.results]
    assert outcomes == [
        types_pb2.OUTCOME_FAILED_PRECONDITION,
        types_pb2.OUTCOME_UPDATED,
        types_pb2.OUTCOME_CREATED,
    ], response
    assert "(person 'p7')" in response.results[0].error
    bulk = client.people.StreamUpsertPeople(
        iter(
            [
                people_pb2.StreamUpsertPeopleRequest(
                    columns=people_columns_to_proto(
                        PeopleColumns.from_upserts(
                            [
                                PersonUpsert("p7", add_tags=("t",)),
                                PersonUpsert("p9", add_tags=("t",)),
                            ]
                        )
                    )
                )
            ]
        )
    )
    assert (bulk.updated, bulk.rejected) == (1, 1), bulk
    assert bulk.errors[0].index == 0 and "damaged" in bulk.errors[0].error
    deleted = client.people.DeletePeople(
        people_pb2.DeletePeopleRequest(people=[by_id("p7"), by_id("p6")])
    )
    assert deleted.deleted == 1
    assert deleted.results[0].outcome == types_pb2.OUTCOME_FAILED_PRECONDITION
    assert not exists(client, "p6")
    client.channel.close()
    assert server.terminate() == 0
    no_traceback(server)

    restore(copy, data)
    restarts_whole(server_processes, data, ids)
