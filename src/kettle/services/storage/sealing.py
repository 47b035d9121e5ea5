"""Sealing: stored values are encrypted and bound to the place they are stored.

Whoever can read the database file (a backup, a stolen disk, a PostgreSQL admin)
must learn nothing from the values and must not be able to move a value to another
key unnoticed. AES-256-GCM gives both, with the value's location as associated data.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kettle.errors import SealingError
from kettle.services.storage.backend import (
    DeadLetter,
    QueuedItem,
    QueueItem,
    RecordChange,
    RecordWrite,
    StorageBackend,
)

log = logging.getLogger(__name__)

_VERSION = 0x01
_NONCE_BYTES = 12
_TAG_BYTES = 16
_MIN_SEALED_BYTES = 1 + _NONCE_BYTES + _TAG_BYTES

KEY_CHECK_NAMESPACE = "storage"
KEY_CHECK_KEY = b"sealing-key-check"
KEY_CHECK_VALUE = b"kettle storage sealing key v1"


class Sealer:
    """AES-256-GCM with a random nonce per value.

    Sealed format: ``0x01 || nonce (12) || ciphertext || tag (16)``. The version
    byte lets a later format (or key rotation) coexist with this one. Random
    96-bit nonces are safe for about 2**32 seals under one key.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError(f"a sealing key is 32 bytes (AES-256), got {len(key)}")
        self._aead = AESGCM(key)

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return bytes([_VERSION]) + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, aad: bytes, sealed: bytes) -> bytes:
        """The plaintext; SealingError unless ``sealed`` is what :meth:`seal` made for ``aad``."""
        if not sealed:
            raise SealingError("sealed value is empty")
        if sealed[0] != _VERSION:
            raise SealingError(
                f"sealed value has format version {sealed[0]:#04x}, expected {_VERSION:#04x}"
            )
        if len(sealed) < _MIN_SEALED_BYTES:
            raise SealingError(
                f"sealed value is truncated: {len(sealed)} bytes, at least {_MIN_SEALED_BYTES}"
            )
        nonce, ciphertext = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise SealingError(
                "sealed value failed authentication: wrong sealing key, "
                "stored under another key, or tampered with"
            ) from None


def _location(kind: bytes, namespace: str, name: bytes) -> bytes:
    """The AAD naming where a value lives, so it opens nowhere else.

    ``name`` may hold any byte, so the namespace must not contain NUL: otherwise
    (namespace "a\\0b", key "c") and (namespace "a", key "b\\0c") would coincide.
    """
    if "\0" in namespace:
        raise ValueError(f"a storage namespace must not contain NUL: {namespace!r}")
    return kind + b"\0" + namespace.encode() + b"\0" + name


class SealedStore:
    """A :class:`StorageBackend` that seals every value before it reaches ``backend``.

    Record values are bound to (namespace, key) and queue values to (namespace,
    queue); the two kinds are also bound apart, so a record cannot be replayed
    as a queue item. Keys and queue names are NOT encrypted: prefix scans need
    them in the clear, so nothing secret may go into a key.

    Sealing does not stop someone with write access to the database from
    deleting values, rolling a record back to an older sealed value of the same
    key, or reordering items within one queue.
    """

    def __init__(self, backend: StorageBackend, sealer: Sealer) -> None:
        self._backend = backend
        self._sealer = sealer
        self.concurrent_reads = backend.concurrent_reads

    def get(self, namespace: str, key: bytes) -> bytes | None:
        sealed = self._backend.get(namespace, key)
        if sealed is None:
            return None
        return self._sealer.open(_location(b"record", namespace, key), sealed)

    def put(self, namespace: str, key: bytes, value: bytes) -> None:
        sealed = self._sealer.seal(_location(b"record", namespace, key), value)
        self._backend.put(namespace, key, sealed)

    def delete(self, namespace: str, key: bytes) -> None:
        self._backend.delete(namespace, key)

    def keys_with_prefix(self, namespace: str, prefix: bytes) -> list[bytes]:
        return self._backend.keys_with_prefix(namespace, prefix)

    def enqueue(self, namespace: str, queue: bytes, value: bytes) -> None:
        sealed = self._sealer.seal(_location(b"queue", namespace, queue), value)
        self._backend.enqueue(namespace, queue, sealed)

    def dequeue(self, namespace: str, queue: bytes, lease_seconds: float) -> QueueItem | None:
        """As :meth:`StorageBackend.dequeue`, handing out only items that open.

        An item that fails to open would fail the same way on every delivery, so
        it is moved to the dead letters with the reason (kept, not silently
        dropped: ``kettle storage dead-letters`` lists it) and the next item is
        tried: one bad item never blocks or slows its queue.
        """
        location = _location(b"queue", namespace, queue)
        while True:
            item = self._backend.dequeue(namespace, queue, lease_seconds)
            if item is None:
                return None
            try:
                value = self._sealer.open(location, item.value)
            except SealingError as exc:
                self._backend.dead_letter(namespace, queue, item.item_id, exc.message)
                log.error("queue %r of %s: item %d moved to the dead letters: %s",
                          queue, namespace, item.item_id, exc.message)
                continue
            return QueueItem(item_id=item.item_id, value=value, deliveries=item.deliveries)

    def ack(self, namespace: str, queue: bytes, item_id: int) -> bool:
        return self._backend.ack(namespace, queue, item_id)

    def dead_letter(self, namespace: str, queue: bytes, item_id: int, reason: str) -> bool:
        return self._backend.dead_letter(namespace, queue, item_id, reason)

    def dead_letters(self) -> list[DeadLetter]:
        """Values stay sealed: a dead letter is usually one that does not open."""
        return self._backend.dead_letters()

    def compare_and_put(
        self, namespace: str, key: bytes, expected: bytes | None, value: bytes,
        also: Sequence[RecordWrite] = (), *, compared: Sequence[RecordChange] = (),
        enqueue: QueuedItem | None = None,
    ) -> tuple[bool, bytes | None]:
        """Compare plaintexts, then let the backend swap the exact sealed bytes atomically
        (a concurrent writer changes those bytes, so the swap then fails)."""
        sealed_changes: list[RecordChange] = []
        for changed, changed_expected, changed_value in ((key, expected, value), *compared):
            location = _location(b"record", namespace, changed)
            sealed_current = self._backend.get(namespace, changed)
            current = None if sealed_current is None else self._sealer.open(location, sealed_current)
            if current != changed_expected:
                return False, current if changed == key else self.get(namespace, key)
            sealed_changes.append((changed, sealed_current, self._sealer.seal(location, changed_value)))
        sealed_also = [
            (other, None if other_value is None else self._sealer.seal(_location(b"record", namespace, other), other_value))
            for other, other_value in also
        ]
        sealed_item = None
        if enqueue is not None:
            queue, item = enqueue
            sealed_item = (queue, self._sealer.seal(_location(b"queue", namespace, queue), item))
        (_, sealed_expected, sealed_value), *sealed_compared = sealed_changes
        applied, _ = self._backend.compare_and_put(
            namespace, key, sealed_expected, sealed_value, sealed_also, compared=sealed_compared, enqueue=sealed_item
        )
        if applied:
            return True, value
        return False, self.get(namespace, key)

    def check_key(self) -> None:
        """Refuse (SealingError) a database sealed under another key; mark a new one as ours.

        One marker record, sealed at first start, tells at once whether this key is the
        one the data was sealed with, instead of each record failing on first read.
        Its namespace is no caller's, so no service can read or overwrite it.
        """
        applied, current = self.compare_and_put(KEY_CHECK_NAMESPACE, KEY_CHECK_KEY, None, KEY_CHECK_VALUE)
        if not applied and current != KEY_CHECK_VALUE:
            raise SealingError("the sealing-key marker holds an unexpected value")

    def batch(self) -> AbstractContextManager[None]:
        return self._backend.batch()

    def follow_changes(
        self, changed: Callable[[str, bytes], None], lost: Callable[[], None], stop: threading.Event
    ) -> None:
        self._backend.follow_changes(changed, lost, stop)

    def close(self) -> None:
        self._backend.close()
