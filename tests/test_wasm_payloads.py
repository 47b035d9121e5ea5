"""The C payloads (the reference's examples) build into modules that import only the host ABI, and behave.

They run here in this process on real files; ``test_wasm_e2e.py`` runs them
as tasks through the platform.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import wasmtime
from wasm_build import compile_c
from wasm_modules import Run

from kettle.sandbox import wamr

PAYLOADS = ("simple_add", "millionaire", "psi")


@pytest.mark.parametrize("name", PAYLOADS)
def test_a_payload_imports_only_host_functions_and_exports_the_entrypoint(name: str) -> None:
    module = wasmtime.Module(wasmtime.Engine(), compile_c(name))
    for item in module.imports:
        assert item.module == "env" and item.name in wamr.HOST_FUNCTIONS
        assert isinstance(item.type, wasmtime.FuncType)
        assert (len(item.type.params), len(item.type.results)) == wamr.HOST_FUNCTIONS[item.name or ""]
    exports = {item.name: item.type for item in module.exports}
    assert isinstance(exports["memory"], wasmtime.MemoryType)
    assert isinstance(exports["entrypoint"], wasmtime.FuncType)


@pytest.mark.parametrize(("arguments", "result"), [
    (["adder1", "3", "adder2", "4"], "7"),
    (["adder1", " \t-12", "adder2", "+2"], "-10"),
    (["adder1", "3"], "-1"),  # too few arguments
])
def test_simple_add(tmp_path: Path, arguments: list[str], result: str) -> None:
    assert Run(tmp_path)(compile_c("simple_add"), arguments) == result


@pytest.mark.parametrize(("a", "b", "richer"), [(b"4211037", b"1008611", b"pf_in_a"), (b"12", b"1008611", b"pf_in_b")])
def test_millionaire(tmp_path: Path, a: bytes, b: bytes, richer: bytes) -> None:
    run = Run(tmp_path, {"pf_in_a": a, "pf_in_b": b}, ("pf_out",))
    argv = ["input_file_id1", "pf_in_a", "input_file_id2", "pf_in_b", "output_file_id", "pf_out"]
    assert run(compile_c("millionaire"), argv) == str(len(richer))
    assert run.output("pf_out") == richer


def test_millionaire_without_its_input(tmp_path: Path) -> None:
    run = Run(tmp_path, {"pf_in_a": b"1"}, ("pf_out",))
    argv = ["input_file_id1", "pf_in_a", "input_file_id2", "missing", "output_file_id", "pf_out"]
    assert run(compile_c("millionaire"), argv) == "-1"
    assert run.log == ["wasm_open_input: Invalid input file identifier."]


PSI_ARGV = ["input1_fid", "a", "input2_fid", "b", "output1_fid", "x", "output2_fid", "y"]


def test_psi_of_the_references_shape(tmp_path: Path) -> None:
    ids = [f"{random.Random(i).getrandbits(64):016x}" for i in range(33)]
    first, second = ids[:20], ids[:6] + ids[20:]
    random.Random(5).shuffle(second)
    run = Run(tmp_path, {"a": "\n".join(first).encode(), "b": "\r\n".join(second).encode() + b"\r\n"}, ("x", "y"))
    assert run(compile_c("psi"), PSI_ARGV) == "6"
    expected = "".join(f"{line}\n" for line in sorted(ids[:6])) + "done\n"
    assert run.output("x").decode() == run.output("y").decode() == expected


def test_psi_counts_each_common_line_once_and_ignores_empty_lines(tmp_path: Path) -> None:
    run = Run(tmp_path, {"a": b"k\n\nk\nz\nm\n", "b": b"m\nk\nk\n\n"}, ("x", "y"))
    assert run(compile_c("psi"), PSI_ARGV) == "2"
    assert run.output("x") == b"k\nm\ndone\n"


def test_psi_on_inputs_of_megabytes(tmp_path: Path) -> None:
    first = [f"{i:016x}" for i in range(0, 400_000, 2)]
    second = [f"{i:016x}" for i in range(0, 400_000, 3)]
    run = Run(tmp_path, {"a": "\n".join(first).encode(), "b": "\n".join(second).encode()}, ("x", "y"))
    assert run(compile_c("psi"), PSI_ARGV, fuel=10**11, memory=256 << 20) == str(len(range(0, 400_000, 6)))


def test_psi_needs_its_eight_arguments(tmp_path: Path) -> None:
    assert Run(tmp_path)(compile_c("psi"), PSI_ARGV[:6]) == "-1"
