"""What a sandboxed child does between ``fork()`` in the zygote and the user's code.

The order matters (``research/sandbox.md`` §7.1): descriptors first (only the
task's own survive), then what needs root (namespaces, the memory cgroup,
resource limits), then the identity (a fresh unprivileged uid), then the
parent-death signal (the credential change clears it), then the restrictions
that cannot be undone (Landlock, then seccomp), and only then the user's code.
Nothing here trusts the code that runs after it: every limit is
kernel-enforced, and the supervisor judges the outcome from what it observes.

With the ``pid-namespace`` layer the child is pid 1 of a namespace of its own
(:class:`~kettle.sandbox.layers.Forker`): it sees no other process, and when
it ends, nothing it could have left behind survives it.

A task child is hardened before it knows its task: the zygote forks it ahead
(while the previous task runs), and it waits, with every layer in force, for
its task on a socket of its own (:data:`HANDOFF`). The task's descriptors
arrive there; the child puts them in place, closes that socket (the function
never has a way to the zygote) and runs the task. One child runs one task. A
child forked for a wasm module's task loads that module (the zygote's compiled
form, :data:`MODULE`) before it waits, and runs only a task of that module.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import fcntl
import hashlib
import json
import linecache
import os
import resource
import select
import signal
import socket
import struct
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from . import landlock, payload_api, protocol, seccomp
from .layers import NAMESPACES, Layers, unshare
from .libc import LIBC

PR_SET_PDEATHSIG = 1
MAX_THREADS = 16
PAYLOAD_MODULE_NAME = "__payload__"
"""The payload's globals' ``__name__`` (functions.md §6.2: anything but ``__main__``)."""
STDIN, STDOUT, STDERR = 0, 1, 2
FILE_SOCKET, JOB, PARENT, HANDOFF, MODULE = 3, 4, 5, 6, 7
"""Where a task child keeps its file socket and its job; until it has checked on it, the zygote's pidfd; until its
task arrives, the socket it comes on; until it has loaded it, a wasm task's compiled module (placing the task's
descriptors closes everything above :data:`JOB`)."""

ALLOWED_MODULES = frozenset({
    # the reference interpreter's modules (functions.md §6.5), by their Python 3 names
    "math", "cmath", "marshal", "binascii", "struct", "array", "itertools", "operator", "random", "codecs",
    "re", "errno", "gc", "io", "weakref", "sys", "teaclave", "_numpypy", "builtins",
    # numpy and pure computation from the standard library
    "numpy", "json", "collections", "functools", "heapq", "bisect", "statistics", "decimal", "fractions",
    "datetime", "time", "string", "textwrap", "base64", "hashlib", "hmac", "csv", "copy", "dataclasses",
    "enum", "typing", "abc", "numbers", "contextlib", "unicodedata", "zlib", "os", "pprint", "difflib",
    "secrets", "uuid", "types", "warnings", "traceback",
})
"""What a function may import. Everything here is loaded by the zygote before any task, so an import
never touches the file system (which the function cannot reach anyway)."""

PRELOAD = (*sorted(ALLOWED_MODULES - {"teaclave", "_numpypy"}), "numpy.linalg", "numpy.fft", "numpy.random",
           "numpy.polynomial", "_strptime", "json.decoder", "json.encoder", "encodings.idna", "encodings.utf_8_sig",
           "encodings.latin_1", "encodings.ascii", "encodings.utf_16", "encodings.utf_32", "encodings.cp1252",
           "encodings.hex_codec", "encodings.base64_codec", "encodings.unicode_escape")


class ModuleNotAllowedError(ImportError):
    """The function imported a module the sandbox does not offer."""


@dataclass(frozen=True)
class ChildSpec:
    """What the zygote tells a child when it forks it: its limits and identity, and the layers to apply."""

    cpu_secs: int
    address_space_bytes: int
    open_files: int
    uid: int
    cgroup: str
    layers: Layers
    memory_bytes: int = 0
    """The task's memory limit; a wasm module's linear memory may grow to it."""
    module_sha256: str = ""
    """A child for a wasm task: its module's digest; the only module it loads and runs."""
    module_bytes: int = 0
    """The length of that module's compiled form (the descriptor :data:`MODULE`)."""


@dataclass(frozen=True)
class Task:
    """What the zygote tells a hardened child with its task (the hand-off message's body)."""

    engine: str = "python"
    """``python`` (a payload's source) or ``wasm`` (a module the zygote has compiled, :mod:`kettle.sandbox.wamr`)."""
    fuel: int = 0
    """A wasm module's fuel budget."""
    sha256: str = ""
    """A wasm task's module: the one the child loaded."""

    def to_json(self) -> dict[str, object]:
        return {"engine": self.engine, "fuel": self.fuel, "sha256": self.sha256}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Task:
        return cls(str(doc["engine"]), int(doc["fuel"]), str(doc["sha256"]))


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the zygote ends; ``parent`` is its pidfd (closed here).

    Called after the credential change, which clears the parent-death signal.
    The zygote may have ended before the signal was asked for, so it is
    checked again afterwards; through its pidfd, because in a PID namespace of
    its own the child's parent is outside it (``getppid()`` is 0).
    """
    if LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The kernel reparents the children of an exiting process (sending their parent-death signals) and marks
    # the process exited in one step under its task-list lock; waiting (which takes that lock) orders this
    # check after any such step already begun, so an exit that missed the signal shows on the pidfd.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)
    ended = select.select([parent], [], [], 0)[0]
    os.close(parent)
    if ended:
        os._exit(1)


def _move(assignments: list[tuple[int, int]]) -> None:
    """Put each descriptor at its target number (``(target, fd)``) and close every other one above 2."""
    # moved out of the way first (above every target, and below the descriptor limit a hardened child has), so
    # that no dup2 below closes one of them
    highest = max(target for target, _ in assignments)
    moved = [(target, fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, highest + 1)) for target, fd in assignments]
    for target, fd in moved:
        os.dup2(fd, target, inheritable=False)
    os.closerange(highest + 1, os.sysconf("SC_OPEN_MAX"))


def _set_limits(spec: ChildSpec) -> None:
    # SIGKILL at the limit: a namespace's init (the child, in its PID namespace) would not die of SIGXCPU
    resource.setrlimit(resource.RLIMIT_CPU, (spec.cpu_secs, spec.cpu_secs))
    resource.setrlimit(resource.RLIMIT_AS, (spec.address_space_bytes, spec.address_space_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (spec.open_files, spec.open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (MAX_THREADS, MAX_THREADS))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _read_job(fd: int) -> tuple[list[str], bytes]:
    data = bytearray()
    while chunk := os.read(fd, 1 << 20):
        data += chunk
    os.close(fd)
    (header_size,) = struct.unpack_from("<I", data)
    argv = json.loads(bytes(data[4:4 + header_size]))
    return [str(a) for a in argv], bytes(data[4 + header_size:])


def harden(spec: ChildSpec, parent: int) -> None:
    """Apply every layer the spec names; raise if one fails (the child then exits without running anything).

    ``parent`` is the zygote's pidfd; it is closed here.
    """
    os.setsid()
    if spec.layers.has("namespaces"):
        unshare(NAMESPACES)
    if spec.cgroup:
        # "0" in ``tasks`` moves the calling thread, which is the whole process (it has no other): the kernel then
        # skips the global lock that moving a process through ``cgroup.procs`` takes, and its wait for an RCU grace
        # period (about 12 ms here, against 0.6 ms)
        Path(spec.cgroup, "tasks").write_text("0")
    _set_limits(spec)
    if spec.layers.has("uid"):
        os.setgroups([])
        os.setresgid(spec.uid, spec.uid, spec.uid)
        os.setresuid(spec.uid, spec.uid, spec.uid)
    _die_with_parent(parent)
    LIBC.prctl(seccomp.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if spec.layers.has("landlock"):
        landlock.restrict_self(spec.layers.landlock_abi)
    if spec.layers.has("seccomp"):
        seccomp.load(seccomp.build_filter(os.getpid()))  # built by the zygote already, when the pid is 1


def _await_task(spec: ChildSpec, sock: socket.socket) -> tuple[Task, list[int]]:
    """The task the zygote hands this hardened child: (what it is, its descriptors: file socket, output, job).

    Without one (the zygote let this child go, or ended) the child ends here.
    A child that loaded a wasm module runs only a task of that module, and any
    other child no wasm task: no function ever runs beside another's compiled code.
    """
    message = protocol.receive(sock)
    if message is None:
        os._exit(0)
    kind, body, fds = message
    task = Task.from_json(protocol.body_json(body))
    if kind != protocol.SPAWN or len(fds) != 3:
        raise protocol.ProtocolError("a hand-off that is not a task")
    if (task.sha256 if task.engine == "wasm" else "") != spec.module_sha256:
        raise protocol.ProtocolError("a task for another module than the one this child loaded")
    return task, fds


def _load_module(spec: ChildSpec) -> Any:
    """This child's wasm module, loaded from :data:`MODULE` before its task comes; or the failure to report then.

    wasmtime's first-use work (its import and export types, a store) is done here
    too, so that the copy-on-write faults and set-up it costs are paid before the
    task, not during it. Nothing of the module runs here: it is not instantiated.
    """
    from . import wamr  # loaded by the zygote: importing it here reads no file

    # read at explicit offsets: the memfd's file position is shared with every other child it was handed to
    artifact = bytearray(spec.module_bytes)
    done = 0
    while done < len(artifact) and (read := os.preadv(MODULE, [memoryview(artifact)[done:]], done)):
        done += read
    os.close(MODULE)
    if done != len(artifact):
        raise protocol.ProtocolError("a compiled module shorter than announced")
    try:
        module = wamr.load_compiled(artifact)
        wamr.prime(module)
    except wamr.WasmFailure as failure:
        return failure
    return module


class _SocketChannel:
    """The payload API's files: each open asks the supervisor, which answers with a fresh descriptor.

    One request at a time, whatever the payload's threads do: answers carry no
    request id, so two threads asking at once could each take the other's.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def _ask(self, kind: bytes, name: str) -> int:
        with self._lock:
            protocol.send(self._sock, kind, name.encode("utf-8", "surrogatepass"))
            answer = protocol.receive(self._sock)
        if answer is None:
            raise LookupError(name)
        granted, _, fds = answer
        if granted != protocol.GRANTED or len(fds) != 1:
            protocol.close_all(fds)
            raise LookupError(name)
        return fds[0]

    def open_input(self, name: str) -> int:
        return self._ask(protocol.OPEN_INPUT, name)

    def create_output(self, name: str) -> int:
        return self._ask(protocol.CREATE_OUTPUT, name)


def _guard_imports(payload_name: str) -> None:
    """The payload may import only :data:`ALLOWED_MODULES`; nothing may load a module the zygote did not.

    Libraries import their own dependencies at run time (``datetime`` its
    ``_strptime``), so the name rule applies to the payload's own code (its
    globals' ``__name__``), and the "already loaded" rule to everyone: loading
    means reading files, which no sandboxed process can do. This is for clear
    errors; the boundary is the kernel's.
    """
    original = builtins.__import__

    def guarded(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        if level == 0:
            from_payload = isinstance(globals, dict) and globals.get("__name__") == payload_name
            if from_payload and name.partition(".")[0] not in ALLOWED_MODULES:
                raise ModuleNotAllowedError(f"import of {name!r} is not allowed in the sandbox")
            if name not in sys.modules:
                raise ModuleNotAllowedError(f"module {name!r} is not available in the sandbox")
        return original(name, globals, locals, fromlist, level)

    builtins.__import__ = guarded


def _no_source_files() -> None:
    """Tracebacks must not read source files (the function cannot open any); the payload's own lines are cached."""
    def no_lines(filename: str, module_globals: Any = None) -> list[str]:
        return []

    linecache.updatecache = no_lines  # type: ignore[assignment]


def _send_result(sock: socket.socket, value: str) -> None:
    data = value.encode("utf-8", "surrogatepass")
    step = protocol.MAX_MESSAGE - 1
    for start in range(0, len(data), step):
        protocol.send(sock, protocol.RETURN_PART, data[start:start + step])
    protocol.send(sock, protocol.DONE)


class _Failed(Exception):
    def __init__(self, type_name: str, message: str, traceback: str) -> None:
        super().__init__(type_name, message)
        self.type_name, self.message, self.traceback = type_name, message, traceback


def _run_python(argv: list[str], source: bytes, channel: _SocketChannel) -> str:
    payload_api.install(channel)
    _guard_imports(PAYLOAD_MODULE_NAME)
    try:
        return payload_api.run_payload(source, argv, channel)
    except payload_api.PayloadFailure as failure:
        raise _Failed(failure.type_name, failure.message, failure.traceback) from None


def _run_wasm(spec: ChildSpec, task: Task, module: Any, argv: list[str], channel: _SocketChannel) -> str:
    from . import wamr  # loaded by the zygote: importing it here reads no file

    try:
        if isinstance(module, wamr.WasmFailure):
            raise module
        return wamr.run_module(module, argv, wamr.Files(channel, wamr.stderr_log),
                               memory_bytes=spec.memory_bytes, fuel=task.fuel)
    except wamr.WasmFailure as failure:
        raise _Failed(failure.type_name, failure.message, failure.detail) from None


def run_task(spec: ChildSpec, parent: int, handoff: int, devnull: int, module: int = -1) -> NoReturn:
    """The child's whole life: harden, (load its wasm module,) wait for the task, run it, report, exit.

    Never returns. ``parent`` is the zygote's pidfd; the task comes on the
    socket ``handoff``; ``module`` is the compiled module of a child for a wasm
    task (:attr:`ChildSpec.module_sha256`).
    """
    code = 70
    try:
        _move([(STDIN, devnull), (STDOUT, devnull), (STDERR, devnull), (PARENT, parent), (HANDOFF, handoff),
               *([(MODULE, module)] if spec.module_sha256 else [])])
        harden(spec, PARENT)
        loaded = _load_module(spec) if spec.module_sha256 else None
        with socket.socket(fileno=HANDOFF) as zygote:  # closed before anything of the task runs
            task, fds = _await_task(spec, zygote)
        # the task's own descriptors in place, every other one closed
        _move([(STDOUT, fds[1]), (STDERR, fds[1]), (FILE_SOCKET, fds[0]), (JOB, fds[2])])
        argv, source = _read_job(JOB)
        sock = socket.socket(fileno=FILE_SOCKET)
        os.environ.clear()
        _no_source_files()
        channel = _SocketChannel(sock)
        try:
            if task.engine == "wasm":
                value = _run_wasm(spec, task, loaded, argv, channel)
            else:
                value = _run_python(argv, source, channel)
        except _Failed as failure:
            body = json.dumps({"type": failure.type_name, "message": failure.message[:4096],
                               "traceback": failure.traceback[-16384:]}).encode()
            protocol.send(sock, protocol.FAILED, body)
        else:
            _send_result(sock, value)
        code = 0
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - the payload may have replaced or closed them
                pass
        os._exit(code)


MAX_COMPILE_ERROR = 4096
COMPILE_ANSWER = struct.Struct("<cQ")
"""A compile child's answer: ``+`` (then the compiled module) or ``-`` (then why not), and the length that follows."""


def run_compile(spec: ChildSpec, parent: int, module_fd: int, out: int, devnull: int, sha256: str) -> NoReturn:
    """A child that only compiles a wasm module for the zygote's cache; it answers per :data:`COMPILE_ANSWER`.

    Nothing of the module runs here (it is not instantiated), so what comes back
    is wasmtime's work on the module's bytes, whatever they are.
    """
    code = 70
    try:
        _move([(STDIN, devnull), (STDOUT, devnull), (STDERR, devnull), (3, module_fd), (4, out), (PARENT, parent)])
        harden(spec, PARENT)
        data = bytearray()
        while chunk := os.read(3, 1 << 20):
            data += chunk
        from . import wamr

        if hashlib.sha256(data).hexdigest() != sha256:
            kind, body = b"-", b"the module's bytes do not match their digest"
        else:
            try:
                kind, body = b"+", wamr.compile_module(bytes(data)).serialize()
            except wamr.WasmFailure as failure:
                kind, body = b"-", failure.message.encode("utf-8", "replace")[:MAX_COMPILE_ERROR]
        view = memoryview(COMPILE_ANSWER.pack(kind, len(body)) + body)
        while view:
            view = view[os.write(4, view):]
        code = 0
    finally:
        os._exit(code)
