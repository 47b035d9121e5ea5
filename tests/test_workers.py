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

from conftest import staged

from kettle.config import FileAgentConfig
from kettle.executors.job import WorkerJob
from kettle.model.records import TaskResult
from kettle.services.execution.workers import WorkerPool, worker_died

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
    from kettle.executors.worker import MAX_JOB_BYTES

    async def body(pool: WorkerPool) -> TaskResult:
        return await (await pool.take()).run(b" " * (MAX_JOB_BYTES + 1))

    result, _ = with_pool(tmp_path, body)
    assert result.failure == f"ValueError: malformed worker job: more than {MAX_JOB_BYTES} bytes"


def test_a_worker_that_answers_more_than_any_result_is_stopped(tmp_path: Path) -> None:
    """A worker whose answer never ends (it only happens when the worker is broken) does not
    hang its node: past the bound it is killed and the task gets an Err result."""
    import socket as sockets

    async def body(pool: WorkerPool) -> TaskResult:
        worker = await pool.take()
        os.kill(worker.pid, signal.SIGSTOP)  # the real worker stays out of it
        ours, theirs = sockets.socketpair()
        worker._task.close()  # noqa: SLF001 - stand in for the worker's end of its task socket
        worker._task = ours  # noqa: SLF001
        flood = asyncio.get_running_loop().run_in_executor(None, lambda: _flood(theirs))
        result = await worker.run(b"")
        theirs.close()
        await flood
        return result

    result, _ = with_pool(tmp_path, body)
    assert result == worker_died(-signal.SIGKILL)


def _flood(sock: object) -> None:
    import contextlib

    with contextlib.suppress(OSError):
        while True:
            sock.sendall(b"x" * 65536)  # type: ignore[attr-defined]
