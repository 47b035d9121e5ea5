"""Scheduler and execution nodes as real processes over attested gRPC, with real storage.

The test process stages tasks the way management does (with management's own
attested identity): it stores the function and the task in status Staged,
enqueues the staged task and rewrites the staged-task signal; a cancel is the
cancel-request record. To hold a task in Running, a node's *spare* worker
process (started before a task arrives) is SIGSTOPped: the next task goes to that
frozen worker. Leases are 3 s here (``KETTLE_SCHEDULER_LEASE_SECS``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from conftest import Platform, make_home

from kettle.config import Config
from kettle.launcher import Child, spawn, stop_all
from kettle.model.functions import function_digest
from kettle.model.records import (
    STAGED_SIGNAL_KEY,
    STAGED_TASK_QUEUE,
    CryptoInfo,
    FileRecord,
    FunctionArgument,
    FunctionRecord,
    StagedTask,
    TaskRecord,
    TaskStatus,
    cancel_request_key,
    function_key,
    output_key,
    task_key,
)
from kettle.model.scheduling import lease_key
from kettle.model.tasks import build_staged_task
from kettle.rpc.generated import kettle_scheduler_pb2 as pb
from kettle.rpc.generated import kettle_scheduler_pb2_grpc as pb_grpc
from kettle.rpc.generated import teaclave_common_pb2 as common_pb
from kettle.services.platform_store import PlatformStore
from kettle.services.runtime import ServiceRuntime
from kettle.services.storage.sealing import Sealer, _location

LEASE_SECS = 3
SERVICES = ("storage", "scheduler", "execution")
T = TypeVar("T")


# --- management's side, from the test process ---------------------------------------------


class Management:
    """Stages, cancels and watches tasks with management's attested identity."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._functions: dict[tuple[str, str], FunctionRecord] = {}

    async def __aenter__(self) -> Management:
        self.runtime = ServiceRuntime("management", self._config)
        await self.runtime.attest()
        self.store = PlatformStore(self.runtime.peers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runtime.identities.stop()
        await self.runtime.peers.close()

    async def function(self, name: str, executor_type: str = "builtin") -> FunctionRecord:
        if (name, executor_type) not in self._functions:
            record = FunctionRecord(
                uuid=str(uuid.uuid4()), name=name, description="", public=True, executor_type=executor_type,
                payload=b"", arguments=(FunctionArgument("message"),), inputs=(), outputs=(), owner="bob",
                user_allowlist=(), usage_quota=None,
            )
            await self.store.put(function_key(record.uuid), record.to_bytes())
            self._functions[(name, executor_type)] = record
        return self._functions[(name, executor_type)]

    async def stage(
        self, arguments: dict[str, Any], name: str = "builtin-echo", executor_type: str = "builtin",
        executor: str = "builtin", outputs: dict[str, FileRecord] | None = None, cancel_first: bool = False,
        tamper: Callable[[StagedTask], StagedTask] = lambda staged: staged,
    ) -> str:
        """Store a Staged task pinned to the function and queue its staged task (after ``tamper``)."""
        function = await self.function(name, executor_type)
        args_text = json.dumps(arguments, sort_keys=True, separators=(",", ":"))
        task = TaskRecord(
            uuid=str(uuid.uuid4()), creator="alice", function_id=function.uuid, function_owner="bob",
            function_arguments=args_text, executor=executor, inputs_ownership={},
            outputs_ownership={n: ("alice",) for n in outputs or {}}, participants=("alice",),
            assigned_outputs=outputs or {}, status=TaskStatus.STAGED, function_digest=function_digest(function),
        )
        await self.store.put(task_key(task.uuid), task.to_bytes())
        if cancel_first:
            await self.cancel(task.uuid)
        await self.enqueue(tamper(build_staged_task(task, function)))
        return task.uuid

    async def enqueue(self, staged: StagedTask) -> None:
        await self.store.enqueue(STAGED_TASK_QUEUE, staged.to_bytes())
        await self.store.put(STAGED_SIGNAL_KEY, uuid.uuid4().bytes)

    async def cancel(self, task_id: str) -> None:
        await self.store.put(cancel_request_key(task_id), task_id.encode())

    async def task(self, task_id: str) -> TaskRecord:
        record = await self.store.get_task(task_key(task_id))
        assert record is not None
        return record

    async def wait(self, task_id: str, until: Callable[[TaskRecord], bool], timeout: float = 30.0) -> TaskRecord:
        """Watch the task record (no polling) until ``until`` holds."""
        key = task_key(task_id)
        deadline = time.monotonic() + timeout
        while True:
            raw = await self.store.get(key)
            assert raw is not None
            record = TaskRecord.from_bytes(raw)
            if until(record):
                return record
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"task {task_id} is still {record.status.name} (attempts {record.attempts})")
            await self.store.watch(key, raw, int(min(remaining, 10) * 1000))

    async def gone(self, key: bytes, timeout: float = 10.0) -> bool:
        """Whether the record is (or soon becomes) absent; the scheduler removes leases and
        cancel requests right after the status change that ends a task."""
        deadline = time.monotonic() + timeout
        value = await self.store.get(key)
        while value is not None and time.monotonic() < deadline:
            value = await self.store.watch(key, value, int((deadline - time.monotonic()) * 1000) + 1)
        return value is None

    async def ended(self, task_id: str, timeout: float = 30.0) -> TaskRecord:
        return await self.wait(task_id, lambda t: t.status.terminal, timeout)


def ended_as(status: TaskStatus, reason: str | None = None) -> Callable[[TaskRecord], bool]:
    return lambda t: t.status == status and (reason is None or t.result.failure == reason)


def running(attempt: int = 1) -> Callable[[TaskRecord], bool]:
    return lambda t: t.status == TaskStatus.RUNNING and t.attempts == attempt


# --- processes ---------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue
        if int(ppid) == pid and state != "Z":
            found.append(int(entry.name))
    return found


def workers_of(node: Child) -> list[int]:
    """Live task workers of ``node``: the children of its worker template (``python -m
    kettle.executors.worker``, a child of the node)."""
    templates = [pid for pid in _children(node.process.pid)
                 if b"kettle.executors.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    return sorted(worker for template in templates for worker in _children(template))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def eventually(check: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def waiting_for_its_task(pid: int) -> bool:
    """The forked worker is set up (dies with its template) and blocked reading its job."""
    try:
        return "unix_stream" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


async def freeze_spare(node: Child) -> int:
    """SIGSTOP the node's idle spare worker: the next task the node takes hangs in Running."""
    spares = await eventually(
        lambda: [pid for pid in workers_of(node) if waiting_for_its_task(pid)], what="the spare worker"
    )
    assert len(spares) == 1, spares
    os.kill(spares[0], signal.SIGSTOP)
    return spares[0]


def run(body: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(body())


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def short_leases() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KETTLE_SCHEDULER_LEASE_SECS", str(LEASE_SECS))
        yield


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path, short_leases: None) -> Iterator[Platform]:
    """One platform for the tests that leave it as they found it."""
    p = Platform(make_home(tmp_path_factory.mktemp("scheduling"), _auditor_cache))
    p.start(SERVICES)
    yield p
    p.stop()


@pytest.fixture
def nodes() -> Iterator[list[Child]]:
    """Extra execution nodes a test starts; stopped (and their workers thawed) at the end."""
    started: list[Child] = []
    yield started
    stop_all(started)


def thaw(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


# --- tests --------------------------------------------------------------------------------------


def test_echo_finishes_with_its_message(shared: Platform) -> None:
    async def body() -> None:
        async with Management(shared.config) as m:
            logged = await m.stage({"message": "Hello, Teaclave Tests!", "save_log": "true"})
            quiet = await m.stage({"message": "quiet", "save_log": "false"})
            done = await m.ended(logged)
            assert done.status == TaskStatus.FINISHED, done.result
            assert done.attempts == 1
            assert done.result.outputs is not None
            assert done.result.outputs.return_value == b"Hello, Teaclave Tests!"
            assert done.result.outputs.log == ("[INFO teaclave_function::echo] Hello, Teaclave Tests!",)
            other = await m.ended(quiet)
            assert other.result.outputs is not None and other.result.outputs.log == ()
            assert await m.gone(lease_key(logged))  # the lease ends with the task

    run(body)


def test_function_errors_end_failed_with_the_reason(shared: Platform) -> None:
    async def body() -> None:
        crypto = CryptoInfo("aes-gcm-128", b"k" * 16, b"i" * 12)
        out = FileRecord(str(uuid.uuid4()), "file:///tmp/out", crypto, ("alice",))
        async with Management(shared.config) as m:
            cases = {
                await m.stage({"message": 42}): "Cannot deserialize arguments",
                await m.stage({"message": "x"}, name="builtin-no-such-function"): "Function not found.",
                await m.stage({"message": "x"}, executor_type="python"): "function not available: (Python, Builtin)",
                # echo creates no output: a missing output fails the task (functions.md §4.2)
                await m.stage({"message": "x"}, outputs={"out": out}): "Convert aes-gcm-128: failed to open src file",
            }
            for task_id, reason in cases.items():
                done = await m.ended(task_id)
                assert (done.status, done.result.failure) == (TaskStatus.FAILED, reason)

    run(body)


def test_the_node_runs_only_what_the_digests_pin(shared: Platform) -> None:
    """The node checks the staged task against the digests the task pinned before it runs
    anything: other code, or other arguments, end the task Failed with the reason."""
    refused = "Runtime Error: refused to run: "

    async def body() -> None:
        async with Management(shared.config) as m:
            swapped = await m.stage({"message": "hi"}, tamper=lambda s: replace(s, function_payload=b"other code"))
            altered = await m.stage({"message": "hi"},
                                    tamper=lambda s: replace(s, function_arguments='{"message":"x"}'))
            honest = await m.stage({"message": "hi"})
            payload = "the function payload does not match the digest pinned when the task was created"
            assert (await m.wait(swapped, ended_as(TaskStatus.FAILED, refused + payload))).result.outputs is None
            other = "the staged task is not the task its digest describes"
            await m.wait(altered, ended_as(TaskStatus.FAILED, refused + other))
            done = await m.ended(honest)
            assert done.result.outputs is not None and done.result.outputs.return_value == b"hi"

    run(body)


def test_a_task_canceled_right_after_its_forked_worker_got_it_ends_canceled_killing_only_that_worker(shared: Platform) -> None:
    node = shared.child("execution")

    async def body() -> None:
        async with Management(shared.config) as m:
            frozen = await freeze_spare(node)
            try:
                task_id = await m.stage({"message": "never returned"})
                await m.wait(task_id, running())
                await m.cancel(task_id)
                done = await m.wait(task_id, lambda t: t.status.terminal, timeout=10)
            finally:
                thaw(frozen)
            assert (done.status, done.result.failure) == (TaskStatus.CANCELED, "Task Canceled by the user")
            await eventually(lambda: not alive(frozen), what="the canceled task's worker to be killed")
            assert node.process.poll() is None  # the node itself goes on (Teaclave's exits)
            assert await m.gone(cancel_request_key(task_id))
            assert await m.gone(lease_key(task_id))
            after = await m.ended(await m.stage({"message": "next"}))
            assert after.status == TaskStatus.FINISHED and after.result.outputs is not None
            assert after.result.outputs.return_value == b"next"

    run(body)


def test_one_node_runs_as_many_tasks_at_once_as_it_has_slots(home_factory: Callable[..., Platform]) -> None:
    p = home_factory(extra="[execution]\nconcurrent_tasks = 3\n")
    p.start(SERVICES)
    node = p.child("execution")

    async def body() -> None:
        async with Management(p.config) as m:
            frozen = await freeze_spare(node)
            try:
                stuck = await m.stage({"message": "held"})
                await m.wait(stuck, running())
                # the two other slots go on while the first holds its task
                others = [await m.stage({"message": f"beside {i}"}) for i in range(4)]
                for task_id, i in zip(others, range(4), strict=True):
                    done = await m.ended(task_id)
                    assert done.result.outputs is not None
                    assert done.result.outputs.return_value == f"beside {i}".encode()
                assert (await m.task(stuck)).status == TaskStatus.RUNNING
                await m.cancel(stuck)
                done = await m.wait(stuck, lambda t: t.status.terminal, timeout=10)
                assert done.status == TaskStatus.CANCELED
            finally:
                thaw(frozen)

    run(body)
    assert "3 task(s) at once" in node.log_path.read_text()


def test_a_task_canceled_while_queued_never_runs(shared: Platform) -> None:
    async def body() -> None:
        async with Management(shared.config) as m:
            task_id = await m.stage({"message": "too late"}, cancel_first=True)
            done = await m.ended(task_id)
            assert (done.status, done.result.failure, done.attempts) == (
                TaskStatus.CANCELED, "Task Canceled by the user", 0
            )
            assert await m.gone(cancel_request_key(task_id))
            assert (await m.ended(await m.stage({"message": "fine"}))).status == TaskStatus.FINISHED

    run(body)


def test_a_lost_node_task_is_rerun_on_another_node(home_factory: Callable[..., Platform], nodes: list[Child]) -> None:
    p = home_factory()
    p.start(SERVICES)
    first = p.child("execution")

    async def body() -> None:
        async with Management(p.config) as m:
            frozen = await freeze_spare(first)
            task_id = await m.stage({"message": "survives its node"})
            await m.wait(task_id, running(attempt=1))
            nodes.append(spawn("execution", p.config))
            first.process.kill()  # SIGKILL: no goodbye, the lease just stops being renewed
            first.process.wait()
            await eventually(lambda: not alive(frozen), what="the dead node's worker to die with it")
            done = await m.ended(task_id, timeout=LEASE_SECS + 20)
            assert done.status == TaskStatus.FINISHED, done.result
            assert done.attempts == 2
            assert done.result.outputs is not None and done.result.outputs.return_value == b"survives its node"

    run(body)


def test_a_task_whose_nodes_keep_dying_fails_after_the_bounded_attempts(
    home_factory: Callable[..., Platform], nodes: list[Child], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KETTLE_SCHEDULER_MAX_ATTEMPTS", "2")
    p = home_factory()
    p.start(SERVICES)
    nodes.append(spawn("execution", p.config))
    pool = [p.child("execution"), nodes[0]]

    async def body() -> None:
        async with Management(p.config) as m:
            frozen = [await freeze_spare(node) for node in pool]
            try:
                task_id = await m.stage({"message": "doomed"})
                for attempt in (1, 2):
                    await m.wait(task_id, running(attempt), timeout=LEASE_SECS + 20)
                    # The holder is the node that took its frozen spare (and started a new one).
                    holder = await eventually(
                        lambda: next((n for n in pool if n.process.poll() is None and len(workers_of(n)) == 2), None),
                        what="the node holding the task",
                    )
                    holder.process.kill()
                    holder.process.wait()
                reason = "Runtime Error: Executor Timeout (lost 2 times)"
                done = await m.wait(task_id, lambda t: t.status.terminal, timeout=LEASE_SECS + 20)
                assert (done.status, done.result.failure, done.attempts) == (TaskStatus.FAILED, reason, 2)
                assert await m.gone(lease_key(task_id))
            finally:
                for pid in frozen:
                    thaw(pid)
            await eventually(lambda: not any(alive(pid) for pid in frozen), what="the dead nodes' workers to die")

    run(body)


def test_scheduler_and_storage_restart_mid_batch_loses_and_repeats_nothing(
    home_factory: Callable[..., Platform], nodes: list[Child]
) -> None:
    p = home_factory()
    p.start(SERVICES)
    nodes.append(spawn("execution", p.config))
    count = 200

    async def stage_all() -> list[str]:
        async with Management(p.config) as m:
            ids = [await m.stage({"message": f"echo {i}"}) for i in range(count)]
            await m.wait(ids[count // 4], lambda t: t.status.terminal, timeout=60)
            return ids

    ids = run(stage_all)
    for name in ("scheduler", "storage"):  # no goodbye: whatever was in flight is cut off
        p.child(name).process.kill()
        p.child(name).process.wait()
    p.start_service("storage")
    p.start_service("scheduler")

    async def check_all() -> None:
        async with Management(p.config) as m:
            for i, task_id in enumerate(ids):
                done = await m.ended(task_id, timeout=60)
                assert done.status == TaskStatus.FINISHED, (i, done.status, done.result)
                assert done.result.outputs is not None and done.result.outputs.return_value == f"echo {i}".encode()
                # Handed out exactly once, so run once and its result applied once.
                assert done.attempts == 1, (i, done.attempts)
            for key in await m.store.keys_with_prefix(b"scheduler-lease-"):
                assert await m.gone(key), key
            assert await m.store.dequeue(STAGED_TASK_QUEUE, 1) is None

    run(check_all)


async def expect_code(code: grpc.StatusCode, call: Awaitable[Any]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()


def test_the_scheduler_protocol_with_a_hand_made_node(home_factory: Callable[..., Platform]) -> None:
    """The test process is the execution node (its attested identity), so every answer is visible."""
    p = home_factory()
    p.start(("storage", "scheduler"))

    async def body() -> None:
        node_runtime = ServiceRuntime("execution", p.config)
        await node_runtime.attest()
        stub = pb_grpc.KettleSchedulerStub(node_runtime.peers.channel("scheduler"))
        me, other = str(uuid.uuid4()), str(uuid.uuid4())
        executing = common_pb.Executing
        try:
            async with Management(p.config) as m:
                crypto = CryptoInfo("aes-gcm-128", b"k" * 16, b"i" * 12)
                out = FileRecord(str(uuid.uuid4()), "file:///tmp/out", crypto, ("alice",))
                await m.store.put(output_key(out.uuid), out.to_bytes())
                task_id = await m.stage({"message": "by hand"}, outputs={"out": out})

                # Malformed requests are refused before anything happens (a bad id loses no task).
                bad = "not-a-uuid"
                invalid = grpc.StatusCode.INVALID_ARGUMENT
                await expect_code(invalid, stub.PullTask(pb.PullTaskRequest(executor_id=bad)))
                await expect_code(invalid, stub.Heartbeat(pb.HeartbeatRequest(executor_id=bad)))
                await expect_code(grpc.StatusCode.INVALID_ARGUMENT, stub.Heartbeat(
                    pb.HeartbeatRequest(executor_id=me, status=executing, task_id="task-" + task_id)))
                await expect_code(grpc.StatusCode.INVALID_ARGUMENT, stub.Heartbeat(
                    pb.HeartbeatRequest(executor_id=me, status=7)))  # type: ignore[arg-type]

                pulled = await stub.PullTask(pb.PullTaskRequest(executor_id=me, wait_ms=5000))
                assert (pulled.found, pulled.attempt) == (True, 1)
                assert StagedTask.from_bytes(pulled.staged_task).task_id == task_id
                assert (await m.task(task_id)).attempts == 1

                # Only the holder may report; another node is told to stop.
                await expect_code(grpc.StatusCode.FAILED_PRECONDITION, stub.UpdateTaskStatus(
                    pb.UpdateTaskStatusRequest(executor_id=other, task_id=task_id)))
                stop = await stub.Heartbeat(pb.HeartbeatRequest(executor_id=other, status=executing, task_id=task_id))
                assert stop.command == common_pb.Stop
                await stub.UpdateTaskStatus(pb.UpdateTaskStatusRequest(executor_id=me, task_id=task_id))
                assert (await m.task(task_id)).status == TaskStatus.RUNNING
                beat = await stub.Heartbeat(pb.HeartbeatRequest(executor_id=me, status=executing, task_id=task_id))
                assert beat.command == common_pb.NoAction

                # Results are checked whole before anything is written.
                tag = bytes(range(16))
                await expect_code(grpc.StatusCode.INVALID_ARGUMENT, stub.UpdateTaskResult(
                    pb.UpdateTaskResultRequest(executor_id=me, task_id=task_id)))
                for tags in ({"out": tag[:15]}, {"out": tag, "nope": tag}, {}):
                    ok = common_pb.TaskResult(Ok=common_pb.TaskOutputs(return_value=b"x", tags_map=tags))
                    await expect_code(grpc.StatusCode.INVALID_ARGUMENT, stub.UpdateTaskResult(
                        pb.UpdateTaskResultRequest(executor_id=me, task_id=task_id, result=ok)))
                assert (await m.task(task_id)).status == TaskStatus.RUNNING
                assert (await m.store.get_file(output_key(out.uuid))).cmac is None  # type: ignore[union-attr]

                ok = common_pb.TaskResult(Ok=common_pb.TaskOutputs(return_value=b"done", tags_map={"out": tag}))
                await stub.UpdateTaskResult(pb.UpdateTaskResultRequest(executor_id=me, task_id=task_id, result=ok))
                done = await m.task(task_id)
                assert done.status == TaskStatus.FINISHED and done.result.outputs is not None
                assert done.result.outputs.return_value == b"done" and done.result.outputs.tags_map == {"out": tag}
                assert done.assigned_outputs["out"].cmac == tag
                assert (await m.store.get_file(output_key(out.uuid))).cmac == tag  # type: ignore[union-attr]

                # A repeated or late report is discarded, never applied a second time.
                late = common_pb.TaskResult(Err=common_pb.TaskFailure(reason="late"))
                await stub.UpdateTaskResult(pb.UpdateTaskResultRequest(executor_id=me, task_id=task_id, result=late))
                assert await m.task(task_id) == done
                stop = await stub.Heartbeat(pb.HeartbeatRequest(executor_id=me, status=executing, task_id=task_id))
                assert stop.command == common_pb.Stop

                # The long poll: bounded when nothing comes, woken by an enqueue (no polling interval).
                started = time.monotonic()
                empty = await stub.PullTask(pb.PullTaskRequest(executor_id=me, wait_ms=400))
                assert not empty.found and time.monotonic() - started >= 0.35
                waiting = asyncio.ensure_future(stub.PullTask(pb.PullTaskRequest(executor_id=me, wait_ms=20_000)))
                await asyncio.sleep(0.5)
                started = time.monotonic()
                second = await m.stage({"message": "wake up"})
                woken = await waiting
                assert woken.found and StagedTask.from_bytes(woken.staged_task).task_id == second
                assert time.monotonic() - started < 5
                failure = common_pb.TaskResult(Err=common_pb.TaskFailure(reason="é" * 600))
                await stub.UpdateTaskStatus(pb.UpdateTaskStatusRequest(executor_id=me, task_id=second))
                await stub.UpdateTaskResult(pb.UpdateTaskResultRequest(executor_id=me, task_id=second, result=failure))
                failed = await m.task(second)
                assert failed.status == TaskStatus.FAILED and failed.result.failure == "é" * 512  # 1 KiB
        finally:
            await node_runtime.identities.stop()
            await node_runtime.peers.close()

    run(body)


# --- a result and its output records are one step ---------------------------------------------------


LOG_EVERY_WRITE = (
    "CREATE TABLE write_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, key BLOB NOT NULL, value BLOB NOT NULL)",
    *(f"""CREATE TRIGGER log_{event.lower()} AFTER {event} ON records WHEN NEW.namespace = 'platform'
          BEGIN INSERT INTO write_log (key, value) VALUES (NEW.key, NEW.value); END"""
      for event in ("INSERT", "UPDATE")),
)


def test_no_write_shows_a_finished_task_whose_outputs_lack_its_tags(home_factory: Callable[..., Platform]) -> None:
    """Every write to the platform's records, in the order the storage service made them, is
    logged by a trigger inside the real database; replaying them, no state may show a task
    that ended with a tag its output record does not carry yet (a client waiting for the end
    reads the outputs at once). Deterministic: no timing decides whether the window shows."""
    p = home_factory()
    p.start(("storage", "scheduler"))
    db = sqlite3.connect(p.config.path(p.config.storage.path), isolation_level=None)
    for statement in LOG_EVERY_WRITE:
        db.execute(statement)
    sealer = Sealer(ServiceRuntime("storage", p.config).provider.sealing_key("storage"))

    async def body() -> str:
        node_runtime = ServiceRuntime("execution", p.config)
        await node_runtime.attest()
        stub = pb_grpc.KettleSchedulerStub(node_runtime.peers.channel("scheduler"))
        me = str(uuid.uuid4())
        try:
            async with Management(p.config) as m:
                crypto = CryptoInfo("aes-gcm-128", b"k" * 16, b"i" * 12)
                outputs = {name: FileRecord(str(uuid.uuid4()), f"file:///tmp/{name}", crypto, ("alice",))
                           for name in ("first", "second", "third")}
                for record in outputs.values():
                    await m.store.put(output_key(record.uuid), record.to_bytes())
                task_id = await m.stage({"message": "tagged"}, outputs=outputs)
                assert (await stub.PullTask(pb.PullTaskRequest(executor_id=me, wait_ms=5000))).found
                await stub.UpdateTaskStatus(pb.UpdateTaskStatusRequest(executor_id=me, task_id=task_id))
                tags = {name: bytes([n]) * 16 for n, name in enumerate(outputs, 1)}
                ok = common_pb.TaskResult(Ok=common_pb.TaskOutputs(return_value=b"done", tags_map=tags))
                await stub.UpdateTaskResult(pb.UpdateTaskResultRequest(executor_id=me, task_id=task_id, result=ok))
                assert (await m.task(task_id)).status == TaskStatus.FINISHED
                return task_id
        finally:
            await node_runtime.identities.stop()
            await node_runtime.peers.close()

    task_id = run(body)
    state: dict[bytes, bytes] = {}
    finished_seen = False
    for seq, key, sealed in db.execute("SELECT seq, key, value FROM write_log ORDER BY seq"):
        state[key] = sealer.open(_location(b"record", "platform", key), sealed)
        if key != task_key(task_id):
            continue
        task = TaskRecord.from_bytes(state[key])
        if task.status != TaskStatus.FINISHED:
            continue
        finished_seen = True
        assert task.result.outputs is not None
        for name, tag in task.result.outputs.tags_map.items():
            stored = FileRecord.from_bytes(state[output_key(task.assigned_outputs[name].uuid)])
            assert stored.cmac == tag, f"write {seq} shows the task Finished while output {name!r} lacks its tag"
    db.close()
    assert finished_seen
