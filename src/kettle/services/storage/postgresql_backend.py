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

Reads outside a batch use a connection of their own, as with SQLite, so they
never wait behind a commit.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import psycopg

from kettle.errors import StorageError
from kettle.services.storage.backend import DeadLetter, QueueItem, RecordWrite, prefix_end

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


class _SQL:
    SCHEMA_TABLE = "CREATE TABLE IF NOT EXISTS kettle_schema (version INTEGER NOT NULL)"
    LOCK_SCHEMA = "SELECT pg_advisory_xact_lock(%s)"
    SCHEMA_VERSION = "SELECT max(version) FROM kettle_schema"
    RECORD_VERSION = "INSERT INTO kettle_schema (version) VALUES (%s)"

    GET = "SELECT value FROM kettle_records WHERE namespace = %s AND key = %s"
    PUT = """
        INSERT INTO kettle_records (namespace, key, value) VALUES (%s, %s, %s)
        ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value
    """
    DELETE = "DELETE FROM kettle_records WHERE namespace = %s AND key = %s"
    INSERT_IF_ABSENT = """
        INSERT INTO kettle_records (namespace, key, value) VALUES (%s, %s, %s)
        ON CONFLICT (namespace, key) DO NOTHING
    """
    REPLACE_IF = "UPDATE kettle_records SET value = %s WHERE namespace = %s AND key = %s AND value = %s"
    KEYS_FROM = "SELECT key FROM kettle_records WHERE namespace = %s AND key >= %s ORDER BY key"
    KEYS_BETWEEN = "SELECT key FROM kettle_records WHERE namespace = %s AND key >= %s AND key < %s ORDER BY key"

    ENQUEUE = "INSERT INTO kettle_queue_items (namespace, queue, value) VALUES (%s, %s, %s)"
    OLDEST_AVAILABLE = """
        SELECT item_id, value, deliveries FROM kettle_queue_items
        WHERE namespace = %s AND queue = %s AND leased_until <= %s
        ORDER BY item_id LIMIT 1
        FOR UPDATE SKIP LOCKED
    """
    LEASE = "UPDATE kettle_queue_items SET leased_until = %s, deliveries = deliveries + 1 WHERE item_id = %s"
    ACK = "DELETE FROM kettle_queue_items WHERE namespace = %s AND queue = %s AND item_id = %s"
    TO_DEAD_LETTERS = """
        INSERT INTO kettle_dead_letters (item_id, namespace, queue, value, deliveries, reason, moved_at)
        SELECT item_id, namespace, queue, value, deliveries, %s, %s FROM kettle_queue_items
        WHERE namespace = %s AND queue = %s AND item_id = %s
    """
    DEAD_LETTERS = """
        SELECT item_id, namespace, queue, value, deliveries, reason, moved_at
        FROM kettle_dead_letters ORDER BY moved_at, item_id
    """
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


class PostgreSQLBackend:
    """A :class:`~kettle.services.storage.backend.StorageBackend` in a PostgreSQL database.

    Two connections, each guarded by a lock so the object can be shared between
    threads: one for writes (and for reads inside a batch), one for the other reads.
    ``clock`` gives wall-clock seconds for queue leases.
    """

    def __init__(self, dsn: str, *, clock: Callable[[], float] = time.time, connect_timeout_secs: int = 10) -> None:
        self._dsn = dsn
        self._where = _shown(dsn)
        self._clock = clock
        self._connect_timeout = connect_timeout_secs
        self._lock = threading.RLock()
        self._read_lock = threading.Lock()
        self._batch_owner: int | None = None
        self._conn: psycopg.Connection | None = None
        self._read_conn: psycopg.Connection | None = None
        self._closed = False
        with self._lock:
            try:
                self._migrate(self._writer())
            except BaseException:
                self.close()
                raise

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

    def _reader(self) -> psycopg.Connection:
        if self._read_conn is None or self._read_conn.closed:
            self._read_conn = self._connect()
            self._read_conn.autocommit = True  # each read sees every committed write
        return self._read_conn

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
    def batch(self) -> Iterator[None]:
        with self._lock:
            if self._batch_owner is not None:
                raise RuntimeError("batches do not nest")
            self._open("begin a batch of writes")
            conn = self._writer()
            with self._errors("commit a batch of writes", conn), conn.transaction():
                self._batch_owner = threading.get_ident()
                try:
                    yield
                finally:
                    self._batch_owner = None

    @contextmanager
    def _reading(self, action: str) -> Iterator[psycopg.Connection]:
        self._open(action)
        if self._batch_owner == threading.get_ident():
            with self._lock:
                conn = self._writer()
                with self._errors(action, conn):
                    yield conn
            return
        with self._read_lock:
            conn = self._reader()
            with self._errors(action, conn):
                yield conn

    def _read(self, action: str, query: Callable[[psycopg.Connection], _T]) -> _T:
        """Run a read. One that finds its connection lost (a database restart) is tried once
        more on a new one: a read changes nothing, so trying again cannot be wrong. A write
        is never tried again here: whether its commit happened is not known."""
        for attempt in (1, 2):
            try:
                with self._reading(action) as conn:
                    return query(conn)
            except StorageError:
                in_batch = self._batch_owner == threading.get_ident()
                lost = self._read_conn is None or self._read_conn.closed
                if attempt == 2 or in_batch or not lost:
                    raise
        raise AssertionError("unreachable")

    # --- records ------------------------------------------------------------------

    def get(self, namespace: str, key: bytes) -> bytes | None:
        row = self._read("read a record", lambda conn: conn.execute(_SQL.GET, (namespace, key)).fetchone())
        return None if row is None else bytes(row[0])

    def put(self, namespace: str, key: bytes, value: bytes) -> None:
        with self._transaction("write a record") as conn:
            conn.execute(_SQL.PUT, (namespace, key, value))
            _notify(conn, namespace, key)

    def delete(self, namespace: str, key: bytes) -> None:
        with self._transaction("delete a record") as conn:
            conn.execute(_SQL.DELETE, (namespace, key))
            _notify(conn, namespace, key)

    def keys_with_prefix(self, namespace: str, prefix: bytes) -> list[bytes]:
        end = prefix_end(prefix)
        if end is None:
            rows = self._read("list keys", lambda conn: conn.execute(_SQL.KEYS_FROM, (namespace, prefix)).fetchall())
        else:
            rows = self._read(
                "list keys", lambda conn: conn.execute(_SQL.KEYS_BETWEEN, (namespace, prefix, end)).fetchall())
        return [bytes(key) for (key,) in rows]

    def compare_and_put(
        self, namespace: str, key: bytes, expected: bytes | None, value: bytes,
        also: Sequence[RecordWrite] = (),
    ) -> tuple[bool, bytes | None]:
        keys = [key, *(other for other, _ in also)]
        if len(set(keys)) != len(keys):
            raise ValueError("a compare-and-put writes each key at most once")
        with self._transaction("compare-and-put a record") as conn:
            if expected is None:
                applied = conn.execute(_SQL.INSERT_IF_ABSENT, (namespace, key, value)).rowcount == 1
            else:
                applied = conn.execute(_SQL.REPLACE_IF, (value, namespace, key, expected)).rowcount == 1
            if not applied:
                row = conn.execute(_SQL.GET, (namespace, key)).fetchone()
                return False, None if row is None else bytes(row[0])
            for other, other_value in also:
                if other_value is None:
                    conn.execute(_SQL.DELETE, (namespace, other))
                else:
                    conn.execute(_SQL.PUT, (namespace, other, other_value))
                _notify(conn, namespace, other)
            _notify(conn, namespace, key)
            return True, value

    # --- queues -------------------------------------------------------------------

    def enqueue(self, namespace: str, queue: bytes, value: bytes) -> None:
        with self._transaction("enqueue an item") as conn:
            conn.execute(_SQL.ENQUEUE, (namespace, queue, value))

    def dequeue(self, namespace: str, queue: bytes, lease_seconds: float) -> QueueItem | None:
        if not 0 < lease_seconds < math.inf:
            raise ValueError(f"lease_seconds must be positive and finite, got {lease_seconds}")
        now = self._clock()
        with self._transaction("dequeue an item") as conn:
            row = conn.execute(_SQL.OLDEST_AVAILABLE, (namespace, queue, now)).fetchone()
            if row is None:
                return None
            item_id, value, deliveries = row
            conn.execute(_SQL.LEASE, (now + lease_seconds, item_id))
        return QueueItem(item_id=item_id, value=bytes(value), deliveries=deliveries + 1)

    def ack(self, namespace: str, queue: bytes, item_id: int) -> bool:
        with self._transaction("ack an item") as conn:
            return conn.execute(_SQL.ACK, (namespace, queue, item_id)).rowcount == 1

    def dead_letter(self, namespace: str, queue: bytes, item_id: int, reason: str) -> bool:
        with self._transaction("move an item to the dead letters") as conn:
            moved = conn.execute(_SQL.TO_DEAD_LETTERS, (reason, self._clock(), namespace, queue, item_id)).rowcount
            conn.execute(_SQL.ACK, (namespace, queue, item_id))
        return moved == 1

    def dead_letters(self) -> list[DeadLetter]:
        rows = self._read("list the dead letters", lambda conn: conn.execute(_SQL.DEAD_LETTERS).fetchall())
        return [DeadLetter(item_id, namespace, bytes(queue), bytes(value), deliveries, reason, moved_at)
                for item_id, namespace, queue, value, deliveries, reason, moved_at in rows]

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
                conn.execute(_SQL.PUT, (namespace, key, value))
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
        with self._lock, self._read_lock:
            self._closed = True
            for conn in (self._conn, self._read_conn):
                if conn is not None:
                    conn.close()


def _notify(conn: psycopg.Connection, namespace: str, key: bytes) -> None:
    conn.execute(_SQL.NOTIFY, (CHANGES_CHANNEL, f"{namespace} {key.hex()}"))


def _reason(exc: psycopg.Error) -> str:
    """The server's or the driver's sentence, on one line."""
    text = (exc.diag.message_primary if getattr(exc, "diag", None) and exc.diag.message_primary else str(exc))
    return " ".join(text.split()) or type(exc).__name__
