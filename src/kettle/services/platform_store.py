"""The storage service as the platform services see it: typed, async, retried where safe.

Management and the scheduler share the storage service's platform partition.
Both update task records, so every task update is a compare-and-put loop:
read, apply a pure change, write only if nobody wrote in between, else retry
on the fresh value. No update is ever lost and no read-modify-write races.

Storage that is down is :class:`StorageUnavailable` within the peer connect
timeout (a StorageError, so every caller's cleanup still runs, but reported as
UNAVAILABLE naming storage), never a long wait or a misleading error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from ..errors import InternalError, ServiceUnavailable, StorageError, StorageUnavailable
from ..model.records import FileRecord, FunctionRecord, TaskRecord
from ..rpc.channel import PeerChannels, peer_outage
from ..rpc.generated import kettle_storage_pb2 as pb
from ..rpc.generated import kettle_storage_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

STORAGE_TIMEOUT_SECS = 10.0
MAX_UPDATE_ATTEMPTS = 50
STARTUP_RETRY_SECS = 1.0

R = TypeVar("R")


class NoChange(Exception):
    """Raised by an update function to leave the record as it is (the update returns the record)."""


class PlatformStore:
    def __init__(self, peers: PeerChannels) -> None:
        # The channel is asked for on every call: it is re-made when our certificate rotates.
        self._peers = peers

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
        return None if response is None else response.value

    async def put(self, key: bytes, value: bytes) -> None:
        await self._call("Put", pb.PutRequest(key=key, value=value))

    async def delete(self, key: bytes) -> None:
        await self._call("Delete", pb.DeleteRequest(key=key))

    async def keys_with_prefix(self, prefix: bytes) -> list[bytes]:
        response = await self._call("GetKeysByPrefix", pb.GetKeysByPrefixRequest(prefix=prefix))
        return list(response.keys)

    async def compare_and_put(self, key: bytes, expected: bytes | None, value: bytes) -> tuple[bool, bytes | None]:
        response = await self._call(
            "CompareAndPut",
            pb.CompareAndPutRequest(key=key, expected=expected or b"", expect_absent=expected is None, value=value),
        )
        return response.applied, (response.current if response.found else None)

    async def watch(self, key: bytes, known: bytes | None, timeout_ms: int) -> bytes | None:
        """Wait until the record differs from ``known`` (or the timeout); return what is stored."""
        response = await self._call(
            "Watch",
            pb.WatchRequest(key=key, known=known or b"", known_absent=known is None, timeout_ms=timeout_ms),
            timeout=STORAGE_TIMEOUT_SECS + timeout_ms / 1000,
        )
        return response.value if response.found else None

    async def enqueue(self, queue: bytes, value: bytes) -> None:
        await self._call("Enqueue", pb.EnqueueRequest(queue=queue, value=value))

    async def dequeue(self, queue: bytes, lease_seconds: int) -> pb.DequeueResponse | None:
        response = await self._call("Dequeue", pb.DequeueRequest(queue=queue, lease_seconds=lease_seconds))
        return response if response.found else None

    async def ack(self, queue: bytes, item_id: int) -> None:
        await self._call("Ack", pb.AckRequest(queue=queue, item_id=item_id))

    # --- typed records --------------------------------------------------------------

    async def get_task(self, key: bytes) -> TaskRecord | None:
        return _decode(TaskRecord, await self.get(key))

    async def get_function(self, key: bytes) -> FunctionRecord | None:
        return _decode(FunctionRecord, await self.get(key))

    async def get_file(self, key: bytes) -> FileRecord | None:
        return _decode(FileRecord, await self.get(key))

    async def update_task(self, key: bytes, change: Callable[[TaskRecord], TaskRecord]) -> TaskRecord:
        """Apply the pure ``change`` to the stored task atomically; retry on concurrent writes.

        ``change`` may raise a KettleError to refuse (nothing is written) or
        :class:`NoChange` to keep the record. The task must exist.
        """
        for _ in range(MAX_UPDATE_ATTEMPTS):
            raw = await self.get(key)
            if raw is None:
                raise InternalError(f"task record {key.decode(errors='replace')} is missing")
            current = TaskRecord.from_bytes(raw)
            try:
                updated = change(current)
            except NoChange:
                return current
            applied, _ = await self.compare_and_put(key, raw, updated.to_bytes())
            if applied:
                return updated
        raise StorageError("task record is being updated too often; try again")


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


