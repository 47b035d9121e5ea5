"""The zygote: a warm interpreter that forks one hardened child per task (``python -I -m kettle.sandbox.zygote``).

The execution service starts one per node with a clean environment and a
control socket (its descriptor number in ``KETTLE_ZYGOTE_CONTROL_FD``). It imports numpy and every module a function
may use, probes the isolation layers, answers ``HELLO`` with them, and then
serves:

- ``CLIENT`` on the control socket: a new client (a worker process) connects
  through the socket passed along;
- ``SPAWN`` from a client, with the task's file socket, output pipe and job:
  fork a child (:mod:`kettle.sandbox.child`) and answer ``STARTED`` with its
  pidfd, later ``EXITED`` with its wait status, CPU time and memory events;
- a client that goes away (its worker was killed: the task was cancelled)
  takes its child with it, at once.

The zygote never sees a task's data, only descriptors it forwards, and it runs
no user code itself.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
import selectors
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from . import protocol
from .child import PRELOAD, ChildSpec, run_python
from .layers import CGROUP_MEMORY, Layers, probe

log = logging.getLogger("kettle.sandbox.zygote")

CONTROL_FD_ENV = "KETTLE_ZYGOTE_CONTROL_FD"
UID_BASE = 1_000_000
UIDS_PER_ZYGOTE = 1000
ADDRESS_SPACE_FACTOR = 4
"""With a memory cgroup the address-space limit is only a backstop (numpy reserves far more than it touches)."""


@dataclass
class _Task:
    client: socket.socket
    pid: int = 0
    pidfd: int = -1
    cgroup: Path | None = None


@dataclass
class Zygote:
    control: socket.socket
    layers: Layers
    devnull: int = field(default_factory=lambda: os.open(os.devnull, os.O_RDWR))
    selector: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    tasks: dict[int, _Task] = field(default_factory=dict)
    """By the client socket's descriptor."""
    spawned: int = 0
    mapped: int = field(default_factory=lambda: _address_space())
    """The zygote's virtual size once warm: every child starts with all of it mapped."""

    def serve(self) -> None:
        self.selector.register(self.control, selectors.EVENT_READ, self._on_control)
        while True:
            for key, _ in self.selector.select():
                key.data(key.fileobj)

    # --- control --------------------------------------------------------------------

    def _on_control(self, sock: socket.socket) -> None:
        try:
            message = protocol.receive(sock)
        except (protocol.ProtocolError, OSError):
            message = None
        if message is None:
            self._shut_down()
        kind, _, fds = message
        if kind != protocol.CLIENT or len(fds) != 1:
            protocol.close_all(fds)
            return
        client = socket.socket(fileno=fds[0])
        self.tasks[client.fileno()] = _Task(client)
        self.selector.register(client, selectors.EVENT_READ, self._on_client)

    def _shut_down(self) -> NoReturn:
        for task in list(self.tasks.values()):
            self._drop(task)
        os._exit(0)

    # --- clients ----------------------------------------------------------------------

    def _on_client(self, sock: socket.socket) -> None:
        task = self.tasks[sock.fileno()]
        try:
            message = protocol.receive(sock)
        except (protocol.ProtocolError, OSError):
            message = None
        if message is None:
            self._drop(task)
            return
        kind, body, fds = message
        if kind != protocol.SPAWN or len(fds) != 3 or task.pid:
            protocol.close_all(fds)
            self._drop(task)  # a confused client gets nothing more
            return
        try:
            self._spawn(task, protocol.body_json(body), fds)
        except (protocol.ProtocolError, KeyError, TypeError, ValueError, OSError) as exc:
            log.error("could not start a sandboxed child: %s", exc)
            self._drop(task)
        finally:
            protocol.close_all(fds)

    def _spawn(self, task: _Task, request: dict, fds: list[int]) -> None:
        memory = int(request["memory_bytes"])
        cgroup = self._make_cgroup(memory) if self.layers.has("cgroup-memory") else None
        spec = ChildSpec(
            cpu_secs=int(request["cpu_secs"]),
            address_space_bytes=self.mapped + memory * (ADDRESS_SPACE_FACTOR if cgroup else 1),
            open_files=int(request["open_files"]),
            uid=UID_BASE + (os.getpid() % 2_000_000) * UIDS_PER_ZYGOTE + self.spawned % UIDS_PER_ZYGOTE,
            cgroup=str(cgroup or ""),
            layers=self.layers,
        )
        self.spawned += 1
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            run_python(spec, parent, fds[0], fds[1], fds[2], self.devnull)
        task.pid, task.cgroup = pid, cgroup
        task.pidfd = os.pidfd_open(pid)
        self.selector.register(task.pidfd, selectors.EVENT_READ, lambda _: self._on_exit(task))
        protocol.send_json(task.client, protocol.STARTED, {"pid": pid}, [task.pidfd])

    @staticmethod
    def _make_cgroup(memory: int) -> Path:
        folder = CGROUP_MEMORY / "kettle-sandbox" / f"{os.getpid()}-{os.urandom(4).hex()}"
        folder.mkdir(parents=True)
        (folder / "memory.limit_in_bytes").write_text(str(memory))
        swap = folder / "memory.memsw.limit_in_bytes"
        if swap.exists():
            swap.write_text(str(memory))
        return folder

    def _on_exit(self, task: _Task) -> None:
        _, status, usage = os.wait4(task.pid, 0)
        report = {"status": status, "cpu_secs": usage.ru_utime + usage.ru_stime, "max_rss_kib": usage.ru_maxrss,
                  **_memory_events(task.cgroup)}
        with contextlib.suppress(OSError):
            protocol.send_json(task.client, protocol.EXITED, report)
        task.pid = 0
        self._drop(task)

    def _drop(self, task: _Task) -> None:
        """Forget a client; a child still running is killed (and reaped) first."""
        if task.pid:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(task.pidfd, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(task.pid, 0)
            task.pid = 0
        if task.pidfd >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(task.pidfd)
            os.close(task.pidfd)
            task.pidfd = -1
        if task.cgroup is not None:
            with contextlib.suppress(OSError):
                task.cgroup.rmdir()
            task.cgroup = None
        if self.tasks.pop(task.client.fileno(), None) is not None:
            self.selector.unregister(task.client)
            task.client.close()


def _address_space() -> int:
    """This process's current virtual size: a child starts with all of it mapped."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _memory_events(cgroup: Path | None) -> dict[str, int]:
    if cgroup is None:
        return {"oom_kills": 0, "memory_failcnt": 0}
    events = dict(line.split() for line in (cgroup / "memory.oom_control").read_text().splitlines())
    return {"oom_kills": int(events.get("oom_kill", 0)), "memory_failcnt": int((cgroup / "memory.failcnt").read_text())}


def _preload() -> None:
    for name in PRELOAD:
        importlib.import_module(name)
    import numpy

    numpy.ones((8, 8)) @ numpy.ones((8, 8))  # touch BLAS once, so the first task does not pay for it
    import time

    time.localtime()  # reads the time zone file now: children cannot
    # A child's garbage collection would otherwise walk (and so copy, page by page) every object
    # preloaded here: frozen objects are left out of collections.
    gc.collect()
    gc.freeze()


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s zygote %(levelname)s %(name)s: %(message)s")
    control = socket.socket(fileno=int(os.environ.pop(CONTROL_FD_ENV)))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # die with the service
    _preload()
    layers = probe()
    protocol.send_json(control, protocol.HELLO, {"layers": layers.to_json()})
    Zygote(control, layers).serve()


if __name__ == "__main__":
    main()
