"""The storage service as the platform services see it: typed, async, retried where safe.

Management and the scheduler share the storage service's platform partition.
Both update task records, so every task update is a compare-and-put loop:
read, apply a pure change, write only if nobody wrote in between, else retry
on the fresh value. No update is ever lost and no read-modify-write races.

Storage that is down is :class:`StorageUnavailable` within the peer connect
timeout (a StorageError, so every caller's cleanup still runs, but reported as
UNAVAILABLE naming storage), never a long wait or a misleading error.

Two things are remembered to save storage round trips, neither of which can
make an answer wrong:

- **The last value seen of a record** this process read or wrote
  (:class:`RecentRecords`), used only as the *expected* value of an update's
  first compare-and-put. If someone wrote since, the compare-and-put fails and
  returns what is stored, and the update goes on from that. A change that
  refuses or keeps a remembered value is re-checked on a fresh read, so no
  refusal ever rests on a stale value. Reads never answer from it.
- **Function payloads by their SHA-256**: a function record names its payload's
  digest, and bytes with that digest are the same bytes whoever stored them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc

from ..errors import (
    InternalError,
    KettleError,
    ServiceUnavailable,
    StorageError,
    StorageUnavailable,
)
from ..model.records import (
    FileRecord,
    FunctionRecord,
    TaskRecord,
    function_key,
    function_payload_key,
)
from ..rpc.channel import PeerChannels, peer_outage
from ..rpc.generated import kettle_storage_pb2 as pb
from ..rpc.generated import kettle_storage_pb2_grpc as pb_grpc
from .storage.backend import RecordChange, RecordWrite

StagedItem = tuple[bytes, bytes, bytes]
"""(queue, item, signal key): an item a compare-and-put appends to a queue."""

log = logging.getLogger(__name__)

STORAGE_TIMEOUT_SECS = 10.0
MAX_UPDATE_ATTEMPTS = 50
MAX_READ_ATTEMPTS = 5
"""Reads of a function and its payload record before a mismatch counts as corruption."""
STARTUP_RETRY_SECS = 1.0

RECENT_RECORD_BYTES = 16 << 20
PAYLOAD_CACHE_BYTES = 64 << 20

R = TypeVar("R")


class NoChange(Exception):
    """Raised by an update function to leave the record as it is (the update returns the record)."""


class RecentRecords:
    """The last value this process saw of recent records, up to ``capacity`` bytes in all:
    a guess of what is stored, for the first compare-and-put of an update (never an
    answer to a read)."""

    def __init__(self, capacity: int = RECENT_RECORD_BYTES) -> None:
        self._capacity = capacity
        self._size = 0
        self._values: OrderedDict[bytes, bytes | None] = OrderedDict()

    def guess(self, key: bytes) -> tuple[bool, bytes | None]:
        """(known, value): whether there is a guess, and the value (None: absent)."""
        if key not in self._values:
            return False, None
        self._values.move_to_end(key)
        return True, self._values[key]

    def saw(self, key: bytes, value: bytes | None) -> None:
        self.forget(key)
        cost = len(key) + len(value or b"")
        if cost > self._capacity // 16:
            return  # a record this large is not worth a place
        self._values[key] = value
        self._size += cost
        while self._size > self._capacity:
            old_key, old_value = self._values.popitem(last=False)
            self._size -= len(old_key) + len(old_value or b"")

    def forget(self, key: bytes) -> None:
        if key in self._values:
            self._size -= len(key) + len(self._values.pop(key) or b"")


class PayloadCache:
    """Function payloads by SHA-256 (hex), least recently used out past ``capacity`` bytes."""

    def __init__(self, capacity: int = PAYLOAD_CACHE_BYTES) -> None:
        self._capacity = capacity
        self._size = 0
        self._payloads: OrderedDict[str, bytes] = OrderedDict()

    def get(self, sha256: str) -> bytes | None:
        payload = self._payloads.get(sha256)
        if payload is not None:
            self._payloads.move_to_end(sha256)
        return payload

    def add(self, payload: bytes) -> None:
        if len(payload) > self._capacity:
            return
        sha256 = hashlib.sha256(payload).hexdigest()
        if sha256 in self._payloads:
            return
        self._payloads[sha256] = payload
        self._size += len(payload)
        while self._size > self._capacity:
            _, dropped = self._payloads.popitem(last=False)
            self._size -= len(dropped)


class PlatformStore:
    def __init__(self, peers: PeerChannels) -> None:
        # The channel is asked for on every call: it is re-made when our certificate rotates.
        self._peers = peers
        self._recent = RecentRecords()
        self._payloads = PayloadCache()

    async def _call(self, method: str, request: Any, timeout: float = STORAGE_TIMEOUT_SECS) -> Any:
        try:
            stub = pb_grpc.KettleStorageStub(await self._peers.ready("storage"))
            return await getattr(stub, method)(request, timeout=timeout)
        except ServiceUnavailable:
            raise StorageUnavailable() from None
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            if peer_outage("storage", exc) is not None:
                log.warning("storage %s failed: %s %s", method, exc.code().name, exc.details())
                raise StorageUnavailable() from None
            raise StorageError(f"storage {method} failed: {exc.code().name} {exc.details()}") from None

    # --- raw records and queues -------------------------------------------------

    async def get(self, key: bytes) -> bytes | None:
        response = await self._call("Get", pb.GetRequest(key=key))
        value = None if response is None else response.value
        self._recent.saw(key, value)
        return value

    async def put(self, key: bytes, value: bytes) -> None:
        self._recent.forget(key)
        await self._call("Put", pb.PutRequest(key=key, value=value))
        self._recent.saw(key, value)

    async def delete(self, key: bytes) -> None:
        self._recent.forget(key)
        await self._call("Delete", pb.DeleteRequest(key=key))
        self._recent.saw(key, None)

    async def keys_with_prefix(self, prefix: bytes) -> list[bytes]:
        response = await self._call("GetKeysByPrefix", pb.GetKeysByPrefixRequest(prefix=prefix))
        return list(response.keys)

    async def compare_and_put(
        self, key: bytes, expected: bytes | None, value: bytes, also: Sequence[RecordWrite] = (),
        *, compared: Sequence[RecordChange] = (), enqueue: StagedItem | None = None,
    ) -> tuple[bool, bytes | None]:
        """Write ``value`` if ``key`` still holds ``expected``; ``also`` are written in the
        same transaction (a value of None deletes), so a reader sees all or none.
        ``compared`` are further (key, expected, value) that must all hold too, or
        nothing is written; ``enqueue`` is a (queue, item, signal key) appended in the
        same transaction."""
        writes = [pb.RecordWrite(key=k, value=v or b"", delete=v is None) for k, v in also]
        changes = [pb.RecordChange(key=k, expected=e or b"", expect_absent=e is None, value=v) for k, e, v in compared]
        for written in (key, *(k for k, _ in also), *(k for k, _, _ in compared)):
            self._recent.forget(written)  # an answer that never comes leaves no guess behind
        request = pb.CompareAndPutRequest(
            key=key, expected=expected or b"", expect_absent=expected is None, value=value, also=writes, compared=changes
        )
        if enqueue is not None:
            queue, item, signal_key = enqueue
            request.enqueue.CopyFrom(pb.EnqueueRequest(queue=queue, value=item, signal_key=signal_key))
        response = await self._call("CompareAndPut", request)
        current = response.current if response.found else None
        self._recent.saw(key, current)
        if response.applied:
            for other, other_value in also:
                self._recent.saw(other, other_value)
            for other, _, other_value in compared:
                self._recent.saw(other, other_value)
        return response.applied, current

    async def update(
        self, key: bytes, change: Callable[[bytes | None], bytes | None],
        also: Callable[[bytes], Sequence[RecordWrite]] = lambda _: (),
    ) -> tuple[bytes | None, bytes | None]:
        """Apply ``change(stored value or None)`` atomically, retrying on concurrent writes.

        ``change`` returns the new value, or None to write nothing; it may raise to
        refuse (nothing is written). ``also(new value)`` are written in the same
        transaction. Returns (the value it applied to, the value stored now). The first
        try may start from the value this process saw last; a refusal or a no-write
        decided on that guess is decided again on a fresh read.
        """
        known, raw = self._recent.guess(key)
        fresh = not known
        if not known:
            raw = await self.get(key)
        for _ in range(MAX_UPDATE_ATTEMPTS):
            try:
                updated = change(raw)
            except KettleError:
                if fresh:
                    raise
                updated = None
            if updated is None:
                if fresh:
                    return raw, raw
                raw, fresh = await self.get(key), True
                continue
            applied, current = await self.compare_and_put(key, raw, updated, also(updated))
            if applied:
                return raw, updated
            raw, fresh = current, True
        raise StorageError(f"record {key.decode(errors='replace')} is being updated too often; try again")

    async def watch(self, key: bytes, known: bytes | None, timeout_ms: int) -> bytes | None:
        """Wait until the record differs from ``known`` (or the timeout); return what is stored."""
        response = await self._call(
            "Watch",
            pb.WatchRequest(key=key, known=known or b"", known_absent=known is None, timeout_ms=timeout_ms),
            timeout=STORAGE_TIMEOUT_SECS + timeout_ms / 1000,
        )
        return response.value if response.found else None

    async def enqueue(self, queue: bytes, value: bytes, signal_key: bytes = b"") -> None:
        """Append ``value`` to ``queue``; with ``signal_key``, also rewrite that record (in
        the same step) to wake whoever watches it."""
        if signal_key:
            self._recent.forget(signal_key)
        await self._call("Enqueue", pb.EnqueueRequest(queue=queue, value=value, signal_key=signal_key))

    async def dequeue(self, queue: bytes, lease_seconds: int) -> pb.DequeueResponse | None:
        response = await self._call("Dequeue", pb.DequeueRequest(queue=queue, lease_seconds=lease_seconds))
        return response if response.found else None

    async def ack(self, queue: bytes, item_id: int) -> None:
        await self._call("Ack", pb.AckRequest(queue=queue, item_id=item_id))

    # --- typed records --------------------------------------------------------------

    async def get_task(self, key: bytes) -> TaskRecord | None:
        return _decode(TaskRecord, await self.get(key))

    async def get_function(self, bare: str) -> FunctionRecord | None:
        """The function with its payload (two records, see :class:`FunctionRecord`)."""
        return (await self._read_function(bare))[1]

    async def _read_function(self, bare: str) -> tuple[bytes | None, FunctionRecord | None]:
        """(the stored function record, the function). Reads again when an update
        landed between reading the record and reading its payload."""
        problem = ""
        for _ in range(MAX_READ_ATTEMPTS):
            raw = await self.get(function_key(bare))
            if raw is None:
                return None, None
            try:
                digest = FunctionRecord.stored_payload_sha256(raw)
            except ValueError as exc:
                log.error("corrupt FunctionRecord record: %s", exc)
                raise InternalError("service internal error") from None
            payload = None if digest is None else self._payloads.get(digest)
            fetched = digest is not None and payload is None
            if fetched:
                payload = await self.get(function_payload_key(bare))
            try:
                record = FunctionRecord.from_bytes(raw, payload)
                if fetched:
                    self._payloads.add(record.payload)  # from_bytes checked it against the digest
                return raw, record
            except ValueError as exc:
                problem = str(exc)
                log.info("function %s changed while it was read (%s); reading it again", bare, problem)
        # Not a race any more: the two records disagree for good.
        log.error("corrupt function %s: %s", bare, problem)
        raise InternalError("service internal error")

    async def create_function(self, record: FunctionRecord) -> bool:
        """Store a new function and its payload in one step; False if the id is taken."""
        also = [] if record.payload_record() is None else [_payload_write(record)]
        applied, _ = await self.compare_and_put(function_key(record.uuid), None, record.to_bytes(), also)
        return applied

    async def update_function(
        self, bare: str, change: Callable[[FunctionRecord | None], FunctionRecord | None]
    ) -> tuple[FunctionRecord | None, FunctionRecord | None]:
        """Apply ``change(current or None)`` atomically, retrying on concurrent writes; it
        returns the new function, or None to write nothing. Returns (before, after).

        The payload is written (in the same step) only when it changed, or when the
        stored record still held it inline: that record is rewritten in today's format.
        """
        for _ in range(MAX_UPDATE_ATTEMPTS):
            raw, current = await self._read_function(bare)
            updated = change(current)
            if updated is None or updated == current:
                return current, current
            inline = raw is not None and FunctionRecord.stored_payload_sha256(raw) is None
            moved = current is None or inline or current.payload != updated.payload
            also = [_payload_write(updated)] if moved else []
            applied, _ = await self.compare_and_put(function_key(bare), raw, updated.to_bytes(), also)
            if applied:
                return current, updated
        raise StorageError("function record is being updated too often; try again")

    async def delete_function(self, bare: str) -> None:
        # The function first: a payload without its function is never read.
        await self.delete(function_key(bare))
        await self.delete(function_payload_key(bare))

    async def get_file(self, key: bytes) -> FileRecord | None:
        return _decode(FileRecord, await self.get(key))

    async def update_task(
        self,
        key: bytes,
        change: Callable[[TaskRecord], TaskRecord],
        also: Callable[[TaskRecord], Sequence[RecordWrite]] = lambda _: (),
    ) -> TaskRecord:
        """Apply the pure ``change`` to the stored task atomically; retry on concurrent writes.

        ``change`` may raise a KettleError to refuse (nothing is written) or
        :class:`NoChange` to keep the record. The task must exist. ``also`` names
        the records that change with the new task record (e.g. a finished task's
        output files): they are written in the same storage transaction.
        """
        return (await self.change_task(key, change, also))[0]

    async def change_task(
        self,
        key: bytes,
        change: Callable[[TaskRecord], TaskRecord],
        also: Callable[[TaskRecord], Sequence[RecordWrite]] = lambda _: (),
    ) -> tuple[TaskRecord, bool]:
        """As :meth:`update_task`; also whether this call wrote the task (and ``also``)."""
        outcome: dict[bytes | None, TaskRecord] = {}

        def change_raw(raw: bytes | None) -> bytes | None:
            if raw is None:
                raise InternalError(f"task record {key.decode(errors='replace')} is missing")
            current = TaskRecord.from_bytes(raw)
            try:
                updated = change(current)
            except NoChange:
                outcome[raw] = current
                return None
            data = updated.to_bytes()
            outcome[data] = updated
            return data

        before, stored = await self.update(key, change_raw, lambda data: also(outcome[data]))
        assert stored is not None  # change_raw refuses an absent task
        return outcome[stored], stored != before


def _payload_write(function: FunctionRecord) -> RecordWrite:
    return function_payload_key(function.uuid), function.payload_record()


async def when_storage_answers(operation: Callable[[], Awaitable[R]], what: str) -> R:
    """Run a service's start-up step against storage, retrying while storage is unavailable:
    it may still be starting, or restarting at the same time (the launcher's ready timeout
    bounds the wait)."""
    while True:
        try:
            return await operation()
        except StorageUnavailable:
            log.warning("cannot %s yet: storage is unavailable; retrying", what)
            await asyncio.sleep(STARTUP_RETRY_SECS)


def _decode(cls: type[R], raw: bytes | None) -> R | None:
    if raw is None:
        return None
    try:
        return cls.from_bytes(raw)  # type: ignore[attr-defined, no-any-return]
    except ValueError as exc:
        log.error("corrupt %s record: %s", cls.__name__, exc)
        raise InternalError("service internal error") from None


