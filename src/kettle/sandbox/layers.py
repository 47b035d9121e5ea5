"""Which isolation layers this machine gives the sandbox: probed once at start, reported with every task.

Each layer is tried for real in a throwaway child process (a filter that must
kill, a namespace that must be created), not inferred from versions. The
strict policy (:data:`REQUIRED`) names the layers without which the sandbox
refuses to run user code; namespaces, the PID namespace and the memory cgroup
strengthen it where the machine allows them (``research/sandbox.md`` §7.2).
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import landlock, seccomp
from .libc import LIBC

REQUIRED = ("process", "rlimits", "seccomp", "landlock", "uid")
CLONE_NEWNET, CLONE_NEWIPC, CLONE_NEWUTS, CLONE_NEWPID = 0x40000000, 0x08000000, 0x04000000, 0x20000000
NAMESPACES = CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
CGROUP_MEMORY = Path("/sys/fs/cgroup/memory")


@dataclass(frozen=True)
class Layer:
    name: str
    available: bool
    detail: str = ""

    def describe(self) -> str:
        state = "yes" if self.available else "no"
        return f"{self.name}: {state}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class Layers:
    layers: tuple[Layer, ...] = field(default_factory=tuple)

    def has(self, name: str) -> bool:
        return any(layer.name == name and layer.available for layer in self.layers)

    def missing(self, required: tuple[str, ...] = REQUIRED) -> list[str]:
        return [name for name in required if not self.has(name)]

    @property
    def landlock_abi(self) -> int:
        for layer in self.layers:
            if layer.name == "landlock" and layer.available:
                return int(layer.detail.removeprefix("ABI "))
        return 0

    def summary(self) -> str:
        """One line for logs and task results: the layers in force, and those missing."""
        present = [layer.name + (f" ({layer.detail})" if layer.detail else "") for layer in self.layers if layer.available]
        absent = [layer.name for layer in self.layers if not layer.available]
        text = "sandbox layers: " + ", ".join(present)
        return text + (f"; missing: {', '.join(absent)}" if absent else "")

    def to_json(self) -> list[dict[str, object]]:
        return [{"name": layer.name, "available": layer.available, "detail": layer.detail} for layer in self.layers]

    @classmethod
    def from_json(cls, data: object) -> Layers:
        if not isinstance(data, list):
            raise ValueError("sandbox layers must be a list")
        return cls(tuple(Layer(str(d["name"]), bool(d["available"]), str(d.get("detail", ""))) for d in data))


def unshare(flags: int) -> None:
    if LIBC.unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), "unshare failed")


def setns(fd: int, flags: int) -> None:
    if LIBC.setns(fd, flags) != 0:
        raise OSError(ctypes.get_errno(), "setns failed")


class Forker:
    """``fork()`` for the zygote: with ``own_pid_namespace``, each child is pid 1 of a new PID namespace of its own.

    After ``unshare(CLONE_NEWPID)`` only the *next* fork enters the new
    namespace, and it is its init: when that child ends, the namespace and
    anything in it end too. Every later fork needs a namespace of its own, so
    the zygote goes back to its own namespace for children (``setns``) right
    after each fork; ``unshare`` then makes a fresh one next time.
    """

    def __init__(self, own_pid_namespace: bool) -> None:
        self._home = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC) if own_pid_namespace else -1

    def fork(self) -> int:
        if self._home < 0:
            return os.fork()
        unshare(CLONE_NEWPID)
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid != 0:  # in the zygote (the child stays where it is: an init cannot leave its namespace)
                setns(self._home, CLONE_NEWPID)
        return pid


def _in_child(test: Callable[[], int]) -> int | None:
    """Run ``test`` in a forked child; its exit code, or minus the signal that ended it."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = test()
        except BaseException:  # noqa: BLE001 - any failure of the probe means "not available"
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _seccomp_kills() -> int:
    seccomp.load(seccomp.build_filter(os.getpid()))
    os.open("/", os.O_RDONLY)  # must not return
    return 0


def _landlock_denies(abi: int) -> Callable[[], int]:
    def test() -> int:
        LIBC.prctl(seccomp.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        landlock.restrict_self(abi)
        try:
            os.close(os.open("/", os.O_RDONLY))
        except PermissionError:
            return 0
        return 1
    return test


def _namespaces() -> int:
    unshare(NAMESPACES)
    return 0


def _pid_namespace() -> int:
    pid = Forker(own_pid_namespace=True).fork()
    if pid == 0:
        os._exit(0 if os.getpid() == 1 else 1)
    _, status = os.waitpid(pid, 0)
    return 0 if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else 1


def _cgroup_memory() -> Layer:
    probe = CGROUP_MEMORY / f"kettle-probe-{os.getpid()}"
    try:
        probe.mkdir()
        (probe / "memory.limit_in_bytes").write_text(str(64 << 20))
        probe.rmdir()
    except OSError as exc:
        return Layer("cgroup-memory", False, exc.strerror or type(exc).__name__)
    return Layer("cgroup-memory", True, "v1")


def probe() -> Layers:
    """Try every layer; call from a single-threaded process (it forks)."""
    abi = landlock.abi_version()
    found = [Layer("process", True, "one child per task, descriptors only"), Layer("rlimits", True)]
    found.append(Layer("seccomp", _in_child(_seccomp_kills) == -signal.SIGSYS,
                       "forbidden calls kill the process"))
    found.append(Layer("landlock", abi > 0 and _in_child(_landlock_denies(abi)) == 0, f"ABI {abi}" if abi else ""))
    found.append(Layer("namespaces", _in_child(_namespaces) == 0, "net, ipc, uts"))
    found.append(Layer("pid-namespace", _in_child(_pid_namespace) == 0,
                       "a new one per task, the function as its pid 1"))
    root = os.geteuid() == 0
    found.append(Layer("uid", root, "a fresh unprivileged uid per task" if root else "not root"))
    found.append(_cgroup_memory())
    return Layers(tuple(found))
