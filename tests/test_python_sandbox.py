"""The Python sandbox against hostile payloads: a real zygote, real hardened children, the worker's supervisor.

Each payload runs as a task would (``run_sandboxed`` with the task's files),
must end with its named reason, and must leave the node healthy: the zygote
alive and the next task running normally. Limits are small so that each case
takes about a second at most.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import pytest
from sandbox_node import LIMITS, MEMORY_BOMB, Node, exists, wait_for_child

from kettle.executors.runtime import FileRuntime
from kettle.sandbox.host import SandboxHost
from kettle.sandbox.layers import REQUIRED, Layer, Layers
from kettle.sandbox.supervisor import Outcome, run_sandboxed


def healthy(node: Node) -> None:
    assert node.alive()
    outcome = node.run("def entrypoint(argv):\n    return 'still here'\n")
    assert (outcome.failure, outcome.return_value) == (None, "still here")


def test_every_required_layer_is_in_force_here(node: Node) -> None:
    assert node.layers.missing(REQUIRED) == []
    assert node.layers.has("namespaces") and node.layers.has("pid-namespace") and node.layers.has("cgroup-memory")
    assert node.layers.landlock_abi >= 1


def test_a_payload_reads_its_input_and_writes_its_output(node: Node, tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"Hello\nWorld")
    outcome = node.run("""
        def entrypoint(argv):
            data = teaclave_open("in_f1", "rb").read()
            with teaclave_open("out_f1", "wb") as f:
                f.write(data.upper())
            return ",".join(argv)
    """, ["message", "hi"], {"in_f1": tmp_path / "in"}, {"out_f1": tmp_path / "out"})
    assert (outcome.failure, outcome.return_value) == (None, "message,hi")
    assert (tmp_path / "out").read_bytes() == b"HELLO\nWORLD"


def test_numpy_is_there_and_the_environment_is_empty(node: Node) -> None:
    outcome = node.run("""
        import os, json
        import numpy as np
        def entrypoint(argv):
            return json.dumps([float(np.arange(10).sum()), dict(os.environ), os.getuid() >= 1000000])
    """)
    assert (outcome.failure, outcome.return_value) == (None, "[45.0, {}, true]")


def test_an_exception_is_the_tasks_failure_with_its_type_and_message(node: Node) -> None:
    outcome = node.run("def entrypoint(argv):\n    raise ValueError('bad row 7')\n")
    assert outcome.failure == "ValueError: bad row 7"
    assert "bad row 7" in outcome.traceback and "entrypoint" in outcome.traceback


@pytest.mark.parametrize(("name", "message", "reason"), [
    ("CPUTimeExceeded", "the function used more than 1 s of CPU time",
     "Exception (raised by the function): CPUTimeExceeded: the function used more than 1 s of CPU time"),
    ("MemoryLimitExceeded: the function used more than 256 MiB of memory", "",
     "Exception (raised by the function): MemoryLimitExceeded: the function used more than 256 MiB of memory"),
    ("FuelExhausted", "x", "Exception (raised by the function): FuelExhausted: x"),
])
def test_a_payload_cannot_pass_its_exception_off_as_a_platform_reason(node: Node, name: str, message: str,
                                                                      reason: str) -> None:
    outcome = node.run(f"def entrypoint(argv):\n    raise type({name!r}, (Exception,), {{}})({message!r})\n")
    assert outcome.failure == reason


PROBE = "import sys\nsocket_module = sys.modules['socket']\nctypes = sys.modules['ctypes']\n"
"""Modules the payload may not import, reached anyway: the kernel must still stop what they do."""

VIOLATIONS = {
    "tcp": "socket_module.create_connection(('127.0.0.1', 5432), timeout=1)",
    "udp": "socket_module.socket(socket_module.AF_INET, socket_module.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 53))",
    "dns": "socket_module.getaddrinfo('localhost', 80)",
    "unix socket": "socket_module.socket(socket_module.AF_UNIX).connect('/run/postgresql/.s.PGSQL.5432')",
    "/etc/passwd": "open('/etc/passwd').read()",
    "service environment": "open('/proc/%d/environ' % int(argv[1])).read()",
    "service memory": "open('/proc/%d/mem' % int(argv[1]), 'rb').read(1)",
    "/proc/self/fd": "open('/proc/self/fd/3', 'rb')",
    "listing fds": "import os\nos.listdir('/proc/self/fd')",
    "stat a host file": "import os\nos.stat('/etc/shadow')",
    "write a host file": "open('/tmp/kettle-sandbox-pwned', 'w').write('x')",
    "fork": "import os\nos.fork()",
    "spawn": "import os\nos.posix_spawn('/bin/sh', ['sh', '-c', 'true'], {})",
    "exec": "import os\nos.execv('/bin/sh', ['sh'])",
    "ctypes socket": "ctypes.CDLL(None).syscall(41, 2, 1, 0)",
    "ctypes ptrace": "ctypes.CDLL(None).syscall(101, 16, int(argv[1]), 0, 0)",
    "kill the zygote": "import os\nos.kill(os.getppid(), 9)",
    "kill the service": "import os\nos.kill(int(argv[1]), 15)",
    "become root": "import os\nos.setuid(0)",
    "unshare": "ctypes.CDLL(None).unshare(0x10000000)",
    "memfd": "import os\nos.memfd_create('x')",
    "io_uring": "ctypes.CDLL(None).syscall(425, 8, 0)",
}


@pytest.mark.parametrize("name", VIOLATIONS)
def test_a_forbidden_action_kills_the_function_with_a_sandbox_violation(node: Node, name: str) -> None:
    body = textwrap.indent(VIOLATIONS[name], "    ")
    source = PROBE + f"def entrypoint(argv):\n{body}\n    return 'not stopped'\n"
    outcome = node.run(source, ["service", str(os.getpid())])
    assert outcome.failure == "SandboxViolation: the function made a forbidden system call", outcome
    assert not Path("/tmp/kettle-sandbox-pwned").exists()
    healthy(node)


def test_importing_a_module_that_is_not_allowed_fails_with_its_name(node: Node) -> None:
    for module in ("socket", "subprocess", "ctypes", "urllib.request"):
        outcome = node.run(f"import {module}\ndef entrypoint(argv):\n    return 'imported'\n")
        assert outcome.failure == f"ModuleNotAllowedError: import of '{module}' is not allowed in the sandbox"
    guarded = node.run("""
        def entrypoint(argv):
            try:
                import socket
            except ImportError as e:
                return type(e).__name__
    """)
    assert guarded.return_value == "ModuleNotAllowedError"


CPU_BOUND = replace(LIMITS, wall_time_secs=30)
"""The CPU limit with a wall-time limit that a loaded machine cannot reach first (the reason tells which acted)."""


def test_an_infinite_loop_is_stopped_by_the_cpu_limit(node: Node) -> None:
    outcome = node.run("def entrypoint(argv):\n    while True:\n        pass\n", limits=CPU_BOUND)
    assert outcome.failure == "CPUTimeExceeded: the function used more than 1 s of CPU time"
    healthy(node)


def test_ignoring_sigxcpu_does_not_escape_the_cpu_limit(node: Node) -> None:
    outcome = node.run("""
        import sys
        signal = sys.modules['signal']
        def entrypoint(argv):
            signal.signal(signal.SIGXCPU, signal.SIG_IGN)
            while True:
                pass
    """, limits=CPU_BOUND)
    assert outcome.failure == "CPUTimeExceeded: the function used more than 1 s of CPU time"


def test_sleeping_forever_is_stopped_by_the_wall_clock(node: Node) -> None:
    started = time.monotonic()
    outcome = node.run("import time\ndef entrypoint(argv):\n    time.sleep(3600)\n",
                       limits=replace(LIMITS, wall_time_secs=1))
    assert outcome.failure == "WallTimeExceeded: the function ran for more than 1 s"
    assert time.monotonic() - started < 3
    healthy(node)


def test_a_memory_bomb_is_killed_at_the_memory_limit(node: Node) -> None:
    outcome = node.run(MEMORY_BOMB, limits=replace(LIMITS, cpu_time_secs=10))
    assert outcome.failure == "MemoryLimitExceeded: the function used more than 256 MiB of memory"
    healthy(node)


def test_one_huge_allocation_is_refused_as_the_payloads_memory_error(node: Node) -> None:
    outcome = node.run("def entrypoint(argv):\n    return len(bytearray(64 << 30))\n")
    assert outcome.failure is not None and outcome.failure.startswith("MemoryError")


def test_a_disk_bomb_stops_at_the_output_limit(node: Node, tmp_path: Path) -> None:
    outcome = node.run("""
        def entrypoint(argv):
            with teaclave_open("out", "wb") as f:
                while True:
                    f.write(b"x" * 65536)
    """, outputs={"out": tmp_path / "out"}, limits=replace(LIMITS, cpu_time_secs=10))
    assert outcome.failure == f"OutputLimitExceeded: the function wrote more than {1 << 20} bytes of output"
    assert (tmp_path / "out").stat().st_size <= 1 << 20
    healthy(node)


def test_a_huge_return_value_is_refused(node: Node) -> None:
    outcome = node.run("def entrypoint(argv):\n    return 'x' * 10_000_000\n")
    assert outcome.failure == "ReturnValueLimitExceeded: the return value is larger than 20480 bytes"
    exact = node.run("def entrypoint(argv):\n    return 'x' * 20480\n")
    assert exact.return_value == "x" * 20480


def test_writing_to_a_file_that_is_not_an_output_fails(node: Node, tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"data")
    outcome = node.run("""
        def entrypoint(argv):
            teaclave_open("in", "wb")
    """, inputs={"in": tmp_path / "in"}, outputs={"out": tmp_path / "out"})
    assert outcome.failure == "RuntimeError: fileio_init: teaclave_ffi_error"
    assert (tmp_path / "in").read_bytes() == b"data" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("forgery", [
    "os.write(3, b'Xnot a message')",
    "os.write(3, b'D')\n    return 'after the forged end'",
    "os.write(3, b'F{\"type\": \"CPUTimeExceeded\"}')",
])
def test_forging_the_result_channel_is_a_violation(node: Node, forgery: str) -> None:
    outcome = node.run(f"import os\ndef entrypoint(argv):\n    {forgery}\n")
    assert outcome.failure == "SandboxViolation: the function broke the result channel's protocol"
    healthy(node)


def test_exiting_without_a_result_is_reported(node: Node) -> None:
    outcome = node.run("import os\ndef entrypoint(argv):\n    os._exit(0)\n")
    assert outcome.failure == "Runtime Error: the function's process ended without a result"
    outcome = node.run("import os\ndef entrypoint(argv):\n    os._exit(3)\n")
    assert outcome.failure == "Runtime Error: the function's process exited with status 3"


def test_printing_is_kept_up_to_the_log_limit(node: Node) -> None:
    outcome = node.run("def entrypoint(argv):\n    print('x' * 100000)\n    return 'ok'\n")
    assert outcome.return_value == "ok" and outcome.output == b"x" * 4096


def test_a_client_that_goes_away_takes_its_child_with_it(node: Node) -> None:
    node.assert_cancel_kills_the_child(lambda connection: run_sandboxed(
        connection, [], b"def entrypoint(argv):\n    while True:\n        pass\n", FileRuntime(),
        replace(LIMITS, cpu_time_secs=60)))
    healthy(node)


def test_two_tasks_at_once_cannot_see_each_other(node: Node, tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"alice's secret")
    results: dict[str, Outcome] = {}
    holder = threading.Thread(target=lambda: results.__setitem__("alice", node.run("""
        import time
        def entrypoint(argv):
            secret = teaclave_open("secret", "rb").read()
            time.sleep(1.5)
            return secret
    """, inputs={"secret": tmp_path / "secret"})))
    holder.start()
    alice = wait_for_child(node.zygote_pid)
    time.sleep(0.3)
    attempts = {
        "memory": "open('/proc/%d/mem' % int(argv[1]), 'rb').read()",
        "files": "import os\nos.listdir('/proc/%d/fd' % int(argv[1]))",
        "environment": "open('/proc/%d/environ' % int(argv[1])).read()",
        "signal": "import os\nos.kill(int(argv[1]), 9)",
        "her input by name": "teaclave_open('secret', 'rb').read()",
    }
    for what, attempt in attempts.items():
        bob = node.run(f"def entrypoint(argv):\n{textwrap.indent(attempt, '    ')}\n", ["alice", str(alice)])
        assert bob.failure in ("SandboxViolation: the function made a forbidden system call",
                               "RuntimeError: fileio_init: teaclave_ffi_error"), (what, bob)
    holder.join(10)
    assert (results["alice"].failure, results["alice"].return_value) == (None, "alice's secret")


def test_the_sandboxed_child_really_runs_under_its_own_uid_without_privileges(node: Node) -> None:
    outcome = node.run("""
        import os
        def entrypoint(argv):
            return "%d %d %s" % (os.getuid(), os.getgid(), os.getgroups())
    """)
    uid, gid, groups = (outcome.return_value or "").split(" ", 2)
    assert int(uid) >= 1_000_000 and uid == gid and groups == "[]"


def test_a_missing_required_layer_refuses_user_code_unless_degraded_mode_is_on() -> None:
    from kettle.sandbox.layers import Layer, Layers

    host = SandboxHost()
    host.layers = Layers((Layer("process", True), Layer("rlimits", True), Layer("seccomp", True),
                          Layer("landlock", False), Layer("uid", False), Layer("namespaces", False)))
    assert host.refusal == "SandboxUnavailable: the sandbox lacks required layers: landlock, uid"
    degraded = SandboxHost(allow_degraded=True)
    degraded.layers = host.layers
    assert degraded.refusal is None
    assert "missing: landlock, uid, namespaces" in host.layers.summary()
    failed = SandboxHost(allow_degraded=True)
    failed._failure = "SandboxUnavailable: the sandbox's zygote did not start"
    assert failed.refusal == "SandboxUnavailable: the sandbox's zygote did not start"


def test_the_python_executor_says_which_layer_is_missing(tmp_path: Path) -> None:
    import socket as socket_module

    from kettle.config import SandboxConfig
    from kettle.executors import sandboxed
    from kettle.functions import FunctionError

    layers = Layers((Layer("process", True), Layer("seccomp", True), Layer("landlock", False)))
    ours, theirs = socket_module.socketpair()
    try:
        sandboxed.configure(ours, SandboxConfig(), layers, "")
        assert sandboxed.layers_in_force() == ("process", "seccomp")
        sandboxed.configure(ours, SandboxConfig(), layers,
                            "SandboxUnavailable: the sandbox lacks required layers: landlock")
        assert sandboxed.layers_in_force() == ()  # nothing runs, so nothing is in force
        with pytest.raises(FunctionError, match="^SandboxUnavailable: the sandbox lacks required layers: landlock$"):
            sandboxed.run_python("f", {}, b"def entrypoint(argv):\n    return 'ran'\n", FileRuntime())
    finally:
        sandboxed._sandbox = None
        ours.close()
        theirs.close()


def test_flooding_the_result_channel_cannot_stall_the_wall_clock(node: Node) -> None:
    """Requests sent without ever reading an answer fill the function's socket; the supervisor must not wait on it."""
    limits = replace(LIMITS, wall_time_secs=2, cpu_time_secs=60)
    results: list[Outcome] = []
    runner = threading.Thread(target=lambda: results.append(node.run("""
        import os, time
        def entrypoint(argv):
            os.set_blocking(3, False)
            while True:
                try:
                    os.write(3, b"Ono such input")
                except BlockingIOError:
                    time.sleep(0.01)
    """, limits=limits)))
    started = time.monotonic()
    runner.start()
    child = wait_for_child(node.zygote_pid)
    runner.join(limits.wall_time_secs + 3)  # the defect holds the supervisor until the function's CPU limit
    stalled = runner.is_alive()
    if stalled:  # end the stalled run so that the module's other tests still have a node
        os.kill(child, signal.SIGKILL)
        runner.join(10)
    assert not stalled, "the supervisor was stalled by a function that does not read its answers"
    assert results[0].failure == "SandboxViolation: the function sent requests without reading the answers"
    assert time.monotonic() - started < limits.wall_time_secs + 3
    healthy(node)


def test_the_function_is_pid_1_of_its_own_namespace_and_sees_no_host_process(node: Node) -> None:
    outcome = node.run("""
        import json, os
        def entrypoint(argv):
            hidden = []
            for pid in map(int, argv):  # probes that seccomp allows: they only ask whether the pid exists
                try:
                    os.getpgid(pid)
                except ProcessLookupError:
                    hidden.append(pid)
            return json.dumps([os.getpid(), os.getppid(), os.getsid(0), hidden])
    """, [str(os.getpid()), str(node.zygote_pid), "1"])
    assert outcome.failure is None, outcome
    pid, parent, session, hidden = json.loads(outcome.return_value or "")
    # pid 1 is the function itself; its parent (the zygote) and the service's session are outside its namespace
    assert (pid, parent, session) == (1, 0, 1)
    assert hidden == [os.getpid(), node.zygote_pid]


class _StuckRuntime(FileRuntime):
    """A supervisor stuck serving a file (as if its storage hung) until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def open_input(self, name: str) -> BinaryIO:
        self.release.wait(60)
        raise LookupError(name)


def test_the_zygote_ends_a_function_at_its_wall_limit_even_when_its_supervisor_is_stuck(node: Node) -> None:
    limits = replace(LIMITS, wall_time_secs=1, cpu_time_secs=60)
    runtime = _StuckRuntime()
    results: list[Outcome] = []
    connection = node.connect()
    runner = threading.Thread(target=lambda: results.append(run_sandboxed(
        connection, [], b"def entrypoint(argv):\n    teaclave_open('in', 'rb')\n", runtime, limits)))
    runner.start()
    try:
        child = wait_for_child(node.zygote_pid)
        deadline = time.monotonic() + limits.wall_time_secs + 4  # the limit, the zygote's grace, a loaded machine
        while exists(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not exists(child), "the function outlived its wall-time limit while its supervisor was stuck"
    finally:
        runtime.release.set()
        runner.join(10)
        connection.close()
    assert results[0].failure == "WallTimeExceeded: the function ran for more than 1 s"
    healthy(node)


def test_a_function_killed_with_an_answer_unread_ends_with_the_reason_that_killed_it(node: Node,
                                                                                       tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"data")
    outcome = node.run("""
        import os
        def entrypoint(argv):
            os.write(3, b"Oin")  # the answer stays unread in its socket when the CPU limit kills it
            while True:
                pass
    """, inputs={"in": tmp_path / "in"}, limits=CPU_BOUND)
    assert outcome.failure == "CPUTimeExceeded: the function used more than 1 s of CPU time"
