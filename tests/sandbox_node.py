"""A node's sandbox for tests: a real zygote started as the execution service starts it, and task-like runs."""

from __future__ import annotations

import asyncio
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from kettle.executors.runtime import FileRuntime
from kettle.sandbox.host import SandboxHost
from kettle.sandbox.supervisor import Compiled, Limits, Outcome, WasmRun, compile_wasm, run_sandboxed

LIMITS = Limits(wall_time_secs=5, cpu_time_secs=1, memory_bytes=256 << 20, output_bytes=1 << 20,
                return_value_bytes=20480, log_bytes=4096, open_files=32)
SPIN = b"def entrypoint(argv):\n    while True:\n        pass\n"
MEMORY_BOMB = """
    def entrypoint(argv):
        hoard = []
        while True:
            hoard.append(bytearray(1 << 20))
            hoard[-1][::4096] = b'x' * 256
"""
"""Touches a new MiB after another until the memory limit stops it."""


class Node:
    """A zygote as the execution service runs it, and a way to run one payload like a task."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.host = SandboxHost()
        self.layers = self.loop.run_until_complete(self.host.start())

    @property
    def zygote_pid(self) -> int:
        assert self.host._process is not None
        return self.host._process.pid

    def alive(self) -> bool:
        return self.host._process is not None and self.host._process.returncode is None and exists(self.zygote_pid)

    def connect(self) -> socket.socket:
        return self.loop.run_until_complete(self.host.connect())

    def run(self, source: str, argv: list[str] | None = None, inputs: dict[str, Path] | None = None,
            outputs: dict[str, Path] | None = None, limits: Limits = LIMITS) -> Outcome:
        connection = self.connect()
        try:
            return run_sandboxed(connection, argv or [], textwrap.dedent(source).encode(),
                                 FileRuntime(inputs, outputs), limits)
        finally:
            connection.close()

    def compile(self, module: bytes, limits: Limits = LIMITS) -> Compiled:
        connection = self.connect()
        try:
            return compile_wasm(connection, module, limits)
        finally:
            connection.close()

    def run_wasm(self, module: bytes, argv: list[str] | None = None, inputs: dict[str, Path] | None = None,
                 outputs: dict[str, Path] | None = None, limits: Limits = LIMITS, fuel: int = 10**10) -> Outcome:
        """As the executor runs a wasm task: find it compiled (or compile it), then run; a load error raises."""
        connection = self.connect()
        try:
            return run_sandboxed(connection, argv or [], module, FileRuntime(inputs, outputs), limits, WasmRun(fuel))
        finally:
            connection.close()

    def assert_cancel_kills_the_child(self, run: Callable[[socket.socket], object]) -> None:
        """What cancelling does: the worker is killed, its connection closes, the zygote kills the child at once.

        ``run`` starts a never-ending task on the connection it is given.
        """
        connection = self.connect()
        runner = threading.Thread(target=lambda: swallow(lambda: run(connection)))
        runner.start()
        child = wait_for_child(self.zygote_pid)
        time.sleep(0.2)
        connection.shutdown(2)
        deadline = time.monotonic() + 1
        while exists(child) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not exists(child), "the child outlived its cancelled client by more than a second"
        runner.join(5)

    def close(self) -> None:
        self.loop.run_until_complete(self.host.close())
        self.loop.close()


def exists(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie has)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status


def swallow(work: Callable[[], object]) -> None:
    """Run ``work`` whose connection a test shuts under it on purpose."""
    try:
        work()
    except Exception:  # noqa: BLE001 - the failure is the point
        pass


def children_of(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def wait_for_child(zygote: int) -> int:
    """The child that runs the task just started (the only one running).

    Once a task has its child, the zygote forks the next task's child ahead: the task's is then the older of
    the two (the kernel lists children oldest first).
    """
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = children_of(zygote)
        if len(children) >= 2:
            return children[0]
        time.sleep(0.01)
    raise AssertionError("the zygote started no task")


def _spin_forever() -> None:
    """``python sandbox_node.py spin``: a node that runs a never-ending function and prints its zygote's pid.

    Tests kill this process to see what a killed execution node leaves behind.
    """
    node = Node()
    connection = node.connect()
    limits = replace(LIMITS, wall_time_secs=120, cpu_time_secs=120)
    threading.Thread(target=lambda: run_sandboxed(connection, [], SPIN, FileRuntime(), limits), daemon=True).start()
    print(node.zygote_pid, flush=True)
    time.sleep(3600)


if __name__ == "__main__" and sys.argv[1:] == ["spin"]:
    _spin_forever()
