"""The contract of segsvc.storage.store.Store: what the engine relies on from its storage.
Every implementation of the interface must pass these (parametrise `store` to add one)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from segsvc.storage.errors import StorageFullError
from segsvc.storage.store import TABLES, Store, prefix, prefix_end, read_u32, read_u64, u32, u64


def fill(store: Store, table: str, keys: list[bytes]) -> None:
    with store.write() as txn:
        for k in keys:
            txn.put(table, k, b"v" + k)


def keys_of(rows: Iterator[tuple[bytes, bytes]]) -> list[bytes]:
    return [k for k, _ in rows]


def test_write_then_read(store: Store) -> None:
    with store.write() as txn:
        txn.put("people", b"k", b"v")
        assert txn.get("people", b"k") == b"v"  # a write sees its own writes
    with store.read() as txn:
        assert txn.get("people", b"k") == b"v"
        assert txn.get("people", b"missing") is None
        assert txn.get("lookup", b"k") is None  # tables are separate


def test_put_overwrites_and_delete_reports(store: Store) -> None:
    fill(store, "meta", [b"a"])
    with store.write() as txn:
        txn.put("meta", b"a", b"new")
        assert txn.delete("meta", b"missing") is False
    with store.read() as txn:
        assert txn.get("meta", b"a") == b"new"
    with store.write() as txn:
        assert txn.delete("meta", b"a") is True
    with store.read() as txn:
        assert txn.get("meta", b"a") is None


def test_an_exception_aborts_everything_of_the_transaction(store: Store) -> None:
    fill(store, "people", [b"kept"])
    with pytest.raises(RuntimeError), store.write() as txn:
        txn.put("people", b"new", b"x")
        txn.delete("people", b"kept")
        raise RuntimeError("boom")
    with store.read() as txn:
        assert txn.get("people", b"new") is None
        assert txn.get("people", b"kept") == b"vkept"
    # And the store takes the next write.
    fill(store, "people", [b"after"])
    with store.read() as txn:
        assert txn.get("people", b"after") == b"vafter"


def test_readers_see_a_snapshot(store: Store) -> None:
    fill(store, "people", [b"a"])
    with store.read() as reader:
        fill(store, "people", [b"b"])
        assert reader.get("people", b"b") is None
        assert keys_of(reader.scan("people", b"")) == [b"a"]
    with store.read() as reader:
        assert reader.get("people", b"b") == b"vb"


KEYS = [b"w1\x00" + u64(i) for i in (1, 2, 3, 10, 255, 256)] + [
    b"w1",
    b"w2\x00" + u64(1),
    b"w0\x00" + u64(9),
]


def test_scan_within_a_prefix_in_order(store: Store) -> None:
    fill(store, "ops", KEYS)
    p = b"w1\x00"
    with store.read() as txn:
        got = list(txn.scan("ops", p))
    assert [k for k, _ in got] == sorted(k for k in KEYS if k.startswith(p))
    assert all(v == b"v" + k for k, v in got)


def test_scan_start_stop_and_reverse(store: Store) -> None:
    fill(store, "ops", KEYS)
    p = b"w1\x00"
    with store.read() as txn:
        assert keys_of(txn.scan("ops", p, start=p + u64(3))) == [
            p + u64(i) for i in (3, 10, 255, 256)
        ]
        assert keys_of(txn.scan("ops", p, stop=p + u64(10))) == [p + u64(i) for i in (1, 2, 3)]
        assert keys_of(txn.scan("ops", p, p + u64(2), p + u64(256))) == [
            p + u64(i) for i in (2, 3, 10, 255)
        ]
        assert keys_of(txn.scan("ops", p, reverse=True)) == [
            p + u64(i) for i in (256, 255, 10, 3, 2, 1)
        ]
        assert keys_of(txn.scan("ops", p, stop=p + u64(10), reverse=True)) == [
            p + u64(i) for i in (3, 2, 1)
        ]
        assert keys_of(txn.scan("ops", p, start=p + u64(3), stop=p + u64(4), reverse=True)) == [
            p + u64(3)
        ]
        # start before the prefix is clamped to it; an empty range yields nothing
        assert keys_of(txn.scan("ops", p, start=b"a")) == keys_of(txn.scan("ops", p))
        assert keys_of(txn.scan("ops", p, start=p + u64(5), stop=p + u64(5))) == []
        assert keys_of(txn.scan("ops", b"zz")) == []
        assert keys_of(txn.scan("ops", b"zz", reverse=True)) == []
        # reverse from the very last key of the table
        assert keys_of(txn.scan("ops", b"w2\x00", reverse=True)) == [b"w2\x00" + u64(1)]


def test_scan_of_a_prefix_of_ff_bytes(store: Store) -> None:
    # Every key that starts with the prefix is in the scan, whatever bytes follow it.
    keys = [b"\xff", b"\xff\x00", b"\xff\xff", b"\xff\xff\xff\x01"]
    fill(store, "meta", [*keys, b"\xfe\xff"])
    with store.read() as txn:
        assert keys_of(txn.scan("meta", b"\xff")) == keys
        assert keys_of(txn.scan("meta", b"\xff", reverse=True)) == keys[::-1]


def test_scan_of_everything(store: Store) -> None:
    keys = [b"\x00", b"a", b"\xff", b"\xff\xff\x01"]
    fill(store, "history", keys)
    with store.read() as txn:
        assert keys_of(txn.scan("history", b"")) == keys


def test_delete_range(store: Store) -> None:
    fill(store, "ops", KEYS)
    p = b"w1\x00"
    with store.write() as txn:
        assert txn.delete_range("ops", p + u64(2), p + u64(255)) == 3
        assert txn.delete_range("ops", p + u64(2), p + u64(255)) == 0
    with store.read() as txn:
        assert keys_of(txn.scan("ops", p)) == [p + u64(i) for i in (1, 255, 256)]
        assert txn.get("ops", b"w1") == b"vw1"
    with store.write() as txn:
        # to the end of the table, and from past the end
        assert txn.delete_range("ops", b"w1\x01", b"\xff") == 1
        assert txn.delete_range("ops", b"zz", b"zzz") == 0
    with store.read() as txn:
        assert txn.get("ops", b"w2\x00" + u64(1)) is None
        assert txn.get("ops", b"w0\x00" + u64(9)) == b"v" + b"w0\x00" + u64(9)


def test_a_full_map_raises_and_the_store_stays_usable(tmp_path: Path) -> None:
    store = Store(tmp_path / "small", map_size=1024 * 1024)
    try:
        fill(store, "meta", [b"before"])
        with pytest.raises(StorageFullError), store.write() as txn:
            for i in range(10_000):
                txn.put("events", u64(i), b"x" * 4000)
        with store.read() as txn:
            assert txn.get("meta", b"before") == b"vbefore"
            assert txn.get("events", u64(0)) is None  # nothing of the failed write
        fill(store, "meta", [b"after"])
        with store.read() as txn:
            assert txn.get("meta", b"after") == b"vafter"
    finally:
        store.close()


def test_durable_across_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path / "db", map_size=8 * 1024 * 1024)
    fill(store, "changes", [b"k"])
    store.close()
    store = Store(tmp_path / "db", map_size=8 * 1024 * 1024)
    try:
        with store.read() as txn:
            assert txn.get("changes", b"k") == b"vk"
        assert store.map_size() == 8 * 1024 * 1024
    finally:
        store.close()


def test_every_table_is_open(store: Store) -> None:
    with store.write() as txn:
        for table in TABLES:
            txn.put(table, b"k", table.encode())
    with store.read() as txn:
        assert [txn.get(t, b"k") for t in TABLES] == [t.encode() for t in TABLES]


def test_key_encodings_sort_numerically() -> None:
    assert prefix("ws") == b"ws\x00"
    numbers = [0, 1, 255, 256, 65_535, 2**32 - 1]
    assert sorted(u32(n) for n in numbers) == [u32(n) for n in numbers]
    assert [read_u32(u32(n)) for n in numbers] == numbers
    assert [read_u64(b"xx" + u64(n), 2) for n in [*numbers, 2**64 - 1]] == [*numbers, 2**64 - 1]
    # a workspace's range never reaches into another's
    assert not prefix("ab") <= prefix("abc") < prefix_end(prefix("ab"))
    assert prefix_end(b"ab") == b"ac"
