"""The worker's side of a sandboxed run: hand the task to the zygote, serve its files, watch it, judge the outcome.

The child is hostile, so everything it says is checked and nothing it says
decides a limit: the reasons below come from what this process observes —
its own timer and byte counts, the exit status and CPU time the zygote reports
from ``wait4``, the memory cgroup's OOM counter:

========================  ================================================
reason                    observed
========================  ================================================
``WallTimeExceeded``      the supervisor's clock; it killed the child (or
                          the zygote did, a moment later, when it had not)
``CPUTimeExceeded``       ``SIGKILL`` with the CPU time at the limit
``MemoryLimitExceeded``   the memory cgroup's OOM kills or failed charges
``OutputLimitExceeded``   bytes the supervisor received for the outputs
``ReturnValueLimitExceeded``  bytes of the return value it received
``SandboxViolation``      ``SIGSYS`` (a forbidden system call), or a
                          message that breaks the protocol (requests sent
                          without reading the answers included)
========================  ================================================

Nothing the child does can stall this process: the file socket is
non-blocking, every wait has the wall-time deadline, messages are bounded, and
an answer that does not fit in the socket at once means the child has not read
the earlier ones, which the protocol does not allow (a child has at most one
request outstanding at a time, so a well-behaved one always finds room). The
zygote, which the child cannot talk to, kills it shortly after the limit in
any case (:data:`~kettle.sandbox.zygote.WALL_TIME_GRACE_SECS`).

An exception in the payload is the payload's own failure: ``<Type>: <message>``;
one that takes a reason's name (a Python payload may name its exception class
anything) is marked as the function's own: ``Exception (raised by the
function): CPUTimeExceeded: …``.

A wasm child reports three reasons itself, ``FuelExhausted``,
``MemoryLimitExceeded`` of linear memory and ``WASM load error``: they come
from the wasmtime engine that confines the module, not from the module, which
can only call the five file functions (:mod:`kettle.sandbox.wamr`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import selectors
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from . import protocol

CHUNK = 1 << 16
START_TIMEOUT_SECS = 30.0


class Runtime(Protocol):
    def open_input(self, name: str) -> BinaryIO: ...

    def create_output(self, name: str) -> BinaryIO: ...


@dataclass(frozen=True)
class Limits:
    wall_time_secs: float
    cpu_time_secs: int
    memory_bytes: int
    output_bytes: int
    return_value_bytes: int
    log_bytes: int
    open_files: int


@dataclass(frozen=True)
class Exit:
    """What the zygote saw when the child ended."""

    status: int
    cpu_secs: float
    oom_kills: int = 0
    memory_failcnt: int = 0
    wall_time_exceeded: bool = False
    """The zygote killed the child after its wall-time limit."""


@dataclass(frozen=True)
class Compiled:
    sha256: str
    """The module's SHA-256, what the zygote knows it by."""
    cached: bool
    """The zygote had compiled it before."""


@dataclass(frozen=True)
class Outcome:
    return_value: str | None = None
    failure: str | None = None
    traceback: str = ""
    output: bytes = b""
    """The start of what the function printed (stdout and stderr), at most ``log_bytes``."""
    module: Compiled | None = None
    """A wasm task's module, and whether it had to be compiled for this task."""


RESERVED_REASONS = ("WallTimeExceeded", "CPUTimeExceeded", "MemoryLimitExceeded", "OutputLimitExceeded",
                    "ReturnValueLimitExceeded", "SandboxViolation", "SandboxUnavailable", "FuelExhausted",
                    "Runtime Error", "WASM load error")
"""Reasons only the platform gives; a child's failure that starts with one is not taken at its word."""
ENGINE_REASONS = {"python": (), "wasm": ("FuelExhausted", "MemoryLimitExceeded", "WASM load error")}
"""The reserved reasons a child's engine (not its payload) may report."""


@dataclass(frozen=True)
class WasmRun:
    """A wasm task: its fuel budget."""

    fuel: int


class SandboxError(Exception):
    """The sandbox could not run the task (not the function's fault)."""


class WasmLoadError(Exception):
    """The module cannot run: not valid WebAssembly, or too large or slow to compile within the task's limits."""


@dataclass
class _Final:
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    done: bool = False
    failure: dict[str, str] | None = None


def classify(exit: Exit, killed_for: str | None, final: _Final, limits: Limits,
             engine: str = "python") -> tuple[str | None, str | None]:
    """(return value, failure reason) from the observed facts; exactly one is not None."""
    if killed_for is not None:
        return None, killed_for
    if exit.wall_time_exceeded:
        return None, wall_time_reason(limits)
    if os.WIFSIGNALED(exit.status):
        sig = os.WTERMSIG(exit.status)
        if sig == signal.SIGSYS:
            return None, "SandboxViolation: the function made a forbidden system call"
        if sig == signal.SIGKILL and exit.cpu_secs >= limits.cpu_time_secs:
            return None, f"CPUTimeExceeded: the function used more than {limits.cpu_time_secs} s of CPU time"
        if exit.oom_kills:
            return None, _memory_reason(limits)
        return None, f"Runtime Error: the function's process was killed by {signal.Signals(sig).name}"
    if exit.oom_kills or (final.failure is not None and final.failure.get("type") == "MemoryError"
                          and exit.memory_failcnt):
        return None, _memory_reason(limits)
    code = os.WEXITSTATUS(exit.status)
    if code != 0:
        return None, f"Runtime Error: the function's process exited with status {code}"
    if final.failure is not None:
        kind, message = final.failure["type"], final.failure["message"]
        reason = f"{kind}: {message}" if message else kind
        if reason.startswith(RESERVED_REASONS) and kind not in ENGINE_REASONS[engine]:
            reason = f"Exception (raised by the function): {reason}"
        return None, reason
    if not final.done:
        return None, "Runtime Error: the function's process ended without a result"
    return b"".join(final.parts).decode("utf-8", "surrogatepass"), None


def wall_time_reason(limits: Limits) -> str:
    return f"WallTimeExceeded: the function ran for more than {limits.wall_time_secs:g} s"


def _memory_reason(limits: Limits) -> str:
    return f"MemoryLimitExceeded: the function used more than {limits.memory_bytes >> 20} MiB of memory"


def _job(argv: list[str], source: bytes) -> int:
    header = json.dumps(argv).encode()
    return _memory_file("kettle-job", struct.pack("<I", len(header)) + header + source)


def _memory_file(name: str, data: bytes) -> int:
    """A descriptor at the start of an anonymous file holding ``data``."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _child_limits(limits: Limits) -> dict[str, object]:
    return {"cpu_secs": limits.cpu_time_secs, "memory_bytes": limits.memory_bytes, "open_files": limits.open_files}


def _ask(zygote: socket.socket, kind: bytes, request: dict[str, object], fds: list[int],
         answers: dict[bytes, int], timeout: float, what: str) -> tuple[bytes, bytes, list[int]]:
    """Send the zygote a request with ``fds`` (closed here) and take its answer: (kind, body, descriptors).

    ``answers`` are the kinds of answer expected, each with its number of descriptors.
    """
    try:
        protocol.send_json(zygote, kind, request, fds)
    except OSError as exc:
        raise SandboxError(f"the sandbox's zygote cannot be reached: {exc}") from None
    finally:
        protocol.close_all(fds)
    zygote.settimeout(timeout)
    try:
        answer = protocol.receive(zygote)
    except (OSError, protocol.ProtocolError) as exc:
        raise SandboxError(f"the sandbox's zygote did not {what}: {exc}") from None
    finally:
        zygote.settimeout(None)
    if answer is None or answers.get(answer[0]) != len(answer[2]):
        if answer is not None:
            protocol.close_all(answer[2])
        raise SandboxError(f"the sandbox's zygote did not {what}")
    return answer


def compile_wasm(zygote: socket.socket, module: bytes, limits: Limits, digest: str = "") -> Compiled:
    """Have the zygote compile ``module`` (whose SHA-256 is ``digest``, when known), or find it compiled.

    Raises :class:`WasmLoadError` with the reason when the module cannot run.
    """
    digest = digest or hashlib.sha256(module).hexdigest()
    request = {"sha256": digest, **_child_limits(limits)}
    _, body, _ = _ask(zygote, protocol.COMPILE, request, [_memory_file("kettle-module", module)],
                      {protocol.COMPILED: 0}, limits.wall_time_secs, "compile the module")
    doc = protocol.body_json(body)
    if not isinstance(doc, dict) or (doc.get("ok") is not True and not isinstance(doc.get("error"), str)):
        raise SandboxError("the sandbox's zygote gave a malformed answer")
    if doc.get("ok") is not True:
        raise WasmLoadError(doc["error"])
    return Compiled(digest, doc.get("cached") is True)


class _Session:
    def __init__(self, zygote: socket.socket, files: socket.socket, pidfd: int, stdio: int,
                 runtime: Runtime, limits: Limits) -> None:
        self.zygote, self.files, self.pidfd, self.stdio = zygote, files, pidfd, stdio
        self.runtime, self.limits = runtime, limits
        self.final = _Final()
        self.killed_for: str | None = None
        self.exit: Exit | None = None
        self.output = bytearray()
        self.output_written = 0
        self.streams: list[threading.Thread] = []
        self.lock = threading.Lock()

    # --- ending it --------------------------------------------------------------------

    def kill(self, reason: str) -> None:
        with self.lock:
            if self.killed_for is None:
                self.killed_for = reason
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        deadline = time.monotonic() + self.limits.wall_time_secs
        selector = selectors.DefaultSelector()
        selector.register(self.files, selectors.EVENT_READ, self._on_files)
        selector.register(self.zygote, selectors.EVENT_READ, self._on_zygote)
        selector.register(self.stdio, selectors.EVENT_READ, self._on_stdio)
        try:
            while self.exit is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 and self.killed_for is None:
                    self.kill(wall_time_reason(self.limits))
                for key, _ in selector.select(max(remaining, 0.05)):
                    if not key.data(key.fileobj, selector):
                        selector.unregister(key.fileobj)
            # the child is gone: read what it left in the socket and the pipe
            while self._on_files(self.files, selector):
                pass
            while self._on_stdio(self.stdio, selector):
                pass
        finally:
            selector.close()
        for stream in self.streams:
            stream.join()

    def _on_zygote(self, sock: socket.socket, _: selectors.BaseSelector) -> bool:
        message = protocol.receive(sock)
        if message is None:
            raise SandboxError("the sandbox's zygote went away during the task")
        kind, body, fds = message
        protocol.close_all(fds)
        if kind == protocol.EXITED:
            report = protocol.body_json(body)
            self.exit = Exit(int(report["status"]), float(report["cpu_secs"]), int(report["oom_kills"]),
                             int(report["memory_failcnt"]), report.get("wall_time_exceeded") is True)
        return True

    def _on_stdio(self, fd: int, _: selectors.BaseSelector) -> bool:
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return False
        if data and len(self.output) < self.limits.log_bytes:
            self.output += data[: self.limits.log_bytes - len(self.output)]
        return bool(data)

    def _on_files(self, sock: socket.socket, _: selectors.BaseSelector) -> bool:
        try:
            message = protocol.receive(sock)
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return False  # its end closed with answers unread (it was killed waiting for one): nothing more comes
        except (protocol.ProtocolError, OSError):
            self.kill("SandboxViolation: the function broke the result channel's protocol")
            return False
        if message is None:
            return False
        kind, body, fds = message
        if self.killed_for is not None:  # its outcome is decided: what it still says is only read away
            protocol.close_all(fds)
            return True
        if fds:
            protocol.close_all(fds)
            self.kill("SandboxViolation: the function broke the result channel's protocol")
            return True
        finished = self.final.done or self.final.failure is not None
        if kind in (protocol.OPEN_INPUT, protocol.CREATE_OUTPUT) and not finished:
            self._open(kind, body)
        elif kind == protocol.RETURN_PART and not finished:
            self.final.parts.append(body)
            self.final.size += len(body)
            if self.final.size > self.limits.return_value_bytes:
                self.kill(f"ReturnValueLimitExceeded: the return value is larger than "
                          f"{self.limits.return_value_bytes} bytes")
        elif kind == protocol.DONE and not finished:
            self.final.done = True
        elif kind == protocol.FAILED and not finished:
            self.final.failure = _failure(body)
            if self.final.failure is None:
                self.kill("SandboxViolation: the function broke the result channel's protocol")
        else:
            self.kill("SandboxViolation: the function broke the result channel's protocol")
        return True

    # --- files -------------------------------------------------------------------------------

    def _answer(self, kind: bytes, fd: int | None = None) -> None:
        """Answer a request without waiting (``fd`` stays the caller's to close)."""
        try:
            protocol.send(self.files, kind, b"", [fd] if fd is not None else [])
        except BlockingIOError:
            self.kill("SandboxViolation: the function sent requests without reading the answers")
        except OSError:
            pass  # the child has gone, and its requests with it

    def _open(self, kind: bytes, body: bytes) -> None:
        if self.exit is not None:
            return  # asked just before the child ended: nobody is there to use the file
        try:
            name = body.decode("utf-8")
        except UnicodeDecodeError:
            self._answer(protocol.REFUSED)
            return
        # each open costs this process a thread; the child's descriptor limit does not bound
        # opens it closes again, so bound them here (generously: files may be reopened)
        if len(self.streams) >= 4 * self.limits.open_files:
            self._answer(protocol.REFUSED)
            return
        try:
            if kind == protocol.OPEN_INPUT:
                source = self.runtime.open_input(name)
                read_end, write_end = os.pipe()
                self._start(lambda: _feed(source, write_end))
                handed = read_end
            else:
                sink = self.runtime.create_output(name)
                read_end, write_end = os.pipe()
                self._start(lambda: self._drain(read_end, sink))
                handed = write_end
        except Exception:  # noqa: BLE001 - an unknown name or a failing file: the payload sees a refusal
            self._answer(protocol.REFUSED)
            return
        try:
            self._answer(protocol.GRANTED, handed)
        finally:
            os.close(handed)

    def _start(self, work: Callable[[], None]) -> None:
        thread = threading.Thread(target=work, daemon=True)
        self.streams.append(thread)
        thread.start()

    def _drain(self, fd: int, sink: BinaryIO) -> None:
        """Copy what the function writes into the output, counting it against the limit."""
        try:
            while data := os.read(fd, CHUNK):
                with self.lock:
                    self.output_written += len(data)
                    over = self.output_written > self.limits.output_bytes
                if over:
                    self.kill(f"OutputLimitExceeded: the function wrote more than {self.limits.output_bytes} "
                              "bytes of output")
                    continue
                with contextlib.suppress(ValueError, OSError):  # a re-created output closed this stream
                    sink.write(data)
            with contextlib.suppress(ValueError, OSError):
                sink.flush()
        finally:
            os.close(fd)


def _feed(source: BinaryIO, fd: int) -> None:
    try:
        while data := source.read(CHUNK):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
    except OSError:
        pass  # the function closed its end (or ended): it wants no more
    finally:
        os.close(fd)
        with contextlib.suppress(Exception):
            source.close()


def _failure(body: bytes) -> dict[str, str] | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in ("type", "message", "traceback")):
        return None
    return {k: doc[k] for k in ("type", "message", "traceback")}


def _start(zygote: socket.socket, request: dict[str, object], argv: list[str],
           source: bytes) -> tuple[socket.socket, int, int] | None:
    """Have the zygote start the task: (file socket, output pipe, pidfd), or None for a wasm module it has not
    compiled."""
    files, theirs = protocol.socket_pair()
    files.setblocking(False)
    stdio_read, stdio_write = os.pipe()
    try:
        kind, _, fds = _ask(zygote, protocol.SPAWN, request, [theirs.detach(), stdio_write, _job(argv, source)],
                            {protocol.STARTED: 1, protocol.UNCOMPILED: 0}, START_TIMEOUT_SECS,
                            "start the function")
    except SandboxError:
        files.close()
        os.close(stdio_read)
        raise
    if kind == protocol.UNCOMPILED:
        files.close()
        os.close(stdio_read)
        return None
    os.set_blocking(stdio_read, False)
    return files, stdio_read, fds[0]


def run_sandboxed(zygote: socket.socket, argv: list[str], source: bytes, runtime: Runtime, limits: Limits,
                  wasm: WasmRun | None = None) -> Outcome:
    """Run the payload in a fresh sandboxed child of ``zygote`` and judge the outcome.

    ``source`` is Python source, or with ``wasm`` a WebAssembly module: the
    child runs the zygote's compiled form of it, which the zygote is asked to
    make first when it has none (:func:`compile_wasm`; :class:`WasmLoadError`
    when the module cannot run).
    """
    request: dict[str, object] = {**_child_limits(limits), "wall_time_secs": limits.wall_time_secs}
    module = None
    if wasm is None:
        started = _start(zygote, request, argv, source)
    else:
        module = Compiled(hashlib.sha256(source).hexdigest(), True)
        request.update(engine="wasm", sha256=module.sha256, fuel=wasm.fuel)
        started = _start(zygote, request, argv, b"")  # the child gets the compiled module, not these bytes
        if started is None:
            module = compile_wasm(zygote, source, limits, module.sha256)
            started = _start(zygote, request, argv, b"")
    if started is None:  # a module compiled, then dropped from a full cache before it could run
        raise SandboxError("the sandbox's zygote did not start the function: it has no compiled module for it")
    files, stdio_read, pidfd = started
    session = _Session(zygote, files, pidfd, stdio_read, runtime, limits)
    try:
        session.run()
    finally:
        os.close(pidfd)
        os.close(stdio_read)
        files.close()
    assert session.exit is not None
    value, failure = classify(session.exit, session.killed_for, session.final, limits,
                              "wasm" if wasm is not None else "python")
    traceback = session.final.failure["traceback"] if session.final.failure else ""
    return Outcome(value, failure, traceback, bytes(session.output), module)

