"""Test modules written in WebAssembly text, and running a module in this process on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import wasmtime

from kettle.sandbox import wamr

FUEL = 10**8
MEMORY = 64 << 20

IMPORTS = """
 (import "env" "teaclave_open_input" (func $open (param i32) (result i32)))
 (import "env" "teaclave_create_output" (func $create (param i32) (result i32)))
 (import "env" "teaclave_read_file" (func $read (param i32 i32 i32) (result i32)))
 (import "env" "teaclave_write_file" (func $write (param i32 i32 i32) (result i32)))
 (import "env" "teaclave_close_file" (func $close (param i32) (result i32)))
"""


def module(body: str, data: str = "", memory: str = "1", imports: str = IMPORTS) -> bytes:
    """A module with ``imports``, one exported memory, ``data`` at address 0 and ``entrypoint`` = ``body``."""
    segment = f'(data (i32.const 0) "{data}")' if data else ""
    return wasmtime.wat2wasm(f"""(module {imports}
 (memory (export "memory") {memory}) {segment}
 (func (export "entrypoint") (param $argc i32) (param $argv i32) (result i32) {body}))""")


class DirectoryChannel:
    """The task's files as real files in a directory (what the sandbox's channel hands out: descriptors)."""

    def __init__(self, directory: Path, inputs: dict[str, bytes], outputs: tuple[str, ...]) -> None:
        self.directory = directory
        self.outputs = set(outputs)
        self.inputs = set(inputs)
        for name, content in inputs.items():
            (directory / name).write_bytes(content)

    def open_input(self, name: str) -> int:
        if name not in self.inputs:
            raise LookupError(name)
        return os.open(self.directory / name, os.O_RDONLY)

    def create_output(self, name: str) -> int:
        if name not in self.outputs:
            raise LookupError(name)
        return os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)


class Run:
    """Runs modules in this process (no sandbox) on one directory's files; the host's ERROR lines in ``log``."""

    def __init__(self, tmp_path: Path, inputs: dict[str, bytes] | None = None, outputs: tuple[str, ...] = ()) -> None:
        self.directory = tmp_path
        self.channel = DirectoryChannel(tmp_path, inputs or {}, outputs)
        self.log: list[str] = []

    def __call__(self, wasm: bytes, argv: list[str] | None = None, fuel: int = FUEL, memory: int = MEMORY) -> str:
        files = wamr.Files(self.channel, self.log.append)
        return wamr.run_module(wamr.compile_module(wasm), argv or [], files, memory_bytes=memory, fuel=fuel)

    def failure(self, wasm: bytes, argv: list[str] | None = None, **limits: int) -> str:
        with pytest.raises(wamr.WasmFailure) as caught:
            self(wasm, argv, **limits)
        return f"{caught.value.type_name}: {caught.value.message}"

    def output(self, name: str) -> bytes:
        return (self.directory / name).read_bytes()
