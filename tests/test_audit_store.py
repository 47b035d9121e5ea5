"""The management audit log against a real storage service: save, query, survive a restart.

The storage service runs as its own attested process; this test process plays
the management service (an attested management identity, so its records land
in the platform partition exactly as management's would).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from conftest import Platform
from kettle.errors import StorageError
from kettle.model.audit import AuditError, entry_for_call, success_message
from kettle.rpc.generated.teaclave_common_pb2 import Entry
from kettle.services.management import audit as audit_module
from kettle.services.management.audit import AUDIT_PREFIX, BUCKET_PREFIX, AuditLog
from kettle.services.platform_store import PlatformStore
from kettle.services.runtime import ServiceRuntime

SECOND = 1_000_000
BASE = 1_700_000_000 * SECOND


def entry(second: int, message: str, user: tuple[str, str] | None = None, result: bool = True) -> Entry:
    return entry_for_call("ipv4:10.0.0.7:5000", user, message, result, microsecond=BASE + second * SECOND)


class ObservedStore(PlatformStore):
    """The real store, counting reads and able to fail the n-th create-only write."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.gets = 0
        self.fail_put_number: int | None = None
        self.puts = 0
        self.listed: list[bytes] = []

    async def keys_with_prefix(self, prefix: bytes) -> list[bytes]:
        self.listed.append(prefix)
        return await super().keys_with_prefix(prefix)

    async def get(self, key: bytes) -> bytes | None:
        self.gets += 1
        return await super().get(key)

    async def compare_and_put(self, key: bytes, expected: bytes | None, value: bytes) -> tuple[bool, bytes | None]:
        self.puts += 1
        if self.puts == self.fail_put_number:
            raise StorageError("storage Put failed: UNAVAILABLE injected")
        return await super().compare_and_put(key, expected, value)


def as_management(platform: Platform, body: Callable[[ObservedStore], Awaitable[None]]) -> None:
    async def run() -> None:
        runtime = ServiceRuntime("management", platform.config)
        await runtime.attest()
        try:
            await body(ObservedStore(runtime.peers))
        finally:
            await runtime.identities.stop()
            await runtime.peers.close()

    asyncio.run(run())


def messages(entries: list[Entry]) -> list[str]:
    return [e.message for e in entries]


ADMIN = ("admin", "PlatformAdmin")
FRONTEND_USER = ("frontend_user", "FunctionOwner")


def test_save_query_and_survive_a_storage_restart(home_factory: Callable[..., Platform]) -> None:
    platform = home_factory()
    platform.start(services=("storage",))

    async def first_life(store: ObservedStore) -> None:
        audit = AuditLog(store)
        assert await audit.query("*", 10) == []
        await audit.save([
            entry(1, success_message("register_function"), FRONTEND_USER),
            entry(1, "authenticate to register_function: authentication failed", result=False),
            entry(2, "authenticate to approve_task", result=False),
        ])
        await audit.save([entry(3, success_message("query_audit_logs"), ADMIN)])
        await audit.save([])  # an empty batch stores nothing
        assert len(await store.keys_with_prefix(AUDIT_PREFIX)) == 2  # one record per batch

        assert messages(await audit.query("user:frontend_user", 10)) == ["register_function"]
        assert messages(await audit.query("message:register_function", 10)) == [
            "register_function", "authenticate to register_function: authentication failed",
        ]
        assert messages(await audit.query("message:authenticate", 10)) == [
            "authenticate to approve_task", "authenticate to register_function: authentication failed",
        ]
        assert messages(await audit.query("*", 2)) == ["query_audit_logs", "authenticate to approve_task"]
        found = (await audit.query("user:admin", 1))[0]
        assert (found.ip, found.user, found.result) == (
            bytes(12) + bytes([10, 0, 0, 7]), "{ user: admin, role: PlatformAdmin }", True,
        )

        # Repeated queries decode nothing again: the cache knows every record.
        gets = store.gets
        for query in ("*", "user:admin", "approve_task"):
            await audit.query(query, 5)
        assert store.gets == gets
        found.message = "tampered"  # results are copies; the cache is not affected
        assert messages(await audit.query("user:admin", 1)) == ["query_audit_logs"]

        # A bad ip refuses the whole batch: nothing is stored.
        with pytest.raises(AuditError) as refused:
            await audit.save([entry(4, "fine"), Entry(microsecond=BASE, ip=bytes(4), message="short ip")])
        assert str(refused.value) == "audit log error, reason: entry 1: ip must be 16 bytes, got 4"
        assert refused.value.code == grpc.StatusCode.UNKNOWN
        assert len(await store.keys_with_prefix(AUDIT_PREFIX)) == 2
        assert await audit.query("fine OR short", 10) == []

        for limit, query, reason in ((0, "*", "limit must be greater than 0"),
                                     (10, "(unbalanced", "invalid query at position 0: unbalanced '('"),
                                     (10, "ip:1", "invalid query at position 0: field does not exist: 'ip'")):
            with pytest.raises(AuditError) as bad:
                await audit.query(query, limit)
            assert str(bad.value) == f"audit log error, reason: {reason}"

    as_management(platform, first_life)
    platform.stop()
    platform.start(services=("storage",))

    async def second_life(store: ObservedStore) -> None:
        audit = AuditLog(store)  # a new management process: empty cache
        assert messages(await audit.query("*", 10)) == [
            "query_audit_logs",
            "authenticate to approve_task",
            "register_function",
            "authenticate to register_function: authentication failed",
        ]
        # Saving continues after the stored records, so insertion order survives the restart.
        await audit.save([entry(3, "invoke_task")])
        keys = await store.keys_with_prefix(AUDIT_PREFIX)
        assert len(keys) == 3 and keys == sorted(keys)
        assert messages(await audit.query("*", 2)) == ["query_audit_logs", "invoke_task"]  # same second: insertion order

    as_management(platform, second_life)


def test_layout_parts_failures_and_time_buckets(
    home_factory: Callable[..., Platform], monkeypatch: pytest.MonkeyPatch
) -> None:
    platform = home_factory()
    platform.start(services=("storage",))
    monkeypatch.setattr(audit_module, "MAX_RECORD_BYTES", 200)  # about four entries per record
    monkeypatch.setattr(audit_module, "BUCKET_DIGITS", 14)  # one-second buckets
    clock = [BASE + 100 * SECOND]
    monkeypatch.setattr(audit_module, "now_microseconds", lambda: clock[0])

    async def body(store: ObservedStore) -> None:
        audit = AuditLog(store)
        batch = [entry(10, f"call number {n}") for n in range(12)]
        await audit.save(batch)
        keys = await store.keys_with_prefix(AUDIT_PREFIX)
        assert len(keys) >= 3
        assert len({key[: -len(b"-0000-0000")] for key in keys}) == 1  # one batch, several parts
        assert keys[-1].endswith(f"-{len(keys) - 1:04d}-{len(keys):04d}".encode())
        assert await store.keys_with_prefix(BUCKET_PREFIX) == [audit_module._bucket_marker(100 + BASE // SECOND)]
        assert messages(await AuditLog(store).query("*", 100)) == [f"call number {n}" for n in range(12)]

        # Writing the second part fails: the first is removed, the save reports the failure.
        store.fail_put_number = store.puts + 2
        with pytest.raises(AuditError) as failed:
            await audit.save([entry(11, f"lost {n}") for n in range(12)])
        assert str(failed.value) == "audit log error, reason: storage service error"
        assert await store.keys_with_prefix(AUDIT_PREFIX) == keys
        assert await audit.query("lost", 100) == []

        # A part left behind by a crash mid-save (its sibling never written) is never returned.
        orphan_time = BASE + 50 * SECOND
        await store.put(audit_module._bucket_marker(audit_module._bucket_of(orphan_time)), b"")
        orphan = audit_module._RecordKey.render(orphan_time, "00" * 8, 0, 2)
        await store.put(orphan, audit_module._encode([entry(12, "half a batch")]))
        assert await AuditLog(store).query("half", 10) == []
        assert await audit.query("half", 10) == []
        assert len(await audit.query("*", 100)) == 12

        # An unreadable record is left out (and logged) rather than failing every query.
        broken = audit_module._RecordKey.render(orphan_time + 1, "11" * 8, 0, 1)
        await store.put(broken, b"\x07not an audit record")
        assert len(await AuditLog(store).query("*", 100)) == 12

        # Saves in later seconds land in later buckets; the clock going back changes nothing.
        for now, second, message in ((101, 101, "one"), (102, 102, "two"), (99, 102, "saved after two")):
            clock[0] = BASE + now * SECOND
            await audit.save([entry(second, message)])
        assert messages(await audit.query("*", 2)) == ["two", "saved after two"]  # insertion order within a second
        keys = await store.keys_with_prefix(AUDIT_PREFIX)
        assert keys[-1] == max(keys) and keys[-1].startswith(audit_module._bucket_records_prefix(BASE // SECOND + 102))
        assert len(await store.keys_with_prefix(BUCKET_PREFIX)) == 4

        # Buckets nobody can write to any more are listed once: later queries list the markers
        # and the newest bucket only.
        fresh = AuditLog(store)
        store.listed.clear()
        await fresh.query("*", 10)
        assert len(store.listed) == 1 + 4  # the markers, then every bucket once
        store.listed.clear()
        await fresh.query("*", 10)
        assert store.listed == [BUCKET_PREFIX, audit_module._bucket_records_prefix(BASE // SECOND + 102)]
        gets = store.gets
        await fresh.query("one", 10)
        assert store.gets == gets

        # The first save into a new bucket fails after its marker: the empty bucket is harmless.
        clock[0] = BASE + 103 * SECOND
        store.fail_put_number = store.puts + 1
        with pytest.raises(AuditError):
            await audit.save([entry(103, "never stored")])
        assert len(await store.keys_with_prefix(BUCKET_PREFIX)) == 5
        restarted = AuditLog(store)
        assert messages(await restarted.query("*", 1)) == ["two"]
        clock[0] = BASE + 90 * SECOND
        await restarted.save([entry(104, "after the restart")])  # continues after the newest stored key
        newest = max(await store.keys_with_prefix(AUDIT_PREFIX))
        assert newest.startswith(audit_module._bucket_records_prefix(BASE // SECOND + 102))
        assert messages(await fresh.query("*", 1)) == ["after the restart"]

    as_management(platform, body)
