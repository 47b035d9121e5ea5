"""Worker processes: one per task, started ahead of need so a task does not wait for an interpreter.

A worker is ``python -m kettle.executors.worker``; it gets its job on
stdin and answers with the result on stdout. Keeping one *spare* started while
the node waits hides the interpreter start-up; a fresh process per task keeps
tasks apart and makes cancelling a task a plain kill of its process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys

from ...executors.worker import PARENT_PID_ENV, SANDBOX_FD_ENV
from ...model.records import TaskResult
from ...sandbox.host import SandboxHost, SandboxUnavailable

log = logging.getLogger(__name__)

WORKER_MODULE = "kettle.executors.worker"


def worker_died(returncode: int | None) -> TaskResult:
    return TaskResult(failure=f"Runtime Error: the worker process ended without a result (exit status {returncode})")


class WorkerProcess:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @classmethod
    async def start(cls, sandbox: SandboxHost | None = None) -> WorkerProcess:
        """A new worker; with ``sandbox``, connected to the node's zygote (for user code)."""
        env = {**os.environ, PARENT_PID_ENV: str(os.getpid())}
        connection = None
        if sandbox is not None:
            try:
                connection = await sandbox.connect()
            except SandboxUnavailable as exc:
                log.error("this worker gets no sandbox for user code: %s", exc)
        try:
            if connection is not None:
                env[SANDBOX_FD_ENV] = str(connection.fileno())
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", WORKER_MODULE,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
                pass_fds=(connection.fileno(),) if connection is not None else (),
            )
        finally:
            if connection is not None:
                connection.close()
        return cls(process)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process.returncode is None

    async def run(self, job: bytes) -> TaskResult:
        """Hand the job (:class:`~kettle.executors.job.WorkerJob`) over and wait for its result; a worker that dies gives an Err result."""
        process = self._process
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(job)
            await process.stdin.drain()
            process.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass
        output = await process.stdout.read()
        returncode = await process.wait()
        try:
            return TaskResult.from_json(json.loads(output))
        except (ValueError, KeyError, TypeError, AttributeError):
            return worker_died(returncode)

    async def kill(self) -> None:
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
        await self._process.wait()


class WorkerPool:
    """Always one spare worker, started before it is needed."""

    def __init__(self, sandbox: SandboxHost | None = None) -> None:
        self._spare: WorkerProcess | None = None
        self._sandbox = sandbox

    async def start(self) -> None:
        self._spare = await WorkerProcess.start(self._sandbox)

    async def take(self) -> WorkerProcess:
        worker = self._spare
        if worker is None or not worker.alive:
            if worker is not None:
                log.warning("the spare worker %d died; starting another", worker.pid)
            worker = await WorkerProcess.start(self._sandbox)
        self._spare = await WorkerProcess.start(self._sandbox)
        return worker

    async def close(self) -> None:
        if self._spare is not None:
            await self._spare.kill()
            self._spare = None
