"""Test modules written in WebAssembly text: the five host imports, a memory, and an ``entrypoint`` body."""

from __future__ import annotations

import wasmtime

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
