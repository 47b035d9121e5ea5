"""The PostgreSQL storage backend across a real restart of its database server.

A private cluster on a test host (``netns_hosts``) is shut down (fast: every client is
cut off), left down for a few seconds and started again on the same data directory while
writers, a reader, a queue consumer and a change follower keep using one backend instance. Kept apart from the
conformance suite (``test_storage_backend.py``) because it needs test hosts, which need
root, and probing for them costs a namespace made and removed.

What the backend promises (``postgresql_backend``): a call either returns a right
answer or raises StorageError; a write that returned is durable; a write that raised
may or may not have happened, and nothing else; after the restart the same instance
works again, and its follower says it may have missed changes and then follows again.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
import pytest
from netns_hosts import HostNetwork, HostsUnavailable, PostgresHost, unavailable_reason

from kettle.errors import StorageError
from kettle.services.storage.backend import QueueItem
from kettle.services.storage.postgresql_backend import PostgreSQLBackend

_UNAVAILABLE = unavailable_reason()
pytestmark = pytest.mark.skipif(_UNAVAILABLE is not None, reason=f"no test hosts here: {_UNAVAILABLE}")

NS = "management"
Q = b"staged-task"
COUNTED_Q = b"counted"
"""What each compare-and-put on the counter also enqueues, in its own transaction."""
FOLLOWED_NS = "after-restart"
"""The namespace of the one write the follower must see after the restart (the workers write elsewhere)."""
CONNECT_TIMEOUT_SECS = 3
LOAD_BEFORE_RESTART_SECS = 1.0
DOWN_SECS = 4.0
"""How long the server stays down: longer than a read waits for a connection, so reads fail too."""
SUCCESSES_AFTER_RESTART = 20
"""Calls each worker must see succeed after the restart before the run ends."""
FAILURE_PAUSE_SECS = 0.02
"""How long a worker waits after a failed call: the outage is not a busy loop on two cores."""


@dataclass
class Worker:
    """One thread's record of what it did: which calls were acknowledged, which failed."""

    name: str
    acknowledged: list[bytes] = field(default_factory=list)
    unknown: list[bytes] = field(default_factory=list)
    """Writes that raised StorageError: whether they happened is not known."""
    failures: int = 0
    successes_after_restart: int = 0
    unexpected: list[str] = field(default_factory=list)
    """Anything but StorageError raised, or a wrong answer: each one fails the test."""


class Run:
    """The workers' shared state: when to stop, and whether the restart is over."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.restarted = threading.Event()
        self.lock = threading.Lock()

    def call(self, worker: Worker, action: Callable[[], None]) -> bool:
        """Run one call of ``worker``'s: True when it returned, False when it raised StorageError."""
        try:
            action()
        except StorageError:
            worker.failures += 1
            time.sleep(FAILURE_PAUSE_SECS)
            return False
        except Exception as exc:  # noqa: BLE001 - recorded, and the test fails on it
            worker.unexpected.append(f"{type(exc).__name__}: {exc}")
            self.stop.set()
            return False
        if self.restarted.is_set():
            worker.successes_after_restart += 1
        return True

    def loop(self, worker: Worker, step: Callable[[int], None]) -> None:
        """Call ``step`` with 0, 1, 2, … until the run stops and it has worked enough after the restart."""
        number = 0
        while not self.stop.is_set() or (
            self.restarted.is_set() and worker.successes_after_restart < SUCCESSES_AFTER_RESTART and not worker.unexpected
        ):
            step(number)
            number += 1


@pytest.fixture
def database() -> Iterator[PostgresHost]:
    with contextlib.ExitStack() as stack:
        try:
            network = stack.enter_context(HostNetwork(["db"]))
        except HostsUnavailable as exc:
            pytest.skip(f"no test hosts here: {exc}")
        yield stack.enter_context(PostgresHost(network, "db"))


@pytest.fixture
def open_backend(database: PostgresHost) -> Iterator[Callable[[Callable[[], float]], PostgreSQLBackend]]:
    """Opens a backend on the test host's database with a given clock (all closed at the end)."""
    opened: list[PostgreSQLBackend] = []

    def opening(clock: Callable[[], float]) -> PostgreSQLBackend:
        opened.append(PostgreSQLBackend(database.dsn, clock=clock, connect_timeout_secs=CONNECT_TIMEOUT_SECS))
        return opened[-1]

    try:
        yield opening
    finally:
        for backend in opened:
            backend.close()


def server_started_at(dsn: str) -> datetime:
    with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_SECS) as connection:
        row = connection.execute("SELECT pg_postmaster_start_time()").fetchone()
    assert row is not None
    return row[0]


def test_a_database_restart_loses_no_acknowledged_write_and_the_backend_carries_on(
    database: PostgresHost, open_backend: Callable[[Callable[[], float]], PostgreSQLBackend],
) -> None:
    backend, other_instance = open_backend(time.time), open_backend(time.time)
    run = Run()
    putter, swapper, enqueuer, consumer, reader = (
        Worker(name) for name in ("put", "compare-and-put", "enqueue", "dequeue", "read")
    )
    counter_known = 0  # the counter's value as last known for certain (0: not written yet)
    counter_uncertain = False  # the last compare-and-put on it raised: it may have happened or not
    taken: list[bytes] = []  # queue items removed for good (acked), during the run and by the drain after it

    def put(number: int) -> None:
        key = f"put-{number}".encode()
        if run.call(putter, lambda: backend.put(NS, key, b"value of " + key)):
            with run.lock:
                putter.acknowledged.append(key)
        else:
            putter.unknown.append(key)

    def counter_value(number: int) -> bytes | None:
        return str(number).encode() if number else None

    def compare_and_put(_: int) -> None:
        # The only writer of the counter: it holds the last value known, or the next one
        # when the attempt that raised did happen after all, and never anything else.
        nonlocal counter_known, counter_uncertain
        if counter_uncertain:
            stored: list[bytes | None] = []
            if not run.call(swapper, lambda: stored.append(backend.get(NS, b"counter"))):
                return
            if stored[0] == counter_value(counter_known + 1):
                counter_known += 1
            elif stored[0] != counter_value(counter_known):
                swapper.unexpected.append(f"counter holds {stored[0]!r}, expected {counter_known} or one more")
            counter_uncertain = False
        following = counter_known + 1
        key = f"counted-{following}".encode()
        answer: list[tuple[bool, bytes | None]] = []

        def attempt() -> None:
            answer.append(backend.compare_and_put(NS, b"counter", counter_value(counter_known),
                                                  str(following).encode(), [(key, b"counted")],
                                                  enqueue=(COUNTED_Q, key)))

        if not run.call(swapper, attempt):
            swapper.unknown.append(key)
            counter_uncertain = True
            return
        applied, now = answer[0]
        if applied:
            counter_known = following
            swapper.acknowledged.append(key)
        else:
            swapper.unexpected.append(f"compare-and-put refused over {now!r} while it was the only writer")

    def enqueue(number: int) -> None:
        value = f"item-{number}".encode()
        if run.call(enqueuer, lambda: backend.enqueue(NS, Q, value)):
            enqueuer.acknowledged.append(value)
        else:
            enqueuer.unknown.append(value)

    def dequeue(_: int) -> None:
        handed: list[QueueItem | None] = []
        if not run.call(consumer, lambda: handed.append(backend.dequeue(NS, Q, lease_seconds=60))):
            return
        item = handed[0]
        if item is None:
            return
        # An ack that raised is asked again until it answers: False then means the one that
        # raised did remove it (this consumer holds the lease, nobody else takes the item).
        acked: list[bool] = []
        first = True
        while not acked:
            if run.call(consumer, lambda: acked.append(backend.ack(NS, Q, item.item_id))):
                if not acked[0] and first:
                    consumer.unexpected.append(f"ack of {item!r} just handed out said it is not there")
            elif consumer.unexpected:
                return
            first = False
        taken.append(item.value)

    def read(_: int) -> None:
        with run.lock:
            known = list(putter.acknowledged[-50:])
        counter_at_least = counter_known
        values: list[list[bytes | None]] = []
        if run.call(reader, lambda: values.append([backend.get(NS, key) for key in known])):
            wrong = [key for key, value in zip(known, values[0], strict=True) if value != b"value of " + key]
            if wrong:
                reader.unexpected.append(f"acknowledged records read wrong: {wrong}")
        counter: list[bytes | None] = []
        if run.call(reader, lambda: counter.append(backend.get(NS, b"counter"))) and int(counter[0] or b"0") < counter_at_least:
            reader.unexpected.append(f"counter went back: {counter[0]!r} < {counter_at_least}")

    seen: queue.Queue[tuple[str, bytes]] = queue.Queue()
    listening = threading.Semaphore(0)
    follower_stop = threading.Event()

    def changed(namespace: str, key: bytes) -> None:
        if namespace == FOLLOWED_NS:
            seen.put((namespace, key))

    follower = threading.Thread(target=backend.follow_changes, args=(changed, listening.release, follower_stop))
    workers = [
        threading.Thread(target=run.loop, args=(worker, step), name=worker.name)
        for worker, step in ((putter, put), (swapper, compare_and_put), (enqueuer, enqueue),
                             (consumer, dequeue), (reader, read))
    ]
    try:
        follower.start()
        assert listening.acquire(timeout=10)  # `lost` fires once LISTEN holds: nothing missed before
        for thread in workers:
            thread.start()
        time.sleep(LOAD_BEFORE_RESTART_SECS)
        started_before = server_started_at(database.dsn)
        restart_began = time.monotonic()
        database.restart(down_secs=DOWN_SECS)
        restart_secs = time.monotonic() - restart_began
        run.restarted.set()
        assert server_started_at(database.dsn) != started_before  # a new postmaster, not the old one
        assert listening.acquire(timeout=10), "the follower never said it lost its connection"
        try:
            other_instance.put(FOLLOWED_NS, b"written after the restart", b"v")
        except StorageError:  # its own connection was lost in the restart too: the next call connects again
            other_instance.put(FOLLOWED_NS, b"written after the restart", b"v")
        assert seen.get(timeout=10) == (FOLLOWED_NS, b"written after the restart")
        run.stop.set()
        for thread in workers:
            thread.join(30)
        assert not any(thread.is_alive() for thread in workers), "a worker is stuck"
    finally:
        run.stop.set()
        follower_stop.set()
        follower.join(10)
        for thread in workers:
            if thread.ident is not None:
                thread.join(30)

    everyone = (putter, swapper, enqueuer, consumer, reader)
    assert [w.unexpected for w in everyone] == [[]] * len(everyone)  # never a wrong answer, only StorageError
    assert putter.failures + swapper.failures + enqueuer.failures >= 1, "no write saw the restart"
    assert reader.failures >= 1, "no read saw the outage"
    assert all(w.successes_after_restart >= SUCCESSES_AFTER_RESTART for w in everyone)  # the same instance works again
    assert not follower.is_alive()

    # Every acknowledged write is there, read by an instance opened after the run.
    check = open_backend(lambda: time.time() + 3600)  # an hour on: every lease has run out
    assert [key for key in putter.acknowledged if check.get(NS, key) != b"value of " + key] == []
    stored_puts = set(check.keys_with_prefix(NS, b"put-"))
    assert stored_puts - set(putter.acknowledged) <= set(putter.unknown)  # nothing that was never written
    assert [key for key in swapper.acknowledged if check.get(NS, key) != b"counted"] == []
    assert check.get(NS, b"counter") in (
        {counter_value(counter_known), counter_value(counter_known + 1)} if counter_uncertain
        else {counter_value(counter_known)}
    )
    # Queue items: whatever is left (leased by a dequeue that raised, or never taken) is
    # drained now; every acknowledged enqueue is then taken exactly once.
    while (item := check.dequeue(NS, Q, lease_seconds=60)) is not None:
        assert check.ack(NS, Q, item.item_id)
        taken.append(item.value)
    counted_items: list[bytes] = []
    while (item := check.dequeue(NS, COUNTED_Q, lease_seconds=60)) is not None:
        counted_items.append(item.value)
    # A compare-and-put's record and queue item are one transaction: both there or neither.
    assert sorted(counted_items) == sorted(check.keys_with_prefix(NS, b"counted-"))
    times_taken = Counter(taken)
    assert [v for v in enqueuer.acknowledged if times_taken[v] != 1] == []
    assert [v for v in enqueuer.unknown if times_taken[v] > 1] == []
    assert set(times_taken) <= set(enqueuer.acknowledged) | set(enqueuer.unknown)
    print(f"restart took {restart_secs:.1f} s; acknowledged: {len(putter.acknowledged)} puts, "
          f"{len(swapper.acknowledged)} compare-and-puts, {len(enqueuer.acknowledged)} enqueues; "
          f"failed: {putter.failures + swapper.failures + enqueuer.failures} writes, {reader.failures} reads")
