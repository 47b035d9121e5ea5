"""WebAssembly tasks in the sandbox: a real zygote, its compile children and cache, hostile modules.

Each hostile module runs as a task would (compile through the zygote, then a
hardened child), must end with its named reason, and must leave the node
healthy: the zygote alive and the next module running normally.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from dataclasses import replace
from pathlib import Path

import pytest
import wasmtime
from sandbox_node import LIMITS, Node
from wasm_modules import module

from kettle.executors.runtime import FileRuntime
from kettle.sandbox import protocol, wamr
from kettle.sandbox.supervisor import WasmLoadError, WasmRun, run_sandboxed
from kettle.sandbox.zygote import SEALS

OUT_OF_BOUNDS = "Exception: out of bounds memory access"
LOOP = "(loop $l (br $l)) (i32.const 0)"


def healthy(node: Node) -> None:
    assert node.alive()
    outcome = node.run_wasm(module("(i32.add (local.get $argc) (i32.const 40))"), ["a", "b"])
    assert (outcome.failure, outcome.return_value) == (None, "42")


def test_a_module_copies_its_input_to_its_output(node: Node, tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"4211037")
    body = """(local $n i32) (local $out i32)
      (local.set $n (call $read (call $open (i32.const 0)) (i32.const 100) (i32.const 64)))
      (local.set $out (call $create (i32.const 3)))
      (drop (call $write (local.get $out) (i32.const 100) (local.get $n)))
      (drop (call $close (local.get $out)))
      (local.get $n)"""
    outcome = node.run_wasm(module(body, data="in\\00out\\00"), [], {"in": tmp_path / "in"}, {"out": tmp_path / "out"})
    assert (outcome.failure, outcome.return_value) == (None, "7")
    assert (tmp_path / "out").read_bytes() == b"4211037"


def test_a_module_is_compiled_once_and_then_found_in_the_cache(node: Node) -> None:
    wasm = module("(i32.const 1234)")
    first, second = node.compile(wasm), node.compile(wasm)
    assert (first.cached, second.cached, first.sha256) == (False, True, second.sha256)
    assert node.run_wasm(wasm).return_value == "1234"


def test_a_task_compiles_a_module_the_zygote_lacks_and_later_tasks_find_it(node: Node) -> None:
    wasm = module("(i32.const 99)")
    first, second = node.run_wasm(wasm), node.run_wasm(wasm)
    assert (first.return_value, second.return_value) == ("99", "99")
    assert first.module is not None and second.module is not None
    assert (first.module.cached, second.module.cached) == (False, True)
    assert first.module.sha256 == second.module.sha256 == hashlib.sha256(wasm).hexdigest()


def test_a_spawn_for_a_module_never_compiled_is_answered_uncompiled(node: Node) -> None:
    connection = node.connect()
    try:
        files, theirs = protocol.socket_pair()
        read_end, write_end = os.pipe()
        request = {"engine": "wasm", "sha256": "0" * 64, "fuel": 1, "cpu_secs": 1, "memory_bytes": 1 << 20,
                   "open_files": 8, "wall_time_secs": 1}
        protocol.send_json(connection, protocol.SPAWN, request, [theirs.fileno(), write_end, read_end])
        for fd in (theirs.detach(), write_end, read_end):
            os.close(fd)
        assert protocol.receive(connection) == (protocol.UNCOMPILED, b"", [])
        files.close()
    finally:
        connection.close()
    healthy(node)


def test_the_file_api_error_lines_come_back_as_output(node: Node) -> None:
    outcome = node.run_wasm(module("(call $open (i32.const 0))", data="missing\\00"))
    assert outcome.return_value == "-1"
    assert outcome.output == b"wasm_open_input: Invalid input file identifier.\n"


# --- hostile modules ----------------------------------------------------------------------------

HOSTILE = {
    "infinite loop (fuel)": (module(LOOP), "FuelExhausted: the module used its budget of 100000000 fuel units"),
    "deep recursion": (wasmtime.wat2wasm("""(module (memory (export "memory") 1)
        (func $f (export "entrypoint") (param i32 i32) (result i32)
          (i32.add (call $f (local.get 0) (local.get 1)) (i32.const 1))))"""), "Exception: wasm operand stack overflow"),
    "memory growth past the cap": (
        module("(loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable"),
        "MemoryLimitExceeded"),
    "open_input with a pointer out of bounds": (module("(call $open (i32.const 65536))"), OUT_OF_BOUNDS),
    "create_output with a negative pointer": (module("(call $create (i32.const -8))"), OUT_OF_BOUNDS),
    "read_file past the end of memory": (
        module("(call $read (call $open (i32.const 0)) (i32.const 65000) (i32.const 1000))", data="in\\00"),
        OUT_OF_BOUNDS),
    "read_file with a negative length": (
        module("(call $read (call $open (i32.const 0)) (i32.const 0) (i32.const -1))", data="in\\00"), OUT_OF_BOUNDS),
    "write_file past the end of memory": (
        module("(call $write (call $create (i32.const 0)) (i32.const 65535) (i32.const 2))", data="out\\00"),
        OUT_OF_BOUNDS),
    "a name without its NUL": (module("""(memory.fill (i32.const 0) (i32.const 65) (i32.const 65536))
        (call $open (i32.const 0))"""), OUT_OF_BOUNDS),
    "an unknown host function": (
        module("(call $system (i32.const 0))", imports='(import "env" "system" (func $system (param i32) (result i32)))'),
        "Exception: failed to call unlinked import function (env, system)"),
    "a huge output": (module("""(local $out i32) (local.set $out (call $create (i32.const 0)))
        (loop $l (br_if $l (i32.ge_s (call $write (local.get $out) (i32.const 0) (i32.const 65536)) (i32.const 0))))
        (i32.const 0)""", data="out\\00"), "OutputLimitExceeded: the function wrote more than 1048576 bytes"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_modules_are_contained_with_their_reason(node: Node, tmp_path: Path, case: str) -> None:
    wasm, reason = HOSTILE[case]
    (tmp_path / "in").write_bytes(b"data")
    # Each case must be stopped by its own limit, so the CPU limit is roomy: filling 256 MiB takes
    # about 0.7 s of CPU here, and a loaded machine pushed it past the default 1 s.
    roomy = replace(LIMITS, cpu_time_secs=10, wall_time_secs=20)
    outcome = node.run_wasm(wasm, [], {"in": tmp_path / "in"}, {"out": tmp_path / "out"}, limits=roomy, fuel=10**8)
    assert outcome.failure is not None and outcome.failure.startswith(reason), outcome
    healthy(node)


@pytest.mark.parametrize(("body", "value"), [
    ("(call $read (i32.const 42) (i32.const 0) (i32.const 4))", "-1"),  # a handle never given
    ("(call $close (i32.const 0x40000001))", "-1"),
    ("(call $write (call $open (i32.const 0)) (i32.const 0) (i32.const 4))", "-1"),  # writing to an input
    ("(call $read (call $create (i32.const 3)) (i32.const 0) (i32.const 4))", "-1"),  # reading an output
])
def test_invalid_handles_get_minus_one_and_touch_nothing(node: Node, tmp_path: Path, body: str, value: str) -> None:
    (tmp_path / "in").write_bytes(b"data")
    outcome = node.run_wasm(module(body, data="in\\00out\\00"), [], {"in": tmp_path / "in"}, {"out": tmp_path / "out"})
    assert (outcome.failure, outcome.return_value) == (None, value)
    assert (tmp_path / "in").read_bytes() == b"data"
    healthy(node)


def test_an_infinite_loop_with_fuel_to_spare_meets_the_cpu_limit(node: Node) -> None:
    outcome = node.run_wasm(module(LOOP), fuel=10**15)
    assert outcome.failure == "CPUTimeExceeded: the function used more than 1 s of CPU time"
    healthy(node)


@pytest.mark.parametrize(("wasm", "reason"), [
    (b"\0asm\x01\0\0\0\xff", "failed to parse WebAssembly module"),
    (b"MZ\x90\0 not a module", "not a WebAssembly binary"),
    (b"", "not a WebAssembly binary"),
])
def test_a_malformed_module_is_a_load_error(node: Node, wasm: bytes, reason: str) -> None:
    with pytest.raises(WasmLoadError, match=reason):
        node.compile(wasm)
    healthy(node)


def test_compiling_is_held_to_the_tasks_limits(node: Node) -> None:
    # 8000 valid functions: compiling takes about 5 s of CPU here, well over the 1 s this test allows
    body = "(local.set 0 (i32.add (local.get 0) (i32.const 1))) " * 40
    functions = "".join(f"(func $f{i} (param i32) (result i32) {body} (local.get 0))" for i in range(8000))
    wasm = wasmtime.wat2wasm(f'(module (memory (export "memory") 1) {functions} '
                             '(func (export "entrypoint") (param i32 i32) (result i32) (i32.const 0)))')
    with pytest.raises(WasmLoadError, match="^compiling the module took more CPU time than the task's limit$"):
        node.compile(wasm, replace(LIMITS, cpu_time_secs=1))
    healthy(node)


def test_a_forged_compile_request_is_refused_and_the_zygote_stays(node: Node) -> None:
    connection = node.connect()
    try:
        protocol.send_json(connection, protocol.COMPILE, {"sha256": "../../etc", "cpu_secs": 1,
                                                          "memory_bytes": 1 << 20, "open_files": 4}, [0])
        assert protocol.receive(connection) is None  # dropped: nothing more for a confused client
    finally:
        connection.close()
    healthy(node)


def test_a_client_that_goes_away_takes_its_running_module_with_it(node: Node) -> None:
    wasm = module(LOOP)
    node.compile(wasm)
    node.assert_cancel_kills_the_child(lambda connection: run_sandboxed(
        connection, [], wasm, FileRuntime(), replace(LIMITS, cpu_time_secs=60), WasmRun(10**15)))
    healthy(node)


def test_a_child_keeps_no_other_functions_compiled_modules(node: Node) -> None:
    """The zygote's cache holds every function's compiled code; a child closes every descriptor it inherits (the
    cache's memfds with them) before running anything, and keeps none of the cache's entries."""
    marker = "private-function-logic-4f1c"
    secret = module("(i32.const 1)", data=marker)
    assert marker.encode() in wamr.compile_module(secret).serialize()  # the compiled form carries the data
    assert node.run_wasm(secret).return_value == "1"  # now in the zygote's cache
    outcome = node.run("""
        import sys
        def entrypoint(argv):
            frame, seen = sys._getframe(), []
            while frame is not None:
                zygote = frame.f_locals.get("self")
                if hasattr(zygote, "compiled"):
                    seen.append(len(zygote.compiled))
                frame = frame.f_back
            return repr(sorted(set(seen)))
    """)
    assert outcome.return_value == "[0]"  # the zygote's state is reachable, and its cache is empty there


def test_each_task_of_a_cached_module_gets_a_fresh_instance(node: Node) -> None:
    """A global and a memory cell each counted up by every call: a task never sees what an earlier one left."""
    wasm = wasmtime.wat2wasm("""(module (memory (export "memory") 1) (global $calls (mut i32) (i32.const 0))
      (func (export "entrypoint") (param i32 i32) (result i32)
        (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
        (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (i32.const 1)))
        (i32.add (i32.mul (global.get $calls) (i32.const 10)) (i32.load (i32.const 0)))))""")
    outcomes = [node.run_wasm(wasm) for _ in range(3)]
    assert [(o.return_value, o.module is not None and o.module.cached) for o in outcomes] == [
        ("11", False), ("11", True), ("11", True)]


def test_the_zygote_keeps_compiled_modules_sealed(node: Node) -> None:
    """Each child is handed the cache's memfd itself: nothing may change it, for the next task, through it."""
    node.run_wasm(module("(i32.const 5)"))
    fds = Path(f"/proc/{node.zygote_pid}/fd")
    compiled = [entry for entry in fds.iterdir() if os.readlink(entry).startswith("/memfd:kettle-compiled")]
    assert compiled
    for entry in compiled:
        fd = os.open(entry, os.O_RDWR)
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            assert seals & SEALS == SEALS
            with pytest.raises(PermissionError):
                os.pwrite(fd, b"\0", 0)
            with pytest.raises(PermissionError):
                os.ftruncate(fd, 1)
        finally:
            os.close(fd)


def test_a_child_forked_ahead_for_one_module_runs_no_other_task(node: Node) -> None:
    """The child forked after a wasm task has that module loaded: only a task of the same module may use it."""
    first, second = module("(i32.const 101)"), module("(i32.const 202)")
    assert node.run_wasm(first).return_value == "101"
    assert node.run_wasm(second).return_value == "202"
    assert node.run("def entrypoint(argv):\n    return 'python'\n").return_value == "python"
    assert node.run_wasm(first).return_value == "101"
    assert node.run_wasm(first).return_value == "101"
