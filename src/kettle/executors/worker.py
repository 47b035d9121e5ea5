"""Task workers: one forked process per task, from a warm template (``python -m kettle.executors.worker``).

The execution node starts the **template** once: an interpreter that imports
everything a task needs (the file agent, the data plane, every built-in and the
libraries they use), freezes that heap out of the garbage collector, and then
only forks. Starting a fresh interpreter per task cost about 80 ms of CPU; a fork
of the warm template costs a few milliseconds.

Each **worker** is a child of the template, one per task: nothing a function
leaves behind reaches the next task, and cancelling a task is killing its
worker. The template forks one ahead of need; the worker waits for its job
(:class:`~kettle.executors.job.WorkerJob`) on its own stream socket to the
node, runs it, writes the result JSON (:meth:`TaskResult.to_json`) back on that
socket and exits. Whatever the function prints goes to stderr (the node's log),
so it cannot corrupt the result; function log records are never written there
(they may carry private data), they only reach the task's log when it asked
for them (``save_log``).

The template and every worker die with their parent (``PR_SET_PDEATHSIG``): a
killed node leaves no function running.

Control messages, node ↔ template, on a ``SOCK_SEQPACKET`` socket
(:mod:`kettle.sandbox.protocol` framing):

- ``h`` (template → node): the template is warm and serving;
- ``f`` + ``{"request"}`` (node → template) with the worker's end of its task
  socket and, when the node has a sandbox, the worker's connection to the
  sandbox's zygote: fork a worker; answered ``t`` + ``{"request", "pid"}`` with the worker's pidfd (the node kills
  through it, so a reused pid can never be hit), and later ``x`` +
  ``{"pid", "status"}`` with its wait status.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import selectors
import signal
import socket
import sys
from typing import NoReturn

from ..sandbox import protocol

CONTROL_FD_ENV = "KETTLE_WORKER_CONTROL_FD"
PARENT_PID_ENV = "KETTLE_WORKER_PARENT"
"""The pid of the process that started the template (the execution service): the template dies with it."""
PR_SET_PDEATHSIG = 1
FORK = b"f"
MAX_JOB_BYTES = 64 << 20
"""A job is a staged task (its payload at most 16 MiB) and settings; anything larger is refused unread."""


def die_with_parent(expected_parent: int) -> None:
    """Ask the kernel to SIGKILL us when our parent dies; exit now if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != expected_parent:
        os._exit(1)  # the parent died before the request took effect


class _NotFunctionRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        from ..functions import FUNCTION_LOGGERS

        return not record.name.startswith(FUNCTION_LOGGERS)


def _preload() -> None:
    """Import now what any task may need, so no worker pays for it."""
    from .. import file_agent  # noqa: F401
    from ..file_agent import http, objects  # noqa: F401
    from ..functions import all_functions
    from . import run_staged_task  # noqa: F401
    from .files import DataPlane  # noqa: F401
    from .job import WorkerJob  # noqa: F401
    from .sandboxed import configure  # noqa: F401

    all_functions()


def run_job(data: bytes, zygote: socket.socket | None) -> bytes:
    """The result JSON of one job (a malformed job is an Err result, never an exception)."""
    from ..file_agent import FileAgent
    from ..model.records import TaskResult
    from . import failure_reason, run_staged_task
    from .files import DataPlane
    from .job import WorkerJob
    from .sandboxed import configure

    try:
        job = WorkerJob.from_bytes(data)
    except ValueError as exc:
        result = TaskResult(failure=failure_reason(exc))
    else:
        if zygote is not None:
            configure(zygote, job.sandbox, job.sandbox_layers, job.sandbox_refusal)
        plane = DataPlane(FileAgent(job.file_agent, job.home), job.workdir, job.execution, job.attempt)
        result = run_staged_task(job.staged, plane)
    return json.dumps(result.to_json()).encode()


def _read_job(task: socket.socket) -> bytes | None:
    """Everything the node writes before it shuts its side down; None when it sent nothing."""
    chunks, size = [], 0
    while chunk := task.recv(1 << 20):
        size += len(chunk)
        if size > MAX_JOB_BYTES:
            raise ValueError(f"malformed worker job: more than {MAX_JOB_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks) if chunks else None


def _worker(task: socket.socket, zygote: socket.socket | None, template: int) -> NoReturn:
    """A forked worker: run the one job on ``task`` and exit."""
    status = 1
    try:
        die_with_parent(template)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        gc.enable()
        try:
            data = _read_job(task)
        except ValueError as exc:  # too large: refused unread
            from ..model.records import TaskResult
            from . import failure_reason

            task.sendall(json.dumps(TaskResult(failure=failure_reason(exc)).to_json()).encode())
            data = None
        if data is not None:  # None: the node closed without a job (it is stopping), or it was refused
            task.sendall(run_job(data, zygote))
        status = 0
    except BaseException:
        logging.getLogger(__name__).exception("the worker failed")
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


class Template:
    """The template's loop: fork a worker per request, report each worker's end."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, int] = {}
        """pidfd → pid of each worker still running."""

    def serve(self) -> None:
        self.selector.register(self.control, selectors.EVENT_READ)
        protocol.send(self.control, protocol.HELLO)
        while True:
            for key, _ in self.selector.select():
                if key.fileobj is self.control:
                    if not self._request():
                        return
                else:
                    self._reap(key.fd)

    def _request(self) -> bool:
        try:
            message = protocol.receive(self.control)
        except protocol.ProtocolError as exc:
            logging.getLogger(__name__).error("refused a control message: %s", exc)
            return True
        if message is None:
            return False  # the node closed its end: it is stopping
        kind, body, fds = message
        try:
            request = protocol.body_json(body)["request"] if kind == FORK else None
        except (protocol.ProtocolError, KeyError, TypeError):
            request = None
        if not isinstance(request, int) or not 1 <= len(fds) <= 2:
            protocol.close_all(fds)
            logging.getLogger(__name__).error("refused a control message of kind %r", kind)
            return True
        self._fork(request, fds)
        return True

    def _fork(self, request: int, fds: list[int]) -> None:
        task = socket.socket(fileno=fds[0])
        zygote = socket.socket(fileno=fds[1]) if len(fds) == 2 else None
        template = os.getpid()
        pid = os.fork()
        if pid == 0:
            self.selector.close()
            self.control.close()
            for pidfd in self.children:
                os.close(pidfd)
            _worker(task, zygote, template)
        task.close()
        if zygote is not None:
            zygote.close()
        pidfd = os.pidfd_open(pid)
        self.children[pidfd] = pid
        self.selector.register(pidfd, selectors.EVENT_READ)
        protocol.send_json(self.control, protocol.STARTED, {"request": request, "pid": pid}, [pidfd])

    def _reap(self, pidfd: int) -> None:
        pid = self.children.pop(pidfd)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        protocol.send_json(self.control, protocol.EXITED, {"pid": pid, "status": status})


def main() -> int:
    die_with_parent(int(os.environ.pop(PARENT_PID_ENV)))
    control = socket.socket(fileno=int(os.environ.pop(CONTROL_FD_ENV)))
    os.dup2(2, 1)  # what a function prints goes to the log, never into a result
    sys.stdout = sys.stderr
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_NotFunctionRecords())
    handler.setFormatter(logging.Formatter("%(asctime)s worker %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the node stops us by closing the control socket
    _preload()
    gc.collect()
    gc.freeze()  # a worker's collections then never touch (and copy) the template's heap
    gc.disable()  # the template allocates little; its workers turn collection back on
    Template(control).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
