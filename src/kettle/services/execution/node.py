"""An execution node's loop: pull a task, confirm it, run it in a worker, report the result.

The node holds its task under a lease that its heartbeats renew (every second,
naming the task), so the scheduler can tell a busy node from a lost one.

- A **Stop** answer to a heartbeat (cancel, or the task is no longer ours) kills
  the worker at once; the node then simply pulls its next task (the reference
  exits the whole process instead, ``spec/platform.md`` §12 row 15).
- A **result is never dropped** for a passing trouble: while the scheduler (or its
  storage) is unreachable the node keeps heartbeating and retrying, so a
  scheduler restart loses nothing. It gives up only when the scheduler says the
  task is not ours, or after a bounded number of refusals for other reasons — the
  lease then runs out and the scheduler re-queues or fails the task, so nothing
  stays Running forever.
- A result the scheduler refuses as malformed is replaced by an ``Err`` saying so.
- A staged task whose payload, function or data is not what its pinned digests and
  approvals cover is never run: it ends Failed with the reason
  (:func:`kettle.model.consent.staged_refusal`).
- Every result the node reports carries its **execution receipt**
  (:mod:`kettle.model.receipts`): what ran, on which data and consent, when, and a
  digest of the result, signed with the node's attested key. The receipt is signed
  for the exact result sent, so a replaced result gets a new one. A run stopped by a
  cancel is reported too, with a receipt whose outcome is Canceled; a refused staged
  task gets a Failed receipt that says nothing ran (start and end are the refusal).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import grpc

from ...attestation.identity import Identity
from ...config import ExecutionConfig, FileAgentConfig, SandboxConfig
from ...errors import AttestationError
from ...executors.job import WorkerJob
from ...model.consent import staged_refusal
from ...model.receipts import MAX_RECEIPT_BYTES, build_receipt, sign_receipt
from ...model.records import StagedTask, TaskResult, truncate_reason
from ...model.scheduling import CANCELED_BY_USER
from ...rpc.channel import PeerChannels
from ...sandbox.host import SandboxHost
from ...sandbox.layers import Layers
from ...rpc.generated import kettle_scheduler_pb2 as pb
from ...rpc.generated import kettle_scheduler_pb2_grpc as pb_grpc
from ...rpc.generated import teaclave_common_pb2 as common_pb
from .workers import WorkerPool

log = logging.getLogger(__name__)

HEARTBEAT_SECS = 1.0
HEARTBEAT_TIMEOUT_SECS = 3.0
PULL_WAIT_MS = 10_000
CALL_TIMEOUT_SECS = 15.0
RETRY_FIRST_SECS = 0.2
RETRY_MAX_SECS = 2.0
REFUSED_PREFIX = "Runtime Error: refused to run: "
"""The failure reason of a staged task the node will not run, before the check's own sentence."""
MAX_REFUSALS = 10
CANCELED_RECEIPT_TRIES = 5
"""Answers other than "try again" after which a report is given up (the lease then expires)."""

TRANSIENT = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
})
"""The scheduler or the path to it is down for now: retry the same call, without limit."""


def _text(value: str) -> str:
    """Protobuf strings must be valid UTF-8 (a function may produce lone surrogates)."""
    return value.encode("utf-8", errors="replace").decode("utf-8")


def as_reported(result: TaskResult) -> TaskResult:
    """The result exactly as the scheduler will keep it (valid UTF-8, the reason cut to
    1 KiB), so the digest a receipt signs is the digest of what readers get."""
    if result.outputs is not None:
        return replace(result, outputs=replace(result.outputs, log=tuple(_text(line) for line in result.outputs.log)))
    if result.failure is not None:
        return replace(result, failure=truncate_reason(_text(result.failure)))
    return result


def result_to_proto(result: TaskResult) -> common_pb.TaskResult:
    if result.outputs is not None:
        o = result.outputs
        return common_pb.TaskResult(Ok=common_pb.TaskOutputs(
            return_value=o.return_value, tags_map=dict(o.tags_map), log=[_text(line) for line in o.log],
            sandbox_layers=result.sandbox_layers, receipt=result.receipt,
        ))
    if result.failure is not None:
        return common_pb.TaskResult(Err=common_pb.TaskFailure(reason=_text(result.failure),
                                                              sandbox_layers=result.sandbox_layers,
                                                              receipt=result.receipt))
    return common_pb.TaskResult()


@dataclass(frozen=True)
class ReceiptSigner:
    """Signs each reported result's receipt with the node's current attested identity."""

    identity: Callable[[], Identity]
    """The identity in force now (key and certificate of one generation; rotation swaps both)."""
    executor_id: str

    def attach(self, staged: StagedTask, attempt: int, result: TaskResult, started_at: datetime,
               ended_at: datetime, *, canceled: bool = False) -> TaskResult:
        result = as_reported(result)
        body = build_receipt(staged, result, attempt=attempt, executor_id=self.executor_id,
                             started_at=started_at, ended_at=ended_at, canceled=canceled)
        try:
            receipt = sign_receipt(body, self.identity())
        except AttestationError as exc:
            # Only when the node's own certificate has lapsed (rotation kept failing); it
            # then cannot reach the scheduler either, and the result is retried later.
            log.error("cannot sign the receipt of task %s: %s", staged.task_id, exc.reason)
            return result
        data = receipt.to_bytes()
        if len(data) > MAX_RECEIPT_BYTES:
            # The scheduler would refuse the result, and every replacement, for it: the
            # result goes without a receipt rather than never.
            log.error("the receipt of task %s is %d bytes, more than %d: reported without it",
                      staged.task_id, len(data), MAX_RECEIPT_BYTES)
            return result
        return replace(result, receipt=data)


class SchedulerClient:
    """The scheduler's RPCs for one executor id; each call asks for the current channel (rotation)."""

    def __init__(self, peers: PeerChannels, executor_id: str) -> None:
        self._peers = peers
        self.executor_id = executor_id

    def _stub(self) -> pb_grpc.KettleSchedulerStub:
        return pb_grpc.KettleSchedulerStub(self._peers.channel("scheduler"))

    async def heartbeat(self, task_id: str | None) -> tuple[bool, bool]:
        """(stop, canceled): whether the scheduler says to stop the task, and whether because it was canceled."""
        status = common_pb.Executing if task_id else common_pb.Idle
        response = await self._stub().Heartbeat(
            pb.HeartbeatRequest(executor_id=self.executor_id, status=status, task_id=task_id or ""),
            timeout=HEARTBEAT_TIMEOUT_SECS, wait_for_ready=True,
        )
        stop = response.command == common_pb.Stop
        return stop, stop and response.canceled

    async def pull(self, wait_ms: int) -> pb.PullTaskResponse:
        return await self._stub().PullTask(
            pb.PullTaskRequest(executor_id=self.executor_id, wait_ms=wait_ms),
            timeout=CALL_TIMEOUT_SECS + wait_ms / 1000, wait_for_ready=True,
        )

    async def update_status(self, task_id: str) -> None:
        await self._stub().UpdateTaskStatus(
            pb.UpdateTaskStatusRequest(executor_id=self.executor_id, task_id=task_id, task_status=common_pb.Running),
            timeout=CALL_TIMEOUT_SECS, wait_for_ready=True,
        )

    async def update_result(self, task_id: str, result: TaskResult) -> None:
        await self._stub().UpdateTaskResult(
            pb.UpdateTaskResultRequest(executor_id=self.executor_id, task_id=task_id, result=result_to_proto(result)),
            timeout=CALL_TIMEOUT_SECS, wait_for_ready=True,
        )


@dataclass
class CurrentTask:
    task_id: str
    attempt: int
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    canceled: bool = False
    """The stop was a cancel: the run's receipt says Canceled."""


class Backoff:
    def __init__(self) -> None:
        self.delay = RETRY_FIRST_SECS

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(RETRY_MAX_SECS, self.delay * 2)


@dataclass(frozen=True)
class Workspace:
    """Where this node's tasks keep their files, and how its workers move them."""

    home: Path
    root: Path
    """This node's own scratch directory; each task gets a private directory inside."""
    file_agent: FileAgentConfig
    sandbox: SandboxConfig = SandboxConfig()
    sandbox_host: SandboxHost | None = None
    execution: ExecutionConfig = ExecutionConfig()

    def job(self, staged: StagedTask, workdir: Path, attempt: int) -> WorkerJob:
        host = self.sandbox_host
        return WorkerJob(staged, workdir, self.home, self.file_agent, self.sandbox,
                         sandbox_layers=host.layers if host is not None else Layers(),
                         sandbox_refusal=(host.refusal or "") if host is not None else "",
                         execution=self.execution, attempt=attempt)

    @contextlib.contextmanager
    def task_dir(self, task_id: str, attempt: int) -> Iterator[Path]:
        """A fresh directory for one run, removed afterwards whatever happened."""
        path = self.root / f"{task_id}-{attempt}"
        shutil.rmtree(path, ignore_errors=True)  # a leftover of a run this node lost track of
        path.mkdir(mode=0o700, parents=True)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass(frozen=True)
class Run:
    """One finished run of a staged task, before its result is reported."""

    staged: StagedTask
    started_at: datetime
    ended_at: datetime


class ExecutionNode:
    def __init__(self, client: SchedulerClient, workers: WorkerPool, workspace: Workspace,
                 receipts: ReceiptSigner) -> None:
        self._client = client
        self._workers = workers
        self._workspace = workspace
        self._receipts = receipts
        self._current: CurrentTask | None = None

    @property
    def executor_id(self) -> str:
        return self._client.executor_id

    async def run_forever(self) -> None:
        heartbeats = asyncio.create_task(self._heartbeat_forever())
        try:
            while True:
                handed = await self._pull()
                await self._execute(handed.staged_task, handed.attempt)
        finally:
            heartbeats.cancel()
            await asyncio.gather(heartbeats, return_exceptions=True)

    async def _pull(self) -> pb.PullTaskResponse:
        backoff = Backoff()
        while True:
            try:
                response = await self._client.pull(PULL_WAIT_MS)
            except grpc.RpcError as exc:
                log.warning("PullTask failed: %s %s", exc.code().name, exc.details())
                await backoff.wait()
                continue
            if response.found:
                return response
            backoff = Backoff()

    async def _heartbeat_forever(self) -> None:
        failing = False
        while True:
            current = self._current
            try:
                stop, canceled = await self._client.heartbeat(current.task_id if current else None)
                if failing:
                    log.info("heartbeats reach the scheduler again")
                failing = False
                if stop and current is not None and current is self._current and not current.stop.is_set():
                    log.info("the scheduler %s task %s", "canceled" if canceled else "stopped", current.task_id)
                    current.canceled = canceled
                    current.stop.set()
            except grpc.RpcError as exc:
                if not failing:
                    log.warning("heartbeat failed: %s %s", exc.code().name, exc.details())
                failing = True
            except Exception:  # noqa: BLE001 - a dead heartbeat loop would silently lose our task
                log.exception("heartbeat failed")
                failing = True
            await asyncio.sleep(HEARTBEAT_SECS)

    async def _execute(self, raw: bytes, attempt: int) -> None:
        try:
            staged = StagedTask.from_bytes(raw)
        except ValueError as exc:
            log.error("the scheduler handed out an unreadable staged task: %s", exc)
            return
        current = CurrentTask(staged.task_id, attempt)
        self._current = current
        try:
            log.info("running task %s (attempt %d)", current.task_id, attempt)
            if not await self._confirm_running(current):
                return
            started_at = datetime.now(UTC)
            refusal = staged_refusal(staged)
            if refusal is not None:
                log.error("refusing to run task %s: %s", current.task_id, refusal)
                await self._report(current, Run(staged, started_at, datetime.now(UTC)),
                                   TaskResult(failure=f"{REFUSED_PREFIX}{refusal}"))
                return
            with self._workspace.task_dir(current.task_id, attempt) as workdir:
                job = self._workspace.job(staged, workdir, attempt)
                result = await self._run_in_worker(current, job.to_bytes())
            run = Run(staged, started_at, datetime.now(UTC))
            if current.canceled:
                await self._report_canceled(current, run)
                return
            if result is None:
                log.info("task %s stopped; its worker was killed", current.task_id)
                return
            await self._report(current, run, result)
        finally:
            self._current = None

    async def _confirm_running(self, current: CurrentTask) -> bool:
        backoff, refusals = Backoff(), 0
        while not current.stop.is_set():
            try:
                await self._client.update_status(current.task_id)
                return True
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    log.info("task %s is not ours any more: %s", current.task_id, exc.details())
                    return False
                if exc.code() not in TRANSIENT:
                    refusals += 1
                    if refusals >= MAX_REFUSALS:
                        log.error("giving up task %s: UpdateTaskStatus keeps failing (%s %s)",
                                  current.task_id, exc.code().name, exc.details())
                        return False
                await backoff.wait()
        return False

    async def _run_in_worker(self, current: CurrentTask, job: bytes) -> TaskResult | None:
        """The task's result, or None when it was stopped (the worker is then killed and gone)."""
        worker = await self._workers.take()
        run = asyncio.create_task(worker.run(job))
        stopped = asyncio.create_task(current.stop.wait())
        try:
            done, _ = await asyncio.wait({run, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if run in done:
                return run.result()
            return None
        finally:
            stopped.cancel()
            if not run.done():
                await worker.kill()  # the run then ends by itself, its output discarded
            await asyncio.gather(run, stopped, return_exceptions=True)

    async def _report_canceled(self, current: CurrentTask, run: Run) -> None:
        """Report the Canceled receipt of a run stopped by a cancel. The task is already
        Canceled, so this is best effort: a few tries while the scheduler is unreachable."""
        result = self._receipts.attach(run.staged, current.attempt, TaskResult(failure=CANCELED_BY_USER),
                                       run.started_at, run.ended_at, canceled=True)
        backoff = Backoff()
        for _ in range(CANCELED_RECEIPT_TRIES):
            try:
                await self._client.update_result(current.task_id, result)
                log.info("reported the receipt of canceled task %s", current.task_id)
                return
            except grpc.RpcError as exc:
                if exc.code() not in TRANSIENT:
                    log.warning("the scheduler refused the receipt of canceled task %s: %s %s",
                                current.task_id, exc.code().name, exc.details())
                    return
                await backoff.wait()
        log.warning("gave up reporting the receipt of canceled task %s", current.task_id)

    async def _report(self, current: CurrentTask, run: Run, result: TaskResult) -> None:
        backoff, refusals, warned = Backoff(), 0, False
        result = self._receipts.attach(run.staged, current.attempt, result, run.started_at, run.ended_at)
        while not current.stop.is_set():
            try:
                await self._client.update_result(current.task_id, result)
                log.info("reported the result of task %s (%s)", current.task_id,
                         "Ok" if result.outputs is not None else "Err")
                return
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.FAILED_PRECONDITION:
                    log.info("task %s is not ours any more: %s", current.task_id, exc.details())
                    return
                if code == grpc.StatusCode.INVALID_ARGUMENT and result.failure is None:
                    log.error("the scheduler refused the result of task %s: %s", current.task_id, exc.details())
                    result = self._receipts.attach(
                        run.staged, current.attempt, TaskResult(failure=f"Runtime Error: invalid task result: {exc.details()}"),
                        run.started_at, run.ended_at)
                    continue
                if code not in TRANSIENT:
                    refusals += 1
                    if refusals >= MAX_REFUSALS:
                        log.error("giving up the result of task %s (%s %s); its lease will run out",
                                  current.task_id, code.name, exc.details())
                        return
                elif not warned:
                    log.warning("cannot report task %s yet (%s); retrying", current.task_id, code.name)
                    warned = True
                await backoff.wait()
