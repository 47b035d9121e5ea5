"""The management service as real processes: storage + management, attested TLS, SQLite.

The test process holds two attested identities: the frontend's (the only caller
management accepts) to call the service, and the scheduler's to look into the
shared platform partition of storage and to play the scheduler's part (updating
task records) the way the real one does.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import Platform, make_home
from google.protobuf import empty_pb2

from kettle.errors import StorageError, StorageUnavailable, unavailable_message
from kettle.model.functions import UsageRecord
from kettle.model.records import (
    STAGED_SIGNAL_KEY,
    STAGED_TASK_QUEUE,
    CryptoInfo,
    FileRecord,
    StagedTask,
    TaskOutputs,
    TaskRecord,
    TaskResult,
    TaskStatus,
    cancel_request_key,
    input_key,
    output_key,
    task_key,
    usage_key,
)
from kettle.rpc.generated import kettle_management_pb2 as mpb
from kettle.rpc.generated import teaclave_common_pb2 as common_pb
from kettle.rpc.generated import teaclave_frontend_service_pb2 as fpb
from kettle.rpc.generated.kettle_management_pb2_grpc import KettleManagementStub
from kettle.services.management.service import KettleManagementServicer
from kettle.services.platform_store import PlatformStore, StagedItem
from kettle.services.runtime import ServiceRuntime
from kettle.services.storage.backend import RecordChange, RecordWrite

User = tuple[str, str]
ADMIN: User = ("admin", "PlatformAdmin")
FO: User = ("fo", "FunctionOwner")
FO2: User = ("fo2", "FunctionOwner")
ALICE: User = ("alice", "DataOwner-bank")
BOB: User = ("bob", "DataOwner-bank")
CAROL: User = ("carol", "DataOwner-hospital")

UNKNOWN_UUID = "0b0b0b0b-0b0b-4b0b-8b0b-0b0b0b0b0b0b"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> Iterator[Platform]:
    """One storage + management platform for this module (what ``home_factory`` makes, module-scoped
    so the attestation and start-up cost is paid once)."""
    p = Platform(make_home(tmp_path_factory.mktemp("management"), _auditor_cache))
    p.start(services=("storage", "management"))
    yield p
    p.stop()


@dataclass
class Harness:
    channel: grpc.aio.Channel
    stub: KettleManagementStub
    store: PlatformStore
    """The scheduler's view of storage."""

    async def call(self, rpc: str, request: Any, user: User | None = ALICE, timeout: float = 30) -> Any:
        metadata = None if user is None else (("id", user[0]), ("role", user[1]))
        return await getattr(self.stub, rpc)(request, metadata=metadata, timeout=timeout)

    async def refused(
        self, rpc: str, request: Any, code: grpc.StatusCode, message: str | None, user: User | None = ALICE
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await self.call(rpc, request, user)
        assert info.value.code() == code, info.value.details()
        if message is not None:
            assert info.value.details() == message

    # --- shortcuts ---

    async def register(self, user: User = FO, **changes: Any) -> str:
        fields: dict[str, Any] = {
            "name": "builtin-echo",
            "description": "Native Echo Function",
            "executor_type": "builtin",
            "public": True,
            "arguments": [fpb.FunctionArgument(key="message", default_value="", allow_overwrite=True)],
            "usage_quota": -1,
        }
        fields.update(changes)
        response = await self.call("RegisterFunction", fpb.RegisterFunctionRequest(**fields), user)
        return str(response.function_id)

    async def create(
        self, function_id: str, user: User = ALICE, arguments: str = '{"message": "Hello"}', executor: str = "builtin"
    ) -> str:
        request = fpb.CreateTaskRequest(function_id=function_id, function_arguments=arguments, executor=executor)
        return str((await self.call("CreateTask", request, user)).task_id)

    async def task(self, task_id: str, user: User = ALICE) -> fpb.GetTaskResponse:
        return await self.call("GetTask", fpb.GetTaskRequest(task_id=task_id), user)

    async def usage(self, function_id: str, user: User = FO) -> tuple[int, int]:
        stats = await self.call("GetFunctionUsageStats", fpb.GetFunctionUsageStatsRequest(function_id=function_id), user)
        return stats.function_quota, stats.current_usage

    async def listed(self, user_id: str, user: User | None = None) -> tuple[list[str], list[str]]:
        response = await self.call("ListFunctions", fpb.ListFunctionsRequest(user_id=user_id), user or (user_id, "FunctionOwner"))
        return list(response.registered_functions), list(response.allowed_functions)

    async def drain_staged(self) -> list[StagedTask]:
        """Take everything off the staged-task queue, as the scheduler would."""
        staged = []
        while (item := await self.store.dequeue(STAGED_TASK_QUEUE, 30)) is not None:
            await self.store.ack(STAGED_TASK_QUEUE, item.item_id)
            staged.append(StagedTask.from_bytes(item.value))
        return staged

    async def raw(self, key: bytes) -> bytes | None:
        return await self.store.get(key)


def run(platform: Platform, body: Callable[[Harness], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        frontend = ServiceRuntime("frontend", platform.config)
        scheduler = ServiceRuntime("scheduler", platform.config)
        await frontend.attest()
        await scheduler.attest()
        try:
            channel = frontend.peers.channel("management")
            harness = Harness(channel, KettleManagementStub(channel), PlatformStore(scheduler.peers))
            await harness.drain_staged()  # each test sees only its own staged tasks
            return await body(harness)
        finally:
            for runtime in (frontend, scheduler):
                await runtime.identities.stop()
                await runtime.peers.close()

    return asyncio.run(main())


def bare(external: str) -> str:
    return external.split("-", 1)[1]


# === functions ==============================================================================


def test_function_lifecycle_and_indexes(platform: Platform) -> None:
    async def body(h: Harness) -> None:
        fid = await h.register(public=False, payload=b"code", user_allowlist=["alice", "bank"], usage_quota=5)
        assert fid.startswith("function-")

        # GetFunction: owner full, allowlisted user ID restricted, others refused
        full = await h.call("GetFunction", fpb.GetFunctionRequest(function_id=fid), FO)
        assert (full.name, full.owner, full.payload, list(full.user_allowlist)) == (
            "builtin-echo", "fo", b"code", ["alice", "bank"])
        restricted = await h.call("GetFunction", fpb.GetFunctionRequest(function_id=fid), ALICE)
        assert (restricted.payload, list(restricted.user_allowlist), restricted.name) == (b"", [], "builtin-echo")
        await h.refused("GetFunction", fpb.GetFunctionRequest(function_id=fid), grpc.StatusCode.PERMISSION_DENIED,
                        "permission denied", BOB)

        # usage stats: the owner of a private function may read them (Kettle SHOULD #10)
        assert await h.usage(fid, FO) == (5, 0)
        await h.refused("GetFunctionUsageStats", fpb.GetFunctionUsageStatsRequest(function_id=fid),
                        grpc.StatusCode.PERMISSION_DENIED, "permission denied", FO2)

        # indexes: registered for the owner, allowed for each allowlisted user ID
        assert fid in (await h.listed("fo"))[0]
        assert (await h.listed("alice", ALICE))[1] == [fid]
        assert (await h.listed("bank", ("bank", "DataOwner-x")))[1] == [fid]
        await h.refused("ListFunctions", fpb.ListFunctionsRequest(user_id="fo"), grpc.StatusCode.PERMISSION_DENIED,
                        "permission denied", ALICE)
        registered, allowed = await h.listed("fo", ADMIN)
        assert fid in registered and fid in allowed  # an admin's "allowed" is every function

        # UpdateFunction: owner only (admin not exempt); allowlist change refreshes the indexes
        update = fpb.UpdateFunctionRequest(function_id=fid, name="builtin-echo", executor_type="builtin",
                                           public=False, user_allowlist=["carol"], usage_quota=-1)
        await h.refused("UpdateFunction", update, grpc.StatusCode.PERMISSION_DENIED, "permission denied", ADMIN)
        assert (await h.call("UpdateFunction", update, FO)).function_id == fid
        assert (await h.listed("alice", ALICE))[1] == []
        assert (await h.listed("carol", CAROL))[1] == [fid]
        assert await h.usage(fid, FO) == (-1, 0)

        # DisableFunction: gone from every list, CreateTask refused even to an admin (SHOULD #7)
        before = len((await h.listed("fo"))[0])
        await h.refused("DisableFunction", fpb.DisableFunctionRequest(function_id=fid),
                        grpc.StatusCode.PERMISSION_DENIED, "permission denied", FO2)
        await h.call("DisableFunction", fpb.DisableFunctionRequest(function_id=fid), FO)
        assert len((await h.listed("fo"))[0]) == before - 1
        assert (await h.listed("carol", CAROL))[1] == []
        await h.refused("CreateTask", fpb.CreateTaskRequest(function_id=fid, function_arguments='{"message": "x"}',
                                                            executor="builtin"),
                        grpc.StatusCode.PERMISSION_DENIED, "permission denied", ADMIN)

        # DeleteFunction: owner only; then unknown everywhere and out of the indexes (MAY #8)
        other = await h.register(user_allowlist=["alice"])
        await h.refused("DeleteFunction", fpb.DeleteFunctionRequest(function_id=other),
                        grpc.StatusCode.PERMISSION_DENIED, "permission denied", ADMIN)
        await h.call("DeleteFunction", fpb.DeleteFunctionRequest(function_id=other), FO)
        await h.refused("GetFunction", fpb.GetFunctionRequest(function_id=other), grpc.StatusCode.INVALID_ARGUMENT,
                        "invalid function id", FO)
        assert other not in (await h.listed("fo"))[0]
        assert other not in (await h.listed("alice", ALICE))[1]

    run(platform, body)


# === tasks ==================================================================================


def test_create_approve_invoke_stages_a_self_contained_task(platform: Platform) -> None:
    async def body(h: Harness) -> None:
        fid = await h.register()
        tid = await h.create(fid, arguments='{"message": "Hello, Kettle"}')
        created = await h.task(tid)
        assert (created.task_id, created.creator, created.function_id, created.function_owner) == (
            tid, "alice", fid, "fo")
        assert created.status == TaskStatus.CREATED and list(created.participants) == ["alice"]
        assert created.function_arguments == '{"message":"Hello, Kettle"}'
        assert created.HasField("result") and created.result.WhichOneof("result") is None

        await h.call("AssignData", fpb.AssignDataRequest(task_id=tid))
        assert (await h.task(tid)).status == TaskStatus.DATA_ASSIGNED
        await h.call("ApproveTask", fpb.ApproveTaskRequest(task_id=tid))
        approved = await h.task(tid)
        assert (approved.status, list(approved.approved_users)) == (TaskStatus.APPROVED, ["alice"])

        signal_before = await h.raw(STAGED_SIGNAL_KEY)
        await h.call("InvokeTask", fpb.InvokeTaskRequest(task_id=tid))
        assert (await h.task(tid)).status == TaskStatus.STAGED
        signal = await h.raw(STAGED_SIGNAL_KEY)
        assert signal is not None and len(signal) == 16 and signal != signal_before

        [staged] = await h.drain_staged()
        assert (staged.task_id, staged.function_id, staged.user_id) == (bare(tid), bare(fid), "alice")
        assert (staged.executor, staged.executor_type, staged.function_name) == ("builtin", "builtin", "builtin-echo")
        assert staged.function_arguments == '{"message":"Hello, Kettle"}'
        assert await h.usage(fid) == (-1, 1)

        # invoking again is a state error; nothing more is queued or counted
        await h.refused("InvokeTask", fpb.InvokeTaskRequest(task_id=tid), grpc.StatusCode.UNKNOWN,
                        "failed to invoke task")
        assert await h.drain_staged() == [] and await h.usage(fid) == (-1, 1)

    run(platform, body)


def test_invoke_right_after_create_uses_the_current_function(platform: Platform) -> None:
    """A single-participant task without files is invocable at once; the staged task
    carries the function as it is at invocation (§6.5 step 6)."""

    async def body(h: Harness) -> None:
        fid = await h.register(executor_type="python", payload=b"v1")
        tid = await h.create(fid, executor="mesapy")
        await h.call("UpdateFunction", fpb.UpdateFunctionRequest(
            function_id=fid, name="renamed", executor_type="python", public=True, payload=b"v2",
            arguments=[fpb.FunctionArgument(key="message", allow_overwrite=True)], usage_quota=-1), FO)
        await h.call("InvokeTask", fpb.InvokeTaskRequest(task_id=tid))
        [staged] = await h.drain_staged()
        assert (staged.function_name, staged.function_payload, staged.executor_type) == ("renamed", b"v2", "python")

    run(platform, body)


def test_multi_party_task_without_files(platform: Platform) -> None:
    """A private function's owner takes part: both must approve before the creator can invoke."""

    async def body(h: Harness) -> None:
        fid = await h.register(public=False, user_allowlist=["bank"])
        tid = await h.create(fid)
        assert list((await h.task(tid, FO)).participants) == ["alice", "fo"]
        await h.refused("GetTask", fpb.GetTaskRequest(task_id=tid), grpc.StatusCode.PERMISSION_DENIED,
                        "permission denied", ADMIN)
        await h.call("ApproveTask", fpb.ApproveTaskRequest(task_id=tid), ALICE)
        assert (await h.task(tid)).status == TaskStatus.DATA_ASSIGNED
        await h.refused("InvokeTask", fpb.InvokeTaskRequest(task_id=tid), grpc.StatusCode.UNKNOWN,
                        "failed to invoke task")
        await h.refused("InvokeTask", fpb.InvokeTaskRequest(task_id=tid), grpc.StatusCode.PERMISSION_DENIED,
                        "permission denied", FO)
        await h.call("ApproveTask", fpb.ApproveTaskRequest(task_id=tid), FO)
        assert (await h.task(tid)).status == TaskStatus.APPROVED
        await h.call("InvokeTask", fpb.InvokeTaskRequest(task_id=tid))
        assert [s.task_id for s in await h.drain_staged()] == [bare(tid)]

    run(platform, body)


def test_quota(platform: Platform) -> None:
    async def body(h: Harness) -> None:
        fid = await h.register(usage_quota=1)
        first, second = await h.create(fid), await h.create(fid)
        await h.call("InvokeTask", fpb.InvokeTaskRequest(task_id=first))
        await h.refused("InvokeTask", fpb.InvokeTaskRequest(task_id=second), grpc.StatusCode.UNKNOWN,
                        "function quota has been used up")
        assert (await h.task(second)).status == TaskStatus.CREATED
        assert await h.usage(fid) == (1, 1)
        assert [s.task_id for s in await h.drain_staged()] == [bare(first)]

        # proto3's default quota is 0: never invocable
        never = await h.register(usage_quota=0)
        assert await h.usage(never) == (0, 0)
        await h.refused("InvokeTask", fpb.InvokeTaskRequest(task_id=await h.create(never)), grpc.StatusCode.UNKNOWN,
                        "function quota has been used up")

    run(platform, body)


def test_quota_holds_under_concurrent_invocations(platform: Platform) -> None:
    async def body(h: Harness) -> None:
        fid = await h.register(usage_quota=2)
        tasks = [await h.create(fid) for _ in range(6)]
        results = await asyncio.gather(
            *(h.call("InvokeTask", fpb.InvokeTaskRequest(task_id=t)) for t in tasks), return_exceptions=True
        )
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(refused) == 4
        assert {(r.code(), r.details()) for r in refused} == {
            (grpc.StatusCode.UNKNOWN, "function quota has been used up")}
        assert await h.usage(fid) == (2, 2)
        assert len(await h.drain_staged()) == 2

    run(platform, body)


def test_cancel(platform: Platform) -> None:
    async def body(h: Harness) -> None:
        fid = await h.register()

        created = await h.create(fid)
        await h.refused("CancelTask", fpb.CancelTaskRequest(task_id=created), grpc.StatusCode.PERMISSION_DENIED,
                        "permission denied", BOB)
        await h.call("CancelTask", fpb.CancelTaskRequest(task_id=created))
        canceled = await h.task(created)
        assert (canceled.status, canceled.result.Err.reason) == (TaskStatus.CANCELED, "Task canceled")
        await h.refused("CancelTask", fpb.CancelTaskRequest(task_id=created), grpc.StatusCode.UNKNOWN,
                        "failed to cancel task, reason: task has already been canceled")
        await h.refused("InvokeTask", fpb.InvokeTaskRequest(task_id=created), grpc.StatusCode.UNKNOWN,
                        "failed to invoke task")

        staged = await h.create(fid)
        await h.call("InvokeTask", fpb.InvokeTaskRequest(task_id=staged))
        assert await h.raw(cancel_request_key(bare(staged))) is None
        await h.call("CancelTask", fpb.CancelTaskRequest(task_id=staged), ADMIN)  # an admin may cancel
        # the scheduler finishes the cancel: the status stays Staged, the request is recorded
        assert (await h.task(staged)).status == TaskStatus.STAGED
        assert await h.raw(cancel_request_key(bare(staged))) == b""

    run(platform, body)


def test_wait_task_returns_on_the_schedulers_write(platform: Platform) -> None:
    async def body(h: Harness) -> None:
        fid = await h.register()
        tid = await h.create(fid)
        await h.call("InvokeTask", fpb.InvokeTaskRequest(task_id=tid))
        key = task_key(bare(tid))

        started = time.monotonic()
        quick = await h.call("WaitTask", mpb.WaitTaskRequest(task_id=tid, timeout_ms=300))
        assert 0.25 <= time.monotonic() - started < 5
        assert quick.status == TaskStatus.STAGED and quick.HasField("result")

        waiter = asyncio.ensure_future(h.call("WaitTask", mpb.WaitTaskRequest(task_id=tid, timeout_ms=60_000)))
        await asyncio.sleep(0.5)
        assert not waiter.done()
        await h.store.update_task(key, lambda t: replace(t, status=TaskStatus.RUNNING))
        await asyncio.sleep(0.5)
        assert not waiter.done()  # Running is not terminal
        started = time.monotonic()
        outputs = TaskOutputs(b"Hello", {}, ("[INFO echo] Hello",))
        await h.store.update_task(key, lambda t: replace(t, status=TaskStatus.FINISHED, result=TaskResult(outputs)))
        done = await asyncio.wait_for(waiter, 10)
        assert time.monotonic() - started < 5
        assert (done.status, done.result.Ok.return_value, list(done.result.Ok.log)) == (
            TaskStatus.FINISHED, b"Hello", ["[INFO echo] Hello"])

        # terminal already: at once; the participant check applies as in GetTask
        started = time.monotonic()
        await h.call("WaitTask", mpb.WaitTaskRequest(task_id=tid, timeout_ms=60_000))
        assert time.monotonic() - started < 5
        await h.refused("WaitTask", mpb.WaitTaskRequest(task_id=tid, timeout_ms=10), grpc.StatusCode.PERMISSION_DENIED,
                        "permission denied", BOB)
        await h.refused("WaitTask", mpb.WaitTaskRequest(task_id=f"output-{bare(tid)}"),
                        grpc.StatusCode.INVALID_ARGUMENT, "invalid task id")

        # a finished task stays finished for management, and the refusal says so
        await h.refused("CancelTask", fpb.CancelTaskRequest(task_id=tid), grpc.StatusCode.UNKNOWN,
                        "failed to cancel task, reason: task has already finished")

    run(platform, body)


# === refusals =================================================================================


def test_missing_metadata(platform: Platform) -> None:
    async def body(h: Harness) -> None:
        for rpc, request in [
            ("GetTask", fpb.GetTaskRequest(task_id="x")),
            ("RegisterFunction", fpb.RegisterFunctionRequest()),
            ("ListFunctions", fpb.ListFunctionsRequest()),
            ("GetInputFile", fpb.GetInputFileRequest()),
            ("QueryAuditLogs", fpb.QueryAuditLogsRequest()),
        ]:
            await h.refused(rpc, request, grpc.StatusCode.UNKNOWN, "missing user id", None)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await getattr(h.stub, rpc)(request, metadata=(("id", "alice"),))
            assert (info.value.code(), info.value.details()) == (grpc.StatusCode.UNKNOWN, "missing user role")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await getattr(h.stub, rpc)(request, metadata=(("role", "PlatformAdmin"),))
            assert (info.value.code(), info.value.details()) == (grpc.StatusCode.UNKNOWN, "missing user id")

    run(platform, body)


def test_bad_inputs_are_refused_cleanly_and_change_nothing(platform: Platform) -> None:
    async def body(h: Harness) -> None:
        fid = await h.register()
        tid = await h.create(fid)
        task_raw = await h.raw(task_key(bare(tid)))
        tasks_before = await h.store.keys_with_prefix(b"task-")
        functions_before = await h.store.keys_with_prefix(b"function-")

        invalid = grpc.StatusCode.INVALID_ARGUMENT
        bad_task_ids = ["", "task", f"output-{bare(tid)}", f"function-{bare(tid)}", f"task-{UNKNOWN_UUID}",
                        "task-" + "a" * 100_000]
        for task_id in bad_task_ids:
            for rpc, request in [
                ("GetTask", fpb.GetTaskRequest(task_id=task_id)),
                ("AssignData", fpb.AssignDataRequest(task_id=task_id)),
                ("ApproveTask", fpb.ApproveTaskRequest(task_id=task_id)),
                ("InvokeTask", fpb.InvokeTaskRequest(task_id=task_id)),
                ("CancelTask", fpb.CancelTaskRequest(task_id=task_id)),
            ]:
                await h.refused(rpc, request, invalid, "invalid task id")
        for function_id in ["", tid, f"function-{UNKNOWN_UUID}", "function-" + "f" * 10_000]:
            await h.refused("GetFunction", fpb.GetFunctionRequest(function_id=function_id), invalid,
                            "invalid function id", FO)
            await h.refused("GetFunctionUsageStats", fpb.GetFunctionUsageStatsRequest(function_id=function_id),
                            invalid, "invalid function id", FO)
            await h.refused("DeleteFunction", fpb.DeleteFunctionRequest(function_id=function_id), invalid,
                            "invalid function id", FO)
            await h.refused("DisableFunction", fpb.DisableFunctionRequest(function_id=function_id), invalid,
                            "invalid function id", FO)
            await h.refused("UpdateFunction", fpb.UpdateFunctionRequest(function_id=function_id,
                                                                        executor_type="builtin"),
                            invalid, "invalid function id", FO)
            await h.refused("CreateTask", fpb.CreateTaskRequest(function_id=function_id, function_arguments="{}",
                                                                executor="builtin"), invalid, "invalid function id")

        def create(arguments: str = '{"message": "x"}', executor: str = "builtin", **kw: Any) -> Any:
            return fpb.CreateTaskRequest(function_id=fid, function_arguments=arguments, executor=executor, **kw)

        await h.refused("CreateTask", create(executor="MesaPy"), invalid, "Unsupported executor: MesaPy")
        await h.refused("CreateTask", create(executor="x" * 100_000), invalid, "Unsupported executor: " + "x" * 64 + "…")
        await h.refused("CreateTask", create(executor="mesapy"), invalid,
                        "executor mesapy cannot run a builtin function (its executor is builtin)")
        for arguments in ["", "{", "[]", '"text"', '{"message": NaN}', "[" * 50_000]:
            await h.refused("CreateTask", create(arguments), invalid, None)
        for arguments in ["{}", '{"message": "x", "extra": 1}']:
            await h.refused("CreateTask", create(arguments), invalid, "invalid task")
        await h.refused("CreateTask", create(inputs_ownership=[fpb.OwnerList(data_name="in", uids=["alice"])]),
                        invalid, "invalid task")
        await h.refused("CreateTask", create('{"message": "' + '\\"' * 1_500_000 + '"}'), invalid, None)

        def register(**kw: Any) -> fpb.RegisterFunctionRequest:
            return fpb.RegisterFunctionRequest(**{"name": "builtin-echo", "executor_type": "builtin", **kw})

        await h.refused("RegisterFunction", register(executor_type="Python"), invalid,
                        "Invalid executor type: Python", FO)
        await h.refused("RegisterFunction", register(name="builtin-nope"), invalid,
                        "no built-in function is named 'builtin-nope' (docs/builtins.md lists them)", FO)
        await h.refused("RegisterFunction", register(inputs=[fpb.FunctionInput(name="a")] * 2), invalid,
                        "input name 'a' is declared twice", FO)
        await h.refused("RegisterFunction", register(name="n" * 257), invalid, None, FO)
        await h.refused("RegisterFunction", register(
            arguments=[fpb.FunctionArgument(key=f"k{i}") for i in range(257)]), invalid, None, FO)
        await h.refused("RegisterFunction", register(user_allowlist=["u" * 300]), invalid, None, FO)
        await h.refused("RegisterFunction", register(payload=b"\0" * (16 * 1024 * 1024 + 1)), invalid,
                        "function payload is too large (16777217 bytes, at most 16777216)", FO)
        # beyond the 64 MiB message limit the gRPC layer refuses before management sees it
        await h.refused("RegisterFunction", register(payload=b"\0" * (65 * 1024 * 1024)),
                        grpc.StatusCode.RESOURCE_EXHAUSTED, None, FO)

        # not the creator, not a participant: refused, and nothing moved
        await h.refused("InvokeTask", fpb.InvokeTaskRequest(task_id=tid), grpc.StatusCode.PERMISSION_DENIED,
                        "permission denied", ADMIN)
        await h.refused("ApproveTask", fpb.ApproveTaskRequest(task_id=tid), grpc.StatusCode.PERMISSION_DENIED,
                        "permission denied", BOB)
        await h.refused("AssignData", fpb.AssignDataRequest(task_id=tid), grpc.StatusCode.PERMISSION_DENIED,
                        "permission denied", BOB)
        await h.refused("AssignData", fpb.AssignDataRequest(
            task_id=tid, inputs=[fpb.DataMap(data_name="in", data_id=f"input-{UNKNOWN_UUID}")]),
            grpc.StatusCode.INVALID_ARGUMENT, "invalid data id")
        await h.refused("UpdateFunction", fpb.UpdateFunctionRequest(function_id=fid, executor_type="nope"),
                        grpc.StatusCode.PERMISSION_DENIED, "permission denied", FO2)
        await h.refused("UpdateFunction", fpb.UpdateFunctionRequest(function_id=fid, executor_type="nope"),
                        invalid, "Invalid executor type: nope", FO)
        await h.refused("ListFunctions", fpb.ListFunctionsRequest(user_id="x" * 100_000), grpc.StatusCode.PERMISSION_DENIED,
                        "permission denied", FO)

        assert await h.raw(task_key(bare(tid))) == task_raw
        assert await h.store.keys_with_prefix(b"task-") == tasks_before
        assert await h.store.keys_with_prefix(b"function-") == functions_before
        assert UsageRecord.from_bytes(await h.raw(usage_key(bare(fid))) or b"").use_numbers == 0
        assert await h.drain_staged() == []
        assert (await h.call("GetFunction", fpb.GetFunctionRequest(function_id=fid), FO)).executor_type == "builtin"

    run(platform, body)


def test_garbage_request_bytes(platform: Platform) -> None:
    """A request that does not decode is refused by the gRPC layer; the service carries on."""

    async def body(h: Harness) -> None:
        raw_call = h.channel.unary_unary(
            "/kettle_management_proto.KettleManagement/GetTask",
            request_serializer=lambda b: b,
            response_deserializer=fpb.GetTaskResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw_call(b"\xff\xff\xff\xff", metadata=(("id", "alice"), ("role", "DataOwner-bank")), timeout=10)
        assert (info.value.code(), info.value.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT, "malformed request: the message does not decode"
        )
        await h.refused("GetTask", fpb.GetTaskRequest(task_id="task-x"), grpc.StatusCode.INVALID_ARGUMENT,
                        "invalid task id")

    run(platform, body)


def test_file_records_in_storage(platform: Platform) -> None:
    """What the data-file RPCs store: ``input-<uuid>`` / ``output-<uuid>`` records, new ones
    create-only, updates as new records, derived inputs under the output's UUID; the
    errors only a direct caller can provoke (no crypto_info at all)."""
    gcm = common_pb.FileCryptoInfo(schema="aes-gcm-128", key=bytes(16), iv=bytes(12))
    cmac = bytes(range(16))
    invalid, internal = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL

    async def body(h: Harness) -> None:
        input_id = (await h.call("RegisterInputFile", fpb.RegisterInputFileRequest(
            url="https://files.example/in.enc", cmac=cmac, crypto_info=gcm))).data_id
        stored = FileRecord.from_bytes(await h.raw(input_key(bare(input_id))) or b"")
        assert stored == FileRecord(bare(input_id), "https://files.example/in.enc",
                                    CryptoInfo("aes-gcm-128", bytes(16), bytes(12)), ("alice",), cmac)

        output_id = (await h.call("RegisterOutputFile", fpb.RegisterOutputFileRequest(
            url="https://files.example/out.enc", crypto_info=gcm))).data_id
        assert FileRecord.from_bytes(await h.raw(output_key(bare(output_id))) or b"").cmac is None

        # absent crypto_info (the SDKs always send one)
        await h.refused("RegisterInputFile", fpb.RegisterInputFileRequest(url="https://h/x", cmac=cmac), invalid,
                        "missing crypto_info")
        await h.refused("RegisterOutputFile", fpb.RegisterOutputFileRequest(url="https://h/x"), invalid,
                        "missing crypto_info")

        # updates are new records; the old ones stay as they were
        before = await h.raw(input_key(bare(input_id)))
        updated = (await h.call("UpdateInputFile", fpb.UpdateInputFileRequest(data_id=input_id, url="https://files.example/new"))).data_id
        assert updated != input_id and await h.raw(input_key(bare(input_id))) == before
        assert FileRecord.from_bytes(await h.raw(input_key(bare(updated))) or b"").url == "https://files.example/new"

        # the scheduler records an output's cmac; then the output can become an input of the same UUID
        await h.refused("RegisterInputFromOutput", fpb.RegisterInputFromOutputRequest(data_id=output_id), invalid,
                        "invalid output file")
        written = replace(FileRecord.from_bytes(await h.raw(output_key(bare(output_id))) or b""), cmac=cmac)
        await h.store.put(output_key(bare(output_id)), written.to_bytes())
        derived = (await h.call("RegisterInputFromOutput", fpb.RegisterInputFromOutputRequest(data_id=output_id))).data_id
        assert derived == "input-" + bare(output_id)
        raw = await h.raw(input_key(bare(output_id)))
        assert FileRecord.from_bytes(raw or b"") == written
        again = await h.call("RegisterInputFromOutput", fpb.RegisterInputFromOutputRequest(data_id=output_id))
        assert again.data_id == derived and await h.raw(input_key(bare(output_id))) == raw

        # a different input already under that UUID (a collision) is never overwritten
        other = await h.call("RegisterOutputFile", fpb.RegisterOutputFileRequest(url="https://files.example/o2", crypto_info=gcm))
        finished = replace(FileRecord.from_bytes(await h.raw(output_key(bare(other.data_id))) or b""), cmac=cmac)
        await h.store.put(output_key(finished.uuid), finished.to_bytes())
        squatter = replace(finished, url="https://files.example/someone-else")
        await h.store.put(input_key(finished.uuid), squatter.to_bytes())
        await h.refused("RegisterInputFromOutput", fpb.RegisterInputFromOutputRequest(data_id=other.data_id),
                        internal, "service internal error")
        assert FileRecord.from_bytes(await h.raw(input_key(finished.uuid)) or b"") == squatter

        # a corrupt record is INTERNAL "service internal error", never a crash
        await h.store.put(input_key(UNKNOWN_UUID), b"{not json")
        await h.refused("GetInputFile", fpb.GetInputFileRequest(data_id=f"input-{UNKNOWN_UUID}"), internal,
                        "service internal error")
        await h.store.delete(input_key(UNKNOWN_UUID))

        # management refuses callers without metadata, as for every RPC
        await h.refused("GetInputFile", fpb.GetInputFileRequest(data_id=input_id), grpc.StatusCode.UNKNOWN,
                        "missing user id", None)

    run(platform, body)


def test_assigned_files_reach_the_staged_task(platform: Platform) -> None:
    """AssignData stores snapshots of the file records; InvokeTask stages exactly those."""
    gcm = common_pb.FileCryptoInfo(schema="aes-gcm-128", key=bytes(16), iv=bytes(12))

    async def body(h: Harness) -> None:
        fid = await h.register(inputs=[fpb.FunctionInput(name="data")], outputs=[fpb.FunctionOutput(name="result")])
        tid = (await h.call("CreateTask", fpb.CreateTaskRequest(
            function_id=fid, function_arguments='{"message": "x"}', executor="builtin",
            inputs_ownership=[fpb.OwnerList(data_name="data", uids=["alice"])],
            outputs_ownership=[fpb.OwnerList(data_name="result", uids=["bob"])]))).task_id
        data = (await h.call("RegisterInputFile", fpb.RegisterInputFileRequest(
            url="https://files.example/in.enc", cmac=bytes(16), crypto_info=gcm))).data_id
        result = (await h.call("RegisterOutputFile", fpb.RegisterOutputFileRequest(
            url="https://files.example/out.enc", crypto_info=gcm), BOB)).data_id
        await h.call("AssignData", fpb.AssignDataRequest(task_id=tid, inputs=[fpb.DataMap(data_name="data", data_id=data)]))
        # bob is a participant (an output owner): he assigns his output
        await h.call("AssignData", fpb.AssignDataRequest(
            task_id=tid, outputs=[fpb.DataMap(data_name="result", data_id=result)]), BOB)
        task = await h.task(tid)
        assert (task.status, [(m.data_name, m.data_id) for m in task.assigned_inputs],
                [(m.data_name, m.data_id) for m in task.assigned_outputs]) == (
            1, [("data", data)], [("result", result)])
        input_record = FileRecord.from_bytes(await h.raw(input_key(bare(data))) or b"")
        output_record = FileRecord.from_bytes(await h.raw(output_key(bare(result))) or b"")
        stored = TaskRecord.from_bytes(await h.raw(task_key(bare(tid))) or b"")
        assert (stored.assigned_inputs, stored.assigned_outputs) == ({"data": input_record}, {"result": output_record})

        await h.call("ApproveTask", fpb.ApproveTaskRequest(task_id=tid))
        await h.call("ApproveTask", fpb.ApproveTaskRequest(task_id=tid), BOB)
        await h.call("InvokeTask", fpb.InvokeTaskRequest(task_id=tid))
        [staged] = await h.drain_staged()
        assert (staged.input_data, staged.output_data) == ({"data": input_record}, {"result": output_record})

    run(platform, body)


def test_query_audit_logs_is_for_admins(platform: Platform) -> None:
    async def body(h: Harness) -> None:
        for user in (FO, ALICE, ("dom", "DataOwnerManager-bank")):
            await h.refused("QueryAuditLogs", fpb.QueryAuditLogsRequest(query="message:x", limit=10),
                            grpc.StatusCode.PERMISSION_DENIED, "permission denied", user)
        # SaveLogs carries no user: it is the frontend's flusher
        assert isinstance(await h.call("SaveLogs", mpb.SaveLogsRequest(), None), empty_pb2.Empty)

    run(platform, body)


# === failure paths, in process (an in-memory store behind the real servicer) ===================


class MemoryStore(PlatformStore):
    """The platform store's raw operations in memory; typed helpers and ``update_task``
    are the real ones. ``fail`` names raw operations that raise a storage failure."""

    def __init__(self) -> None:
        super().__init__(peers=None)  # type: ignore[arg-type]  # every raw operation is overridden
        self.records: dict[bytes, bytes] = {}
        self.queues: dict[bytes, list[bytes]] = {}
        self.fail: set[str] = set()
        self.down: set[str] = set()
        """Operations that find the storage service unreachable."""

    def _maybe_fail(self, operation: str, key: bytes = b"") -> None:
        if operation in self.down:
            raise StorageUnavailable()
        if operation in self.fail or f"{operation}:{key.decode()}" in self.fail:
            raise StorageError(f"storage {operation} failed: UNAVAILABLE test")

    async def get(self, key: bytes) -> bytes | None:
        self._maybe_fail("get", key)
        return self.records.get(key)

    async def put(self, key: bytes, value: bytes) -> None:
        self._maybe_fail("put", key)
        self.records[key] = value

    async def delete(self, key: bytes) -> None:
        self.records.pop(key, None)

    async def keys_with_prefix(self, prefix: bytes) -> list[bytes]:
        return sorted(k for k in self.records if k.startswith(prefix))

    async def compare_and_put(
        self, key: bytes, expected: bytes | None, value: bytes, also: Sequence[RecordWrite] = (),
        *, compared: Sequence[RecordChange] = (), enqueue: StagedItem | None = None,
    ) -> tuple[bool, bytes | None]:
        self._maybe_fail("compare_and_put", key)
        if any(self.records.get(k) != e for k, e, _ in ((key, expected, value), *compared)):
            return False, self.records.get(key)
        for other, other_value in also:
            if other_value is None:
                self.records.pop(other, None)
            else:
                self.records[other] = other_value
        for other, _, other_value in compared:
            self.records[other] = other_value
        self.records[key] = value
        if enqueue is not None:
            queue, item, signal_key = enqueue
            self.queues.setdefault(queue, []).append(item)
            if signal_key:
                self.records[signal_key] = uuid.uuid4().bytes
        return True, value

    async def enqueue(self, queue: bytes, value: bytes, signal_key: bytes = b"") -> None:
        self._maybe_fail("enqueue", queue)
        self.queues.setdefault(queue, []).append(value)
        if signal_key:
            self.records[signal_key] = uuid.uuid4().bytes


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code, self.details = code, details


class FakeContext:
    def __init__(self, user: User) -> None:
        self._metadata = (("id", user[0]), ("role", user[1]))

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


def test_an_invoke_is_one_storage_step_that_a_failure_leaves_undone() -> None:
    async def body() -> None:
        store = MemoryStore()
        servicer = KettleManagementServicer(store)
        fid = (await servicer.RegisterFunction(fpb.RegisterFunctionRequest(
            name="builtin-echo", executor_type="builtin", public=True, usage_quota=1,
            arguments=[fpb.FunctionArgument(key="message", allow_overwrite=True)]), FakeContext(FO))).function_id
        tid = (await servicer.CreateTask(fpb.CreateTaskRequest(
            function_id=fid, function_arguments='{"message": "x"}', executor="builtin"), FakeContext(ALICE))).task_id
        before = store.records[task_key(bare(tid))]

        # The step fails: nothing of it happened (the reference's text for a storage failure)
        store.fail = {"compare_and_put"}
        with pytest.raises(Aborted) as info:
            await servicer.InvokeTask(fpb.InvokeTaskRequest(task_id=tid), FakeContext(ALICE))
        assert (info.value.code, info.value.details) == (grpc.StatusCode.INTERNAL, "service internal error")
        assert store.records[task_key(bare(tid))] == before
        assert UsageRecord.from_bytes(store.records[usage_key(bare(fid))]).use_numbers == 0
        assert store.queues.get(STAGED_TASK_QUEUE) is None

        # Storage unreachable: UNAVAILABLE naming storage (the caller tries again), nothing happened
        store.fail, store.down = set(), {"compare_and_put"}
        with pytest.raises(Aborted) as info:
            await servicer.InvokeTask(fpb.InvokeTaskRequest(task_id=tid), FakeContext(ALICE))
        assert (info.value.code, info.value.details) == (grpc.StatusCode.UNAVAILABLE, unavailable_message("storage"))
        assert store.records[task_key(bare(tid))] == before
        assert store.queues.get(STAGED_TASK_QUEUE) is None

        # Staged, counted once and queued with the scheduler's wake-up signal, in one step
        store.down = set()
        await servicer.InvokeTask(fpb.InvokeTaskRequest(task_id=tid), FakeContext(ALICE))
        assert TaskRecord.from_bytes(store.records[task_key(bare(tid))]).status == TaskStatus.STAGED
        assert len(store.queues[STAGED_TASK_QUEUE]) == 1
        assert STAGED_SIGNAL_KEY in store.records
        assert UsageRecord.from_bytes(store.records[usage_key(bare(fid))]).use_numbers == 1

        # any other storage failure reaches the client as the reference's text
        store.fail = {"get"}
        with pytest.raises(Aborted) as info:
            await servicer.GetTask(fpb.GetTaskRequest(task_id=tid), FakeContext(ALICE))
        assert (info.value.code, info.value.details) == (grpc.StatusCode.INTERNAL, "service internal error")

    asyncio.run(body())
