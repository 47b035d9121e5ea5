"""What the SQL storage backends share: every record and queue operation, written once.

SQLite and PostgreSQL store the same tables and run the same statements; they differ
in their dialect (parameter markers, table names, row locks), in how they open and
guard their connections, and in what a record write also does (PostgreSQL tells the
other storage instances about it). So the operations live here, in
:class:`SQLBackend`, parametrised by

- a table of statements (:class:`Statements`, made for a dialect by
  :meth:`Statements.for_dialect`), and
- the primitives each backend provides: :meth:`SQLBackend._transaction` (one write,
  all or nothing: a transaction of its own, or a savepoint of the running batch's),
  :meth:`SQLBackend._reading` (a connection to read from) and
  :meth:`SQLBackend._batch_transaction` (the one transaction of a batch).
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

from kettle.services.storage.backend import (
    DeadLetter,
    QueuedItem,
    QueueItem,
    RecordChange,
    RecordWrite,
    prefix_end,
)

_T = TypeVar("_T")


class _NotApplied(Exception):
    """A compare-and-put's record no longer holds what was expected: undo the transaction."""


class Cursor(Protocol):
    """What the operations use of a DB-API cursor (sqlite3's and psycopg's alike)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What the operations use of a connection: ``execute`` with positional parameters."""

    def execute(self, query: str, params: Any = ..., /) -> Cursor: ...


@dataclass(frozen=True)
class Statements:
    """The statements of the record and queue operations, in one dialect.

    The parameters of each are in the same order in every dialect (the operations
    pass them positionally).
    """

    get: str
    """(namespace, key) -> value"""
    put: str
    """(namespace, key, value): create or overwrite."""
    delete: str
    """(namespace, key)"""
    insert_if_absent: str
    """(namespace, key, value): one row changed if the key was absent."""
    replace_if: str
    """(new value, namespace, key, expected value): one row changed if the value was the expected one."""
    keys_from: str
    """(namespace, first key) -> key, in order"""
    keys_between: str
    """(namespace, first key, end key excluded) -> key, in order"""
    enqueue: str
    """(namespace, queue, value)"""
    oldest_available: str
    """(namespace, queue, now) -> item_id, value, deliveries"""
    lease: str
    """(leased until, item_id): hand it out once more."""
    ack: str
    """(namespace, queue, item_id)"""
    to_dead_letters: str
    """(reason, now, namespace, queue, item_id): copy the item to the dead letters."""
    dead_letters: str
    """() -> the fields of :class:`DeadLetter`, in order, oldest first"""

    @classmethod
    def for_dialect(
        cls, *, records: str, queue_items: str, dead_letters: str, parameter: str, lock_oldest: str = "",
    ) -> Statements:
        """The statements for the given table names and parameter marker (``?`` or ``%s``);
        ``lock_oldest`` is appended to the query of the oldest available item (a row lock
        that other consumers skip, where the database has one)."""

        def sql(text: str) -> str:
            return text.format(records=records, items=queue_items, letters=dead_letters).replace("?", parameter)

        return cls(
            get=sql("SELECT value FROM {records} WHERE namespace = ? AND key = ?"),
            put=sql("""
                INSERT INTO {records} (namespace, key, value) VALUES (?, ?, ?)
                ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value
            """),
            delete=sql("DELETE FROM {records} WHERE namespace = ? AND key = ?"),
            insert_if_absent=sql("""
                INSERT INTO {records} (namespace, key, value) VALUES (?, ?, ?)
                ON CONFLICT (namespace, key) DO NOTHING
            """),
            # Keys and values are compared bytewise (BLOB / bytea), never as text.
            replace_if=sql("UPDATE {records} SET value = ? WHERE namespace = ? AND key = ? AND value = ?"),
            # A range, not LIKE: an exact bytewise prefix match, where LIKE would treat % and _ as wildcards.
            keys_from=sql("SELECT key FROM {records} WHERE namespace = ? AND key >= ? ORDER BY key"),
            keys_between=sql("SELECT key FROM {records} WHERE namespace = ? AND key >= ? AND key < ? ORDER BY key"),
            enqueue=sql("INSERT INTO {items} (namespace, queue, value) VALUES (?, ?, ?)"),
            oldest_available=sql("""
                SELECT item_id, value, deliveries FROM {items}
                WHERE namespace = ? AND queue = ? AND leased_until <= ?
                ORDER BY item_id LIMIT 1
            """) + lock_oldest,
            lease=sql("UPDATE {items} SET leased_until = ?, deliveries = deliveries + 1 WHERE item_id = ?"),
            ack=sql("DELETE FROM {items} WHERE namespace = ? AND queue = ? AND item_id = ?"),
            to_dead_letters=sql("""
                INSERT INTO {letters} (item_id, namespace, queue, value, deliveries, reason, moved_at)
                SELECT item_id, namespace, queue, value, deliveries, ?, ? FROM {items}
                WHERE namespace = ? AND queue = ? AND item_id = ?
            """),
            dead_letters=sql("""
                SELECT item_id, namespace, queue, value, deliveries, reason, moved_at
                FROM {letters} ORDER BY moved_at, item_id
            """),
        )


def dead_letter_from_row(row: Sequence[Any]) -> DeadLetter:
    """A row of :attr:`Statements.dead_letters` as a :class:`DeadLetter`."""
    item_id, namespace, queue, value, deliveries, reason, moved_at = row
    return DeadLetter(item_id, namespace, bytes(queue), bytes(value), deliveries, reason, moved_at)


class SQLBackend(ABC):
    """A :class:`~kettle.services.storage.backend.StorageBackend` on an SQL database, but for
    its connections (the subclass's).

    Writes go through one connection guarded by ``_lock`` (re-entrant: a batch holds
    it throughout and its writes take it again); reads outside a batch through
    connections of their own (the subclass's :meth:`_reading`), so they never wait
    behind a commit.
    ``clock`` gives wall-clock seconds for queue leases (wall clock, because leases
    are stored and must mean the same after a restart).
    """

    _statements: ClassVar[Statements]
    concurrent_reads: ClassVar[int] = 0
    """See :attr:`~kettle.services.storage.backend.StorageBackend.concurrent_reads`."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._read_lock = threading.Lock()
        self._batch_owner: int | None = None
        """The thread running a batch, whose reads must see the batch's uncommitted writes."""

    def _in_batch(self) -> bool:
        """Whether this thread is running a batch."""
        return self._batch_owner == threading.get_ident()

    # --- what a subclass provides ---------------------------------------------------

    @abstractmethod
    def _transaction(self, action: str) -> AbstractContextManager[Connection]:
        """The write connection for one write, all of it or none: alone a transaction of
        its own, committed on leaving; inside a batch a savepoint of the batch's
        transaction. A failure raises StorageError saying it could not ``action``."""

    @abstractmethod
    def _reading(self, action: str) -> AbstractContextManager[Connection]:
        """A connection to read from: inside a batch the write connection (the batch's
        writes are not committed yet), else the reading one."""

    @abstractmethod
    def _batch_transaction(self) -> AbstractContextManager[None]:
        """The one transaction of a batch, on the write connection (``_lock`` is held),
        committed on leaving; a failure raises StorageError."""

    def _read(self, action: str, query: Callable[[Connection], _T]) -> _T:
        """Run ``query`` on a connection from :meth:`_reading`."""
        with self._reading(action) as conn:
            return query(conn)

    def _record_changed(self, conn: Connection, namespace: str, key: bytes) -> None:
        """What a write of the record under ``key`` also does, in its transaction: nothing,
        unless the database is shared with other storage instances that need to know."""

    # --- records ------------------------------------------------------------------

    def get(self, namespace: str, key: bytes) -> bytes | None:
        row = self._read("read a record", lambda conn: conn.execute(self._statements.get, (namespace, key)).fetchone())
        return None if row is None else bytes(row[0])

    def _write(self, conn: Connection, namespace: str, key: bytes, value: bytes | None) -> None:
        """Put ``value`` under ``key``, or delete the record for None."""
        if value is None:
            conn.execute(self._statements.delete, (namespace, key))
        else:
            conn.execute(self._statements.put, (namespace, key, value))
        self._record_changed(conn, namespace, key)

    def put(self, namespace: str, key: bytes, value: bytes) -> None:
        with self._transaction("write a record") as conn:
            self._write(conn, namespace, key, value)

    def delete(self, namespace: str, key: bytes) -> None:
        with self._transaction("delete a record") as conn:
            self._write(conn, namespace, key, None)

    def keys_with_prefix(self, namespace: str, prefix: bytes) -> list[bytes]:
        end = prefix_end(prefix)
        if end is None:
            statement, params = self._statements.keys_from, (namespace, prefix)
        else:
            statement, params = self._statements.keys_between, (namespace, prefix, end)
        rows = self._read("list keys", lambda conn: conn.execute(statement, params).fetchall())
        return [bytes(key) for (key,) in rows]

    def compare_and_put(
        self, namespace: str, key: bytes, expected: bytes | None, value: bytes,
        also: Sequence[RecordWrite] = (), *, compared: Sequence[RecordChange] = (),
        enqueue: QueuedItem | None = None,
    ) -> tuple[bool, bytes | None]:
        changes: list[RecordChange] = [(key, expected, value), *compared]
        keys = [changed for changed, _, _ in changes] + [other for other, _ in also]
        if len(set(keys)) != len(keys):
            raise ValueError("a compare-and-put writes each key at most once")
        try:
            with self._transaction("compare-and-put a record") as conn:
                for changed, changed_expected, changed_value in changes:
                    # One conditional statement each, not a read then a write: where the
                    # database lets two transactions run at once (PostgreSQL), two writers
                    # racing on a record cannot both see the expected value and both win.
                    if changed_expected is None:
                        statement, parameters = self._statements.insert_if_absent, (namespace, changed, changed_value)
                    else:
                        statement, parameters = self._statements.replace_if, (changed_value, namespace, changed,
                                                                              changed_expected)
                    if conn.execute(statement, parameters).rowcount != 1:
                        raise _NotApplied  # undoes whatever this transaction wrote already
                    self._record_changed(conn, namespace, changed)
                for other, other_value in also:
                    self._write(conn, namespace, other, other_value)
                if enqueue is not None:
                    conn.execute(self._statements.enqueue, (namespace, *enqueue))
                return True, value
        except _NotApplied:
            return False, self.get(namespace, key)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Make the writes of the body (on this thread) one transaction, committed once at
        the end; each write stays all-or-nothing on its own. If the commit fails, none
        of them is stored, and this raises StorageError."""
        with self._lock:
            if self._batch_owner is not None:
                raise RuntimeError("batches do not nest")
            with self._batch_transaction():
                self._batch_owner = threading.get_ident()
                try:
                    yield
                finally:
                    self._batch_owner = None

    # --- queues -------------------------------------------------------------------

    def enqueue(self, namespace: str, queue: bytes, value: bytes) -> None:
        with self._transaction("enqueue an item") as conn:
            conn.execute(self._statements.enqueue, (namespace, queue, value))

    def dequeue(self, namespace: str, queue: bytes, lease_seconds: float) -> QueueItem | None:
        if not 0 < lease_seconds < math.inf:
            raise ValueError(f"lease_seconds must be positive and finite, got {lease_seconds}")
        now = self._clock()
        with self._transaction("dequeue an item") as conn:
            row = conn.execute(self._statements.oldest_available, (namespace, queue, now)).fetchone()
            if row is None:
                return None
            item_id, value, deliveries = row
            conn.execute(self._statements.lease, (now + lease_seconds, item_id))
        return QueueItem(item_id=item_id, value=bytes(value), deliveries=deliveries + 1)

    def ack(self, namespace: str, queue: bytes, item_id: int) -> bool:
        with self._transaction("ack an item") as conn:
            return conn.execute(self._statements.ack, (namespace, queue, item_id)).rowcount == 1

    def dead_letter(self, namespace: str, queue: bytes, item_id: int, reason: str) -> bool:
        with self._transaction("move an item to the dead letters") as conn:
            moved = conn.execute(
                self._statements.to_dead_letters, (reason, self._clock(), namespace, queue, item_id)
            ).rowcount
            conn.execute(self._statements.ack, (namespace, queue, item_id))
        return moved == 1

    def dead_letters(self) -> list[DeadLetter]:
        rows = self._read("list the dead letters", lambda conn: conn.execute(self._statements.dead_letters).fetchall())
        return [dead_letter_from_row(row) for row in rows]
