"""Task children forked ahead: each hardened before its task, in a memory cgroup of its own, used once.

The zygote forks the next task's child while a task runs; it hardens itself and
waits for its task on a socket of its own. These tests look at real children
from outside (``/proc``, the cgroup files) while they run or wait.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

from sandbox_node import LIMITS, MEMORY_BOMB, Node, children_of, exists, wait_for_child

from kettle.sandbox.layers import CGROUP_MEMORY
from kettle.sandbox.supervisor import Outcome

SLEEPER = """
    import time
    def entrypoint(argv):
        time.sleep(1.0)
        return 'slept'
"""


def memory_cgroup(pid: int) -> Path:
    """The v1 memory cgroup ``pid`` is in."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return CGROUP_MEMORY / path.lstrip("/")
    raise AssertionError(f"process {pid} is in no memory cgroup")


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no uid for {pid}")


def hardened(pid: int) -> int:
    """``pid`` once it runs under its fresh uid (a child just forked is still hardening itself)."""
    deadline = time.monotonic() + 5
    while uid_of(pid) < 1_000_000 and time.monotonic() < deadline:
        time.sleep(0.01)
    return pid


def while_running(node: Node, source: str, limits=LIMITS) -> tuple[list[Outcome], threading.Thread, int]:  # type: ignore[no-untyped-def]
    results: list[Outcome] = []
    runner = threading.Thread(target=lambda: results.append(node.run(source, limits=limits)))
    runner.start()
    return results, runner, hardened(wait_for_child(node.zygote_pid))


def test_the_task_child_and_the_one_forked_ahead_each_have_their_own_cgroup_and_uid(node: Node) -> None:
    results, runner, child = while_running(node, SLEEPER)
    ahead = hardened(children_of(node.zygote_pid)[-1])
    assert ahead != child
    cgroups = memory_cgroup(child), memory_cgroup(ahead)
    for cgroup in cgroups:
        assert cgroup.parent == CGROUP_MEMORY / "kettle-sandbox" and cgroup.name.startswith(f"{node.zygote_pid}-")
        assert int((cgroup / "memory.limit_in_bytes").read_text()) == LIMITS.memory_bytes
    assert cgroups[0] != cgroups[1]
    assert uid_of(child) >= 1_000_000 and uid_of(ahead) >= 1_000_000 and uid_of(child) != uid_of(ahead)
    runner.join(10)
    assert (results[0].failure, results[0].return_value) == (None, "slept")
    deadline = time.monotonic() + 5  # the zygote removes the cgroup once it has reported the exit
    while (exists(child) or cgroups[0].exists()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not exists(child) and not cgroups[0].exists()  # used once, its cgroup removed with it
    assert exists(ahead)  # waiting for the next task


def test_a_task_with_other_limits_gets_a_child_made_for_them(node: Node) -> None:
    node.run("def entrypoint(argv):\n    return 'x'\n")  # a child is now forked ahead for LIMITS
    small = replace(LIMITS, memory_bytes=64 << 20, cpu_time_secs=10)
    results, runner, child = while_running(node, SLEEPER, small)
    assert int((memory_cgroup(child) / "memory.limit_in_bytes").read_text()) == 64 << 20
    runner.join(10)
    assert results[0].return_value == "slept"
    outcome = node.run(MEMORY_BOMB, limits=small)
    assert outcome.failure == "MemoryLimitExceeded: the function used more than 64 MiB of memory"


def test_the_function_holds_only_its_own_descriptors(node: Node) -> None:
    """Output (1, 2), /dev/null (0) and the file socket (3): the socket the task came on is closed before it runs."""
    outcome = node.run("""
        import os
        def entrypoint(argv):
            held = []
            for fd in range(64):
                try:
                    os.fstat(fd)
                except OSError:
                    continue
                held.append(fd)
            return repr(held)
    """)
    assert outcome.return_value == "[0, 1, 2, 3]"


def test_a_child_forked_ahead_that_ends_before_its_task_is_replaced(node: Node) -> None:
    node.run("def entrypoint(argv):\n    return 'x'\n")
    (ahead,) = children_of(node.zygote_pid)
    os.kill(ahead, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while ahead in children_of(node.zygote_pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ahead not in children_of(node.zygote_pid)  # reaped by the zygote, which is still there
    assert node.alive()
    outcome = node.run("def entrypoint(argv):\n    return 'next'\n")
    assert (outcome.failure, outcome.return_value) == (None, "next")
