"""The storage service: the gRPC face of the sealed key-value store and its queues.

Keys are partitioned by the calling service (from its verified attestation, not
from anything it says): the authentication service's user records live apart
from the platform records that management and the scheduler share.

Writes go through :class:`GroupCommit`: every write that arrives while a commit
is in progress waits for the next one, and they are then made durable together
with one commit (one fsync) on the writer thread. Each caller is answered only
after the commit that holds its write, so nothing is acknowledged before it is on
disk. Reads of a local SQLite file run on the event loop, on the backend's reading
connection; reads of a PostgreSQL database, each a round trip to another host, run on
threads of their own (``concurrent_reads`` at once, one pooled connection each).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import stat
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2

from ...config import STORAGE_DSN_ENV, Config
from ...errors import (
    ConfigError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SealingError,
)
from ...rpc.generated import kettle_storage_pb2 as pb
from ...rpc.generated import kettle_storage_pb2_grpc as pb_grpc
from ...rpc.interceptors import current_peer
from ...rpc.status import rpc_method
from ..runtime import ServiceRuntime
from .backend import QueuedItem, RecordChange, RecordWrite, StorageBackend
from .sealing import SealedStore, Sealer
from .sqlite_backend import SQLiteBackend

log = logging.getLogger(__name__)

T = TypeVar("T")

NAMESPACES = {"authentication": "authentication", "management": "platform", "scheduler": "platform"}
DEFAULT_LEASE_SECONDS = 60
MAX_KEY_BYTES = 1024
SIGNAL_BYTES = 16
MAX_ALSO_WRITES = 1024
"""Records one CompareAndPut may write besides its own (a task has at most 256 outputs)."""


def namespace_of_caller() -> str:
    peer = current_peer.get(None)
    namespace = NAMESPACES.get(peer.service) if peer else None
    if namespace is None:
        raise PermissionDenied("caller has no storage namespace")
    return namespace


def _check_key(key: bytes, what: str = "key") -> bytes:
    if not key:
        raise InvalidArgument(f"{what} must not be empty")
    if len(key) > MAX_KEY_BYTES:
        raise InvalidArgument(f"{what} is longer than {MAX_KEY_BYTES} bytes")
    return key


def _check_further(
    key: bytes, writes: Sequence[pb.RecordWrite], changes: Sequence[pb.RecordChange]
) -> tuple[list[RecordWrite], list[RecordChange]]:
    """The further writes and compared records of a CompareAndPut: bounded, valid keys,
    each key once."""
    if len(writes) + len(changes) > MAX_ALSO_WRITES:
        raise InvalidArgument(f"a compare-and-put writes at most {MAX_ALSO_WRITES} further records")
    seen = {key}

    def once(other: bytes, what: str) -> bytes:
        checked_key = _check_key(other, what)
        if checked_key in seen:
            raise InvalidArgument("a compare-and-put writes each key at most once")
        seen.add(checked_key)
        return checked_key

    compared = [(once(change.key, "key of a compared record"), None if change.expect_absent else change.expected,
                 change.value) for change in changes]
    also = [(once(write.key, "key of a further write"), None if write.delete else write.value) for write in writes]
    return also, compared


class RecordWatchers:
    """Wakes Watch calls when their record is written: by this process, or (a database that
    several storage instances share) by another, as the backend reports it. Waiters
    re-read and compare, so a wake-up too many costs a read and never a wrong answer."""

    def __init__(self) -> None:
        self._waiting: dict[tuple[str, bytes], asyncio.Event] = {}

    def changed(self, namespace: str, key: bytes) -> None:
        event = self._waiting.pop((namespace, key), None)
        if event is not None:
            event.set()

    def changed_all(self) -> None:
        """Some writes may have gone unreported: every waiter looks again."""
        waiting, self._waiting = self._waiting, {}
        for event in waiting.values():
            event.set()

    def event(self, namespace: str, key: bytes) -> asyncio.Event:
        return self._waiting.setdefault((namespace, key), asyncio.Event())


MAX_WATCH_MS = 60_000


class GroupCommit:
    """Runs writes on one writer thread, as many per commit as have arrived meanwhile."""

    def __init__(self, store: StorageBackend) -> None:
        self._store = store
        # One writer thread: SQLite serialises writes anyway, and it keeps the event loop free.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="storage")
        self._pending: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self._drainer: asyncio.Task[None] | None = None
        """Commits batch after batch while writes keep arriving (a reference keeps it alive)."""

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` (a write of the store), once the commit that holds it is done."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        # Its caller may be gone when the answer comes: mark the outcome as seen anyway.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._pending.append((fn, args, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        # Shielded: a caller that goes away does not take its write out of the batch.
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                outcomes = await loop.run_in_executor(self._executor, self._apply, [(f, a) for f, a, _ in batch])
            except Exception as exc:  # the commit failed: none of the batch is stored
                outcomes = [(False, exc)] * len(batch)
            for (_, _, future), (ok, value) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _apply(self, writes: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        with self._store.batch():
            for fn, args in writes:
                try:
                    outcomes.append((True, fn(*args)))
                except Exception as exc:  # this write alone is rolled back; the others go on
                    outcomes.append((False, exc))
        return outcomes

    def close(self) -> None:
        self._executor.shutdown(wait=True)


class StorageServicer(pb_grpc.KettleStorageServicer):
    def __init__(self, store: StorageBackend) -> None:
        self._store = store
        self._watchers = RecordWatchers()
        self._writes = GroupCommit(store)
        # A read from a database on another host must not hold up the event loop (every
        # other call of this service) for its round trip: those run on threads of their own.
        self._readers = (ThreadPoolExecutor(max_workers=store.concurrent_reads, thread_name_prefix="storage-read")
                         if store.concurrent_reads else None)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._writes.write(fn, *args)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        if self._readers is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._readers, fn, *args)

    @rpc_method
    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.GetResponse:
        value = await self._read(self._store.get, namespace_of_caller(), _check_key(request.key))
        if value is None:
            raise NotFound("key not found")
        return pb.GetResponse(value=value)

    @rpc_method
    async def Put(self, request: pb.PutRequest, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        namespace = namespace_of_caller()
        await self._write(self._store.put, namespace, _check_key(request.key), request.value)
        self._watchers.changed(namespace, request.key)
        return empty_pb2.Empty()

    @rpc_method
    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        namespace = namespace_of_caller()
        await self._write(self._store.delete, namespace, _check_key(request.key))
        self._watchers.changed(namespace, request.key)
        return empty_pb2.Empty()

    @rpc_method
    async def GetKeysByPrefix(
        self, request: pb.GetKeysByPrefixRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetKeysByPrefixResponse:
        keys = await self._read(self._store.keys_with_prefix, namespace_of_caller(), request.prefix)
        return pb.GetKeysByPrefixResponse(keys=keys)

    @rpc_method
    async def Enqueue(self, request: pb.EnqueueRequest, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        namespace = namespace_of_caller()
        queue = _check_key(request.queue, "queue")
        signal = _check_key(request.signal_key, "signal key") if request.signal_key else None
        await self._write(self._enqueue, namespace, queue, request.value, signal)
        if signal is not None:
            self._watchers.changed(namespace, signal)
        return empty_pb2.Empty()

    def _enqueue(self, namespace: str, queue: bytes, value: bytes, signal: bytes | None) -> None:
        self._store.enqueue(namespace, queue, value)
        if signal is not None:
            # Only a wake-up: were this write lost, the consumer would still find the item.
            self._store.put(namespace, signal, os.urandom(SIGNAL_BYTES))

    @rpc_method
    async def Dequeue(self, request: pb.DequeueRequest, context: grpc.aio.ServicerContext) -> pb.DequeueResponse:
        lease = request.lease_seconds or DEFAULT_LEASE_SECONDS
        item = await self._write(self._store.dequeue, namespace_of_caller(), _check_key(request.queue, "queue"), lease)
        if item is None:
            return pb.DequeueResponse(found=False)
        return pb.DequeueResponse(found=True, item_id=item.item_id, value=item.value, deliveries=item.deliveries)

    @rpc_method
    async def Ack(self, request: pb.AckRequest, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        await self._write(self._store.ack, namespace_of_caller(), _check_key(request.queue, "queue"), request.item_id)
        return empty_pb2.Empty()

    @rpc_method
    async def CompareAndPut(
        self, request: pb.CompareAndPutRequest, context: grpc.aio.ServicerContext
    ) -> pb.CompareAndPutResponse:
        namespace = namespace_of_caller()
        expected = None if request.expect_absent else request.expected
        key = _check_key(request.key)
        writes = list(request.also)
        enqueue: QueuedItem | None = None
        if request.HasField("enqueue"):
            enqueue = (_check_key(request.enqueue.queue, "queue"), request.enqueue.value)
            if request.enqueue.signal_key:
                # The consumer's doorbell, rewritten with the item as Enqueue does: one more write.
                writes.append(pb.RecordWrite(key=request.enqueue.signal_key, value=os.urandom(SIGNAL_BYTES)))
        also, compared = _check_further(key, writes, request.compared)
        applied, current = await self._write(
            functools.partial(self._store.compare_and_put, compared=compared, enqueue=enqueue),
            namespace, key, expected, request.value, also,
        )
        if applied:
            # Only now, after the commit: a woken watcher reads every record of it.
            for changed_key in (*(k for k, _ in also), *(k for k, _, _ in compared)):
                self._watchers.changed(namespace, changed_key)
            self._watchers.changed(namespace, key)
        return pb.CompareAndPutResponse(applied=applied, found=current is not None, current=current or b"")

    @rpc_method
    async def Watch(self, request: pb.WatchRequest, context: grpc.aio.ServicerContext) -> pb.WatchResponse:
        namespace = namespace_of_caller()
        key = _check_key(request.key)
        known = None if request.known_absent else request.known
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(request.timeout_ms, MAX_WATCH_MS) / 1000
        while True:
            # Register before reading, so a write between the read and the wait still wakes us.
            event = self._watchers.event(namespace, key)
            current = await self._read(self._store.get, namespace, key)
            if current != known:
                return pb.WatchResponse(changed=True, found=current is not None, value=current or b"")
            remaining = deadline - loop.time()
            if remaining <= 0:
                return pb.WatchResponse(changed=False, found=current is not None, value=current or b"")
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                pass

    def follow_other_writers(self) -> Callable[[], None]:
        """Wake watches for writes made through other storage instances (a shared database);
        returns what stops following."""
        loop = asyncio.get_running_loop()
        stop = threading.Event()

        def soon(callback: Callable[..., None], *args: Any) -> None:
            if not stop.is_set():
                loop.call_soon_threadsafe(callback, *args)

        follower = threading.Thread(
            target=self._store.follow_changes, name="storage-changes", daemon=True,
            args=(lambda namespace, key: soon(self._watchers.changed, namespace, key),
                  lambda: soon(self._watchers.changed_all), stop),
        )
        follower.start()

        def stop_following() -> None:
            stop.set()
            follower.join(5)

        return stop_following

    def close(self) -> None:
        self._writes.close()
        if self._readers is not None:
            self._readers.shutdown(wait=True)
        self._store.close()


def postgresql_dsn(config: Config) -> str:
    """The connection string: ``KETTLE_STORAGE_DSN``, else ``storage.dsn_file``'s content,
    else ``storage.dsn`` (never from the command line, where every user can read it)."""
    from_env = os.environ.get(STORAGE_DSN_ENV, "").strip()
    if from_env:
        return from_env
    if config.storage.dsn_file:
        path = config.path(config.storage.dsn_file)
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            text = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read storage.dsn_file {path}: {exc.strerror}") from None
        if mode & 0o077:
            raise ConfigError(f"storage.dsn_file {path} holds a password but other users may read it "
                              f"(mode {mode:04o}): chmod 600 it")
        if not text:
            raise ConfigError(f"storage.dsn_file {path} is empty")
        return text
    if config.storage.dsn:
        return config.storage.dsn
    raise ConfigError(f"storage backend postgresql needs a connection string: storage.dsn, "
                      f"storage.dsn_file or the {STORAGE_DSN_ENV} environment variable")


def open_backend(config: Config) -> StorageBackend:
    """The configured database, unsealed values and all (the caller seals)."""
    if config.storage.backend == "postgresql":
        from .postgresql_backend import PostgreSQLBackend

        return PostgreSQLBackend(postgresql_dsn(config))
    return SQLiteBackend(config.path(config.storage.path))


def open_store(config: Config, runtime: ServiceRuntime) -> StorageBackend:
    backend = open_backend(config)
    where = "the PostgreSQL database" if config.storage.backend == "postgresql" else config.path(config.storage.path)
    store = SealedStore(backend, Sealer(runtime.provider.sealing_key("storage")))
    try:
        store.check_key()
    except SealingError:
        store.close()
        raise ConfigError(
            f"{where} was sealed under another sealing key, so this storage service cannot open it: the code "
            "identity or platform that sealed it differs from this one (on sev-snp and tdx every code update "
            "changes the key; docs/attestation.md, 'Sealing keys'). Kettle has no re-seal step yet: run the "
            "version that sealed the data, or start from new storage"
        ) from None
    return store


async def main(config: Config) -> None:
    runtime = ServiceRuntime("storage", config)
    servicer = StorageServicer(open_store(config, runtime))
    await runtime.attest()
    runtime.internal_server(lambda server: pb_grpc.add_KettleStorageServicer_to_server(servicer, server))
    stop_following = servicer.follow_other_writers()
    try:
        await runtime.serve()
    finally:
        stop_following()
        servicer.close()
