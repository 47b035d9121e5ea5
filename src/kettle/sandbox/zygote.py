"""The zygote: a warm interpreter that forks one hardened child per task (``python -I -m kettle.sandbox.zygote``).

The execution service starts one per node with a clean environment and a
control socket (its descriptor number in ``KETTLE_ZYGOTE_CONTROL_FD``). It imports numpy and every module a function
may use, probes the isolation layers, answers ``HELLO`` with them, and then
serves:

- ``CLIENT`` on the control socket: a new client (a worker process) connects
  through the socket passed along;
- ``SPAWN`` from a client, with the task's file socket, output pipe and job:
  hand them to a hardened child (:mod:`kettle.sandbox.child`), pid 1 of a PID
  namespace of its own, and answer ``STARTED`` with its pidfd, later
  ``EXITED`` with its wait status, CPU time and memory events. A child still
  running :data:`WALL_TIME_GRACE_SECS` after its wall-time limit is killed
  here, whatever its client does (``wall_time_exceeded`` in the report): the
  client enforces the limit, and this process, which the function cannot
  talk to, makes sure nothing stalls that. A ``SPAWN`` of a wasm task names
  its module's SHA-256; its child is one forked for that module, which loads
  the compiled module (a sealed memfd) before its task comes, or the client
  gets ``UNCOMPILED`` when there is none (it then asks ``COMPILE``);
- ``COMPILE`` from a client, with a WebAssembly module (a descriptor) and
  its SHA-256: unless the module is in the cache of compiled modules, fork a
  hardened child that only compiles it (:func:`~kettle.sandbox.child.run_compile`)
  and keep what it returns; answer ``COMPILED`` with ``ok`` or the error;
- a client that goes away (its worker was killed: the task was cancelled)
  takes its child with it, at once.

Children are forked ahead: once a task has its child, the zygote forks the
next one (:class:`_Ready`), which hardens itself (namespaces, memory cgroup,
limits, uid, Landlock, seccomp) while the task runs and then waits for its
own task. The fork, the hardening and the cgroup move (and for a wasm task,
loading its module) are then off the next task's path. A ready child is made
for the limits and the module of the last task; a task with other limits or
another module gets a child forked for it.

The zygote never sees a task's data, only descriptors it forwards, and it runs
no user code itself: it neither reads nor compiles a module (its cache holds
what a compile child made of the module's bytes).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import importlib
import io
import logging
import math
import mmap
import os
import select
import selectors
import signal
import socket
import string
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from . import protocol
from . import seccomp
from .child import COMPILE_ANSWER, MAX_COMPILE_ERROR, PRELOAD, ChildSpec, Task, run_compile, run_task
from .layers import CGROUP_MEMORY, Forker, Layers, probe

log = logging.getLogger("kettle.sandbox.zygote")

CONTROL_FD_ENV = "KETTLE_ZYGOTE_CONTROL_FD"
PARENT_PID_ENV = "KETTLE_ZYGOTE_PARENT"
"""The pid of the process that started the zygote (the execution service): the zygote dies with it."""
PR_SET_PDEATHSIG = 1
WALL_TIME_GRACE_SECS = 1.0
"""How long after its wall-time limit a child still running is killed by the zygote (its client kills it at the limit)."""
UID_BASE = 1_000_000
UIDS_PER_ZYGOTE = 1000
ADDRESS_SPACE_FACTOR = 4
"""With a memory cgroup the address-space limit is only a backstop (numpy reserves far more than it touches)."""


MAX_ARTIFACT_BYTES = 256 << 20
REAP_SECS = 1.0
CPUCLOCK_PROF = 0
"""The kernel's clock id for a process's user and system time is ``(~pid << 3) | CPUCLOCK_PROF``."""
CACHE_BYTES = 512 << 20
"""Compiled modules kept, least recently used first out."""
SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
"""A compiled module's memfd once complete: no child it is handed to can change it for the next."""


@dataclass
class _Compile:
    """A compile child at work: its digest, process and cgroup, and its answer as far as it has come.

    The answer is read straight into a memfd (through a mapping dropped once it
    is complete): no copy of a compiled module is left in the zygote's memory,
    where every child would inherit it; a task child gets its own module's
    descriptor, and nothing of the others.
    """

    sha256: str
    pid: int
    pipe: io.FileIO
    cgroup: Path | None
    header: bytearray = field(default_factory=bytearray)
    length: int = -1
    """Of the compiled module or the error, once the header is read."""
    memfd: int = -1
    body: mmap.mmap | None = None
    """The memfd mapped, while it is filled."""
    filled: int = 0


@dataclass(frozen=True)
class _Artifact:
    """A compiled module in the cache: a sealed memfd and its length."""

    fd: int
    size: int


Key = tuple[int, int, int, str]
"""What a child is forked for: its CPU seconds, memory bytes and descriptor limit, and its wasm module's digest
(empty for Python)."""


@dataclass
class _Ready:
    """A child forked ahead, hardening itself or done, that waits for its task on ``handoff``."""

    key: Key
    pid: int
    pidfd: int
    handoff: socket.socket
    cgroup: Path | None


@dataclass
class _Task:
    client: socket.socket
    pid: int = 0
    pidfd: int = -1
    cgroup: Path | None = None
    compiling: _Compile | None = None
    deadline: float = math.inf
    """When the zygote kills the child (monotonic clock): its wall-time limit and the grace after it."""
    wall_time_exceeded: bool = False


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
    compiled: OrderedDict[str, _Artifact] = field(default_factory=OrderedDict)
    """Compiled wasm modules by their SHA-256, least recently used first. A child closes every descriptor it
    inherits and is handed only its own module's, so no function sees another's code."""
    ready: _Ready | None = None
    """The child forked ahead for the next task."""
    pidfd: int = field(default_factory=lambda: os.pidfd_open(os.getpid()))
    """The zygote's own pidfd, inherited by each child: it checks through it that the zygote is still there."""
    forker: Forker = field(init=False)

    def __post_init__(self) -> None:
        self.forker = Forker(own_pid_namespace=self.layers.has("pid-namespace"))

    def serve(self) -> None:
        self.selector.register(self.control, selectors.EVENT_READ, self._on_control)
        while True:
            for key, _ in self.selector.select(self._until_next_deadline()):
                key.data(key.fileobj)
            self._enforce_deadlines()

    def _until_next_deadline(self) -> float | None:
        deadline = min((task.deadline for task in self.tasks.values() if task.pid), default=math.inf)
        return None if deadline == math.inf else max(deadline - time.monotonic(), 0.0)

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for task in self.tasks.values():
            if task.pid and not task.wall_time_exceeded and now >= task.deadline:
                task.wall_time_exceeded = True
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(task.pidfd, signal.SIGKILL)

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
        self._discard_ready()
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
        busy = bool(task.pid or task.compiling)
        if busy or (kind, len(fds)) not in ((protocol.SPAWN, 3), (protocol.COMPILE, 1)):
            protocol.close_all(fds)
            self._drop(task)  # a confused client gets nothing more
            return
        try:
            if kind == protocol.SPAWN:
                self._spawn(task, protocol.body_json(body), fds)
            else:
                self._compile(task, protocol.body_json(body), fds[0])
        except (protocol.ProtocolError, KeyError, TypeError, ValueError, OSError) as exc:
            log.error("could not start a sandboxed child: %s", exc)
            self._drop(task)
        finally:
            protocol.close_all(fds)

    def _spec(self, key: Key, cgroup: Path | None) -> ChildSpec:
        cpu_secs, memory, open_files, digest = key
        spec = ChildSpec(
            cpu_secs=cpu_secs,
            address_space_bytes=self.mapped + memory * (ADDRESS_SPACE_FACTOR if cgroup else 1),
            open_files=open_files,
            uid=UID_BASE + (os.getpid() % 2_000_000) * UIDS_PER_ZYGOTE + self.spawned % UIDS_PER_ZYGOTE,
            cgroup=str(cgroup or ""),
            layers=self.layers,
            memory_bytes=memory,
            module_sha256=digest,
            module_bytes=self.compiled[digest].size if digest else 0,
        )
        self.spawned += 1
        return spec

    def _spawn(self, task: _Task, request: dict, fds: list[int]) -> None:
        engine = request.get("engine", "python")
        if engine not in ("python", "wasm"):
            raise ValueError(f"unknown engine {engine!r}")
        wall_time = float(request["wall_time_secs"])
        digest = str(request["sha256"]) if engine == "wasm" else ""
        if digest:
            if digest not in self.compiled:  # never compiled here, or dropped from the cache since
                protocol.send(task.client, protocol.UNCOMPILED)
                return
            self.compiled.move_to_end(digest)
        key = _key(request, digest)
        child = self._take_ready(key) or self._fork_ready(key)
        job = Task(engine, int(request.get("fuel", 0)), digest)
        try:
            protocol.send_json(child.handoff, protocol.SPAWN, job.to_json(), fds)
        except OSError:
            pass  # it has ended already: its exit is this task's
        child.handoff.close()
        task.pid, task.pidfd, task.cgroup = child.pid, child.pidfd, child.cgroup
        task.deadline = time.monotonic() + wall_time + WALL_TIME_GRACE_SECS
        self.selector.modify(task.pidfd, selectors.EVENT_READ, lambda _: self._on_exit(task))
        protocol.send_json(task.client, protocol.STARTED, {"pid": child.pid}, [task.pidfd])
        try:
            self.ready = self._fork_ready(key)  # the next task's child hardens itself while this one runs
        except (OSError, KeyError) as exc:  # the next task forks its own
            log.error("could not fork a sandboxed child ahead: %s", exc)

    # --- children forked ahead ---------------------------------------------------------

    def _fork_ready(self, key: Key) -> _Ready:
        """Fork a task child that hardens itself, loads its wasm module if it has one, and waits for its task.

        Raises KeyError for a module no longer in the cache.
        """
        module = self.compiled[key[3]].fd if key[3] else -1
        cgroup = self._make_cgroup(key[1]) if self.layers.has("cgroup-memory") else None
        ours, theirs = protocol.socket_pair()
        spec = self._spec(key, cgroup)
        pid = self.forker.fork()
        if pid == 0:
            self.compiled.clear()  # their descriptors are closed first thing (but its own): nothing of the cache
            run_task(spec, self.pidfd, theirs.fileno(), self.devnull, module)
        theirs.close()
        pidfd = os.pidfd_open(pid)
        ready = _Ready(key, pid, pidfd, ours, cgroup)
        self.selector.register(pidfd, selectors.EVENT_READ, lambda _: self._on_ready_ended(ready))
        return ready

    def _take_ready(self, key: Key) -> _Ready | None:
        """The child forked ahead, if it was made for these limits and module (one that was not is let go)."""
        ready, self.ready = self.ready, None
        if ready is None or ready.key == key:
            return ready
        self._end_ready(ready)
        return None

    def _on_ready_ended(self, ready: _Ready) -> None:
        """A child forked ahead ended before it had a task (its hardening failed, or it was killed): the next task
        forks anew."""
        if self.ready is ready:
            self.ready = None
        log.error("a sandboxed child ended before its task (status %s)", os.waitpid(ready.pid, 0)[1])
        self._end_ready(ready, reaped=True)

    def _discard_ready(self) -> None:
        ready, self.ready = self.ready, None
        if ready is not None:
            self._end_ready(ready)

    def _end_ready(self, ready: _Ready, reaped: bool = False) -> None:
        self.selector.unregister(ready.pidfd)
        if not reaped:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(ready.pidfd, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(ready.pid, 0)
        ready.handoff.close()
        os.close(ready.pidfd)
        if ready.cgroup is not None:
            with contextlib.suppress(OSError):
                ready.cgroup.rmdir()

    # --- compiling wasm modules ------------------------------------------------------------

    def _compile(self, task: _Task, request: dict, module_fd: int) -> None:
        digest = str(request["sha256"])
        if len(digest) != 64 or not set(digest) <= set(string.hexdigits.lower()):
            raise ValueError("a module digest that is not a SHA-256")
        if digest in self.compiled:
            self.compiled.move_to_end(digest)
            protocol.send_json(task.client, protocol.COMPILED, {"ok": True, "cached": True})
            return
        key = _key(request)
        cgroup = self._make_cgroup(key[1]) if self.layers.has("cgroup-memory") else None
        spec = self._spec(key, cgroup)
        read_end, write_end = os.pipe()
        pid = self.forker.fork()
        if pid == 0:
            os.close(read_end)
            self.compiled.clear()  # their descriptors are closed first thing: nothing of the cache is left
            run_compile(spec, self.pidfd, module_fd, write_end, self.devnull, digest)
        os.close(write_end)
        os.set_blocking(read_end, False)
        task.compiling = _Compile(digest, pid, io.FileIO(read_end, "r"), cgroup)
        self.selector.register(read_end, selectors.EVENT_READ, lambda _: self._on_answer(task))

    def _on_answer(self, task: _Task) -> None:
        job = task.compiling
        assert job is not None
        too_large = False
        if job.length < 0:  # the header
            chunk = job.pipe.read(COMPILE_ANSWER.size - len(job.header))
            if chunk is None:
                return
            job.header += chunk
            if chunk and len(job.header) < COMPILE_ANSWER.size:
                return
            if chunk:
                _, length = COMPILE_ANSWER.unpack(job.header)
                too_large = length > MAX_ARTIFACT_BYTES
                if not too_large:
                    job.length = length
                    job.memfd = os.memfd_create("kettle-compiled", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
                    if length:
                        os.ftruncate(job.memfd, length)
                        job.body = mmap.mmap(job.memfd, length)  # shared: what is read lands in the memfd
                    return
        elif job.filled < job.length:
            assert job.body is not None
            read = job.pipe.readinto(memoryview(job.body)[job.filled:])
            if read is None:
                return
            job.filled += read
            if read:
                return
        else:  # complete: what follows must be the end
            extra = job.pipe.read(1)
            if extra is None:
                return
            too_large = bool(extra)
        # the answer has ended, or went wrong: judge it
        complete = job.length >= 0 and job.filled == job.length
        if too_large or not complete:
            os.kill(job.pid, signal.SIGKILL)
        status = _reap(job.pid)
        events = _memory_events(job.cgroup)
        kind = job.header[:1]
        answer: dict[str, object]
        if status == 0 and complete and kind == b"+":
            if job.body is not None:
                job.body.close()  # the only writable mapping: sealing needs it gone
                job.body = None
            fcntl.fcntl(job.memfd, fcntl.F_ADD_SEALS, SEALS)
            self._remember(job.sha256, _Artifact(job.memfd, job.length))
            job.memfd = -1
            answer = {"ok": True, "cached": False}
        elif status == 0 and complete and kind == b"-":
            error = job.body[:MAX_COMPILE_ERROR] if job.body is not None else b""
            answer = {"error": error.decode("utf-8", "replace")}
        else:
            answer = {"error": _compile_stopped(status, too_large, events)}
        self._end_compile(task)
        with contextlib.suppress(OSError):
            protocol.send_json(task.client, protocol.COMPILED, answer)

    def _end_compile(self, task: _Task) -> None:
        job = task.compiling
        if job is None:
            return
        task.compiling = None
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(job.pipe.fileno())
        job.pipe.close()
        if job.body is not None:
            job.body.close()
        if job.memfd >= 0:
            os.close(job.memfd)
        if job.cgroup is not None:
            with contextlib.suppress(OSError):
                job.cgroup.rmdir()

    def _remember(self, digest: str, artifact: _Artifact) -> None:
        if digest in self.compiled:  # two tasks compiled the same new module at once
            os.close(artifact.fd)
            return
        self.compiled[digest] = artifact
        while sum(a.size for a in self.compiled.values()) > CACHE_BYTES and len(self.compiled) > 1:
            os.close(self.compiled.popitem(last=False)[1].fd)

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
        cpu = _cpu_clock(task.pid)  # before reaping it: the clock goes with the process
        _, status, usage = os.wait4(task.pid, 0)
        report = {"status": status, "cpu_secs": usage.ru_utime + usage.ru_stime if cpu is None else cpu,
                  "max_rss_kib": usage.ru_maxrss,
                  "wall_time_exceeded": task.wall_time_exceeded, **_memory_events(task.cgroup)}
        with contextlib.suppress(OSError):
            protocol.send_json(task.client, protocol.EXITED, report)
        task.pid = 0
        self._drop(task)

    def _drop(self, task: _Task) -> None:
        """Forget a client; a child still running is killed (and reaped) first."""
        if task.compiling is not None:
            with contextlib.suppress(OSError):
                os.kill(task.compiling.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(task.compiling.pid, 0)
            self._end_compile(task)
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


def _key(request: dict, digest: str = "") -> Key:
    return int(request["cpu_secs"]), int(request["memory_bytes"]), int(request["open_files"]), digest


def _address_space() -> int:
    """This process's current virtual size: a child starts with all of it mapped."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _reap(pid: int) -> int:
    """The wait status of a child that has closed its end: it is exiting, or is made to within a second."""
    pidfd = os.pidfd_open(pid)
    try:
        if not select.select([pidfd], [], [], REAP_SECS)[0]:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(pidfd)
    return os.waitpid(pid, 0)[1]


def _cpu_clock(pid: int) -> float | None:
    """The CPU time (user and system) of an ended, unreaped child, as its CPU limit counts it.

    ``wait4``'s usage is rescaled to the scheduler's exact runtime and may fall
    short of the limit that killed the process by a tenth of a second; the limit
    is checked against this clock (``CPUCLOCK_PROF`` of the process).
    """
    try:
        return time.clock_gettime(((~pid) << 3) | CPUCLOCK_PROF)
    except OSError:
        return None


def _compile_stopped(status: int, too_large: bool, events: dict[str, int]) -> str:
    if too_large:
        return f"the compiled module is larger than {MAX_ARTIFACT_BYTES >> 20} MiB"
    if events.get("oom_kills"):
        return "compiling the module needed more memory than the task's limit"
    if os.WIFSIGNALED(status):
        if os.WTERMSIG(status) == signal.SIGKILL:
            return "compiling the module took more CPU time than the task's limit"
        return f"compiling the module was stopped by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"compiling the module failed (exit status {os.WEXITSTATUS(status)})"


def _remove_stale_cgroups() -> None:
    """Remove what zygotes killed without a chance to clean up left behind: their tasks' empty memory cgroups.

    Each cgroup is named after its zygote's pid; the kernel refuses to remove one that still holds a process.
    """
    for folder in (CGROUP_MEMORY / "kettle-sandbox").glob("*-*"):
        owner = folder.name.partition("-")[0]
        if owner.isdigit() and not Path("/proc", owner).exists():
            with contextlib.suppress(OSError):
                folder.rmdir()


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
    from . import wamr

    wamr.engine()  # wasmtime's library and its engine, shared by every compile and wasm child
    seccomp.build_filter(1)  # the filter of every child that is pid 1 of its own namespace
    # A child's garbage collection would otherwise walk (and so copy, page by page) every object
    # preloaded here: frozen objects are left out of collections.
    gc.collect()
    gc.freeze()


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s zygote %(levelname)s %(name)s: %(message)s")
    control = socket.socket(fileno=int(os.environ.pop(CONTROL_FD_ENV)))
    parent = int(os.environ.pop(PARENT_PID_ENV))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import ctypes

    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # die with the service...
    if os.getppid() != parent:
        os._exit(1)  # ...which may have died before that took effect
    _preload()
    layers = probe()
    if layers.has("cgroup-memory"):
        _remove_stale_cgroups()
    protocol.send_json(control, protocol.HELLO, {"layers": layers.to_json()})
    Zygote(control, layers).serve()


if __name__ == "__main__":
    main()
