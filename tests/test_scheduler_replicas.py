"""Two scheduler processes over one storage: any of them serves any call of a node.

Each scheduler is a real ``kettle service scheduler`` process on a port of its own
(the second one reads a copy of the home's configuration that moves its port, named
by ``KETTLE_CONFIG``). In most tests the test process is the execution node (its
attested identity), holding a channel to each scheduler, so it decides which one each
call reaches; on PostgreSQL each scheduler then talks to a storage process of its
own, both serving one database. The last test runs a real execution node whose
channel balances over both schedulers (round-robin), and kills one mid-batch.
Leases are 3 s here.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from conftest import (
    Platform,
    free_ports,
    make_home,
    patched_environment,
    postgresql_schema,
    reload,
)
from test_scheduler_execution import Management, expect_code, run

from kettle.config import Config, parse_config
from kettle.launcher import Child, spawn
from kettle.model.records import (
    STAGED_TASK_QUEUE,
    StagedTask,
    TaskStatus,
    cancel_request_key,
)
from kettle.model.scheduling import EXECUTOR_TASK_PREFIX, LEASE_PREFIX, lease_key
from kettle.rpc.generated import kettle_scheduler_pb2 as pb
from kettle.rpc.generated import kettle_scheduler_pb2_grpc as pb_grpc
from kettle.rpc.generated import teaclave_common_pb2 as common_pb
from kettle.services.runtime import ServiceRuntime

LEASE_SECS = 3
EXECUTING = common_pb.Executing


def moved(config_text: str, service: str, port: int) -> str:
    """The configuration with ``service``'s internal endpoint on ``port``."""
    pattern = rf'^{service} = \{{ listen_address = "127\.0\.0\.1:\d+", advertised_address = "https://localhost:\d+" \}}$'
    endpoint = f'{service} = {{ listen_address = "127.0.0.1:{port}", advertised_address = "https://localhost:{port}" }}'
    text, count = re.subn(pattern, endpoint, config_text, flags=re.MULTILINE)
    assert count == 1, service
    return text


@dataclass
class Replicas:
    platform: Platform
    second: Config
    """The configuration the second scheduler (and on PostgreSQL, the second storage) reads."""


def start_replicas(p: Platform, shared_storage: bool) -> Replicas:
    """Storage and a scheduler from the home's configuration, then a second scheduler
    (with its own storage unless ``shared_storage``) from a moved copy of it."""
    text = p.config.path("kettle.toml").read_text()
    scheduler_port, storage_port = free_ports(2)
    second_text = moved(text, "scheduler", scheduler_port)
    if not shared_storage:
        second_text = moved(second_text, "storage", storage_port)
    second_path = p.home / "kettle-replica.toml"
    second_path.write_text(second_text)
    p.start(("storage", "scheduler"))
    with patched_environment(KETTLE_CONFIG=str(second_path)):
        if not shared_storage:
            p.children.append(spawn("storage-2", p.config, service="storage"))
        p.children.append(spawn("scheduler-2", p.config, service="scheduler"))
    return Replicas(p, parse_config(second_text, p.home))


@pytest.fixture(autouse=True, scope="module")
def short_leases() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KETTLE_SCHEDULER_LEASE_SECS", str(LEASE_SECS))
        yield


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def replicas(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path, short_leases: None
) -> Iterator[Replicas]:
    if request.param == "sqlite":
        p = Platform(make_home(tmp_path_factory.mktemp("replicas"), _auditor_cache))
        try:
            yield start_replicas(p, shared_storage=True)
        finally:
            p.stop()
        return
    with postgresql_schema() as dsn, patched_environment(KETTLE_STORAGE_DSN=dsn):
        extra = '[storage]\nbackend = "postgresql"\n'
        p = Platform(make_home(tmp_path_factory.mktemp("replicas-pg"), _auditor_cache, extra=extra))
        try:
            yield start_replicas(p, shared_storage=False)
        finally:
            p.stop()


class Node:
    """The execution node's side, with a stub for each scheduler: ``self.schedulers[0]`` and ``[1]``."""

    def __init__(self, replicas: Replicas) -> None:
        self._configs = (replicas.platform.config, replicas.second)

    async def __aenter__(self) -> Node:
        self.runtimes = [ServiceRuntime("execution", config) for config in self._configs]
        for runtime in self.runtimes:
            await runtime.attest()
        self.schedulers = [pb_grpc.KettleSchedulerStub(r.peers.channel("scheduler")) for r in self.runtimes]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for runtime in self.runtimes:
            await runtime.identities.stop()
            await runtime.peers.close()

    async def pull(self, via: int, executor: str, wait_ms: int = 10_000) -> pb.PullTaskResponse:
        return await self.schedulers[via].PullTask(pb.PullTaskRequest(executor_id=executor, wait_ms=wait_ms))

    async def running(self, via: int, executor: str, task_id: str) -> None:
        await self.schedulers[via].UpdateTaskStatus(pb.UpdateTaskStatusRequest(executor_id=executor, task_id=task_id))

    async def beat(self, via: int, executor: str, task_id: str) -> pb.HeartbeatResponse:
        return await self.schedulers[via].Heartbeat(
            pb.HeartbeatRequest(executor_id=executor, status=EXECUTING, task_id=task_id))

    async def result(self, via: int, executor: str, task_id: str, value: bytes) -> None:
        ok = common_pb.TaskResult(Ok=common_pb.TaskOutputs(return_value=value))
        await self.schedulers[via].UpdateTaskResult(
            pb.UpdateTaskResultRequest(executor_id=executor, task_id=task_id, result=ok))


def task_of(pulled: pb.PullTaskResponse) -> str:
    assert pulled.found
    return StagedTask.from_bytes(pulled.staged_task).task_id


async def no_scheduler_state_left(m: Management) -> None:
    for prefix in (LEASE_PREFIX, EXECUTOR_TASK_PREFIX):
        for key in await m.store.keys_with_prefix(prefix):
            assert await m.gone(key), key


def test_tasks_pulled_from_either_scheduler_are_each_handed_out_once_and_end_once(replicas: Replicas) -> None:
    count, executors = 24, 6

    async def body() -> None:
        async with Management(replicas.platform.config) as m, Node(replicas) as node:
            ids = [await m.stage({"message": f"echo {i}"}) for i in range(count)]
            handed: list[tuple[str, str, int]] = []

            async def executor(n: int) -> None:
                me, turn = str(uuid.uuid4()), n
                while True:
                    # Each call goes to the other scheduler than the one before.
                    pulled = await node.pull(turn % 2, me, wait_ms=1_500)
                    if not pulled.found:
                        return
                    task_id = task_of(pulled)
                    handed.append((task_id, me, pulled.attempt))
                    await node.running((turn + 1) % 2, me, task_id)
                    assert (await node.beat(turn % 2, me, task_id)).command == common_pb.NoAction
                    message = StagedTask.from_bytes(pulled.staged_task).function_arguments
                    await node.result((turn + 1) % 2, me, task_id, message.encode())
                    turn += 1

            await asyncio.gather(*(executor(n) for n in range(executors)))
            assert sorted(task_id for task_id, _, _ in handed) == sorted(ids)  # each exactly once
            assert {attempt for _, _, attempt in handed} == {1}
            assert len({me for _, me, _ in handed}) > 1
            for i, task_id in enumerate(ids):
                done = await m.task(task_id)
                assert (done.status, done.attempts) == (TaskStatus.FINISHED, 1)
                assert done.result.outputs is not None and f"echo {i}".encode() in done.result.outputs.return_value
            await no_scheduler_state_left(m)
            assert await m.store.dequeue(STAGED_TASK_QUEUE, 1) is None

    run(body)


def test_a_node_whose_heartbeats_go_to_the_other_scheduler_keeps_its_task(replicas: Replicas) -> None:
    async def body() -> None:
        async with Management(replicas.platform.config) as m, Node(replicas) as node:
            me = str(uuid.uuid4())
            task_id = await m.stage({"message": "kept"})
            assert task_of(await node.pull(0, me)) == task_id
            await node.running(1, me, task_id)
            started = time.monotonic()
            while time.monotonic() - started < 3 * LEASE_SECS:  # three leases, every heartbeat to the other one
                assert (await node.beat(1, me, task_id)).command == common_pb.NoAction
                await asyncio.sleep(1.0)
            running = await m.task(task_id)
            assert (running.status, running.attempts) == (TaskStatus.RUNNING, 1)
            await node.result(1, me, task_id, b"kept")
            done = await m.task(task_id)
            assert done.status == TaskStatus.FINISHED and done.result.outputs is not None
            assert done.result.outputs.return_value == b"kept"
            await no_scheduler_state_left(m)

    run(body)


def test_a_silent_node_loses_its_task_once_though_both_schedulers_scan(replicas: Replicas) -> None:
    async def body() -> None:
        async with Management(replicas.platform.config) as m, Node(replicas) as node:
            silent, other, third = (str(uuid.uuid4()) for _ in range(3))
            task_id = await m.stage({"message": "outlives its node"})
            assert task_of(await node.pull(0, silent)) == task_id
            await node.running(1, silent, task_id)
            requeued = await m.wait(task_id, lambda t: t.status == TaskStatus.STAGED, timeout=LEASE_SECS + 10)
            assert requeued.attempts == 1
            again = await node.pull(1, other)
            assert (task_of(again), again.attempt) == (task_id, 2)
            # One queue item only: nothing more to pull, from either scheduler.
            nothing = await asyncio.gather(node.pull(0, third, wait_ms=2_000), node.pull(1, third, wait_ms=2_000))
            assert not any(pulled.found for pulled in nothing)
            # The silent node is told to stop, whichever scheduler it reaches, and its late result is discarded.
            for via in (0, 1):
                assert (await node.beat(via, silent, task_id)).command == common_pb.Stop
            await expect_code(grpc.StatusCode.FAILED_PRECONDITION, node.running(0, silent, task_id))
            await node.result(0, silent, task_id, b"late")
            assert (await m.task(task_id)).status == TaskStatus.STAGED
            await node.running(0, other, task_id)
            await node.result(1, other, task_id, b"second run")
            done = await m.task(task_id)
            assert (done.status, done.attempts) == (TaskStatus.FINISHED, 2)
            assert done.result.outputs is not None and done.result.outputs.return_value == b"second run"
            await no_scheduler_state_left(m)

    run(body)


def test_a_result_reaches_either_scheduler_and_is_applied_once(replicas: Replicas) -> None:
    async def body() -> None:
        async with Management(replicas.platform.config) as m, Node(replicas) as node:
            me = str(uuid.uuid4())
            task_id = await m.stage({"message": "once"})
            assert task_of(await node.pull(1, me)) == task_id
            await node.running(1, me, task_id)
            await node.result(0, me, task_id, b"first")  # to the scheduler that did not hand it out
            done = await m.task(task_id)
            assert done.status == TaskStatus.FINISHED and done.result.outputs is not None
            assert done.result.outputs.return_value == b"first"
            for via in (0, 1):  # a repeated or late report is discarded, wherever it goes
                await node.result(via, me, task_id, b"again")
            assert await m.task(task_id) == done

            # The same node's result sent to both at once (a retry racing the first): one counts.
            raced = await m.stage({"message": "raced"})
            assert task_of(await node.pull(0, me)) == raced
            await node.running(0, me, raced)
            await asyncio.gather(node.result(0, me, raced, b"via A"), node.result(1, me, raced, b"via B"))
            ended = await m.task(raced)
            assert ended.status == TaskStatus.FINISHED and ended.result.outputs is not None
            assert ended.result.outputs.return_value in (b"via A", b"via B")
            await no_scheduler_state_left(m)

    run(body)


def test_a_cancel_is_seen_by_whichever_scheduler_gets_the_heartbeat(replicas: Replicas) -> None:
    async def body() -> None:
        async with Management(replicas.platform.config) as m, Node(replicas) as node:
            me = str(uuid.uuid4())
            task_id = await m.stage({"message": "canceled"})
            assert task_of(await node.pull(0, me)) == task_id
            await node.running(0, me, task_id)
            await m.cancel(task_id)
            told = await node.beat(1, me, task_id)
            assert (told.command, told.canceled) == (common_pb.Stop, True)
            canceled = await m.task(task_id)
            assert (canceled.status, canceled.result.failure) == (TaskStatus.CANCELED, "Task Canceled by the user")
            assert await m.gone(cancel_request_key(task_id))
            again = await node.beat(0, me, task_id)  # the first answer may be lost: told again
            assert (again.command, again.canceled) == (common_pb.Stop, True)
            # The canceled run's receipt is kept by the scheduler that did not cancel it.
            receipt = common_pb.TaskResult(Err=common_pb.TaskFailure(reason="Canceled", receipt=b'{"receipt":1}'))
            await node.schedulers[0].UpdateTaskResult(
                pb.UpdateTaskResultRequest(executor_id=me, task_id=task_id, result=receipt))
            kept = await m.task(task_id)
            assert (kept.status, kept.result.receipt) == (TaskStatus.CANCELED, b'{"receipt":1}')
            assert await m.gone(lease_key(task_id))
            after = await node.beat(1, me, task_id)
            assert (after.command, after.canceled) == (common_pb.Stop, False)

    run(body)


def test_two_queue_items_of_one_task_taken_by_both_schedulers_at_once_hand_it_out_once(replicas: Replicas) -> None:
    """A duplicate item (after a crash, or a claim that ran out) taken by the other
    scheduler at the same moment: one hand-out wins, the other item is dropped."""

    async def body() -> None:
        async with Management(replicas.platform.config) as m, Node(replicas) as node:
            queued: list[StagedTask] = []
            for _ in range(3):
                task_id = await m.stage({"message": "twice queued"}, tamper=lambda s: queued.append(s) or s)
                await m.enqueue(queued[-1])
                first, second = str(uuid.uuid4()), str(uuid.uuid4())
                pulls = await asyncio.gather(node.pull(0, first, wait_ms=2_000), node.pull(1, second, wait_ms=2_000))
                found = [pulled for pulled in pulls if pulled.found]
                assert [(task_of(pulled), pulled.attempt) for pulled in found] == [(task_id, 1)]
                assert (await m.task(task_id)).attempts == 1
                winner = first if pulls[0].found else second
                await node.result(1, winner, task_id, b"ran once")
                assert (await m.task(task_id)).status == TaskStatus.FINISHED
            await no_scheduler_state_left(m)
            assert await m.store.dequeue(STAGED_TASK_QUEUE, 1) is None

    run(body)


def test_a_node_asking_the_other_scheduler_again_gets_the_same_attempt_or_gives_up_its_started_task(
    replicas: Replicas,
) -> None:
    async def body() -> None:
        async with Management(replicas.platform.config) as m, Node(replicas) as node:
            me = str(uuid.uuid4())
            task_id = await m.stage({"message": "asked twice"})
            assert task_of(await node.pull(0, me)) == task_id
            # The answer was lost: the node asks again, this time the other scheduler.
            again = await node.pull(1, me, wait_ms=500)
            assert (task_of(again), again.attempt) == (task_id, 1)
            await node.running(1, me, task_id)
            # Asking for work while it runs a started task: it gave that task up; it goes back
            # on the queue once, and this pull takes it (the only item) as the next attempt.
            abandoned = await node.pull(0, me, wait_ms=5_000)
            assert (task_of(abandoned), abandoned.attempt) == (task_id, 2)
            assert (await m.task(task_id)).attempts == 2
            await node.running(0, me, task_id)
            await node.result(1, me, task_id, b"second attempt")
            done = await m.task(task_id)
            assert (done.status, done.attempts) == (TaskStatus.FINISHED, 2)
            assert not (await node.pull(1, me, wait_ms=500)).found
            await no_scheduler_state_left(m)

    run(body)


@pytest.fixture
def balanced(tmp_path: Path, _auditor_cache: Path, short_leases: None) -> Iterator[tuple[Platform, list[Child]]]:
    """Storage, two schedulers that every peer reaches through one round-robin channel
    (``advertised_address`` lists both), and a real execution node with two task slots."""
    port_a, port_b = free_ports(2)
    p = Platform(make_home(tmp_path / "home", _auditor_cache, extra="[execution]\nconcurrent_tasks = 2\n"))
    both = f'["https://localhost:{port_a}", "https://127.0.0.1:{port_b}"]'
    text = p.config.path("kettle.toml").read_text()
    text = moved(text, "scheduler", port_a).replace(f'advertised_address = "https://localhost:{port_a}"',
                                                   f"advertised_address = {both}")
    p.config.path("kettle.toml").write_text(text)
    second = p.home / "scheduler-b.toml"
    second.write_text(text.replace(f'listen_address = "127.0.0.1:{port_a}"', f'listen_address = "127.0.0.1:{port_b}"'))
    p.config = reload(p.config)
    try:
        p.start(("storage", "scheduler"))
        with patched_environment(KETTLE_CONFIG=str(second)):
            p.children.append(spawn("scheduler-b", p.config, service="scheduler"))
        p.start_service("execution")
        # p.stop() stops them in reverse: the node, both schedulers, then storage.
        yield p, [p.child("scheduler"), p.child("scheduler-b")]
    finally:
        p.stop()


def test_a_real_node_balanced_over_two_schedulers_runs_every_task_once_when_one_dies(
    balanced: tuple[Platform, list[Child]],
) -> None:
    p, (scheduler_a, scheduler_b) = balanced
    count = 60

    async def body() -> None:
        async with Management(p.config) as m:
            ids = [await m.stage({"message": f"echo {i}"}) for i in range(count)]
            await m.wait(ids[count // 4], lambda t: t.status.terminal, timeout=60)
            scheduler_a.process.kill()  # no goodbye: whatever it was in the middle of is cut off
            scheduler_a.process.wait()
            for i, task_id in enumerate(ids):
                done = await m.ended(task_id, timeout=90)
                assert done.status == TaskStatus.FINISHED, (i, done.status, done.result)
                assert done.result.outputs is not None and done.result.outputs.return_value == f"echo {i}".encode()
                assert done.attempts == 1, (i, done.attempts)  # handed out once, its result applied once
            await no_scheduler_state_left(m)
            assert await m.store.dequeue(STAGED_TASK_QUEUE, 1) is None

    run(body)
    handed = [child.log_path.read_text().count("handed to executor") for child in (scheduler_a, scheduler_b)]
    assert all(handed), handed  # both served the node before one died


@pytest.fixture
def replicas_of_its_own(tmp_path: Path, _auditor_cache: Path, short_leases: None) -> Iterator[Replicas]:
    """Two schedulers over one SQLite storage, for a test that restarts the storage."""
    p = Platform(make_home(tmp_path / "home", _auditor_cache))
    try:
        yield start_replicas(p, shared_storage=True)
    finally:
        p.stop()


def test_a_storage_outage_longer_than_a_lease_loses_no_live_node_its_task(replicas_of_its_own: Replicas) -> None:
    """While storage is down nobody can renew a lease; when it is back, every scheduler gives
    the leases time before it looks at their deadlines again, so the node keeps its task."""
    p = replicas_of_its_own.platform

    async def body() -> None:
        async with Management(p.config) as m, Node(replicas_of_its_own) as node:
            me = str(uuid.uuid4())
            task_id = await m.stage({"message": "outlives the outage"})
            assert task_of(await node.pull(0, me)) == task_id
            await node.running(1, me, task_id)
            answers: list[int] = []

            async def heartbeats(until: float) -> None:
                turn = 0
                while time.monotonic() < until:
                    with contextlib.suppress(grpc.aio.AioRpcError):  # storage down: UNAVAILABLE, as a node sees it
                        answers.append((await node.beat(turn % 2, me, task_id)).command)
                    turn += 1
                    await asyncio.sleep(1.0)

            beating = asyncio.ensure_future(heartbeats(time.monotonic() + 6 * LEASE_SECS))
            await asyncio.sleep(1.5)
            storage = p.child("storage").process
            storage.kill()
            storage.wait()
            await asyncio.sleep(2 * LEASE_SECS)
            await asyncio.to_thread(p.start_service, "storage")
            await beating
            assert answers and common_pb.Stop not in answers
            kept = await m.task(task_id)
            assert (kept.status, kept.attempts) == (TaskStatus.RUNNING, 1)
            await node.result(0, me, task_id, b"after the outage")
            done = await m.task(task_id)
            assert (done.status, done.attempts) == (TaskStatus.FINISHED, 1)

    run(body)
