"""The interface every storage backend (SQLite now, PostgreSQL later) implements.

The storage service is the only component that keeps platform state, and it serves
several callers. ``namespace`` partitions the key space per calling service, so one
service's records and queues are invisible to another's even when keys coincide.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class QueueItem:
    """One hand-off from a queue.

    ``item_id`` is what the consumer acks once it has acted on ``value``;
    ``deliveries`` counts hand-outs including this one, so a consumer can spot an
    item that keeps coming back because whoever took it before died before acking.
    """

    item_id: int
    value: bytes
    deliveries: int


@dataclass(frozen=True)
class DeadLetter:
    """A queue item taken out of its queue because it could not be delivered.

    ``value`` is kept exactly as it was stored (still sealed), for whoever
    investigates; ``reason`` says why it could not be delivered.
    """

    item_id: int
    namespace: str
    queue: bytes
    value: bytes
    deliveries: int
    reason: str
    moved_at: float
    """Wall-clock seconds."""


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix``.

    None when there is no such key (``prefix`` is empty or all 0xff), i.e. the
    range is unbounded above.
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


RecordWrite = tuple[bytes, bytes | None]
"""One write of a batch: (key, new value), or (key, None) to delete the record."""

RecordChange = tuple[bytes, bytes | None, bytes]
"""A further compare-and-put: (key, the value expected there or None for absent, new value)."""

QueuedItem = tuple[bytes, bytes]
"""(queue, value): an item appended to a queue."""


class StorageBackend(Protocol):
    """Durable records with ordered prefix scans, and at-least-once FIFO queues.

    Every method either completes or raises :class:`kettle.errors.StorageError`
    having changed nothing; a write is durable once the call returns.
    """

    concurrent_reads: int
    """0: a read is a quick local call (a file on this host), made on the caller's event
    loop. N > 0: a read may wait on a round trip to a database elsewhere; callers run up
    to N at once on threads of their own."""

    def get(self, namespace: str, key: bytes) -> bytes | None:
        """The value under ``key``, or None if there is none (``b""`` is a value)."""
        ...

    def put(self, namespace: str, key: bytes, value: bytes) -> None:
        """Create or overwrite the record under ``key``."""
        ...

    def delete(self, namespace: str, key: bytes) -> None:
        """Remove the record under ``key``; a missing key is not an error."""
        ...

    def keys_with_prefix(self, namespace: str, prefix: bytes) -> list[bytes]:
        """Every key that starts with ``prefix`` (all keys for ``b""``), sorted bytewise."""
        ...

    def enqueue(self, namespace: str, queue: bytes, value: bytes) -> None:
        """Append ``value`` to ``queue``."""
        ...

    def dequeue(self, namespace: str, queue: bytes, lease_seconds: float) -> QueueItem | None:
        """Hand out the oldest item of ``queue`` that nobody holds a lease on.

        The item stays in the queue, leased for ``lease_seconds``; if it is not
        acked by then it is handed out again, ahead of newer items. This makes
        delivery at-least-once: a consumer that crashes loses nothing. None when
        no item is available.
        """
        ...

    def ack(self, namespace: str, queue: bytes, item_id: int) -> bool:
        """Remove a handed-out item for good; False if it is not (or no longer) there."""
        ...

    def dead_letter(self, namespace: str, queue: bytes, item_id: int, reason: str) -> bool:
        """Move a queue item to the dead letters with ``reason``, in one step; False if it is
        not (or no longer) in the queue. It is never handed out again."""
        ...

    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter of every namespace, oldest first."""
        ...

    def compare_and_put(
        self, namespace: str, key: bytes, expected: bytes | None, value: bytes,
        also: Sequence[RecordWrite] = (), *, compared: Sequence[RecordChange] = (),
        enqueue: QueuedItem | None = None,
    ) -> tuple[bool, bytes | None]:
        """Atomically write ``value`` if the stored value is exactly ``expected`` (None =
        the key is absent). Returns (applied, the value stored now).

        ``also`` are further writes of the same namespace applied in the same
        transaction: a reader sees all of them or none. ``compared`` are further
        compare-and-puts that must all hold too, or nothing is written (the answer
        is then (False, ``key``'s value), which may be ``expected``: a compared
        record changed). ``enqueue`` appends an item to a queue in the same
        transaction. Every key appears once.
        """
        ...

    def batch(self) -> AbstractContextManager[None]:
        """Group commit: the writes made inside (on this thread) become durable together,
        at the end, with one commit; each is still all-or-nothing on its own and sees the
        earlier ones. A failed commit stores none of them and raises StorageError."""
        ...

    def follow_changes(
        self, changed: Callable[[str, bytes], None], lost: Callable[[], None], stop: threading.Event
    ) -> None:
        """Until ``stop`` is set, call ``changed(namespace, key)`` for each record another
        process (another storage instance) writes, once its write is committed, and
        ``lost()`` when some may have been missed (the watchers then look again). Runs in a
        thread of its own; returns at once where no other process can write."""
        ...

    def close(self) -> None:
        """Release the underlying database; the backend is unusable afterwards."""
        ...
