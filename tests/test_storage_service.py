"""The storage service over its real attested gRPC endpoint: records, prefix scans, queues, partitions."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import Platform

from kettle.errors import InternalError, InvalidArgument
from kettle.model.records import FunctionRecord, function_key, function_payload_key
from kettle.rpc.generated import kettle_storage_pb2 as pb
from kettle.rpc.generated import kettle_storage_pb2_grpc as pb_grpc
from kettle.services.platform_store import PlatformStore, RecentRecords
from kettle.services.runtime import ServiceRuntime
from kettle.services.storage.service import GroupCommit
from kettle.services.storage.sqlite_backend import SQLiteBackend


def as_service(platform: Platform, service: str, body: Callable[[pb_grpc.KettleStorageStub], Awaitable[Any]]) -> Any:
    """Run ``body`` with a storage stub held by an attested identity of ``service``."""

    async def run() -> Any:
        runtime = ServiceRuntime(service, platform.config)
        await runtime.attest()
        try:
            return await body(pb_grpc.KettleStorageStub(runtime.peers.channel("storage")))
        finally:
            await runtime.identities.stop()
            await runtime.peers.close()

    return asyncio.run(run())


def test_records_and_prefix_scans(platform: Platform) -> None:
    async def body(stub: pb_grpc.KettleStorageStub) -> None:
        for key in (b"task-1", b"task-2", b"taskx", b"function-1"):
            await stub.Put(pb.PutRequest(key=key, value=key.upper()))
        assert (await stub.Get(pb.GetRequest(key=b"task-2"))).value == b"TASK-2"
        keys = (await stub.GetKeysByPrefix(pb.GetKeysByPrefixRequest(prefix=b"task-"))).keys
        assert list(keys) == [b"task-1", b"task-2"]
        assert list((await stub.GetKeysByPrefix(pb.GetKeysByPrefixRequest(prefix=b"nothing-"))).keys) == []
        await stub.Put(pb.PutRequest(key=b"empty", value=b""))
        assert (await stub.Get(pb.GetRequest(key=b"empty"))).value == b""
        await stub.Delete(pb.DeleteRequest(key=b"task-1"))
        await stub.Delete(pb.DeleteRequest(key=b"task-1"))  # idempotent
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.Get(pb.GetRequest(key=b"task-1"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    as_service(platform, "management", body)


def test_a_compare_and_put_compares_several_records_and_queues_an_item_in_one_step(platform: Platform) -> None:
    async def body(stub: pb_grpc.KettleStorageStub) -> None:
        queue, signal = b"q-one-step", b"q-one-step-signal"
        await stub.Put(pb.PutRequest(key=b"one-step-task", value=b"created"))
        step = pb.CompareAndPutRequest(
            key=b"one-step-task", expected=b"created", value=b"staged",
            compared=[pb.RecordChange(key=b"one-step-usage", expect_absent=True, value=b"1")],
            enqueue=pb.EnqueueRequest(queue=queue, value=b"item", signal_key=signal))
        await stub.Put(pb.PutRequest(key=b"one-step-usage", value=b"0"))  # not absent any more
        refused = await stub.CompareAndPut(step)
        assert (refused.applied, refused.current) == (False, b"created")
        assert not (await stub.Dequeue(pb.DequeueRequest(queue=queue))).found
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.Get(pb.GetRequest(key=signal))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND

        await stub.Delete(pb.DeleteRequest(key=b"one-step-usage"))
        assert (await stub.CompareAndPut(step)).applied
        assert (await stub.Get(pb.GetRequest(key=b"one-step-usage"))).value == b"1"
        assert (await stub.Get(pb.GetRequest(key=signal))).value  # the doorbell rang
        assert (await stub.Dequeue(pb.DequeueRequest(queue=queue))).value == b"item"

        twice = pb.CompareAndPutRequest(key=b"one-step-task", expected=b"staged", value=b"x",
                                        enqueue=pb.EnqueueRequest(queue=queue, value=b"i", signal_key=b"one-step-task"))
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.CompareAndPut(twice)
        assert (bad.value.code(), bad.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                           "a compare-and-put writes each key at most once")

    as_service(platform, "management", body)


def test_queue_hand_off_is_at_least_once(platform: Platform) -> None:
    async def body(stub: pb_grpc.KettleStorageStub) -> None:
        for value in (b"first", b"second"):
            await stub.Enqueue(pb.EnqueueRequest(queue=b"q-at-least-once", value=value))
        first = await stub.Dequeue(pb.DequeueRequest(queue=b"q-at-least-once", lease_seconds=1))
        assert (first.found, first.value, first.deliveries) == (True, b"first", 1)
        second = await stub.Dequeue(pb.DequeueRequest(queue=b"q-at-least-once", lease_seconds=30))
        assert second.value == b"second"
        await stub.Ack(pb.AckRequest(queue=b"q-at-least-once", item_id=second.item_id))
        await asyncio.sleep(1.2)  # the first lease expires without an ack: handed out again
        again = await stub.Dequeue(pb.DequeueRequest(queue=b"q-at-least-once", lease_seconds=30))
        assert (again.value, again.deliveries, again.item_id) == (b"first", 2, first.item_id)
        await stub.Ack(pb.AckRequest(queue=b"q-at-least-once", item_id=again.item_id))
        assert not (await stub.Dequeue(pb.DequeueRequest(queue=b"q-at-least-once"))).found

    as_service(platform, "scheduler", body)


def test_partitions_follow_the_attested_caller(platform: Platform) -> None:
    """Management and scheduler share the platform partition; authentication's records are apart."""

    async def put(stub: pb_grpc.KettleStorageStub) -> None:
        await stub.Put(pb.PutRequest(key=b"shared-key", value=b"from management"))

    async def read(stub: pb_grpc.KettleStorageStub) -> bytes | None:
        try:
            return (await stub.Get(pb.GetRequest(key=b"shared-key"))).value
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            return None

    as_service(platform, "management", put)
    assert as_service(platform, "scheduler", read) == b"from management"
    assert as_service(platform, "authentication", read) is None


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (pb.PutRequest(key=b"", value=b"x"), "key must not be empty"),
        (pb.PutRequest(key=b"k" * 1025, value=b"x"), "key is longer than 1024 bytes"),
        (pb.EnqueueRequest(queue=b"", value=b"x"), "queue must not be empty"),
    ],
)
def test_bad_keys_are_refused_and_change_nothing(platform: Platform, request_: Any, reason: str) -> None:
    async def body(stub: pb_grpc.KettleStorageStub) -> None:
        method = stub.Put if isinstance(request_, pb.PutRequest) else stub.Enqueue
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await method(request_)
        assert (refused.value.code(), refused.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, reason)

    as_service(platform, "management", body)
    assert platform.child("storage").process.poll() is None


def test_an_item_that_fails_to_unseal_is_dead_lettered_once_and_the_queue_flows(platform: Platform) -> None:
    """Tampered in the database file: moved out of its queue once, with the reason an operator
    lists with ``kettle storage dead-letters``; the good item behind it is delivered at once."""
    queue = b"q-tampered"

    async def enqueue(stub: pb_grpc.KettleStorageStub) -> None:
        for value in (b"to be tampered with", b"good"):
            await stub.Enqueue(pb.EnqueueRequest(queue=queue, value=value))

    as_service(platform, "scheduler", enqueue)
    db = sqlite3.connect(platform.config.path(platform.config.storage.path), isolation_level=None)
    try:
        item_id, sealed = db.execute(
            "SELECT item_id, value FROM queue_items WHERE queue = ? ORDER BY item_id", (queue,)).fetchone()
        tampered = sealed[:20] + bytes([sealed[20] ^ 1]) + sealed[21:]
        db.execute("UPDATE queue_items SET value = ? WHERE item_id = ?", (tampered, item_id))
    finally:
        db.close()

    async def drain(stub: pb_grpc.KettleStorageStub) -> list[pb.DequeueResponse]:
        # Lease 1 s, then well past it: an item left in the queue would come back.
        first = await stub.Dequeue(pb.DequeueRequest(queue=queue, lease_seconds=1))
        await asyncio.sleep(1.5)
        return [first, await stub.Dequeue(pb.DequeueRequest(queue=queue, lease_seconds=30))]

    first, second = as_service(platform, "scheduler", drain)
    assert (first.found, first.value, first.deliveries) == (True, b"good", 1)
    assert (second.found, second.value, second.deliveries) == (True, b"good", 2)
    listed = platform.kettle("storage", "dead-letters", "--json")
    assert listed.returncode == 0, listed.stderr
    letters = [letter for letter in json.loads(listed.stdout) if letter["queue"] == queue.decode()]
    assert [(letter["item_id"], letter["namespace"], letter["deliveries"]) for letter in letters] == [
        (item_id, "platform", 1)]
    assert letters[0]["reason"] == ("sealed value failed authentication: wrong sealing key, "
                                    "stored under another key, or tampered with")
    assert platform.child("storage").process.poll() is None


def test_a_function_with_its_payload_inline_loads_and_moves_apart_on_its_next_update(platform: Platform) -> None:
    """Records written before payloads had a record of their own (base64 in the function's JSON)."""
    bare = str(uuid.uuid4())
    record = FunctionRecord(
        uuid=bare, name="old", description="", public=True, executor_type="python",
        payload=b"def entrypoint(argv):\n    return 'old'\n", arguments=(), inputs=(), outputs=(), owner="bob",
        user_allowlist=(), usage_quota=None,
    )
    legacy = {**dataclasses.asdict(record), "payload": base64.b64encode(record.payload).decode()}

    async def body() -> None:
        runtime = ServiceRuntime("management", platform.config)
        await runtime.attest()
        store = PlatformStore(runtime.peers)
        try:
            await store.put(function_key(bare), json.dumps(legacy, sort_keys=True).encode())
            assert await store.get_function(bare) == record
            assert await store.get(function_payload_key(bare)) is None
            before, after = await store.update_function(bare, lambda f: dataclasses.replace(f, disabled=True))
            assert (before, after) == (record, dataclasses.replace(record, disabled=True))
            stored = json.loads(await store.get(function_key(bare)) or b"")
            assert "payload" not in stored and stored["payload_sha256"] == hashlib.sha256(record.payload).hexdigest()
            assert await store.get(function_payload_key(bare)) == record.payload
            assert await store.get_function(bare) == after
            # A payload record that is not the one its function names is never handed out:
            # a store that has the named payload by its digest answers with that one, and
            # one that must read the record refuses.
            await store.put(function_payload_key(bare), b"def entrypoint(argv):\n    return 'swapped'\n")
            assert await store.get_function(bare) == after
            with pytest.raises(InternalError):
                await PlatformStore(runtime.peers).get_function(bare)
        finally:
            await runtime.identities.stop()
            await runtime.peers.close()

    asyncio.run(body())


class CountingBackend(SQLiteBackend):
    """A real SQLite backend that counts its commits of batches."""

    batches = 0

    def batch(self):  # type: ignore[no-untyped-def]
        self.batches += 1
        return super().batch()


def test_concurrent_writes_share_commits_and_each_gets_its_own_answer(tmp_path: Path) -> None:
    backend = CountingBackend(tmp_path / "db.sqlite")
    writes = GroupCommit(backend)

    async def body() -> list[Any]:
        first = [writes.write(backend.put, "ns", f"k{i}".encode(), b"v") for i in range(50)]
        racing = [writes.write(backend.compare_and_put, "ns", b"counter", None, f"{i}".encode()) for i in range(10)]
        failing = writes.write(backend.compare_and_put, "ns", b"x", None, b"v", [(b"x", b"twice")])
        return await asyncio.gather(*first, *racing, failing, return_exceptions=True)

    try:
        outcomes = asyncio.run(body())
        assert outcomes[:50] == [None] * 50
        applied = [o for o in outcomes[50:60] if o[0]]
        assert len(applied) == 1  # exactly one compare-and-put of the ten wins, as if one by one
        assert isinstance(outcomes[60], ValueError)  # one refused write answers alone
        assert backend.batches < 61 / 4  # many writes per commit
        reopened = SQLiteBackend(tmp_path / "db.sqlite")
        assert all(reopened.get("ns", f"k{i}".encode()) == b"v" for i in range(50))
        assert reopened.get("ns", b"x") is None
        reopened.close()
    finally:
        writes.close()
        backend.close()


def test_an_update_from_a_stale_guess_never_loses_a_write_nor_refuses_on_old_data(platform: Platform) -> None:
    key = f"guess-{uuid.uuid4()}".encode()

    def refuse_old(raw: bytes | None) -> bytes | None:
        if raw == b"old":
            raise InvalidArgument("still old")
        return None if raw is None else raw + b"+1"

    async def body() -> None:
        runtime = ServiceRuntime("management", platform.config)
        await runtime.attest()
        mine, other = PlatformStore(runtime.peers), PlatformStore(runtime.peers)
        try:
            await mine.put(key, b"old")  # mine now guesses "old"
            await other.put(key, b"new")
            # The guess refuses; the refusal is decided again on what is stored, which passes.
            assert await mine.update(key, refuse_old) == (b"new", b"new+1")
            await other.put(key, b"newer")
            # The guess ("new+1") fails its compare-and-put; the update goes on from "newer".
            assert await mine.update(key, lambda raw: (raw or b"") + b"!") == (b"newer", b"newer!")
            await other.put(key, b"old")
            with pytest.raises(InvalidArgument, match="still old"):  # refused on a fresh read only
                await mine.update(key, refuse_old)
            await other.delete(key)
            # "no write" decided on a guess is checked again too: the record is gone now.
            assert await mine.update(key, lambda raw: None if raw == b"old" else b"made") == (None, b"made")
            assert await other.get(key) == b"made"
        finally:
            await runtime.identities.stop()
            await runtime.peers.close()

    asyncio.run(body())


def test_remembered_records_stay_within_their_byte_budget() -> None:
    recent = RecentRecords(capacity=1600)
    for i in range(40):
        recent.saw(f"k{i:02}".encode(), bytes(97))  # 100 bytes each with its key
    assert recent.guess(b"k00") == (False, None)  # the oldest went first
    assert recent.guess(b"k39") == (True, bytes(97))
    assert sum(recent.guess(f"k{i:02}".encode())[0] for i in range(40)) == 16
    recent.saw(b"big", bytes(200))  # over a sixteenth of the budget: not kept
    assert recent.guess(b"big") == (False, None)
    recent.saw(b"k39", None)  # absent is a value too
    assert recent.guess(b"k39") == (True, None)
    recent.forget(b"k39")
    assert recent.guess(b"k39") == (False, None)
