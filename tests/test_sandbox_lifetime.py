"""A sandboxed function never outlives the node that runs it.

Each test starts its own zygote (the tests kill it), runs a function that spins
forever as a task would, kills the zygote or the node process above it with
SIGKILL (no chance to clean up), and then scans ``/proc`` for any process of the
task's uid: none may survive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sandbox_node import (
    LIMITS,
    SPIN,
    Node,
    children_of,
    exists,
    swallow,
    wait_for_child,
)

from kettle.executors.runtime import FileRuntime
from kettle.sandbox.layers import CGROUP_MEMORY
from kettle.sandbox.supervisor import run_sandboxed

SURVIVAL_SECS = 3.0
"""How long the kernel may take to end what is below a killed process (generous for a loaded machine)."""
FOREVER = replace(LIMITS, wall_time_secs=120, cpu_time_secs=120)
"""Limits far beyond each test, so that only the kill can end the function."""


def uid_of(pid: int) -> int | None:
    """The real uid of ``pid``; None once it has ended (a zombie runs nothing)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    if "\nState:\tZ" in status:
        return None
    for line in status.splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    return None


def processes_of(uid: int) -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit() and uid_of(int(entry.name)) == uid]


def running_function_uid(child: int) -> int:
    """The uid of the zygote's ``child`` once it has dropped root, i.e. runs the function."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        uid = uid_of(child)
        if uid:
            time.sleep(0.2)  # past the hardening, into the function's loop
            return uid
        time.sleep(0.01)
    raise AssertionError("the sandboxed child never switched to its task's uid")


def assert_none_survives(uid: int) -> None:
    deadline = time.monotonic() + SURVIVAL_SECS
    while processes_of(uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = processes_of(uid)
    for pid in survivors:  # do not leave them spinning for the rest of the suite
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"processes of the task's uid {uid} outlived their node: {survivors}"


@pytest.fixture()
def own_node() -> Iterator[Node]:
    started = Node()
    yield started
    started.close()


def test_killing_the_zygote_kills_the_function_it_runs(own_node: Node) -> None:
    connection = own_node.connect()
    runner = threading.Thread(target=lambda: swallow(lambda: run_sandboxed(connection, [], SPIN, FileRuntime(),
                                                                             FOREVER)))
    runner.start()
    zygote = own_node.zygote_pid
    uid = running_function_uid(wait_for_child(zygote))
    ahead = running_function_uid(children_of(zygote)[-1])  # the next task's child, waiting for it
    os.kill(zygote, signal.SIGKILL)
    assert_none_survives(uid)
    assert_none_survives(ahead)
    runner.join(10)
    connection.close()
    # the killed zygote could not remove its task's memory cgroup; the next zygote to start does
    assert list(CGROUP_MEMORY.glob(f"kettle-sandbox/{zygote}-*"))
    Node().close()
    assert not list(CGROUP_MEMORY.glob(f"kettle-sandbox/{zygote}-*"))


def test_killing_the_node_process_kills_its_zygote_and_the_function() -> None:
    """The node (here a process hosting the zygote and a task's supervisor, as the execution service does) dies hard."""
    node = subprocess.Popen([sys.executable, str(Path(__file__).with_name("sandbox_node.py")), "spin"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert node.stdout is not None
        zygote = int(node.stdout.readline())
        uid = running_function_uid(wait_for_child(zygote))
        node.kill()
        node.wait(10)
        assert_none_survives(uid)
        deadline = time.monotonic() + SURVIVAL_SECS
        while exists(zygote) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not exists(zygote), "the zygote outlived its node"
    finally:
        if node.poll() is None:
            node.kill()
            node.wait(10)
