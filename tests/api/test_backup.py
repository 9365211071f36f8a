"""`segsvc backup` while a real server takes a stream of writes: the copy restores to a server
that answers exactly as the original did for everything acknowledged before the backup began,
holds a consistent prefix of the writes after that, and passes `segsvc check`."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from api_harness import attr, dynamic_segment, equals, manual_segment, person
from click.testing import CliRunner
from server_harness import Stubs

from segsvc.cli import main
from segsvc.v1 import audiences_pb2, people_pb2, segments_pb2, types_pb2
from segsvc.v1 import conditions_pb2 as C

BATCH = 20


def count(stubs: Stubs, segment_id: int) -> int:
    request = audiences_pb2.CountAudienceRequest(
        audience=audiences_pb2.AudienceSpec(include=[segment_id])
    )
    return int(stubs.audiences.CountAudience(request, timeout=30).count)


def members(stubs: Stubs, segment_id: int) -> list[str]:
    request = segments_pb2.ListMembersRequest(segment_id=segment_id, page_size=10_000)
    return sorted(m.id for m in stubs.segments.ListMembers(request, timeout=30).members)


def get_person(stubs: Stubs, person_id: str) -> people_pb2.GetPersonResponse:
    request = people_pb2.GetPersonRequest(person=types_pb2.PersonRef(id=person_id))
    return stubs.people.GetPerson(request, timeout=30)


def batch_ids(batch: int) -> list[str]:
    return [f"p{batch}-{j}" for j in range(BATCH)]


def test_backup_during_writes_restores_what_was_acknowledged(
    server_processes: Any, tmp_path: Path
) -> None:
    data, dest = tmp_path / "data", tmp_path / "backup"
    original = server_processes(data)
    stubs = Stubs.connect(original.address)
    even = dynamic_segment(stubs, "even", equals("parity", "even"))
    everyone = dynamic_segment(stubs, "everyone", attr("parity", C.OPERATOR_EXISTS))
    vip = manual_segment(stubs, "vip")

    # One writer, one call at a time: what the server holds at any moment is the first k
    # acknowledged batches, so a consistent copy holds exactly such a prefix.
    acknowledged: list[int] = []
    stop = threading.Event()
    first_batches = threading.Event()

    def write() -> None:
        batch = 0
        while not stop.is_set():
            people = [
                person(pid, parity="even" if j % 2 == 0 else "odd", batch=batch)
                for j, pid in enumerate(batch_ids(batch))
            ]
            stubs.people.UpsertPeople(people_pb2.UpsertPeopleRequest(people=people), timeout=30)
            # Every fifth batch's first person into the manual segment, a second write.
            if batch % 5 == 0:
                stubs.segments.AddMembers(
                    segments_pb2.AddMembersRequest(
                        segment_id=vip, people=[types_pb2.PersonRef(id=batch_ids(batch)[0])]
                    ),
                    timeout=30,
                )
            acknowledged.append(batch)
            if batch == 30:
                first_batches.set()
            batch += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert first_batches.wait(60)
        before = len(acknowledged)
        result = CliRunner().invoke(main, ["backup", "--data", str(data), str(dest)])
        after = len(acknowledged)
        # The server goes on taking writes after the copy (whether any landed during it
        # depends on timing, which the prefix check below does not need).
        while len(acknowledged) < after + 10 and writer.is_alive():
            time.sleep(0.01)
    finally:
        stop.set()
        writer.join(timeout=60)
    assert result.exit_code == 0, result.output
    assert f"restore with: segsvc serve --data {dest}" in result.output
    assert len(acknowledged) >= after + 10

    checked = CliRunner().invoke(main, ["check", "--data", str(dest)])
    assert checked.exit_code == 0, checked.output
    assert "no damage" in checked.output

    # What the original answers for the people acknowledged before the backup began.
    sample = [pid for b in range(0, before, 7) for pid in batch_ids(b)[:3]]
    expected_people = {pid: get_person(stubs, pid) for pid in sample}

    restored = server_processes(dest)
    copy = Stubs.connect(restored.address)
    present = set(members(copy, everyone))
    # A prefix of k batches, with every batch acknowledged before the backup among them
    # (and at most the one in flight when it ended beyond those acknowledged by then).
    held = {int(pid.split("-")[0][1:]) for pid in present}
    k = len(held)
    assert held == set(range(k)), sorted(held)[:20]
    assert before <= k <= after + 1
    assert present == {pid for b in range(k) for pid in batch_ids(b)}

    assert count(copy, even) == k * BATCH // 2
    assert members(copy, even) == sorted(pid for b in range(k) for pid in batch_ids(b)[::2])
    vip_members = members(copy, vip)
    expected_vip = [batch_ids(b)[0] for b in range(0, before, 5)]
    assert set(expected_vip) <= set(vip_members)
    assert set(vip_members) <= {batch_ids(b)[0] for b in range(0, k, 5)}
    for pid, answer in expected_people.items():
        assert get_person(copy, pid) == answer, pid
    copy.channel.close()
    stubs.channel.close()


def test_backup_refuses_a_destination_in_use_and_leaves_nothing(
    server_processes: Any, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server = server_processes(data)
    stubs = Stubs.connect(server.address)
    manual_segment(stubs, "S")
    stubs.channel.close()

    def backup(dest: Path) -> Any:
        return CliRunner().invoke(main, ["backup", "--data", str(data), str(dest)])

    full = tmp_path / "full"
    full.mkdir()
    (full / "keep").write_text("mine")
    refused = backup(full)
    assert refused.exit_code == 2
    assert refused.stderr == (
        f"segsvc: the backup destination {full} is not empty: give a new or empty directory\n"
    )
    assert [p.name for p in full.iterdir()] == ["keep"]

    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    assert "is not a directory" in backup(a_file).stderr
    nowhere = tmp_path / "missing" / "dest"
    assert "does not exist" in backup(nowhere).stderr
    assert not nowhere.parent.exists()

    not_a_store = tmp_path / "empty"
    not_a_store.mkdir()
    refused = CliRunner().invoke(main, ["backup", "--data", str(not_a_store), str(tmp_path / "b")])
    assert refused.exit_code == 2
    assert f"{not_a_store} holds no segsvc store" in refused.stderr
    assert not (tmp_path / "b").exists()

    empty = tmp_path / "empty-dest"
    empty.mkdir()
    assert backup(empty).exit_code == 0
    assert sorted(p.name for p in empty.iterdir()) == ["data.mdb", "segsvc.lock"]
