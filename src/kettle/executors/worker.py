"""One task's worker process: ``python -m kettle.executors.worker``.

The execution node starts it *before* a task arrives (so the interpreter start-up
is paid while the node waits) and then writes one job (:class:`WorkerJob`: the
staged task, its working directory, the file agent's settings) to its stdin and
closes it. The worker runs the task and writes the result JSON
(:meth:`TaskResult.to_json`) to its original stdout, then exits. Whatever the
function prints goes to stderr instead, so it cannot corrupt the result.

One process per task: nothing a function leaves behind reaches the next task,
and cancelling a task is killing this process. It also dies with its node
(``PR_SET_PDEATHSIG``), so a killed node leaves no function running.

Function log records are never written to stderr (they may carry private data);
they only reach the task's log when it asked for them (``save_log``).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import sys

PARENT_PID_ENV = "KETTLE_WORKER_PARENT"
SANDBOX_FD_ENV = "KETTLE_WORKER_SANDBOX_FD"
"""The descriptor of this worker's connection to the node's sandbox zygote, when it has one."""
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL us when the node dies (Linux); a no-op elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    expected = os.environ.get(PARENT_PID_ENV)
    if expected and os.getppid() != int(expected):
        os._exit(1)  # the node died before the request took effect


class _NotFunctionRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        from ..functions import FUNCTION_LOGGERS

        return not record.name.startswith(FUNCTION_LOGGERS)


def main() -> int:
    die_with_parent()
    result_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_NotFunctionRecords())
    handler.setFormatter(logging.Formatter("%(asctime)s worker %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)

    # Imported now, before the task arrives, so their cost is paid while the node waits.
    from ..file_agent import FileAgent
    from ..model.records import TaskResult
    from . import failure_reason, run_staged_task
    from .files import DataPlane
    from .job import WorkerJob
    from .sandboxed import configure

    sandbox_fd = os.environ.pop(SANDBOX_FD_ENV, "")
    zygote = socket.socket(fileno=int(sandbox_fd)) if sandbox_fd else None

    data = sys.stdin.buffer.read()
    if not data:
        return 0  # the node shut down without giving us a task
    try:
        job = WorkerJob.from_bytes(data)
    except ValueError as exc:
        result = TaskResult(failure=failure_reason(exc))
    else:
        if zygote is not None:
            configure(zygote, job.sandbox, job.sandbox_layers, job.sandbox_refusal)
        plane = DataPlane(FileAgent(job.file_agent, job.home), job.workdir, job.execution, job.attempt)
        result = run_staged_task(job.staged, plane)
    result_out.write(json.dumps(result.to_json()).encode())
    result_out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
