"""Running one staged task's function and turning the outcome into a task result.

This is what an execution node's worker process does (forked from ``python -m
kettle.executors.worker``), in a process of its own per task so cancelling kills
only it. :func:`run_staged_task` never raises: every failure becomes
``Err{reason}``, which the scheduler records as Failed (DESIGN.md §6). Reasons are
the reference's texts where it has one (``function not available: (Python,
Builtin)``, ``Function not found.``, ``Cannot deserialize arguments``); any other
exception of a function gives ``"<Type>: <message>"``; all are cut to 1 KiB.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

from ..functions import FUNCTION_LOGGERS, FunctionError, FunctionRuntime
from ..functions.arguments import ArgumentsError
from ..model.records import StagedTask, TaskOutputs, TaskResult, truncate_reason
from .builtin import run_builtin
from .files import DataPlane, TaskFiles
from .sandboxed import layers_in_force, run_python, run_wasm

Executor = Callable[[str, Any, bytes, FunctionRuntime], str]
"""(function name, argument object, payload, runtime) → summary string."""

EXECUTORS: dict[tuple[str, str], Executor] = {
    ("builtin", "builtin"): run_builtin,
    ("python", "mesapy"): run_python,
    ("wamr", "wamr"): run_wasm,
}
"""Registered (executor_type, executor) pairs (§2); any other pair fails with "function not available"."""

SANDBOXED: frozenset[Executor] = frozenset({run_python, run_wasm})
"""Executors that run user code, in the node's sandbox: their results name its layers."""

TYPE_VARIANTS = {"builtin": "Builtin", "python": "Python", "wamr": "WAMicroRuntime"}
ENGINE_VARIANTS = {"builtin": "Builtin", "mesapy": "MesaPy", "wamr": "WAMicroRuntime"}

LEVEL_NAMES = {logging.CRITICAL: "ERROR", logging.ERROR: "ERROR", logging.WARNING: "WARN",
               logging.INFO: "INFO", logging.DEBUG: "DEBUG"}


def executor_for(executor_type: str, executor: str) -> Executor:
    found = EXECUTORS.get((executor_type, executor))
    if found is None:
        kind = TYPE_VARIANTS.get(executor_type, executor_type)
        engine = ENGINE_VARIANTS.get(executor, executor)
        raise FunctionError(f"function not available: ({kind}, {engine})")
    return found


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, FunctionError | ArgumentsError):
        reason = str(exc)
    else:
        message = str(exc)
        reason = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return truncate_reason(reason)


def save_log_requested(arguments: Any) -> bool:
    """Only the JSON *string* ``"true"`` turns log capture on (§3.2)."""
    return isinstance(arguments, dict) and arguments.get("save_log") == "true"


def log_line(record: logging.LogRecord) -> str:
    level = LEVEL_NAMES.get(record.levelno, record.levelname)
    where = f"{level} {record.name}" if record.name and record.name != "root" else level
    return f"[{where}] {record.getMessage()}"


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(FUNCTION_LOGGERS):
            self.lines.append(log_line(record))


@contextlib.contextmanager
def captured_logs(enabled: bool) -> Iterator[list[str]]:
    """Collect the function loggers' INFO-and-above lines while the function runs (§4.5)."""
    if not enabled:
        yield []
        return
    capture = _Capture()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(capture)
    root.setLevel(min(previous, logging.INFO) if previous else logging.INFO)
    try:
        yield capture.lines
    finally:
        root.removeHandler(capture)
        root.setLevel(previous)


def run_staged_task(staged: StagedTask, plane: DataPlane | None = None) -> TaskResult:
    """Run the task's function here and now; Ok with its summary, output tags and logs, or Err.

    ``plane`` moves the task's data files (:mod:`kettle.executors.files`): inputs
    are fetched and verified before the function starts, outputs uploaded only
    after it succeeded. A task with files and no plane fails.
    """
    files: TaskFiles | None = None
    layers: tuple[str, ...] = ()
    try:
        execute = executor_for(staged.executor_type, staged.executor)
        layers = layers_in_force() if execute in SANDBOXED else ()
        try:
            arguments = json.loads(staged.function_arguments)
        except ValueError:
            raise ArgumentsError("the arguments are not JSON") from None
        files = TaskFiles(staged, plane)
        files.prepare()
        with captured_logs(save_log_requested(arguments)) as lines:
            summary = execute(staged.function_name, arguments, staged.function_payload, files)
        tags = files.finish()
        return TaskResult(outputs=TaskOutputs(return_value=summary.encode("utf-8"), tags_map=tags, log=tuple(lines)),
                          sandbox_layers=layers)
    except Exception as exc:  # noqa: BLE001 - every failure of the function is the task's failure
        return TaskResult(failure=failure_reason(exc), sandbox_layers=layers)
    finally:
        if files is not None:
            files.close()
