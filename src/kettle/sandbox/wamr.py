"""Teaclave's WAMR executor ABI (``spec/functions.md`` §7) on wasmtime, as a sandboxed child runs it.

A module built for the reference runs unchanged: the five ``env`` host
functions with their exact types, return codes and handle numbering (§7.2,
§7.4), every guest pointer checked before the host touches memory (a bad one
traps with ``out of bounds memory access``), the arguments placed in freshly
grown pages and passed as ``entrypoint(argc, argv)`` (§7.5), the ``i32`` result
in decimal (§7.7). A trap ends the task Failed with the reference's text,
``Exception: <reason>`` (DESIGN.md §6).

Limits inside the engine (the process around it has the sandbox's own):

- **fuel**: every module is compiled with fuel metering; a task gets a budget
  (``[sandbox] wasm_fuel``), and running out is ``FuelExhausted`` — the same
  module on the same input stops at the same point on every machine;
- **memory**: linear memory may grow to the task's memory limit, tables to
  :data:`MAX_TABLE_ELEMENTS`; a refused ``memory.grow`` returns −1, as the
  reference's does, and a trap while memory is near its limit
  (:data:`NEAR_LIMIT_FRACTION`) is ``MemoryLimitExceeded``;
- **stack**: :data:`MAX_WASM_STACK` bytes; deep recursion traps with the
  reference's ``wasm operand stack overflow``.

Only this module and wasmtime run in the child: the guest can reach nothing
but the five host functions, which reach nothing but the task's files through
:class:`~kettle.sandbox.payload_api.FileChannel`.
"""

from __future__ import annotations

import functools
import os
import struct
import sys
from collections.abc import Callable
from typing import Any

import wasmtime

from .payload_api import FileChannel

PAGE = 65536
WASM_MAGIC = b"\0asm"
WRITER_BIT = 0x40000000
MAX_HANDLES = 1023
"""Opens and creates per execution (§7.4); the next one returns −1."""
MAX_TABLE_ELEMENTS = 1 << 20
MAX_WASM_STACK = 1 << 20
NAME_CHUNK = 256
WRITE_BUFFER = 1 << 16
NEAR_LIMIT_FRACTION = 16
"""A trap while linear memory is within 1/16 of its limit is reported as the limit: wasmtime answers a refused
``memory.grow`` with −1 and does not say so, and a module that gets −1 usually traps soon after."""
INVALID_INPUT = "Invalid input file identifier."
INVALID_OUTPUT = "Invalid output file identifier"

_I32 = wasmtime.ValType.i32()
HOST_FUNCTIONS: dict[str, tuple[int, int]] = {
    "teaclave_open_input": (1, 1),
    "teaclave_create_output": (1, 1),
    "teaclave_read_file": (3, 1),
    "teaclave_write_file": (3, 1),
    "teaclave_close_file": (1, 1),
}
"""The ``env`` imports the reference provides: name → (i32 parameters, i32 results)."""

TRAP_TEXTS: dict[wasmtime.TrapCode, str] = {
    wasmtime.TrapCode.UNREACHABLE: "unreachable",
    wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS: "out of bounds memory access",
    wasmtime.TrapCode.HEAP_MISALIGNED: "out of bounds memory access",
    wasmtime.TrapCode.INTEGER_DIVISION_BY_ZERO: "integer divide by zero",
    wasmtime.TrapCode.INTEGER_OVERFLOW: "integer overflow",
    wasmtime.TrapCode.BAD_CONVERSION_TO_INTEGER: "invalid conversion to integer",
    wasmtime.TrapCode.BAD_SIGNATURE: "indirect call type mismatch",
    wasmtime.TrapCode.TABLE_OUT_OF_BOUNDS: "undefined element",
    wasmtime.TrapCode.INDIRECT_CALL_TO_NULL: "uninitialized element",
    wasmtime.TrapCode.STACK_OVERFLOW: "wasm operand stack overflow",
}
"""wasmtime's trap codes as WAMR words them (§7.7)."""

OUT_OF_BOUNDS = "out of bounds memory access"


class WasmFailure(Exception):
    """The task fails with ``<type_name>: <message>``; ``detail`` (a wasm backtrace) goes to the task log."""

    def __init__(self, type_name: str, message: str, detail: str = "") -> None:
        super().__init__(type_name, message)
        self.type_name = type_name
        self.message = message
        self.detail = detail


def load_error(message: str) -> WasmFailure:
    return WasmFailure("WASM load error", message)


@functools.cache
def engine() -> wasmtime.Engine:
    """The one engine configuration: a compiled module is only valid for the engine settings it was made with.

    Linear memories are not reserved up front (``memory_reservation = 0``):
    the sandbox caps the child's address space, so a memory grows (and may
    move) within the task's limit, with explicit bounds checks. Copy-on-write
    initialisation would need ``memfd_create``, which the sandbox forbids.
    """
    config = wasmtime.Config()
    config.consume_fuel = True
    config.parallel_compilation = False  # no compiler threads in a process limited to a few
    config.memory_reservation = 0
    config.memory_reservation_for_growth = 16 << 20
    config.memory_guard_size = 0
    config.memory_init_cow = False
    config.max_wasm_stack = MAX_WASM_STACK
    config.cranelift_opt_level = "speed"
    return wasmtime.Engine(config)


def compile_module(wasm: bytes) -> wasmtime.Module:
    """Validate and compile; a module that is not one gives ``WASM load error: …`` with wasmtime's reasons."""
    if not wasm.startswith(WASM_MAGIC):  # wasmtime would read text as WAT: payloads are binaries (§7.1)
        raise load_error("not a WebAssembly binary (it does not start with \\0asm)")
    try:
        return wasmtime.Module(engine(), wasm)
    except wasmtime.WasmtimeError as exc:
        raise load_error(_error_text(str(exc))) from None


def load_compiled(artifact: bytes | bytearray) -> wasmtime.Module:
    """A module this engine compiled before (the zygote's cache)."""
    return wasmtime.Module.deserialize(engine(), artifact)


def prime(module: wasmtime.Module) -> None:
    """Do, ahead of a task, the first-use work running ``module`` needs, without running any of it.

    In a freshly forked child the first look at a module's types and the first
    store cost copy-on-write faults and wasmtime's set-up (about 1 ms); a child
    forked ahead pays it while it waits. The task still gets a fresh store and
    instance (:func:`run_module`); the export check here fails the same way it
    would there.
    """
    _check_exports(module)
    for item in module.imports:
        item.type  # noqa: B018 - the types are read for their side effect only
    wasmtime.Store(engine()).set_fuel(0)


class Files:
    """The task's files behind the host functions: handles per §7.4, −1 (with an ERROR line) per §7.2."""

    def __init__(self, channel: FileChannel, log: Callable[[str], None]) -> None:
        self._channel = channel
        self._log = log
        self._opened = 0
        self._readers: dict[int, int] = {}
        self._writers: dict[int, int] = {}
        self._pending: dict[int, bytearray] = {}
        """Bytes written but not yet handed on, per writer: modules often write a line per call."""

    def open_input(self, name: str) -> int:
        if self._opened >= MAX_HANDLES:
            return self._fail("wasm_open_input", f"too many open files (at most {MAX_HANDLES} per execution)")
        try:
            fd = self._channel.open_input(name)
        except LookupError:
            return self._fail("wasm_open_input", INVALID_INPUT)
        self._opened += 1
        self._readers[self._opened] = fd
        return self._opened

    def create_output(self, name: str) -> int:
        if self._opened >= MAX_HANDLES:
            return self._fail("wasm_create_output", f"too many open files (at most {MAX_HANDLES} per execution)")
        try:
            fd = self._channel.create_output(name)
        except LookupError:
            return self._fail("wasm_create_output", INVALID_OUTPUT)
        self._opened += 1
        handle = self._opened | WRITER_BIT
        self._writers[handle] = fd
        return handle

    def read(self, handle: int, size: int) -> bytes | None:
        fd = self._readers.get(handle)
        if fd is None:
            self._fail("wasm_read_file", f"invalid input handle {handle}")
            return None
        try:
            return os.read(fd, size)
        except OSError as exc:
            self._fail("wasm_read_file", f"cannot read: {exc.strerror}")
            return None

    def write(self, handle: int, data: bytes | bytearray) -> int:
        fd = self._writers.get(handle)
        if fd is None:
            return self._fail("wasm_write_file", f"invalid output handle {handle}")
        pending = self._pending.setdefault(handle, bytearray())
        pending += data
        if len(pending) >= WRITE_BUFFER and not self._flush(handle):
            return -1
        return len(data)

    def _flush(self, handle: int) -> bool:
        """Hand the buffered bytes to the output; False (with an ERROR line) when that fails."""
        pending = self._pending.pop(handle, None)
        view = memoryview(pending or b"")
        try:
            while view:
                view = view[os.write(self._writers[handle], view):]
        except OSError as exc:
            self._fail("wasm_write_file", f"cannot write: {exc.strerror}")
            return False
        return True

    def close(self, handle: int) -> int:
        table = self._writers if handle & WRITER_BIT else self._readers
        if handle not in table:
            return self._fail("wasm_close_file", f"invalid handle {handle}")
        flushed = self._flush(handle) if table is self._writers else True
        os.close(table.pop(handle))
        return 0 if flushed else -1

    def close_all(self) -> None:
        """Files left open are closed when the execution ends (writers finish their outputs)."""
        for handle in list(self._writers):
            self._flush(handle)
        for table in (self._readers, self._writers):
            for fd in table.values():
                os.close(fd)
            table.clear()

    def _fail(self, operation: str, message: str) -> int:
        self._log(f"{operation}: {message}")
        return -1


class _Host:
    """The five host functions over one instance's memory; every pointer is checked before use."""

    def __init__(self, files: Files) -> None:
        self.files = files
        self.memory: wasmtime.Memory | None = None
        """The instance's memory once it exists (looking it up on every call costs more than the call)."""

    def _memory(self, caller: wasmtime.Caller) -> wasmtime.Memory:
        if self.memory is not None:
            return self.memory
        memory = caller.get("memory")  # a call from the start function, before the instance is known
        if not isinstance(memory, wasmtime.Memory):
            raise wasmtime.Trap(OUT_OF_BOUNDS)
        return memory

    def _name(self, caller: wasmtime.Caller, address: int) -> str:
        memory = self._memory(caller)
        size = memory.data_len(caller)
        start = address & 0xFFFFFFFF
        end = start
        while end < size:
            chunk = memory.read(caller, end, min(end + NAME_CHUNK, size))
            nul = chunk.find(0)
            if nul >= 0:
                return bytes(memory.read(caller, start, end + nul)).decode("utf-8", "replace")
            end += len(chunk)
        raise wasmtime.Trap(OUT_OF_BOUNDS)

    def _span(self, caller: wasmtime.Caller, address: int, length: int) -> tuple[wasmtime.Memory, int, int]:
        memory = self._memory(caller)
        start, size = address & 0xFFFFFFFF, length & 0xFFFFFFFF
        if start + size > memory.data_len(caller):
            raise wasmtime.Trap(OUT_OF_BOUNDS)
        return memory, start, size

    def open_input(self, caller: wasmtime.Caller, name: int) -> int:
        return self.files.open_input(self._name(caller, name))

    def create_output(self, caller: wasmtime.Caller, name: int) -> int:
        return self.files.create_output(self._name(caller, name))

    def read_file(self, caller: wasmtime.Caller, handle: int, buffer: int, length: int) -> int:
        memory, start, size = self._span(caller, buffer, length)
        data = self.files.read(handle, size)
        if data is None:
            return -1
        if data:
            memory.write(caller, data, start)
        return len(data)

    def write_file(self, caller: wasmtime.Caller, handle: int, buffer: int, length: int) -> int:
        memory, start, size = self._span(caller, buffer, length)
        return self.files.write(handle, memory.read(caller, start, start + size) if size else b"")

    def close_file(self, caller: wasmtime.Caller, handle: int) -> int:
        return self.files.close(handle)

    def functions(self) -> dict[str, Callable[..., int]]:
        return {
            "teaclave_open_input": self.open_input,
            "teaclave_create_output": self.create_output,
            "teaclave_read_file": self.read_file,
            "teaclave_write_file": self.write_file,
            "teaclave_close_file": self.close_file,
        }


def _unlinked(module: str, name: str) -> Callable[..., Any]:
    def call(*_: Any) -> Any:
        raise wasmtime.Trap(f"failed to call unlinked import function ({module}, {name})")
    return call


def _func_type(parameters: int, results: int) -> wasmtime.FuncType:
    return wasmtime.FuncType([_I32] * parameters, [_I32] * results)


def _same_type(actual: wasmtime.FuncType, parameters: int, results: int) -> bool:
    i32 = str(_I32)
    return [str(t) for t in actual.params] == [i32] * parameters and [str(t) for t in actual.results] == [i32] * results


def _linker(module: wasmtime.Module, host: _Host) -> wasmtime.Linker:
    """The five host functions, and a trapping stub for any other function import (§7.3's Kettle choice)."""
    linker = wasmtime.Linker(engine())
    functions = host.functions()
    for item in module.imports:
        kind = item.type
        where = f"{item.module}.{item.name}"
        if not isinstance(kind, wasmtime.FuncType):
            raise load_error(f"the module imports {where}, which is not a function; the platform provides only "
                             "the env file functions")
        if item.module == "env" and item.name in HOST_FUNCTIONS:
            parameters, results = HOST_FUNCTIONS[item.name]
            if not _same_type(kind, parameters, results):
                raise load_error(f"the module imports {where} with the wrong type {_type_text(kind)}; the host "
                                 f"function's type is {_type_text(_func_type(parameters, results))}")
            linker.define_func(item.module, item.name, kind, functions[item.name], access_caller=True)
        else:
            linker.define_func(item.module, item.name or "", kind, _unlinked(item.module, item.name or ""))
    return linker


def _type_text(kind: wasmtime.FuncType) -> str:
    return f"({', '.join(map(str, kind.params))}) -> ({', '.join(map(str, kind.results))})"


def _check_exports(module: wasmtime.Module) -> None:
    exports = {item.name: item.type for item in module.exports}
    entry = exports.get("entrypoint")
    if entry is None:
        raise load_error("entrypoint not found")
    if not isinstance(entry, wasmtime.FuncType) or not _same_type(entry, 2, 1):
        shown = _type_text(entry) if isinstance(entry, wasmtime.FuncType) else "not a function"
        raise load_error(f"entrypoint must have type (i32, i32) -> (i32), not {shown}")
    if not isinstance(exports.get("memory"), wasmtime.MemoryType):
        raise load_error("the module exports no linear memory named 'memory'")


def _place_arguments(store: wasmtime.Store, memory: wasmtime.Memory, argv: list[str]) -> int:
    """Copy the NUL-terminated strings, then their 32-bit addresses, into new pages; the array's address (§7.5)."""
    if not argv:
        return 0
    encoded = [arg.encode("utf-8", "surrogatepass") + b"\0" for arg in argv]
    size = sum(map(len, encoded)) + 4 * len(argv)
    pages = -(-size // PAGE)
    try:
        first_page = memory.grow(store, pages)
    except wasmtime.WasmtimeError:
        raise WasmFailure("MemoryLimitExceeded", f"the module's memory cannot grow by {pages} page(s) to hold "
                          "the task's arguments") from None
    base = first_page * PAGE
    addresses, offset = [], base
    for text in encoded:
        memory.write(store, text, offset)
        addresses.append(offset)
        offset += len(text)
    memory.write(store, struct.pack(f"<{len(addresses)}I", *addresses), offset)
    return offset


def run_module(module: wasmtime.Module, argv: list[str], files: Files, *, memory_bytes: int, fuel: int) -> str:
    """Instantiate ``module`` in a fresh store, call ``entrypoint(argc, argv)``; its result in decimal.

    Raises :class:`WasmFailure` for a module the platform cannot run, a trap,
    or a limit; the task's files are closed whatever happens.
    """
    _check_exports(module)
    store = wasmtime.Store(engine())
    store.set_limits(memory_size=memory_bytes, table_elements=MAX_TABLE_ELEMENTS, instances=1, tables=4,
                     memories=1)
    store.set_fuel(fuel)
    memory: wasmtime.Memory | None = None
    try:
        host = _Host(files)
        linker = _linker(module, host)
        try:
            instance = linker.instantiate(store, module)
        except wasmtime.WasmtimeError as exc:
            if "memory" in str(exc) and "limit" in str(exc):
                raise WasmFailure("MemoryLimitExceeded", f"the module's initial memory is larger than "
                                  f"{memory_bytes >> 20} MiB") from None
            raise load_error(_error_text(str(exc))) from None
        exports = instance.exports(store)
        memory = exports["memory"]  # type: ignore[assignment]
        entrypoint = exports["entrypoint"]
        assert isinstance(memory, wasmtime.Memory) and isinstance(entrypoint, wasmtime.Func)
        host.memory = memory
        address = _place_arguments(store, memory, argv)
        result = entrypoint(store, len(argv), address)
        return str(int(result))
    except wasmtime.Trap as trap:
        raise _trap_failure(trap, fuel, memory_bytes, memory, store) from None
    finally:
        files.close_all()


def _trap_failure(trap: wasmtime.Trap, fuel: int, memory_bytes: int, memory: wasmtime.Memory | None,
                  store: wasmtime.Store) -> WasmFailure:
    code = trap.trap_code
    detail = str(trap)
    if code == wasmtime.TrapCode.OUT_OF_FUEL:
        return WasmFailure("FuelExhausted", f"the module used its budget of {fuel} fuel units", detail)
    text = TRAP_TEXTS.get(code) if code is not None else None
    if text is None:
        text = _host_trap_text(trap.message)
    if memory is not None and memory.data_len(store) > memory_bytes - max(memory_bytes // NEAR_LIMIT_FRACTION, PAGE):
        return WasmFailure("MemoryLimitExceeded", f"the module's memory reached its limit of {memory_bytes >> 20} "
                           f"MiB, then: Exception: {text}", detail)
    return WasmFailure("Exception", text, detail)


def _host_trap_text(message: str) -> str:
    """A trap raised by a host function carries its text first; wasmtime appends a backtrace."""
    return _first_line(message) or "unknown trap"


def _error_text(text: str) -> str:
    """wasmtime's error and its causes on one line: ``failed to parse WebAssembly module: unexpected end-of-file``."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and line.strip() != "Caused by:"]
    return ": ".join(line.split(": ", 1)[1] if line[:1].isdigit() and ": " in line else line for line in lines)


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip().removeprefix("error: ")
    return ""


def stderr_log(line: str) -> None:
    """The ERROR lines of §7.2 go to the child's output, which the worker logs for the task."""
    sys.stderr.write(line + "\n")
