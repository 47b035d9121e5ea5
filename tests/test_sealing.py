"""Sealing: values at rest are encrypted and cannot be moved, swapped or altered."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Clock

from kettle.errors import SealingError
from kettle.services.storage.sealing import SealedStore, Sealer
from kettle.services.storage.sqlite_backend import SQLiteBackend

NS = "management"
Q = b"staged-task"
SECRET = b"the-secret-task-payload-0123456789"
AAD = b"record\0management\0task-1"
FAILED_AUTHENTICATION = (
    "sealed value failed authentication: wrong sealing key, stored under another key, or tampered with"
)



@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def backend(tmp_path: Path, clock: Clock) -> Iterator[SQLiteBackend]:
    raw = SQLiteBackend(tmp_path / "kettle.sqlite", clock=clock)
    yield raw
    raw.close()


@pytest.fixture
def sealed(backend: SQLiteBackend, key: bytes) -> SealedStore:
    return SealedStore(backend, Sealer(key))


# --- Sealer ----------------------------------------------------------------


def test_seal_open_roundtrip(key: bytes) -> None:
    sealer = Sealer(key)
    for plaintext in (b"", b"x", SECRET * 1000):
        assert sealer.open(AAD, sealer.seal(AAD, plaintext)) == plaintext


def test_sealed_format(key: bytes) -> None:
    sealed = Sealer(key).seal(AAD, SECRET)
    assert sealed[0] == 0x01
    assert len(sealed) == 1 + 12 + len(SECRET) + 16
    assert SECRET not in sealed


def test_nonces_are_fresh(key: bytes) -> None:
    sealer = Sealer(key)
    assert sealer.seal(AAD, SECRET) != sealer.seal(AAD, SECRET)


@pytest.mark.parametrize("length", [0, 16, 24, 31, 33, 64])
def test_key_must_be_32_bytes(length: int) -> None:
    with pytest.raises(ValueError, match=f"32 bytes.*got {length}"):
        Sealer(bytes(length))


def test_wrong_key(key: bytes) -> None:
    sealed = Sealer(key).seal(AAD, SECRET)
    with pytest.raises(SealingError, match="failed authentication"):
        Sealer(os.urandom(32)).open(AAD, sealed)


def test_wrong_aad(key: bytes) -> None:
    sealer = Sealer(key)
    sealed = sealer.seal(AAD, SECRET)
    with pytest.raises(SealingError, match="failed authentication"):
        sealer.open(b"record\0management\0task-2", sealed)


@pytest.mark.parametrize("position", [1, 12, 13, 20, -16, -1])  # nonce, ciphertext, tag
def test_tampered_byte(key: bytes, position: int) -> None:
    sealer = Sealer(key)
    sealed = bytearray(sealer.seal(AAD, SECRET))
    sealed[position] ^= 0x01
    with pytest.raises(SealingError, match="failed authentication"):
        sealer.open(AAD, bytes(sealed))


def test_truncated(key: bytes) -> None:
    sealer = Sealer(key)
    sealed = sealer.seal(AAD, SECRET)
    with pytest.raises(SealingError, match="failed authentication"):
        sealer.open(AAD, sealed[:-1])
    with pytest.raises(SealingError, match="truncated: 28 bytes"):
        sealer.open(AAD, sealer.seal(AAD, b"")[:-1])
    with pytest.raises(SealingError, match="empty"):
        sealer.open(AAD, b"")


def test_wrong_version_byte(key: bytes) -> None:
    sealer = Sealer(key)
    sealed = sealer.seal(AAD, SECRET)
    with pytest.raises(SealingError, match="format version 0x02, expected 0x01"):
        sealer.open(AAD, b"\x02" + sealed[1:])


# --- SealedStore -----------------------------------------------------------


def test_store_roundtrip(sealed: SealedStore) -> None:
    sealed.put(NS, b"task-1", SECRET)
    sealed.put(NS, b"empty", b"")
    assert sealed.get(NS, b"task-1") == SECRET
    assert sealed.get(NS, b"empty") == b""
    assert sealed.get(NS, b"missing") is None
    assert sealed.keys_with_prefix(NS, b"task-") == [b"task-1"]
    sealed.delete(NS, b"task-1")
    assert sealed.get(NS, b"task-1") is None


def test_store_queue_roundtrip(sealed: SealedStore) -> None:
    sealed.enqueue(NS, Q, SECRET)
    sealed.enqueue(NS, Q, b"")
    first = sealed.dequeue(NS, Q, lease_seconds=30)
    assert first is not None and first.value == SECRET and first.deliveries == 1
    assert sealed.ack(NS, Q, first.item_id)
    second = sealed.dequeue(NS, Q, lease_seconds=30)
    assert second is not None and second.value == b""
    assert sealed.dequeue(NS, Q, lease_seconds=30) is None


def test_backend_rows_are_sealed(sealed: SealedStore, backend: SQLiteBackend) -> None:
    sealed.put(NS, b"task-1", SECRET)
    sealed.enqueue(NS, Q, SECRET)
    stored = backend.get(NS, b"task-1")
    assert stored is not None and stored[0] == 0x01 and SECRET not in stored
    item = backend.dequeue(NS, Q, lease_seconds=30)
    assert item is not None and item.value[0] == 0x01 and SECRET not in item.value


def test_database_file_holds_no_plaintext(tmp_path: Path, key: bytes) -> None:
    path = tmp_path / "kettle.sqlite"
    store = SealedStore(SQLiteBackend(path), Sealer(key))
    store.put(NS, b"task-1", SECRET)
    store.enqueue(NS, Q, SECRET)
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # includes -wal
    assert b"task-1" in on_disk  # keys are in the clear, by design
    assert SECRET not in on_disk
    store.close()
    assert SECRET not in path.read_bytes()


def test_swapped_values_are_detected(sealed: SealedStore, backend: SQLiteBackend) -> None:
    sealed.put(NS, b"task-1", b"alice's task")
    sealed.put(NS, b"task-2", b"bob's task")
    one, two = backend.get(NS, b"task-1"), backend.get(NS, b"task-2")
    assert one is not None and two is not None
    backend.put(NS, b"task-1", two)
    backend.put(NS, b"task-2", one)
    for key in (b"task-1", b"task-2"):
        with pytest.raises(SealingError):
            sealed.get(NS, key)


def test_value_moved_to_another_namespace_is_detected(
    sealed: SealedStore, backend: SQLiteBackend
) -> None:
    sealed.put(NS, b"user-1", SECRET)
    stolen = backend.get(NS, b"user-1")
    assert stolen is not None
    backend.put("scheduler", b"user-1", stolen)
    with pytest.raises(SealingError):
        sealed.get("scheduler", b"user-1")


def test_record_replayed_as_queue_item_is_detected(
    sealed: SealedStore, backend: SQLiteBackend
) -> None:
    # Same namespace and name, different kind: the AAD still differs.
    sealed.put(NS, Q, SECRET)
    record = backend.get(NS, Q)
    assert record is not None
    backend.enqueue(NS, Q, record)
    assert sealed.dequeue(NS, Q, lease_seconds=30) is None
    assert [letter.reason for letter in sealed.dead_letters()] == [FAILED_AUTHENTICATION]


def test_queue_item_moved_to_another_queue_is_detected(
    sealed: SealedStore, backend: SQLiteBackend
) -> None:
    sealed.enqueue(NS, b"cancel_queue", SECRET)
    item = backend.dequeue(NS, b"cancel_queue", lease_seconds=30)
    assert item is not None
    backend.enqueue(NS, Q, item.value)
    assert sealed.dequeue(NS, Q, lease_seconds=30) is None
    assert [letter.reason for letter in sealed.dead_letters()] == [FAILED_AUTHENTICATION]


def test_an_item_that_does_not_open_is_dead_lettered_once_and_the_queue_flows(
    sealed: SealedStore, backend: SQLiteBackend, clock: Clock
) -> None:
    sealed.enqueue(NS, Q, b"good one")
    backend.enqueue(NS, Q, b"\x01" + bytes(40))  # well-formed, but not sealed by us
    backend.enqueue(NS, Q, b"\x07garbage")
    sealed.enqueue(NS, Q, b"good two")
    first = sealed.dequeue(NS, Q, lease_seconds=30)
    assert first is not None and first.value == b"good one"
    sealed.ack(NS, Q, first.item_id)
    second = sealed.dequeue(NS, Q, lease_seconds=30)
    assert second is not None and (second.value, second.deliveries) == (b"good two", 1)
    letters = sealed.dead_letters()
    assert [(letter.namespace, letter.queue, letter.deliveries) for letter in letters] == [(NS, Q, 1), (NS, Q, 1)]
    assert [letter.reason for letter in letters] == [
        FAILED_AUTHENTICATION, "sealed value has format version 0x07, expected 0x01"]
    assert letters[1].value == b"\x07garbage" and letters[0].moved_at == clock.now
    clock.now += 3600  # every lease is long over: nothing of them is ever handed out again
    again = sealed.dequeue(NS, Q, lease_seconds=30)
    assert again is not None and again.value == b"good two"
    assert sealed.dequeue(NS, Q, lease_seconds=30) is None
    assert len(sealed.dead_letters()) == 2


def test_wrong_store_key(backend: SQLiteBackend, key: bytes) -> None:
    SealedStore(backend, Sealer(key)).put(NS, b"task-1", SECRET)
    with pytest.raises(SealingError):
        SealedStore(backend, Sealer(os.urandom(32))).get(NS, b"task-1")


def test_tampered_row_is_detected(sealed: SealedStore, backend: SQLiteBackend) -> None:
    sealed.put(NS, b"task-1", SECRET)
    stored = bytearray(backend.get(NS, b"task-1") or b"")
    stored[20] ^= 0x80
    backend.put(NS, b"task-1", bytes(stored))
    with pytest.raises(SealingError, match="failed authentication"):
        sealed.get(NS, b"task-1")


def test_namespace_with_nul_is_refused(sealed: SealedStore) -> None:
    with pytest.raises(ValueError, match="NUL"):
        sealed.put("a\0b", b"c", b"v")
