"""The node's side of its task workers: the warm template, and one forked worker per task.

See :mod:`kettle.executors.worker` for the template and the worker. The pool
keeps one worker forked ahead of need, so a task never waits for a fork; a
template that died is started again on the next take.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from typing import NamedTuple

from ...executors.worker import CONTROL_FD_ENV, FORK, PARENT_PID_ENV
from ...model.records import TaskResult
from ...sandbox import protocol
from ...sandbox.host import SandboxHost, SandboxUnavailable

log = logging.getLogger(__name__)

WORKER_MODULE = "kettle.executors.worker"
START_TIMEOUT_SECS = 60.0
FORK_TIMEOUT_SECS = 10.0
STOP_TIMEOUT_SECS = 5.0
MAX_RESULT_BYTES = 64 << 20
"""More than any valid result (outputs, a log of bounded lines, a receipt): a worker that sends more is broken."""


class TemplateUnavailable(Exception):
    """The template process is not running (it died, or did not start)."""


def worker_died(returncode: int | None) -> TaskResult:
    return TaskResult(failure=f"Runtime Error: the worker process ended without a result (exit status {returncode})")


def _exit_code(status: int | None) -> int | None:
    """A wait status as subprocess shows it: the exit code, or minus the signal that killed it."""
    if status is None:
        return None
    return os.waitstatus_to_exitcode(status)


class Worker:
    """One forked worker, waiting for its job on ``task``."""

    def __init__(self, pid: int, pidfd: int, task: socket.socket, exited: asyncio.Future[int | None]) -> None:
        self.pid = pid
        self._pidfd = pidfd
        self._task = task
        self._exited = exited
        """Resolved with the wait status (None when the template died before reporting it)."""

    @property
    def alive(self) -> bool:
        return not self._exited.done()

    async def run(self, job: bytes) -> TaskResult:
        """Hand the job over and wait for its result; a worker that dies gives an Err result."""
        try:
            reader, writer = await asyncio.open_unix_connection(sock=self._task, limit=1 << 20)
            try:
                writer.write(job)
                await writer.drain()
                writer.write_eof()
            except (BrokenPipeError, ConnectionResetError):
                pass
            output = await reader.read(MAX_RESULT_BYTES + 1)
            while len(output) <= MAX_RESULT_BYTES and (more := await reader.read(MAX_RESULT_BYTES + 1 - len(output))):
                output += more
            writer.close()
        except (ConnectionResetError, BrokenPipeError):
            output = b""
        if len(output) > MAX_RESULT_BYTES:
            self._signal_kill()  # it would wait for us to read the rest, and we will not
        returncode = _exit_code(await self._exited)
        self.close()
        try:
            if len(output) > MAX_RESULT_BYTES:
                raise ValueError("oversized result")
            return TaskResult.from_json(json.loads(output))
        except (ValueError, KeyError, TypeError, AttributeError):
            return worker_died(returncode)

    def _signal_kill(self) -> None:
        if not self._exited.done() and self._pidfd >= 0:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    async def kill(self) -> None:
        self._signal_kill()
        await self._exited
        self.close()

    def close(self) -> None:
        self._task.close()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


class _Started(NamedTuple):
    """A worker the template forked for a request."""

    pid: int
    pidfd: int
    exited: asyncio.Future[int | None]
    """Resolved with its wait status (None when the template died before reporting it)."""


def _kill(pidfd: int) -> None:
    """Kill the worker behind ``pidfd`` (one nobody will hand a job to) and close the pidfd."""
    with contextlib.suppress(OSError):  # it has ended already
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    os.close(pidfd)


class Template:
    """The warm template process, and the control socket that asks it for workers."""

    def __init__(self, process: asyncio.subprocess.Process, control: socket.socket) -> None:
        self._process = process
        self._control = control
        self._requests = 0
        self._started: dict[int, asyncio.Future[_Started]] = {}
        """By request number: the worker forked for it, once the template says so."""
        self._exits: dict[int, asyncio.Future[int | None]] = {}
        """By pid: the wait status of each worker handed to a fork that has not ended yet.
        Set when its STARTED arrives, so its EXITED (which may come before the fork
        resumes) always finds it; a worker nobody waits for any more has none."""
        self.closed = False
        asyncio.get_running_loop().add_reader(control.fileno(), self._on_message)

    @classmethod
    async def start(cls, stderr: int | None = None) -> Template:
        """Start the template; its output and its workers' goes to ``stderr`` (a descriptor;
        by default the node's own, i.e. the node's log)."""
        ours, theirs = protocol.socket_pair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", WORKER_MODULE, stdin=asyncio.subprocess.DEVNULL, stderr=stderr,
                pass_fds=(theirs.fileno(),),
                env={**os.environ, CONTROL_FD_ENV: str(theirs.fileno()), PARENT_PID_ENV: str(os.getpid())},
            )
        finally:
            theirs.close()
        loop = asyncio.get_running_loop()
        ours.setblocking(False)
        try:
            hello = await asyncio.wait_for(loop.sock_recv(ours, protocol.MAX_MESSAGE), START_TIMEOUT_SECS)
        except (TimeoutError, OSError):
            hello = b""
        if hello[:1] != protocol.HELLO:
            ours.close()
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise TemplateUnavailable(f"the worker template did not start (exit status {process.returncode})")
        return cls(process, ours)

    @property
    def alive(self) -> bool:
        return not self.closed and self._process.returncode is None

    @property
    def pid(self) -> int:
        return self._process.pid

    def _on_message(self) -> None:
        try:
            message = protocol.receive(self._control)
        except BlockingIOError:
            return
        except (protocol.ProtocolError, OSError) as exc:
            log.error("the worker template broke the protocol: %s", exc)
            message = None
        if message is None:
            self._lost()
            return
        kind, body, fds = message
        try:
            doc = protocol.body_json(body)
            if kind == protocol.STARTED and len(fds) == 1:
                request, pid = int(doc["request"]), int(doc["pid"])
                waiting_fork = self._started.pop(request, None)
                if waiting_fork is None or waiting_fork.done():  # its requester gave up: stop it
                    _kill(fds[0])
                else:
                    exited: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
                    self._exits[pid] = exited
                    waiting_fork.set_result(_Started(pid, fds[0], exited))
            elif kind == protocol.EXITED and not fds:
                pid, status = int(doc["pid"]), int(doc["status"])
                waiting = self._exits.pop(pid, None)
                if waiting is not None and not waiting.done():  # None: a worker nobody waits for
                    waiting.set_result(status)
            else:
                raise protocol.ProtocolError(f"an unexpected message of kind {kind!r}")
        except (protocol.ProtocolError, KeyError, TypeError, ValueError) as exc:
            protocol.close_all(fds)
            log.error("the worker template sent a bad message: %s", exc)

    def _lost(self) -> None:
        """The template is gone: its workers die with it (their parent-death signal), and no
        wait status will come for them."""
        if self.closed:
            return
        self.closed = True
        asyncio.get_running_loop().remove_reader(self._control.fileno())
        self._control.close()
        for waiting in self._exits.values():
            if not waiting.done():
                waiting.set_result(None)
        self._exits.clear()
        for waiting_fork in self._started.values():
            if not waiting_fork.done():
                waiting_fork.set_exception(TemplateUnavailable("the worker template died"))
        self._started.clear()

    async def fork(self, sandbox: socket.socket | None) -> Worker:
        if not self.alive:
            raise TemplateUnavailable("the worker template is not running")
        self._requests += 1
        request = self._requests
        started: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self._started[request] = started
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [theirs.fileno()] + ([sandbox.fileno()] if sandbox is not None else [])
        try:
            protocol.send_json(self._control, FORK, {"request": request}, fds)
        except OSError as exc:
            ours.close()
            self._started.pop(request, None)
            raise TemplateUnavailable(f"the worker template is not answering: {exc}") from None
        finally:
            theirs.close()
        try:
            worker = await asyncio.wait_for(asyncio.shield(started), FORK_TIMEOUT_SECS)
        except BaseException as exc:  # timed out, template lost, or this fork was cancelled
            ours.close()
            if started.done() and not started.cancelled() and started.exception() is None:
                _kill(started.result().pidfd)  # forked all the same: nobody will run it
            started.cancel()  # a STARTED still to come finds its requester gone, and kills it
            if isinstance(exc, (TimeoutError, TemplateUnavailable)):
                raise TemplateUnavailable(f"the worker template did not fork: {exc or 'timeout'}") from None
            raise
        return Worker(worker.pid, worker.pidfd, ours, worker.exited)

    async def close(self) -> None:
        """Stop the template: closing its control socket ends it, and its workers die with it."""
        self._lost()
        try:
            await asyncio.wait_for(self._process.wait(), STOP_TIMEOUT_SECS)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()


class WorkerPool:
    """Workers forked from one template, one always forked ahead of need."""

    def __init__(self, sandbox: SandboxHost | None = None, stderr: int | None = None) -> None:
        self._sandbox = sandbox
        self._stderr = stderr
        self._template: Template | None = None
        self._spare: asyncio.Task[Worker] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._template = await Template.start(self._stderr)
        self._spare = asyncio.create_task(self._fork())

    @property
    def template(self) -> Template | None:
        return self._template

    async def _connect_sandbox(self) -> socket.socket | None:
        if self._sandbox is None:
            return None
        try:
            return await self._sandbox.connect()
        except SandboxUnavailable as exc:
            log.error("this worker gets no sandbox for user code: %s", exc)
            return None

    async def _fork(self) -> Worker:
        async with self._lock:
            if self._template is None or not self._template.alive:
                if self._template is not None:
                    log.warning("the worker template died; starting another")
                    await self._template.close()
                self._template = await Template.start(self._stderr)
            template = self._template
        sandbox = await self._connect_sandbox()
        try:
            return await template.fork(sandbox)
        finally:
            if sandbox is not None:
                sandbox.close()

    async def take(self) -> Worker:
        spare, self._spare = self._spare, asyncio.create_task(self._fork())
        worker = None
        if spare is not None:
            try:
                worker = await spare
            except TemplateUnavailable as exc:
                log.warning("the spare worker was not forked: %s", exc)
        if worker is None or not worker.alive:
            if worker is not None:
                log.warning("the spare worker %d died; forking another", worker.pid)
                worker.close()
            worker = await self._fork()
        return worker

    async def close(self) -> None:
        if self._spare is not None:
            self._spare.cancel()
            worker = (await asyncio.gather(self._spare, return_exceptions=True))[0]
            if isinstance(worker, Worker):
                await worker.kill()
            self._spare = None
        if self._template is not None:
            await self._template.close()
            self._template = None
