"""The storage backends, one conformance suite on real databases: SQLite files and PostgreSQL.

Tests that take ``store`` (or ``open_backend``) run against both backends; the
others are about one backend's own ground (SQLite's files, PostgreSQL's schema and
connections)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Clock, postgresql_schema

from kettle.errors import StorageError
from kettle.services.storage.backend import QueueItem, StorageBackend
from kettle.services.storage.postgresql_backend import PostgreSQLBackend
from kettle.services.storage.sqlite_backend import SQLiteBackend

NS = "management"
Q = b"staged-task"
SRC = Path(__file__).resolve().parents[1] / "src"



@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "storage" / "kettle.sqlite"


@pytest.fixture(params=["sqlite", "postgresql"])
def open_backend(request: pytest.FixtureRequest, db_path: Path, clock: Clock) -> Iterator[Callable[[], StorageBackend]]:
    """Opens another instance of one store (all of them closed at the end)."""
    opened: list[StorageBackend] = []
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            def make() -> StorageBackend:
                return SQLiteBackend(db_path, clock=clock)
        else:
            dsn = stack.enter_context(postgresql_schema())

            def make() -> StorageBackend:
                return PostgreSQLBackend(dsn, clock=clock)

        def opening() -> StorageBackend:
            opened.append(make())
            return opened[-1]

        try:
            yield opening
        finally:
            for backend in opened:
                backend.close()


@pytest.fixture
def store(open_backend: Callable[[], StorageBackend]) -> StorageBackend:
    return open_backend()


# --- records ---------------------------------------------------------------


def test_put_get_overwrite_delete(store: StorageBackend) -> None:
    assert store.get(NS, b"task-1") is None
    store.put(NS, b"task-1", b"created")
    assert store.get(NS, b"task-1") == b"created"
    store.put(NS, b"task-1", b"staged")
    assert store.get(NS, b"task-1") == b"staged"
    store.delete(NS, b"task-1")
    assert store.get(NS, b"task-1") is None


def test_deleting_a_missing_key_is_fine(store: StorageBackend) -> None:
    store.delete(NS, b"never-written")
    assert store.get(NS, b"never-written") is None


def test_empty_value_is_a_value(store: StorageBackend) -> None:
    store.put(NS, b"empty", b"")
    assert store.get(NS, b"empty") == b""
    assert store.get(NS, b"missing") is None


def test_binary_keys_and_values_roundtrip(store: StorageBackend) -> None:
    key, value = bytes(range(256)), bytes(range(255, -1, -1)) * 10
    store.put(NS, key, value)
    assert store.get(NS, key) == value


def test_namespaces_are_isolated(store: StorageBackend) -> None:
    store.put("authentication", b"user-1", b"secret")
    store.put(NS, b"user-1", b"index")
    assert store.get("authentication", b"user-1") == b"secret"
    assert store.get(NS, b"user-1") == b"index"
    assert store.get("scheduler", b"user-1") is None
    assert store.keys_with_prefix("scheduler", b"") == []
    store.delete(NS, b"user-1")
    assert store.get("authentication", b"user-1") == b"secret"


# --- prefix scans ----------------------------------------------------------

TRICKY_KEYS = [
    b"",
    b"a",
    b"a\x00",
    b"a\xff",
    b"a\xff\xff",
    b"a\xff\xff\x00",
    b"b",
    b"b\x00",
    b"\xff",
    b"\xff\xff",
    b"A",
    b"task-%",
    b"task-_x",
    b"task-*",
    b"task-?",
    b"task-[a]",
    b"taskXy",
    b"task-1",
    b"task",
]


@pytest.fixture
def tricky(store: StorageBackend) -> StorageBackend:
    for key in TRICKY_KEYS:
        store.put(NS, key, b"v")
    store.put("other", b"a-elsewhere", b"v")
    return store


@pytest.mark.parametrize(
    "prefix",
    [
        b"",
        b"a",
        b"a\xff",
        b"a\xff\xff",
        b"b",
        b"\xff",
        b"\xff\xff",
        b"\xff\xff\xff",
        b"task-",
        b"task-%",
        b"task-_",
        b"task-*",
        b"task-?",
        b"task-[",
        b"task",
        b"z",
        b"a\x00",
    ],
)
def test_prefix_scan_is_exact_and_sorted(tricky: StorageBackend, prefix: bytes) -> None:
    expected = sorted(k for k in TRICKY_KEYS if k.startswith(prefix))
    assert tricky.keys_with_prefix(NS, prefix) == expected


def test_prefix_wildcards_are_literal(tricky: StorageBackend) -> None:
    assert tricky.keys_with_prefix(NS, b"task-_") == [b"task-_x"]
    assert tricky.keys_with_prefix(NS, b"task-%") == [b"task-%"]
    assert tricky.keys_with_prefix(NS, b"a\xff") == [b"a\xff", b"a\xff\xff", b"a\xff\xff\x00"]


def test_prefix_scan_with_no_match_returns_nothing(store: StorageBackend) -> None:
    # Teaclave returns the first key after the range here; Kettle must not.
    store.put(NS, b"task-1", b"v")
    store.put(NS, b"user-1", b"v")
    assert store.keys_with_prefix(NS, b"staged-") == []


# --- queues ----------------------------------------------------------------


def test_queue_is_fifo(store: StorageBackend) -> None:
    for value in (b"one", b"two", b"three"):
        store.enqueue(NS, Q, value)
    taken = []
    while (item := store.dequeue(NS, Q, lease_seconds=30)) is not None:
        taken.append(item.value)
        assert store.ack(NS, Q, item.item_id)
    assert taken == [b"one", b"two", b"three"]


def test_dequeue_on_empty_is_none(store: StorageBackend) -> None:
    assert store.dequeue(NS, Q, lease_seconds=30) is None


def test_queues_are_independent(store: StorageBackend) -> None:
    store.enqueue(NS, b"staged-task", b"task")
    store.enqueue(NS, b"cancel_queue", b"cancel")
    store.enqueue("other", b"staged-task", b"elsewhere")
    cancel = store.dequeue(NS, b"cancel_queue", lease_seconds=30)
    assert cancel is not None and cancel.value == b"cancel"
    staged = store.dequeue(NS, b"staged-task", lease_seconds=30)
    assert staged is not None and staged.value == b"task"
    assert store.dequeue(NS, b"cancel_queue", lease_seconds=30) is None


def test_empty_queue_value_is_a_value(store: StorageBackend) -> None:
    store.enqueue(NS, Q, b"")
    item = store.dequeue(NS, Q, lease_seconds=30)
    assert item is not None and item.value == b""


def test_lease_hides_the_item(store: StorageBackend, clock: Clock) -> None:
    store.enqueue(NS, Q, b"only")
    first = store.dequeue(NS, Q, lease_seconds=30)
    assert first == QueueItem(item_id=first.item_id, value=b"only", deliveries=1)
    clock.now += 29
    assert store.dequeue(NS, Q, lease_seconds=30) is None


def test_expired_lease_redelivers_before_newer_items(store: StorageBackend, clock: Clock) -> None:
    store.enqueue(NS, Q, b"old")
    first = store.dequeue(NS, Q, lease_seconds=30)
    assert first is not None
    store.enqueue(NS, Q, b"new")
    clock.now += 30
    again = store.dequeue(NS, Q, lease_seconds=30)
    assert again == QueueItem(item_id=first.item_id, value=b"old", deliveries=2)
    newer = store.dequeue(NS, Q, lease_seconds=30)
    assert newer is not None and newer.value == b"new" and newer.deliveries == 1


def test_lease_expires_in_real_time(db_path: Path) -> None:
    backend = SQLiteBackend(db_path)  # the real wall clock
    try:
        backend.enqueue(NS, Q, b"v")
        assert backend.dequeue(NS, Q, lease_seconds=0.05) is not None
        assert backend.dequeue(NS, Q, lease_seconds=0.05) is None
        time.sleep(0.1)
        again = backend.dequeue(NS, Q, lease_seconds=30)
        assert again is not None and again.deliveries == 2
    finally:
        backend.close()


def test_ack_removes_and_double_ack_is_false(store: StorageBackend, clock: Clock) -> None:
    store.enqueue(NS, Q, b"v")
    item = store.dequeue(NS, Q, lease_seconds=30)
    assert item is not None
    assert store.ack(NS, Q, item.item_id) is True
    assert store.ack(NS, Q, item.item_id) is False
    clock.now += 3600
    assert store.dequeue(NS, Q, lease_seconds=30) is None


def test_ack_is_scoped_to_its_queue(store: StorageBackend, clock: Clock) -> None:
    store.enqueue(NS, Q, b"v")
    item = store.dequeue(NS, Q, lease_seconds=30)
    assert item is not None
    assert store.ack(NS, b"cancel_queue", item.item_id) is False
    assert store.ack("other", Q, item.item_id) is False
    clock.now += 30
    assert store.dequeue(NS, Q, lease_seconds=30) is not None


def test_item_ids_are_not_reused(store: StorageBackend) -> None:
    store.enqueue(NS, Q, b"first")
    first = store.dequeue(NS, Q, lease_seconds=30)
    assert first is not None and store.ack(NS, Q, first.item_id)
    store.enqueue(NS, Q, b"second")
    # A late, duplicate ack of the first item must not remove the second.
    assert store.ack(NS, Q, first.item_id) is False
    second = store.dequeue(NS, Q, lease_seconds=30)
    assert second is not None and second.item_id != first.item_id


@pytest.mark.parametrize("lease", [0, -1, float("nan"), float("inf")])
def test_lease_must_be_positive_and_finite(store: StorageBackend, lease: float) -> None:
    with pytest.raises(ValueError, match="lease_seconds"):
        store.dequeue(NS, Q, lease_seconds=lease)


# --- the file --------------------------------------------------------------


def test_state_persists_across_reopen(open_backend: Callable[[], StorageBackend], clock: Clock) -> None:
    backend = open_backend()
    backend.put(NS, b"k", b"v")
    backend.enqueue(NS, Q, b"leased")
    backend.enqueue(NS, Q, b"waiting")
    leased = backend.dequeue(NS, Q, lease_seconds=30)
    assert leased is not None
    backend.close()

    reopened = open_backend()
    try:
        assert reopened.get(NS, b"k") == b"v"
        waiting = reopened.dequeue(NS, Q, lease_seconds=30)
        assert waiting is not None and waiting.value == b"waiting"
        assert reopened.dequeue(NS, Q, lease_seconds=30) is None  # the lease survived too
        clock.now += 30
        assert reopened.dequeue(NS, Q, lease_seconds=30) == QueueItem(
            item_id=leased.item_id, value=b"leased", deliveries=2
        )
    finally:
        reopened.close()


def test_file_and_new_directory_are_private(db_path: Path) -> None:
    store = SQLiteBackend(db_path)
    try:
        store.put(NS, b"k", b"v")
        assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700
        for path in (db_path, db_path.with_name(db_path.name + "-wal")):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    finally:
        store.close()


def test_uses_wal_and_records_schema_version(db_path: Path) -> None:
    SQLiteBackend(db_path).close()
    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        version = raw.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        assert version == (1,)
    finally:
        raw.close()


def test_newer_schema_is_refused(db_path: Path) -> None:
    SQLiteBackend(db_path).close()
    raw = sqlite3.connect(db_path)
    with raw:
        raw.execute("UPDATE meta SET value = 2 WHERE name = 'schema_version'")
    raw.close()
    with pytest.raises(StorageError, match="schema version 2"):
        SQLiteBackend(db_path)


def test_a_file_that_is_not_a_database_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"this is not an sqlite database at all" * 100)
    with pytest.raises(StorageError, match="could not open database"):
        SQLiteBackend(path)


def test_use_after_close_is_a_storage_error(open_backend: Callable[[], StorageBackend]) -> None:
    backend = open_backend()
    backend.close()
    with pytest.raises(StorageError, match="could not read a record"):
        backend.get(NS, b"k")


def test_failed_write_changes_nothing(db_path: Path) -> None:
    backend = SQLiteBackend(db_path, busy_timeout_seconds=0.05)
    backend.put(NS, b"k", b"before")
    backend.enqueue(NS, Q, b"item")
    blocker = sqlite3.connect(db_path, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StorageError, match="could not write a record: database is locked"):
            backend.put(NS, b"k", b"after")
        with pytest.raises(StorageError, match="could not dequeue an item"):
            backend.dequeue(NS, Q, lease_seconds=30)
        blocker.execute("ROLLBACK")
        assert backend.get(NS, b"k") == b"before"
        item = backend.dequeue(NS, Q, lease_seconds=30)
        assert item is not None and item.deliveries == 1
    finally:
        blocker.close()
        backend.close()


# --- durability under SIGKILL ----------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from kettle.services.storage.sqlite_backend import SQLiteBackend

    backend = SQLiteBackend(Path(sys.argv[1]))
    for i in range(1_000_000):
        key = b"task-%08d" % i
        backend.put("management", key, key[::-1] * 50)
        print(key.decode(), flush=True)
    """
)


def test_acknowledged_writes_survive_sigkill(db_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db_path)], stdout=subprocess.PIPE, env=env
    )
    assert child.stdout is not None
    acknowledged: list[bytes] = []
    try:
        while len(acknowledged) < 200:
            line = child.stdout.readline()
            assert line.endswith(b"\n"), "the writer exited early"
            acknowledged.append(line.strip())
        child.send_signal(signal.SIGKILL)
        # Lines already in the pipe were also printed after their put returned.
        acknowledged += [line.strip() for line in child.stdout if line.endswith(b"\n")]
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL

    backend = SQLiteBackend(db_path)
    try:
        for key in acknowledged:
            assert backend.get(NS, key) == key[::-1] * 50, key
        stored = backend.keys_with_prefix(NS, b"task-")
        assert stored[: len(acknowledged)] == acknowledged
    finally:
        backend.close()


# --- several records in one step ------------------------------------------


def test_compare_and_put_writes_the_others_in_the_same_transaction(store: StorageBackend) -> None:
    store.put(NS, b"task-1", b"running")
    store.put(NS, b"output-1", b"untagged")
    store.put(NS, b"stale", b"x")
    also = [(b"output-1", b"tagged"), (b"output-2", b"new"), (b"stale", None)]
    assert store.compare_and_put(NS, b"task-1", b"running", b"finished", also) == (True, b"finished")
    assert [store.get(NS, k) for k in (b"task-1", b"output-1", b"output-2", b"stale")] == [
        b"finished", b"tagged", b"new", None]
    # A failed comparison writes none of them.
    assert store.compare_and_put(NS, b"task-1", b"running", b"again", [(b"output-1", b"other")]) == (
        False, b"finished")
    assert store.get(NS, b"output-1") == b"tagged"


def test_compare_and_put_with_compared_records_and_an_item_is_all_or_nothing(store: StorageBackend) -> None:
    store.put(NS, b"task", b"created")
    store.put(NS, b"usage", b"0")
    # A compared record changed since it was read: nothing is written, nothing queued.
    assert store.compare_and_put(NS, b"task", b"created", b"staged", [(b"note", b"n")],
                                 compared=[(b"usage", b"7", b"8")], enqueue=(Q, b"item")) == (False, b"created")
    assert (store.get(NS, b"task"), store.get(NS, b"usage"), store.get(NS, b"note")) == (b"created", b"0", None)
    assert store.dequeue(NS, Q, lease_seconds=30) is None
    # An absent record expected absent, and one that must be absent but is not.
    assert store.compare_and_put(NS, b"task", b"created", b"staged", compared=[(b"usage", None, b"1")]) == (False, b"created")
    # Every condition holds: every record and the item, together.
    assert store.compare_and_put(NS, b"task", b"created", b"staged", [(b"note", b"n")],
                                 compared=[(b"usage", b"0", b"1"), (b"fresh", None, b"f")],
                                 enqueue=(Q, b"item")) == (True, b"staged")
    assert [store.get(NS, k) for k in (b"task", b"usage", b"note", b"fresh")] == [b"staged", b"1", b"n", b"f"]
    item = store.dequeue(NS, Q, lease_seconds=30)
    assert item is not None and item.value == b"item"
    with pytest.raises(ValueError, match="each key at most once"):
        store.compare_and_put(NS, b"task", b"staged", b"x", [(b"usage", b"v")], compared=[(b"usage", b"1", b"2")])


def test_compare_and_put_writes_each_key_once(store: StorageBackend) -> None:
    for also in ([(b"k", b"v")], [(b"o", b"1"), (b"o", b"2")]):
        with pytest.raises(ValueError, match="each key at most once"):
            store.compare_and_put(NS, b"k", None, b"v", also)
    assert store.get(NS, b"k") is None and store.get(NS, b"o") is None


# --- group commit ------------------------------------------------------------


def test_a_batch_commits_its_writes_together_each_seeing_the_ones_before(
    open_backend: Callable[[], StorageBackend],
) -> None:
    store, outside = open_backend(), open_backend()
    with store.batch():
        store.put(NS, b"a", b"1")
        assert store.get(NS, b"a") == b"1"  # the batch's own thread sees its uncommitted write
        applied, _ = store.compare_and_put(NS, b"a", b"1", b"2")
        assert applied
        store.enqueue(NS, Q, b"item")
        assert outside.get(NS, b"a") is None  # nothing committed yet
    assert outside.get(NS, b"a") == b"2"
    assert outside.dequeue(NS, Q, 30) is not None


def test_a_failing_write_in_a_batch_is_undone_alone(store: StorageBackend) -> None:
    with store.batch():
        store.put(NS, b"kept", b"yes")
        with pytest.raises(StorageError):
            # the first of its writes is applied, then the second fails: both are undone
            store.compare_and_put(NS, b"key", None, b"v", [(b"half", b"x"), (b"bad", object())])  # type: ignore[list-item]
        store.put(NS, b"after", b"yes")
    assert store.get(NS, b"kept") == b"yes" and store.get(NS, b"after") == b"yes"
    assert store.get(NS, b"half") is None and store.get(NS, b"key") is None


def test_a_batch_that_fails_stores_nothing(store: StorageBackend) -> None:
    with pytest.raises(RuntimeError, match="stop"), store.batch():
        store.put(NS, b"a", b"1")
        raise RuntimeError("stop")
    assert store.get(NS, b"a") is None
    store.put(NS, b"b", b"2")  # the backend goes on
    assert store.get(NS, b"b") == b"2"


def test_reads_of_other_threads_never_wait_for_a_batch_nor_see_it_early(store: StorageBackend) -> None:
    store.put(NS, b"a", b"old")
    seen: list[bytes | None] = []
    with store.batch():
        store.put(NS, b"a", b"new")
        reader = threading.Thread(target=lambda: seen.append(store.get(NS, b"a")))
        reader.start()
        reader.join(5)
        assert not reader.is_alive()  # the read did not wait for the batch to end
    assert seen == [b"old"]
    assert store.get(NS, b"a") == b"new"


# --- PostgreSQL's own ground: several instances on one database --------------


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    with postgresql_schema() as dsn:
        yield dsn


def test_concurrent_consumers_on_two_instances_take_every_item_once(pg_dsn: str) -> None:
    producer = PostgreSQLBackend(pg_dsn)
    consumers = [PostgreSQLBackend(pg_dsn) for _ in range(2)]
    try:
        for i in range(200):
            producer.enqueue(NS, Q, f"item {i}".encode())
        taken: list[list[bytes]] = [[] for _ in range(4)]

        def consume(backend: PostgreSQLBackend, into: list[bytes]) -> None:
            while (item := backend.dequeue(NS, Q, lease_seconds=60)) is not None:
                into.append(item.value)
                assert backend.ack(NS, Q, item.item_id)

        # two threads per instance: each instance's calls are serialised, the instances race
        threads = [threading.Thread(target=consume, args=(consumers[n % 2], taken[n])) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        every = [value for part in taken for value in part]
        assert sorted(every) == sorted(f"item {i}".encode() for i in range(200))  # none lost, none twice
        assert all(taken[0] + taken[2]) and all(taken[1] + taken[3])
    finally:
        for backend in (producer, *consumers):
            backend.close()


def test_compare_and_put_races_across_instances_lose_no_update(pg_dsn: str) -> None:
    instances = [PostgreSQLBackend(pg_dsn) for _ in range(3)]
    try:
        def increment(backend: PostgreSQLBackend) -> None:
            for _ in range(40):
                while True:
                    current = backend.get(NS, b"counter")
                    following = str(int(current or b"0") + 1).encode()
                    if backend.compare_and_put(NS, b"counter", current, following)[0]:
                        break

        threads = [threading.Thread(target=increment, args=(b,)) for b in instances]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert instances[0].get(NS, b"counter") == b"120"
    finally:
        for backend in instances:
            backend.close()


def test_a_newer_schema_is_refused_and_an_older_one_is_migrated(pg_dsn: str) -> None:
    import psycopg

    PostgreSQLBackend(pg_dsn).close()
    with psycopg.connect(pg_dsn, autocommit=True) as raw:
        assert raw.execute("SELECT max(version) FROM kettle_schema").fetchone() == (1,)
        raw.execute("INSERT INTO kettle_schema (version) VALUES (2)")
    with pytest.raises(StorageError, match="schema version 2, this Kettle supports up to 1"):
        PostgreSQLBackend(pg_dsn)


def test_a_lost_connection_is_read_again_or_fails_the_write_and_the_next_call_connects_again(pg_dsn: str) -> None:
    import psycopg

    name = f"kettle-test-{os.getpid()}-{time.monotonic_ns()}"
    backend = PostgreSQLBackend(psycopg.conninfo.make_conninfo(pg_dsn, application_name=name))
    try:
        backend.put(NS, b"k", b"v")
        assert backend.get(NS, b"k") == b"v"
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            # what a database restart does to every connection: here, to this backend's writer and
            # its pooled readers
            ended = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE application_name = %s", (name,)).fetchall()
            assert len(ended) >= 2
        assert backend.get(NS, b"k") == b"v"  # a read is tried again on a new connection
        with pytest.raises(StorageError, match="could not write a record"):
            backend.put(NS, b"k", b"lost?")  # a write is not: its commit may or may not have happened
        backend.put(NS, b"k", b"again")  # a fresh connection
        assert backend.get(NS, b"k") == b"again"
    finally:
        backend.close()


def test_reads_run_at_once_each_on_a_pooled_connection_of_its_own(pg_dsn: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import psycopg

    from kettle.services.storage.postgresql_backend import READ_CONNECTIONS

    name = f"kettle-test-{os.getpid()}-{time.monotonic_ns()}"
    backend = PostgreSQLBackend(psycopg.conninfo.make_conninfo(pg_dsn, application_name=name))
    threads = ThreadPoolExecutor(READ_CONNECTIONS)
    try:
        assert backend.concurrent_reads == READ_CONNECTIONS
        backend.put(NS, b"k", b"v")
        with psycopg.connect(pg_dsn, autocommit=True) as observer:
            def sessions(condition: str = "true") -> int:
                row = observer.execute(f"SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND {condition}",
                                       (name,)).fetchone()
                assert row is not None
                return int(row[0])

            assert _eventually(lambda: sessions() == 1 + READ_CONNECTIONS)  # the writer and the pool, opened at start
            with psycopg.connect(pg_dsn) as blocker:
                blocker.execute("LOCK TABLE kettle_records IN ACCESS EXCLUSIVE MODE")  # until it commits
                try:
                    reads = [threads.submit(backend.get, NS, b"k") for _ in range(READ_CONNECTIONS)]
                    # Every read waits on the lock at the same time, each in its own session.
                    assert _eventually(lambda: sessions("wait_event_type = 'Lock'") == READ_CONNECTIONS)
                    assert not any(read.done() for read in reads)
                finally:
                    blocker.commit()
        assert [read.result(timeout=10) for read in reads] == [b"v"] * READ_CONNECTIONS
    finally:
        threads.shutdown()
        backend.close()


def _eventually(condition: Callable[[], bool], secs: float = 10.0) -> bool:
    deadline = time.monotonic() + secs
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_an_unreachable_database_is_a_storage_error_naming_it_without_its_password() -> None:
    with pytest.raises(StorageError) as refused:
        PostgreSQLBackend("postgresql://kettle:s3cret@127.0.0.1:1/kettle", connect_timeout_secs=2)
    assert "cannot connect to PostgreSQL at 127.0.0.1:1/kettle" in refused.value.message
    assert "s3cret" not in refused.value.message


def test_a_sqlite_state_moves_into_postgresql_row_for_row(db_path: Path, pg_dsn: str, clock: Clock) -> None:
    from kettle.services.storage.sqlite_backend import read_state

    source = SQLiteBackend(db_path, clock=clock)
    source.put(NS, b"k", b"sealed bytes")
    source.put("authentication", b"user/a", b"other namespace")
    for value in (b"leased", b"waiting", b"dead"):
        source.enqueue(NS, Q, value)
    leased, waiting, dead = (source.dequeue(NS, Q, lease_seconds=30) for _ in range(3))
    assert leased is not None and waiting is not None and dead is not None
    source.dead_letter(NS, Q, dead.item_id, "does not unseal")
    clock.now += 31  # the leases ran out: both items are due again, with their deliveries counted
    source.close()

    target = PostgreSQLBackend(pg_dsn, clock=clock)
    try:
        with read_state(db_path) as (records, items, letters):
            assert target.import_state(records, items, letters) == (2, 2, 1)
        assert target.get(NS, b"k") == b"sealed bytes"
        assert target.get("authentication", b"user/a") == b"other namespace"
        first = target.dequeue(NS, Q, lease_seconds=30)
        assert first == QueueItem(item_id=leased.item_id, value=b"leased", deliveries=2)  # history kept
        [letter] = target.dead_letters()
        assert (letter.item_id, letter.value, letter.reason) == (dead.item_id, b"dead", "does not unseal")
        target.enqueue(NS, Q, b"new")
        while (item := target.dequeue(NS, Q, lease_seconds=30)) is not None and item.value != b"new":
            pass
        assert item is not None and item.item_id > dead.item_id  # ids never reused
        with read_state(db_path) as (records, items, letters), pytest.raises(StorageError, match="is not empty"):
            target.import_state(records, items, letters)
    finally:
        target.close()


def test_writes_through_one_instance_wake_the_followers_of_another(pg_dsn: str) -> None:
    import queue
    import uuid

    # Notifications are database-wide: namespaces of this test's own keep out the writes of
    # whatever else uses the test database meanwhile.
    ns, other_ns = f"{NS}-{uuid.uuid4().hex}", f"authentication-{uuid.uuid4().hex}"
    follower, writer = PostgreSQLBackend(pg_dsn), PostgreSQLBackend(pg_dsn)
    seen: queue.Queue[tuple[str, bytes]] = queue.Queue()

    def changed(namespace: str, key: bytes) -> None:
        if namespace in (ns, other_ns):
            seen.put((namespace, key))

    listening, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=follower.follow_changes, args=(changed, listening.set, stop))
    thread.start()
    try:
        assert listening.wait(10)
        writer.put(ns, b"k1", b"v")
        assert seen.get(timeout=10) == (ns, b"k1")
        writer.compare_and_put(ns, b"k2", None, b"v", [(b"k3", b"x"), (b"k4", None)])
        assert {seen.get(timeout=10) for _ in range(3)} == {(ns, b"k2"), (ns, b"k3"), (ns, b"k4")}
        writer.compare_and_put(ns, b"k2", b"not what is stored", b"w")  # refused: nothing to tell
        with writer.batch():
            writer.put(other_ns, b"kept", b"1")
            with pytest.raises(StorageError):
                writer.compare_and_put(ns, b"undone", None, b"v", [(b"half", object())])  # type: ignore[list-item]
        assert seen.get(timeout=10) == (other_ns, b"kept")
        writer.delete(ns, b"k1")
        assert seen.get(timeout=10) == (ns, b"k1")  # the refused and the undone writes told nobody
        assert seen.empty()
    finally:
        stop.set()
        thread.join(10)
        follower.close()
        writer.close()
    assert not thread.is_alive()
