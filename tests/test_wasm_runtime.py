"""The WAMR host ABI on wasmtime (functions.md §7), in this process: real modules written in WAT, real files.

The sandboxed process around it is tested in ``test_wasm_sandbox.py``; here
each rule of the ABI is checked on the runtime itself: the five host functions
with their types, handles and −1 cases, pointer validation (traps), argument
placement, the result, the trap texts, the load errors and the engine's limits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime
from wasm_modules import FUEL, MEMORY, Run, module

from kettle.sandbox import wamr


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return Run(tmp_path, {"in": b"hello world", "other": b"second"}, ("out",))


# --- arguments and result (§7.5, §7.7) --------------------------------------------------------


def test_the_result_is_the_signed_i32_in_decimal(run: Run) -> None:
    assert run(module("(i32.const 7)")) == "7"
    assert run(module("(i32.const -1)")) == "-1"
    assert run(module("(i32.const 0x80000000)")) == "-2147483648"


def test_arguments_are_nul_terminated_strings_in_new_pages_with_an_address_array(run: Run) -> None:
    # returns argc * 1000 + the first byte of argv[3] + (argv[3][1] == 0 ? 100 : 0)
    body = """(local $s i32)
      (local.set $s (i32.load (i32.add (local.get $argv) (i32.const 12))))
      (i32.add (i32.add (i32.mul (local.get $argc) (i32.const 1000)) (i32.load8_u (local.get $s)))
               (select (i32.const 100) (i32.const 0) (i32.eqz (i32.load8_u offset=1 (local.get $s)))))"""
    assert run(module(body), ["adder1", "3", "adder2", "4"]) == str(4000 + ord("4") + 100)


def test_arguments_do_not_overwrite_the_modules_memory(run: Run) -> None:
    # the strings go after the module's own pages: argv points past the first page, which keeps its data
    body = "(i32.add (i32.load8_u (i32.const 0)) (i32.ge_u (local.get $argv) (i32.const 65536)))"
    assert run(module(body, data="A"), ["k", "v"]) == str(ord("A") + 1)


def test_no_arguments_give_argc_zero(run: Run) -> None:
    assert run(module("(local.get $argc)")) == "0"


def test_arguments_that_cannot_fit_under_the_memory_limit_fail_the_task(run: Run) -> None:
    assert run.failure(module("(i32.const 0)", memory="1 1"), ["k", "v"]) == (
        "MemoryLimitExceeded: the module's memory cannot grow by 1 page(s) to hold the task's arguments")


# --- host functions (§7.2, §7.4) ----------------------------------------------------------------

COPY = """(local $in i32) (local $out i32) (local $n i32)
  (local.set $in (call $open (i32.const 0)))
  (local.set $out (call $create (i32.const 3)))
  (local.set $n (call $read (local.get $in) (i32.const 100) (i32.const 5)))
  (drop (call $write (local.get $out) (i32.const 100) (local.get $n)))
  (drop (call $close (local.get $in)))
  (drop (call $close (local.get $out)))
  (local.get $n)"""


def test_open_read_create_write_close(run: Run) -> None:
    assert run(module(COPY, data="in\\00out\\00")) == "5"  # one read of at most buf_len bytes
    assert run.output("out") == b"hello"
    assert run.log == []


def test_handles_count_successful_opens_and_writers_have_bit_30(run: Run) -> None:
    body = """(i32.add (i32.add (i32.mul (call $open (i32.const 0)) (i32.const 100))
                               (i32.mul (call $open (i32.const 3)) (i32.const 10)))
                      (i32.mul (call $open (i32.const 20)) (i32.const 1)))"""
    # in → 1, "nope" fails (-1) without using a number, other → 2
    assert run(module(body.replace("i32.const 20", "i32.const 8"), data="in\\00nope\\00other\\00")) == str(
        100 - 10 + 2)
    assert run.log == ["wasm_open_input: Invalid input file identifier."]
    assert run(module("(drop (call $open (i32.const 0))) (drop (call $open (i32.const 0))) (call $create (i32.const 3))",
                      data="in\\00out\\00")) == str(0x40000003)


def test_reading_to_the_end_returns_zero(run: Run) -> None:
    body = """(local $h i32)
      (local.set $h (call $open (i32.const 0)))
      (drop (call $read (local.get $h) (i32.const 100) (i32.const 1000)))
      (call $read (local.get $h) (i32.const 100) (i32.const 1000))"""
    assert run(module(body, data="in\\00")) == "0"


@pytest.mark.parametrize(("body", "line"), [
    ("(call $create (i32.const 0))", "wasm_create_output: Invalid output file identifier"),
    ("(call $read (i32.const 7) (i32.const 100) (i32.const 4))", "wasm_read_file: invalid input handle 7"),
    ("(call $write (i32.const 7) (i32.const 100) (i32.const 4))", "wasm_write_file: invalid output handle 7"),
    ("(call $close (i32.const 7))", "wasm_close_file: invalid handle 7"),
    # writing to an input handle, reading from an output handle
    ("(call $write (call $open (i32.const 5)) (i32.const 100) (i32.const 4))", "wasm_write_file: invalid output handle 1"),
    ("(call $read (call $create (i32.const 9)) (i32.const 100) (i32.const 4))",
     "wasm_read_file: invalid input handle 1073741825"),
])
def test_misuse_returns_minus_one_with_an_error_line(run: Run, body: str, line: str) -> None:
    assert run(module(body, data="nope\\00in\\00\\00out\\00")) == "-1"
    assert run.log == [line]


def test_a_closed_handle_is_gone_and_never_reused(run: Run) -> None:
    body = """(local $h i32)
      (local.set $h (call $open (i32.const 0)))
      (drop (call $close (local.get $h)))
      (i32.add (i32.mul (call $close (local.get $h)) (i32.const 10)) (call $open (i32.const 0)))"""
    assert run(module(body, data="in\\00")) == str(-10 + 2)
    assert run.log == ["wasm_close_file: invalid handle 1"]


def test_at_most_1023_opens_per_execution(run: Run) -> None:
    body = """(local $i i32) (local $last i32)
      (loop $again
        (local.set $last (call $open (i32.const 0)))
        (drop (call $close (local.get $last)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $again (i32.lt_u (local.get $i) (i32.const 1024))))
      (local.get $last)"""
    assert run(module(body, data="in\\00")) == "-1"
    assert run.log == ["wasm_open_input: too many open files (at most 1023 per execution)",
                       "wasm_close_file: invalid handle -1"]


def test_files_left_open_are_closed_so_outputs_are_complete(run: Run) -> None:
    body = "(drop (call $write (call $create (i32.const 0)) (i32.const 0) (i32.const 3))) (i32.const 0)"
    assert run(module(body, data="out\\00")) == "0"
    assert run.output("out") == b"out"


def test_a_name_is_decoded_up_to_its_nul_with_replacement(tmp_path: Path) -> None:
    run = Run(tmp_path, {"caf\ufffd": b"x"})
    assert run(module("(call $open (i32.const 0))", data="caf\\ff\\00")) == "1"


OUT_OF_BOUNDS = "Exception: out of bounds memory access"


@pytest.mark.parametrize("body", [
    "(call $open (i32.const 65536))",  # the name starts past the end
    "(call $open (i32.const -1))",  # a negative address is a huge unsigned one
    "(call $create (i32.const 65533))",  # no NUL before the end of memory
    "(call $read (call $open (i32.const 0)) (i32.const 65530) (i32.const 7))",
    "(call $read (call $open (i32.const 0)) (i32.const 100) (i32.const -1))",  # length read as unsigned
    "(call $write (call $create (i32.const 3)) (i32.const 65535) (i32.const 2))",
    "(call $write (call $create (i32.const 3)) (i32.const -4) (i32.const 4))",
])
def test_every_guest_pointer_is_checked_and_a_bad_one_traps(run: Run, body: str) -> None:
    wasm = module(f"(i32.store8 (i32.const 65533) (i32.const 120)) (i32.store8 (i32.const 65534) (i32.const 120))"
                  f"(i32.store8 (i32.const 65535) (i32.const 120)) {body}", data="in\\00out\\00")
    assert run.failure(wasm) == OUT_OF_BOUNDS


def test_a_buffer_ending_exactly_at_the_end_of_memory_is_fine(run: Run) -> None:
    assert run(module("(call $read (call $open (i32.const 0)) (i32.const 65531) (i32.const 5))", data="in\\00")) == "5"


# --- traps (§7.7) ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "text"), [
    ("unreachable", "unreachable"),
    ("(i32.load (i32.const 70000))", "out of bounds memory access"),
    ("(i32.div_s (i32.const 1) (i32.const 0))", "integer divide by zero"),
    ("(i32.div_s (i32.const 0x80000000) (i32.const -1))", "integer overflow"),
    ("(i32.trunc_f32_s (f32.const 1e20))", "integer overflow"),
    ("(i32.trunc_f32_s (f32.const nan))", "invalid conversion to integer"),
])
def test_traps_give_the_references_text(run: Run, body: str, text: str) -> None:
    assert run.failure(module(body)) == f"Exception: {text}"


def test_table_traps(run: Run) -> None:
    table = """(type $t (func (result i32)))
      (table 2 funcref) (elem (i32.const 0) $f)
      (func $f (result i32) (i32.const 1))
      (func $g (param i32) (result i32) (local.get 0))
      (memory (export "memory") 1)"""

    def call(index: int, type_: str = "$t") -> bytes:
        return wasmtime.wat2wasm(f"""(module {table} (type $u (func (param i32) (result i32)))
          (func (export "entrypoint") (param i32 i32) (result i32)
            {"(i32.const 0)" if type_ == "$u" else ""} (call_indirect (type {type_}) (i32.const {index}))))""")

    assert run(call(0)) == "1"
    assert run.failure(call(5)) == "Exception: undefined element"
    assert run.failure(call(1)) == "Exception: uninitialized element"
    assert run.failure(call(0, "$u")) == "Exception: indirect call type mismatch"


def test_deep_recursion_overflows_the_stack(run: Run) -> None:
    wasm = wasmtime.wat2wasm("""(module (memory (export "memory") 1)
      (func $f (export "entrypoint") (param i32 i32) (result i32)
        (i32.add (call $f (local.get 0) (local.get 1)) (i32.const 1))))""")
    assert run.failure(wasm) == "Exception: wasm operand stack overflow"


def test_a_trap_in_the_start_function_is_a_trap(run: Run) -> None:
    wasm = wasmtime.wat2wasm("""(module (memory (export "memory") 1) (func $s unreachable) (start $s)
      (func (export "entrypoint") (param i32 i32) (result i32) (i32.const 0)))""")
    assert run.failure(wasm) == "Exception: unreachable"


# --- imports and exports (§7.1, §7.3) ----------------------------------------------------------------


def test_an_unknown_function_import_traps_only_when_called(run: Run) -> None:
    imports = '(import "env" "sleep" (func $sleep (param i32))) (import "wasi_snapshot_preview1" "fd_write" (func $w))'
    assert run(module("(i32.const 5)", imports=imports)) == "5"
    assert run.failure(module("(call $sleep (i32.const 1)) (i32.const 5)", imports=imports)) == (
        "Exception: failed to call unlinked import function (env, sleep)")


@pytest.mark.parametrize(("wasm", "reason"), [
    (lambda: b"\0asm\x01\0\0\0\x01\x05", "WASM load error: failed to parse WebAssembly module: unexpected end-of-file"),
    (lambda: b"not wasm at all", "WASM load error: not a WebAssembly binary (it does not start with \\0asm)"),
    (lambda: b'(module (memory (export "memory") 1))', "WASM load error: not a WebAssembly binary"),  # no WAT text
    (lambda: wasmtime.wat2wasm('(module (memory (export "memory") 1))'), "WASM load error: entrypoint not found"),
    (lambda: wasmtime.wat2wasm('(module (func (export "entrypoint") (param i32 i32) (result i32) (i32.const 0)))'),
     "WASM load error: the module exports no linear memory named 'memory'"),
    (lambda: wasmtime.wat2wasm('(module (memory (export "memory") 1) (func (export "entrypoint") (result i32) '
                               '(i32.const 0)))'),
     "WASM load error: entrypoint must have type (i32, i32) -> (i32), not () -> (i32)"),
    (lambda: module("(i32.const 0)", imports='(import "env" "m" (memory 1))'),
     "WASM load error: the module imports env.m, which is not a function"),
    (lambda: module("(i32.const 0)", imports='(import "env" "g" (global i32))'),
     "WASM load error: the module imports env.g, which is not a function"),
    (lambda: module("(i32.const 0)", imports='(import "env" "teaclave_read_file" (func (param i32) (result i32)))'),
     "WASM load error: the module imports env.teaclave_read_file with the wrong type (i32) -> (i32); "
     "the host function's type is (i32, i32, i32) -> (i32)"),
])
def test_modules_the_platform_cannot_run_fail_with_a_load_error(run: Run, wasm: object, reason: str) -> None:
    with pytest.raises(wamr.WasmFailure) as caught:
        run(wasm())  # type: ignore[operator]
    assert f"{caught.value.type_name}: {caught.value.message}".startswith(reason)


# --- limits -----------------------------------------------------------------------------------------


def test_fuel_runs_out_at_the_same_point_every_time(run: Run) -> None:
    counter = """(local $i i32)
      (loop $l (i32.store (i32.const 0) (local.tee $i (i32.add (local.get $i) (i32.const 1)))) (br $l))
      (i32.const 0)"""
    assert run.failure(module(counter), fuel=1_000_000) == (
        "FuelExhausted: the module used its budget of 1000000 fuel units")


def test_memory_growth_is_refused_at_the_limit_and_a_trap_there_names_it(run: Run) -> None:
    grow_until_refused = "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) (memory.size)"
    assert run(module(grow_until_refused), memory=8 << 20) == "128"  # 8 MiB of 64 KiB pages: -1 past that
    then_trap = "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable"
    assert run.failure(module(then_trap), memory=8 << 20) == (
        "MemoryLimitExceeded: the module's memory reached its limit of 8 MiB, then: Exception: unreachable")


def test_initial_memory_over_the_limit(run: Run) -> None:
    assert run.failure(module("(i32.const 0)", memory="200"), memory=8 << 20) == (
        "MemoryLimitExceeded: the module's initial memory is larger than 8 MiB")


def test_a_compiled_module_round_trips_through_the_cache_format(run: Run) -> None:
    artifact = wamr.compile_module(module("(i32.const 41)")).serialize()
    files = wamr.Files(run.channel, run.log.append)
    assert wamr.run_module(wamr.load_compiled(artifact), [], files, memory_bytes=MEMORY, fuel=FUEL) == "41"


def test_arguments_address_array_is_little_endian_32_bit(run: Run) -> None:
    # argv[1]'s address, read back as four bytes, matches argv[0]'s address + len("ab\0")
    body = "(i32.sub (i32.load offset=4 (local.get $argv)) (i32.load (local.get $argv)))"
    assert run(module(body), ["ab", "c"]) == "3"
