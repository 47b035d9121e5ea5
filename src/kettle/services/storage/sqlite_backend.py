"""The embedded storage backend: one SQLite file in WAL mode, fsynced on every commit.

Durability is the point: with ``journal_mode=WAL`` and ``synchronous=FULL`` a commit
is on disk before the call returns, so an acknowledged write survives the process
being killed (or the machine losing power). Each write is all-or-nothing, so a
failed write leaves the database as it was.

**Group commit**: writes made inside :meth:`SQLiteBackend.batch` share one
transaction and one fsync. Each is still all-or-nothing on its own (a savepoint
per write: one that fails is rolled back alone), and the batch commits before
any of them returns to its caller's caller, so a write is never acknowledged
before it is on disk. Writes inside a batch see the earlier writes of the same
batch, exactly as if they had been committed one by one.

Reads outside a batch use a connection of their own: WAL lets them run beside a
commit in progress instead of waiting for its fsync, and they see every
committed write.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kettle.errors import StorageError
from kettle.services.storage.backend import DeadLetter
from kettle.services.storage.sql_backend import (
    SQLBackend,
    Statements,
    dead_letter_from_row,
)

SCHEMA_VERSION = 1


# Keys and values are BLOBs, which SQLite compares with memcmp: bytewise.
_STATEMENTS = Statements.for_dialect(
    records="records", queue_items="queue_items", dead_letters="dead_letters", parameter="?",
)
"""The record and queue operations' statements (:class:`~kettle.services.storage.sql_backend.SQLBackend`)."""


class _SQL:
    """The statements of this backend's own: its schema, its transactions, its exports."""

    # WAL + FULL: every commit is fsynced before it returns.
    USE_WAL = "PRAGMA journal_mode=WAL"
    SYNC_EVERY_COMMIT = "PRAGMA synchronous=FULL"
    CREATE_META = """
        CREATE TABLE IF NOT EXISTS meta (
            name  TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        )
    """
    RECORD_VERSION = "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', ?)"
    READ_VERSION = "SELECT value FROM meta WHERE name = 'schema_version'"
    SCHEMA = (
        """CREATE TABLE IF NOT EXISTS records (
            namespace TEXT NOT NULL,
            key       BLOB NOT NULL,
            value     BLOB NOT NULL,
            PRIMARY KEY (namespace, key)
        ) WITHOUT ROWID""",
        # AUTOINCREMENT: an item id is never reused, so a late ack of an item that
        # is gone cannot remove a newer one. leased_until is wall-clock seconds.
        """CREATE TABLE IF NOT EXISTS queue_items (
            item_id      INTEGER PRIMARY KEY AUTOINCREMENT,
            namespace    TEXT    NOT NULL,
            queue        BLOB    NOT NULL,
            value        BLOB    NOT NULL,
            deliveries   INTEGER NOT NULL DEFAULT 0,
            leased_until REAL    NOT NULL DEFAULT 0
        )""",
        """CREATE INDEX IF NOT EXISTS queue_items_fifo
            ON queue_items (namespace, queue, item_id)""",
        # Items that could not be delivered (e.g. they fail to unseal), kept with
        # the reason for an operator (`kettle storage dead-letters`). Added without
        # a schema version change: CREATE IF NOT EXISTS upgrades older files.
        """CREATE TABLE IF NOT EXISTS dead_letters (
            item_id    INTEGER PRIMARY KEY,
            namespace  TEXT    NOT NULL,
            queue      BLOB    NOT NULL,
            value      BLOB    NOT NULL,
            deliveries INTEGER NOT NULL,
            reason     TEXT    NOT NULL,
            moved_at   REAL    NOT NULL
        )""",
    )

    BEGIN_WRITE = "BEGIN IMMEDIATE"
    COMMIT = "COMMIT"
    ROLLBACK = "ROLLBACK"
    SAVEPOINT = "SAVEPOINT one_write"
    RELEASE = "RELEASE one_write"
    ROLLBACK_TO = "ROLLBACK TO one_write"

    ALL_RECORDS = "SELECT namespace, key, value FROM records ORDER BY namespace, key"
    ALL_ITEMS = "SELECT item_id, namespace, queue, value, deliveries, leased_until FROM queue_items ORDER BY item_id"


@contextmanager
def _storage_errors(action: str) -> Iterator[None]:
    """Turn any sqlite3 failure into a StorageError that says what was being done."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StorageError(f"storage: could not {action}: {exc}") from exc


class SQLiteBackend(SQLBackend):
    """A :class:`~kettle.services.storage.backend.StorageBackend` in one SQLite file.

    Two connections, each guarded by a lock, so the object can be shared between
    threads: one for writes (and for reads inside a batch), one for the other reads.
    """

    _statements = _STATEMENTS

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock)
        _create_private_file(path)
        with _storage_errors(f"open database {path}"):
            self._conn = sqlite3.connect(
                path,
                timeout=busy_timeout_seconds,
                isolation_level=None,  # transactions are begun and committed explicitly
                check_same_thread=False,
            )
        try:
            self._set_up(path)
            with _storage_errors(f"open database {path}"):
                self._read_conn = sqlite3.connect(
                    path, timeout=busy_timeout_seconds, isolation_level=None, check_same_thread=False,
                )
        except BaseException:
            self._conn.close()
            raise

    def _set_up(self, path: Path) -> None:
        with _storage_errors(f"open database {path}"):
            (mode,) = self._conn.execute(_SQL.USE_WAL).fetchone()
            if mode != "wal":
                raise StorageError(f"storage: database {path} refused WAL mode (got {mode!r})")
            self._conn.execute(_SQL.SYNC_EVERY_COMMIT)
        with self._transaction(f"create the schema in {path}") as conn:
            conn.execute(_SQL.CREATE_META)
            conn.execute(_SQL.RECORD_VERSION, (SCHEMA_VERSION,))
            (version,) = conn.execute(_SQL.READ_VERSION).fetchone()
            if version != SCHEMA_VERSION:
                raise StorageError(
                    f"storage: database {path} has schema version {version}, "
                    f"this Kettle supports {SCHEMA_VERSION}"
                )
            for statement in _SQL.SCHEMA:
                conn.execute(statement)

    @contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        """Run the body as one write: all of it is applied, or none of it.

        Alone, that is a transaction of its own, committed before this returns.
        BEGIN IMMEDIATE takes the write lock up front, so a read-then-write (dequeue)
        cannot interleave with another writer on the same file. Inside a batch it
        is a savepoint of the batch's transaction, which commits at the batch's end.
        """
        with self._lock, _storage_errors(action):
            if self._in_batch():
                self._conn.execute(_SQL.SAVEPOINT)
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute(_SQL.ROLLBACK_TO)
                    raise
                finally:
                    self._conn.execute(_SQL.RELEASE)
                return
            self._conn.execute(_SQL.BEGIN_WRITE)
            try:
                yield self._conn
                self._conn.execute(_SQL.COMMIT)
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute(_SQL.ROLLBACK)
                raise

    @contextmanager
    def _batch_transaction(self) -> Iterator[None]:
        with _storage_errors("begin a batch of writes"):
            self._conn.execute(_SQL.BEGIN_WRITE)
        try:
            yield
            with _storage_errors("commit a batch of writes"):
                self._conn.execute(_SQL.COMMIT)
        finally:
            if self._conn.in_transaction:
                with _storage_errors("roll back a batch of writes"):
                    self._conn.execute(_SQL.ROLLBACK)

    @contextmanager
    def _reading(self, action: str) -> Iterator[sqlite3.Connection]:
        """The batch's own connection inside a batch, else the reading connection, which
        (WAL) never waits for a commit."""
        if self._in_batch():
            with self._lock, _storage_errors(action):
                yield self._conn
            return
        with self._read_lock, _storage_errors(action):
            yield self._read_conn

    def follow_changes(
        self, changed: Callable[[str, bytes], None], lost: Callable[[], None], stop: threading.Event
    ) -> None:
        """Nothing to follow: only the one storage process that opened the file writes it."""

    def close(self) -> None:
        with self._lock, self._read_lock, _storage_errors("close the database"):
            self._read_conn.close()
            self._conn.close()


def read_dead_letters(path: Path) -> list[DeadLetter]:
    """The dead letters of the database at ``path``, read-only (an operator's view while
    the storage service runs; WAL lets this reader in beside its writer)."""
    if not path.exists():
        raise StorageError(f"storage: no database at {path}")
    with _storage_errors(f"read the dead letters of {path}"):
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            tables = conn.execute("SELECT name FROM sqlite_master WHERE name = 'dead_letters'").fetchall()
            rows = conn.execute(_STATEMENTS.dead_letters).fetchall() if tables else []
        finally:
            conn.close()
    return [dead_letter_from_row(row) for row in rows]


@contextmanager
def read_state(path: Path) -> Iterator[tuple[
    Iterator[tuple[str, bytes, bytes]], Iterator[tuple[int, str, bytes, bytes, int, float]], list[DeadLetter]
]]:
    """Every record, queue item and dead letter of the database at ``path``, exactly as
    stored (values sealed), from one consistent snapshot, read-only."""
    if not path.exists():
        raise StorageError(f"storage: no database at {path}")
    with _storage_errors(f"read the database {path}"):
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        with _storage_errors(f"read the database {path}"):
            conn.execute("BEGIN")  # one snapshot for all three
            records = ((ns, bytes(k), bytes(v)) for ns, k, v in conn.execute(_SQL.ALL_RECORDS))
            items = ((i, ns, bytes(q), bytes(v), d, lease) for i, ns, q, v, d, lease in conn.execute(_SQL.ALL_ITEMS))
            letters = [dead_letter_from_row(row) for row in conn.execute(_STATEMENTS.dead_letters).fetchall()]
            yield records, items, letters
    finally:
        conn.close()


def _create_private_file(path: Path) -> None:
    """Create the database file 0600 (and a missing parent 0700) before SQLite opens it.

    SQLite gives its -wal and -shm files the database file's permissions, so
    creating the file ourselves keeps all three private. An existing parent
    directory is left as it is: it may be shared, and it is not ours to change.
    """
    try:
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True)
            path.parent.chmod(0o700)  # mkdir's mode is filtered by the umask
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    except OSError as exc:
        raise StorageError(f"storage: could not create database file {path}: {exc}") from exc
