"""The PostgreSQL storage backend: the same records, queues and guarantees as SQLite's.

For an operator who already runs (and backs up) PostgreSQL. Values arrive sealed by
:class:`~kettle.services.storage.sealing.SealedStore`, exactly as for SQLite; the
database never sees a plaintext value. Keys are ``bytea``, so prefix scans and
ordering are bytewise.

- **Durability**: every write is its own transaction, committed (with PostgreSQL's
  default ``synchronous_commit = on``, i.e. flushed to its WAL) before it returns;
  inside :meth:`PostgreSQLBackend.batch` writes share one transaction, each in a
  savepoint of its own, and commit together at the end (group commit).
- **Compare-and-put** is one conditional statement inside the transaction (an
  ``UPDATE … WHERE value = expected``, or an ``INSERT … ON CONFLICT DO NOTHING`` for
  an absent record), so two writers racing on a record cannot both win.
- **Queues**: a dequeue takes the oldest available item ``FOR UPDATE SKIP LOCKED``,
  so concurrent consumers (several storage instances) never take the same item.
- **Schema**: versioned migrations, applied at start under an advisory lock (two
  instances starting together do not race), recorded in ``kettle_schema``.
- **A lost connection** is never turned into a wrong answer: a read is tried once
  more on a new connection; a write fails with :class:`~kettle.errors.StorageError`
  (whether its commit happened is not known; its caller's compare-and-put loop or
  retry decides) and the next call connects again.
- **Watches across instances**: every record write also sends a ``NOTIFY`` on
  :data:`CHANGES_CHANNEL` in its transaction (delivered only if it commits, dropped
  with a rolled-back savepoint), and :meth:`PostgreSQLBackend.follow_changes` listens,
  so a Watch on one storage instance wakes for a write through another.

Reads outside a batch come from a pool of connections of their own
(:data:`READ_CONNECTIONS`, psycopg's pool), so they never wait behind a commit and
several run at once: the storage service runs them on threads, off its event loop,
because each is a round trip to a database that may be on another host.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import psycopg
import psycopg_pool

from kettle.errors import StorageError
from kettle.services.storage.backend import DeadLetter
from kettle.services.storage.sql_backend import Connection, SQLBackend, Statements

_T = TypeVar("_T")

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: records, queues, dead letters
        """CREATE TABLE kettle_records (
            namespace TEXT  NOT NULL,
            key       BYTEA NOT NULL,
            value     BYTEA NOT NULL,
            PRIMARY KEY (namespace, key)
        )""",
        # An item id is never reused (a sequence), so a late ack of an item that is
        # gone cannot remove a newer one. leased_until is wall-clock seconds.
        """CREATE TABLE kettle_queue_items (
            item_id      BIGSERIAL PRIMARY KEY,
            namespace    TEXT             NOT NULL,
            queue        BYTEA            NOT NULL,
            value        BYTEA            NOT NULL,
            deliveries   INTEGER          NOT NULL DEFAULT 0,
            leased_until DOUBLE PRECISION NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX kettle_queue_items_fifo ON kettle_queue_items (namespace, queue, item_id)",
        """CREATE TABLE kettle_dead_letters (
            item_id    BIGINT           PRIMARY KEY,
            namespace  TEXT             NOT NULL,
            queue      BYTEA            NOT NULL,
            value      BYTEA            NOT NULL,
            deliveries INTEGER          NOT NULL,
            reason     TEXT             NOT NULL,
            moved_at   DOUBLE PRECISION NOT NULL
        )""",
    ),
)
"""Schema versions in order; version N is ``MIGRATIONS[N - 1]``. Never edit one that has shipped: add the next."""

MIGRATION_LOCK = 0x6B65_7474_6C65  # "kettle": the advisory lock that serialises schema changes
CHANGES_CHANNEL = "kettle_changes"
"""The NOTIFY channel of record writes; a payload is ``<namespace> <key in hex>``."""
LISTEN_RETRY_SECS = 0.5


_STATEMENTS = Statements.for_dialect(
    records="kettle_records", queue_items="kettle_queue_items", dead_letters="kettle_dead_letters", parameter="%s",
    # Concurrent consumers (several storage instances) never take the same item.
    lock_oldest=" FOR UPDATE SKIP LOCKED",
)
"""The record and queue operations' statements (:class:`~kettle.services.storage.sql_backend.SQLBackend`)."""


class _SQL:
    """The statements of this backend's own: its schema, its notifications, moving a platform in."""

    SCHEMA_TABLE = "CREATE TABLE IF NOT EXISTS kettle_schema (version INTEGER NOT NULL)"
    LOCK_SCHEMA = "SELECT pg_advisory_xact_lock(%s)"
    SCHEMA_VERSION = "SELECT max(version) FROM kettle_schema"
    RECORD_VERSION = "INSERT INTO kettle_schema (version) VALUES (%s)"

    NOTIFY = "SELECT pg_notify(%s, %s)"
    IMPORT_ITEM = """
        INSERT INTO kettle_queue_items (item_id, namespace, queue, value, deliveries, leased_until)
        VALUES (%s, %s, %s, %s, %s, %s)
    """
    IMPORT_DEAD_LETTER = """
        INSERT INTO kettle_dead_letters (item_id, namespace, queue, value, deliveries, reason, moved_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s)
    """
    ADVANCE_ITEM_IDS = """
        SELECT setval(pg_get_serial_sequence('kettle_queue_items', 'item_id'),
                      GREATEST((SELECT coalesce(max(item_id), 0) FROM kettle_queue_items),
                               (SELECT coalesce(max(item_id), 0) FROM kettle_dead_letters), 1))
    """


def _shown(dsn: str) -> str:
    """The DSN without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "the configured database"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


READ_CONNECTIONS = 4
"""Reads that may run at once, each on a pooled connection of its own."""


class _LostConnection(StorageError):
    """A call failed because its connection is gone (a database restart, a cut link)."""


class PostgreSQLBackend(SQLBackend):
    """A :class:`~kettle.services.storage.backend.StorageBackend` in a PostgreSQL database.

    One connection for writes (and for reads inside a batch), guarded by a lock so the
    object can be shared between threads, opened on first use and again after it was
    lost; the other reads from a pool of :data:`READ_CONNECTIONS` connections.
    """

    _statements = _STATEMENTS
    concurrent_reads = READ_CONNECTIONS

    def __init__(self, dsn: str, *, clock: Callable[[], float] = time.time, connect_timeout_secs: int = 10) -> None:
        super().__init__(clock)
        self._dsn = dsn
        self._where = _shown(dsn)
        self._connect_timeout = connect_timeout_secs
        self._conn: psycopg.Connection | None = None
        self._closed = False
        self._read_pool = psycopg_pool.ConnectionPool(
            # A fixed size, opened at start: a read never waits for a connection to be made.
            dsn, min_size=READ_CONNECTIONS, max_size=READ_CONNECTIONS, open=False, timeout=connect_timeout_secs,
            kwargs={"autocommit": True, "connect_timeout": connect_timeout_secs},  # each read sees every commit
            name="kettle-storage-reads",
        )
        with self._lock:
            try:
                self._migrate(self._writer())
            except BaseException:
                self.close()
                raise
        self._read_pool.open(wait=False)

    # --- connections --------------------------------------------------------------

    def _connect(self) -> psycopg.Connection:
        try:
            return psycopg.connect(self._dsn, connect_timeout=self._connect_timeout)
        except psycopg.Error as exc:
            raise StorageError(f"storage: cannot connect to PostgreSQL at {self._where}: {_reason(exc)}") from None

    def _writer(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
            self._conn.autocommit = True  # transactions are the explicit blocks below (nested: savepoints)
        return self._conn

    def _open(self, action: str) -> None:
        if self._closed:
            raise StorageError(f"storage: could not {action}: the backend is closed")

    @contextmanager
    def _errors(self, action: str, conn: psycopg.Connection) -> Iterator[None]:
        try:
            yield
        except psycopg.OperationalError as exc:
            if conn.broken or conn.closed:
                conn.close()  # the next call connects again; this one's outcome is not guessed
                raise _LostConnection(f"storage: could not {action}: {_reason(exc)}") from exc
            raise StorageError(f"storage: could not {action}: {_reason(exc)}") from exc
        except psycopg.Error as exc:
            raise StorageError(f"storage: could not {action}: {_reason(exc)}") from exc

    def _migrate(self, conn: psycopg.Connection) -> None:
        with self._errors("prepare the schema", conn), conn.transaction():
            conn.execute(_SQL.LOCK_SCHEMA, (MIGRATION_LOCK,))
            conn.execute(_SQL.SCHEMA_TABLE)
            row = conn.execute(_SQL.SCHEMA_VERSION).fetchone()
            version = (row[0] if row else None) or 0
            if version > len(MIGRATIONS):
                raise StorageError(
                    f"storage: the database at {self._where} has schema version {version}, "
                    f"this Kettle supports up to {len(MIGRATIONS)}"
                )
            for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    conn.execute(statement)
                conn.execute(_SQL.RECORD_VERSION, (number,))

    @contextmanager
    def _transaction(self, action: str) -> Iterator[psycopg.Connection]:
        """One write, all or nothing: a transaction of its own, or a savepoint of the batch's."""
        with self._lock:
            self._open(action)
            conn = self._writer()
            with self._errors(action, conn), conn.transaction():
                yield conn

    @contextmanager
    def _batch_transaction(self) -> Iterator[None]:
        self._open("begin a batch of writes")
        conn = self._writer()
        with self._errors("commit a batch of writes", conn), conn.transaction():
            yield

    @contextmanager
    def _reading(self, action: str) -> Iterator[psycopg.Connection]:
        self._open(action)
        if self._in_batch():
            with self._lock:
                conn = self._writer()
                with self._errors(action, conn):
                    yield conn
            return
        try:
            # The pool drops a connection that was closed as lost (see _errors).
            with self._read_pool.connection() as conn, self._errors(action, conn):
                yield conn
        except psycopg_pool.PoolTimeout:
            raise StorageError(
                f"storage: could not {action}: no connection to PostgreSQL at {self._where} "
                f"within {self._connect_timeout} s"
            ) from None

    def _read(self, action: str, query: Callable[[Connection], _T]) -> _T:
        """Run a read. One that finds its connection lost (a database restart) is tried again
        on another: a read changes nothing, so trying again cannot be wrong; after a restart
        every pooled connection may be found lost in turn, so as many tries as the pool
        holds, and one on a new connection. A write is never tried again here: whether its
        commit happened is not known."""
        attempts = 1 if self._in_batch() else READ_CONNECTIONS + 1
        for attempt in range(1, attempts + 1):
            try:
                return super()._read(action, query)
            except _LostConnection:
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def _record_changed(self, conn: Connection, namespace: str, key: bytes) -> None:
        """Tell the other storage instances (:meth:`follow_changes`), once this commits."""
        conn.execute(_SQL.NOTIFY, (CHANGES_CHANNEL, f"{namespace} {key.hex()}"))

    # --- other instances' writes -------------------------------------------------------

    def follow_changes(
        self, changed: Callable[[str, bytes], None], lost: Callable[[], None], stop: threading.Event
    ) -> None:
        while not stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=self._connect_timeout) as conn:
                    conn.execute(f"LISTEN {CHANGES_CHANNEL}")
                    lost()  # anything written before the LISTEN took effect is looked at again
                    while not stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            namespace, _, hex_key = note.payload.rpartition(" ")
                            try:
                                changed(namespace, bytes.fromhex(hex_key))
                            except ValueError:
                                continue  # not one of ours
            except psycopg.Error:
                if not stop.is_set():
                    stop.wait(LISTEN_RETRY_SECS)

    # --- moving a platform in -------------------------------------------------------

    def import_state(
        self,
        records: Iterable[tuple[str, bytes, bytes]],
        queue_items: Iterable[tuple[int, str, bytes, bytes, int, float]],
        dead_letters: Iterable[DeadLetter],
    ) -> tuple[int, int, int]:
        """Store another backend's rows exactly as they are (values stay sealed; queue items
        keep their ids, deliveries and leases), in one transaction, into an empty
        database. Returns how many records, queue items and dead letters were stored."""
        counts = [0, 0, 0]
        with self._transaction("import the platform's state") as conn:
            for table in ("kettle_records", "kettle_queue_items", "kettle_dead_letters"):
                if conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None:  # noqa: S608 - fixed names
                    raise StorageError(f"storage: the PostgreSQL database at {self._where} is not empty "
                                       f"({table} has rows): a platform is only moved into an empty one")
            for namespace, key, value in records:
                conn.execute(_STATEMENTS.put, (namespace, key, value))
                counts[0] += 1
            for item_id, namespace, queue, value, deliveries, leased_until in queue_items:
                conn.execute(_SQL.IMPORT_ITEM, (item_id, namespace, queue, value, deliveries, leased_until))
                counts[1] += 1
            # Item ids are never reused: new items come after every imported one (and dead letter).
            conn.execute(_SQL.ADVANCE_ITEM_IDS)
            for letter in dead_letters:
                conn.execute(_SQL.IMPORT_DEAD_LETTER, (letter.item_id, letter.namespace, letter.queue, letter.value,
                                                       letter.deliveries, letter.reason, letter.moved_at))
                counts[2] += 1
            conn.execute(_SQL.ADVANCE_ITEM_IDS)
        return counts[0], counts[1], counts[2]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
        self._read_pool.close()


def _reason(exc: psycopg.Error) -> str:
    """The server's or the driver's sentence, on one line."""
    text = (exc.diag.message_primary if getattr(exc, "diag", None) and exc.diag.message_primary else str(exc))
    return " ".join(text.split()) or type(exc).__name__
