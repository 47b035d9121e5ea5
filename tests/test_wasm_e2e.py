"""WebAssembly functions end to end through the SDK: the reference's examples, a hostile module, cancel, logs.

A real platform whose execution node runs modules in its sandbox. The C
payloads are the reference's examples (simple add, millionaire problem, a
PSI), compiled here with clang for wasm32 against the host ABI; tasks run with
executor ``wamr`` as Teaclave's clients name it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import task_world
from task_world import World
from wasm_build import compile_c
from wasm_modules import module

from kettle.sdk import TaskFailure

LOOP = module("(loop $l (br $l)) (i32.const 0)")
REQUIRED_LAYERS = {"process", "rlimits", "seccomp", "landlock", "uid"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, _auditor_cache: Path) -> Iterator[World]:
    config = "[sandbox]\ncpu_time_secs = 30\nwall_time_secs = 60\nmemory_mib = 512\n"
    with task_world.world(tmp_path_factory.mktemp("wasm-e2e"), _auditor_cache, config) as started:
        yield started


def test_simple_add(world: World) -> None:
    function_id = world.function("wamr", compile_c("simple_add"), ["adder1", "adder2"])
    run = world.run(function_id, {"adder1": "3", "adder2": "4"}, executor="wamr")
    assert run.return_value == "7"
    assert REQUIRED_LAYERS <= set(run.task.outputs_or_raise().sandbox_layers)
    assert world.run(function_id, {"adder1": "-10", "adder2": " 4"}, executor="wasm").return_value == "-6"


def test_millionaire_problem_between_two_owners(world: World) -> None:
    function_id = world.function("wamr", compile_c("millionaire"),
                                 ["input_file_id1", "input_file_id2", "output_file_id"],
                                 ["pf_in_a", "pf_in_b"], ["pf_out"])
    arguments = {"input_file_id1": "pf_in_a", "input_file_id2": "pf_in_b", "output_file_id": "pf_out"}
    run = world.run(function_id, arguments, {"pf_in_a": b"4211037", "pf_in_b": b"1008611"}, ["pf_out"],
                    executor="wamr", owner_of={"pf_in_b": "bob"})
    assert run.return_value == "7"
    assert run.outputs["pf_out"] == b"pf_in_a"


def test_private_set_intersection_writes_both_parties_results(world: World) -> None:
    ids = [f"{random.Random(i).getrandbits(64):016x}" for i in range(33)]
    common = ids[:6]
    first = common + ids[6:20]
    second = common + ids[20:33]
    random.Random(1).shuffle(first)
    random.Random(2).shuffle(second)
    function_id = world.function("wamr", compile_c("psi"),
                                 ["input1_fid", "input2_fid", "output1_fid", "output2_fid"],
                                 ["input_data1", "input_data2"], ["output_result1", "output_result2"])
    arguments = {"input1_fid": "input_data1", "input2_fid": "input_data2",
                 "output1_fid": "output_result1", "output2_fid": "output_result2"}
    run = world.run(function_id, arguments,
                    {"input_data1": "\n".join(first).encode(), "input_data2": ("\n".join(second) + "\n").encode()},
                    ["output_result1", "output_result2"], executor="wamr",
                    owner_of={"input_data2": "bob", "output_result2": "bob"})
    assert run.return_value == "6"
    for name in ("output_result1", "output_result2"):
        lines = (run.outputs[name] or b"").decode().splitlines()
        assert lines[-1] == "done" and sorted(lines[:-1]) == sorted(common)


def test_a_hostile_module_fails_with_its_reason_and_uploads_nothing(world: World) -> None:
    hostile = module("""(drop (call $write (call $create (i32.const 0)) (i32.const 0) (i32.const 3)))
        (call $read (i32.const 1) (i32.const 65535) (i32.const 1000))""", data="out\\00")
    function_id = world.function("wamr", hostile, outputs=["out"])
    run = world.run(function_id, {}, outputs=["out"], executor="wamr")
    assert run.failure == "Exception: out of bounds memory access"
    assert run.outputs == {"out": None}
    assert isinstance(run.task.result, TaskFailure) and REQUIRED_LAYERS <= set(run.task.result.sandbox_layers)


def test_a_malformed_module_fails_the_task_with_a_load_error(world: World) -> None:
    run = world.run(world.function("wamr", b"\0asm\x01\0\0\0\xff"), {}, executor="wamr")
    assert run.failure.startswith("WASM load error: failed to parse WebAssembly module")


def test_the_log_has_the_layers_the_module_and_the_host_functions_errors(world: World) -> None:
    function_id = world.function("wamr", module("(call $open (i32.const 0))", data="nope\\00"), ["save_log"])
    log = world.run(function_id, {"save_log": "true"}, executor="wamr").task.outputs_or_raise().log
    assert any(line.startswith("[INFO teaclave_function::wamr] sandbox layers: process") for line in log), log
    assert any(line.startswith("[INFO teaclave_function::wamr] module ") for line in log), log
    assert "[ERROR teaclave_executor_context::context] wasm_open_input: Invalid input file identifier." in log


def test_cancelling_an_infinite_loop_is_prompt_and_the_next_task_runs(world: World) -> None:
    loop = world.function("wamr", LOOP)
    task_id, _ = world.start(loop, {}, executor="wamr")
    world.cancel_once_running(task_id)
    adder = world.function("wamr", module("(i32.add (local.get $argc) (i32.const 5))"), ["a"])
    assert world.run(adder, {"a": "x"}, executor="wamr").return_value == "7"
