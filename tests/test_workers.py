"""An execution node's task workers: forked per task from a warm template, killed to cancel."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from conftest import staged

from kettle.config import FileAgentConfig
from kettle.executors.job import WorkerJob
from kettle.executors.worker import MAX_JOB_BYTES
from kettle.model.records import TaskResult
from kettle.services.execution import workers
from kettle.services.execution.workers import Template, TemplateUnavailable, WorkerPool, worker_died

T = TypeVar("T")


def job(tmp_path: Path, **arguments: str) -> bytes:
    return WorkerJob(staged(arguments=arguments or None), tmp_path, tmp_path, FileAgentConfig()).to_bytes()


def with_pool(tmp_path: Path, body: Callable[[WorkerPool], Awaitable[T]]) -> tuple[T, str]:
    """Run ``body`` with a started pool whose template writes to a log file; (its value, the log)."""
    log_path = tmp_path / "workers.log"

    async def run() -> T:
        with log_path.open("wb") as log:
            pool = WorkerPool(stderr=log.fileno())
            await pool.start()
            try:
                return await body(pool)
            finally:
                await pool.close()

    value = asyncio.run(run())
    return value, log_path.read_text()


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_each_task_runs_in_a_worker_of_its_own_forked_from_the_template(tmp_path: Path) -> None:
    secret = "the secret message"

    async def body(pool: WorkerPool) -> tuple[list[TaskResult], list[int], int]:
        template = pool.template
        assert template is not None
        results, pids = [], []
        for _ in range(3):
            worker = await pool.take()
            assert parent_of(worker.pid) == template.pid  # forked, not a fresh interpreter
            pids.append(worker.pid)
            results.append(await worker.run(job(tmp_path, message=secret, save_log="true")))
            assert gone(worker.pid)  # one task, then the worker is gone
        return results, pids, template.pid

    (results, pids, template), log = with_pool(tmp_path, body)
    assert len(set(pids)) == 3 and template not in pids
    for result in results:
        assert result.outputs is not None and result.outputs.return_value == secret.encode()
        assert result.outputs.log == (f"[INFO teaclave_function::echo] {secret}",)
    assert secret not in log  # function log records go to the task's log only


def test_a_malformed_job_is_an_err_result(tmp_path: Path) -> None:
    async def body(pool: WorkerPool) -> list[TaskResult]:
        wrong_settings = json.loads(job(tmp_path))
        wrong_settings["file_agent"]["unknown"] = 1
        answers = []
        for data in (b"not a job", json.dumps(wrong_settings).encode(), job(tmp_path, message=1)):  # type: ignore[arg-type]
            answers.append(await (await pool.take()).run(data))
        return answers

    garbage, refused, failed = with_pool(tmp_path, body)[0]
    assert garbage.failure is not None and garbage.failure.startswith("ValueError: malformed worker job: Expecting value")
    assert refused.failure == "ValueError: malformed worker job: file agent settings have the wrong fields"
    assert failed.failure == "Cannot deserialize arguments"


def test_a_killed_worker_ends_at_once_and_the_next_task_runs(tmp_path: Path) -> None:
    async def body(pool: WorkerPool) -> tuple[TaskResult, float, TaskResult]:
        worker = await pool.take()
        os.kill(worker.pid, signal.SIGSTOP)  # it never gets to its job
        run = asyncio.create_task(worker.run(job(tmp_path)))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await worker.kill()
        killed_in = time.monotonic() - started
        result = await run
        after = await (await pool.take()).run(job(tmp_path, message="next"))
        return result, killed_in, after

    (result, killed_in, after), _ = with_pool(tmp_path, body)
    assert result == worker_died(-signal.SIGKILL)
    assert killed_in < 2.0
    assert after.outputs is not None and after.outputs.return_value == b"next"


def test_a_dead_template_is_replaced_and_its_workers_die_with_it(tmp_path: Path) -> None:
    async def body(pool: WorkerPool) -> tuple[int, int, TaskResult]:
        first = pool.template
        assert first is not None
        spare = await pool.take()
        os.kill(first.pid, signal.SIGKILL)
        for _ in range(100):
            if gone(spare.pid):
                break
            await asyncio.sleep(0.05)
        assert gone(spare.pid)  # parent-death signal: no worker outlives its template
        result = await (await pool.take()).run(job(tmp_path, message="again"))
        second = pool.template
        assert second is not None
        return first.pid, second.pid, result

    (first, second, result), log = with_pool(tmp_path, body)
    assert first != second
    assert result.outputs is not None and result.outputs.return_value == b"again", log


def test_an_oversized_job_is_refused_unread(tmp_path: Path) -> None:
    async def body(pool: WorkerPool) -> TaskResult:
        return await (await pool.take()).run(b" " * (MAX_JOB_BYTES + 1))

    result, _ = with_pool(tmp_path, body)
    assert result.failure == f"ValueError: malformed worker job: more than {MAX_JOB_BYTES} bytes"


def test_a_worker_that_answers_more_than_any_result_is_stopped(tmp_path: Path) -> None:
    """A worker whose answer is larger than any valid result does not hang its node nor fill
    its memory: past the bound it is killed and the task gets an Err result. The job is
    an echo of a message larger than staging lets through (the worker itself does not
    check), so a real worker really answers with more than the bound."""
    message = "x" * (56 << 20)  # the answer carries it in base64: about 75 MiB

    async def body(pool: WorkerPool) -> TaskResult:
        return await (await pool.take()).run(job(tmp_path, message=message))

    assert len(job(tmp_path, message=message)) <= MAX_JOB_BYTES  # the job itself is accepted
    result, _ = with_pool(tmp_path, body)
    assert result == worker_died(-signal.SIGKILL)


def test_a_worker_forked_after_its_fork_gave_up_is_killed_and_the_next_fork_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fork that times out, or is cancelled, while the template is stalled leaves nothing
    behind: the worker the template forks for it later is killed, the node keeps none of
    its descriptors, and the next fork gets a worker that runs its task."""
    log_path = tmp_path / "workers.log"

    async def run() -> tuple[bool, int, TaskResult]:
        with log_path.open("wb") as log:
            template = await Template.start(log.fileno())
            try:
                descriptors = len(os.listdir("/proc/self/fd"))
                monkeypatch.setattr(workers, "FORK_TIMEOUT_SECS", 1.0)
                os.kill(template.pid, signal.SIGSTOP)  # it gets the requests but answers none yet
                with pytest.raises(TemplateUnavailable, match="did not fork"):
                    await template.fork(None)
                cancelled = asyncio.create_task(template.fork(None))
                await asyncio.sleep(0.2)
                cancelled.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await cancelled
                os.kill(template.pid, signal.SIGCONT)  # now it forks all three, in order
                monkeypatch.undo()
                worker = await template.fork(None)  # the two late ones were forked (and killed) first
                for _ in range(100):
                    if only_it := living_children(template.pid) == [worker.pid]:
                        break
                    await asyncio.sleep(0.05)
                result = await worker.run(job(tmp_path, message="after"))
                return only_it, len(os.listdir("/proc/self/fd")) - descriptors, result
            finally:
                await template.close()

    only_it, descriptors_kept, result = asyncio.run(run())
    assert only_it  # the late workers are gone
    assert descriptors_kept == 0  # neither their pidfds nor their task sockets
    assert result.outputs is not None and result.outputs.return_value == b"after", log_path.read_text()


def living_children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``, but for zombies (ended, not yet reaped)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if parent_of(int(entry.name)) == pid and not gone(int(entry.name)):
                    children.append(int(entry.name))
            except OSError:
                continue  # it ended meanwhile
    return children
