"""The Python and WebAssembly executors on the worker's side: user code runs in the node's sandbox, never here.

The worker learns at start (:func:`configure`) its connection to the node's
zygote, the limits, and the sandbox's layers; :func:`run_python` then flattens
the arguments into argv (functions.md §3.3), runs the payload in a fresh
sandboxed child, serves it the task's files through :class:`TaskFiles`, and
turns the outcome into a summary or a :class:`FunctionError` with the reason.
What the function printed and the traceback of its failure go to the task's
log (kept only with ``save_log``); the names of the sandbox's layers go with
the task's result whatever its outcome (:func:`layers_in_force`).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any

from ..config import SandboxConfig
from ..functions import FUNCTION_LOGGER_PREFIX, HOST_LOGGER, FunctionError, FunctionRuntime
from ..functions.arguments import ArgumentsError
from ..sandbox.layers import Layers
from ..sandbox.payload_api import flatten_arguments
from ..sandbox.supervisor import (
    Limits,
    Outcome,
    SandboxError,
    WasmLoadError,
    WasmRun,
    run_sandboxed,
)

log = logging.getLogger(FUNCTION_LOGGER_PREFIX + "python")
wasm_log = logging.getLogger(FUNCTION_LOGGER_PREFIX + "wamr")
host_log = logging.getLogger(HOST_LOGGER)


@dataclass(frozen=True)
class _Sandbox:
    zygote: socket.socket
    limits: Limits
    layers: Layers
    refusal: str
    wasm_fuel: int


_sandbox: _Sandbox | None = None


def limits_of(config: SandboxConfig) -> Limits:
    return Limits(
        wall_time_secs=config.wall_time_secs,
        cpu_time_secs=config.cpu_time_secs,
        memory_bytes=config.memory_mib << 20,
        output_bytes=config.output_mib << 20,
        return_value_bytes=config.return_value_bytes,
        log_bytes=config.log_bytes,
        open_files=config.open_files,
    )


def configure(zygote: socket.socket, config: SandboxConfig, layers: Layers, refusal: str) -> None:
    global _sandbox
    _sandbox = _Sandbox(zygote, limits_of(config), layers, refusal, config.wasm_fuel)


def layers_in_force() -> tuple[str, ...]:
    """The names of the layers a sandboxed task runs under here; none when user code cannot run."""
    if _sandbox is None or _sandbox.refusal:
        return ()
    return tuple(layer.name for layer in _sandbox.layers.layers if layer.available)


def _ready(arguments: Any, logger: logging.Logger) -> tuple[_Sandbox, list[str]]:
    if _sandbox is None:
        raise FunctionError("SandboxUnavailable: this execution node has no sandbox for user code")
    if _sandbox.refusal:
        raise FunctionError(_sandbox.refusal)
    if not isinstance(arguments, dict):
        raise ArgumentsError("the arguments are not a JSON object")
    logger.info("%s", _sandbox.layers.summary())
    return _sandbox, flatten_arguments(arguments)


def _result(outcome: Outcome, logger: logging.Logger) -> str:
    """The return value; or the failure, its traceback (or wasm backtrace) in the task's log first."""
    if outcome.failure is not None:
        if outcome.traceback:
            logger.error("%s", outcome.traceback.rstrip())
        raise FunctionError(outcome.failure)
    assert outcome.return_value is not None
    return outcome.return_value


def run_python(name: str, arguments: Any, payload: bytes, runtime: FunctionRuntime) -> str:
    sandbox, argv = _ready(arguments, log)
    try:
        outcome = run_sandboxed(sandbox.zygote, argv, payload, runtime, sandbox.limits)
    except SandboxError as exc:
        raise FunctionError(f"SandboxUnavailable: {exc}") from None
    for line in outcome.output.decode("utf-8", "replace").splitlines():
        log.info("output: %s", line)
    return _result(outcome, log)


def run_wasm(name: str, arguments: Any, payload: bytes, runtime: FunctionRuntime) -> str:
    """A WebAssembly module under Teaclave's WAMR ABI (functions.md §7), compiled once per node and cached."""
    sandbox, argv = _ready(arguments, wasm_log)
    try:
        outcome = run_sandboxed(sandbox.zygote, argv, payload, runtime, sandbox.limits, WasmRun(sandbox.wasm_fuel))
    except WasmLoadError as exc:
        raise FunctionError(f"WASM load error: {exc}") from None
    except SandboxError as exc:
        raise FunctionError(f"SandboxUnavailable: {exc}") from None
    if outcome.module is not None:
        wasm_log.info("module %s (%s)", outcome.module.sha256,
                      "compiled before" if outcome.module.cached else "compiled now")
    # The module has no output of its own (no WASI): these are the host functions' ERROR lines (§7.2).
    for line in outcome.output.decode("utf-8", "replace").splitlines():
        host_log.error("%s", line)
    return _result(outcome, wasm_log)
