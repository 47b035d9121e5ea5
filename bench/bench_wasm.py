"""The WebAssembly executor: per-task overhead with a cached module, and a compute kernel against NumPy and Python.

Per task (median of many runs on a warm node), against a bare ``fork()`` of
a NumPy-loaded process measured in the same run:

* ``wasm task, cached module``: what the worker does for a wasm task whose
  module the zygote compiled before — the start request naming the module's
  digest, a hardened child with the compiled module, a fresh store and
  instance, ``entrypoint`` returning a number, the exit report;
* ``wasm task, new module``: the same for a module never seen (a different one
  each run), so a compile child runs first;
* ``in process``: instantiating and calling the module with no sandbox, the
  engine's own share.

Compute: ``sum((i * i) % 7 for i < N)`` as a wasm loop (i64), in NumPy
(``int64`` vectors) and in plain Python, all in this process, plus the wasm
loop as a whole sandboxed task.

    .venv/bin/python bench/bench_wasm.py [--runs N] [--n N]
"""

from __future__ import annotations

import argparse
import asyncio

import numpy as np
import wasmtime
from bench_sandbox import bare_fork, median_ms

from kettle.config import SandboxConfig
from kettle.executors.runtime import FileRuntime
from kettle.executors.sandboxed import limits_of
from kettle.sandbox import wamr
from kettle.sandbox.host import SandboxHost
from kettle.sandbox.supervisor import WasmRun, run_sandboxed

FUEL = 10**12

TRIVIAL = '(module (memory (export "memory") 1) (func (export "entrypoint") (param i32 i32) (result i32) i32.const {}))'
KERNEL = """(module (memory (export "memory") 1)
  (func (export "entrypoint") (param i32 i32) (result i32)
    (local $i i64) (local $sum i64)
    (block $done (loop $next
      (br_if $done (i64.ge_u (local.get $i) (i64.const {n})))
      (local.set $sum (i64.add (local.get $sum) (i64.rem_u (i64.mul (local.get $i) (local.get $i)) (i64.const 7))))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br $next)))
    (i32.wrap_i64 (local.get $sum))))"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--n", type=int, default=30_000_000, help="iterations of the compute kernel")
    options = parser.parse_args()
    loop = asyncio.new_event_loop()
    host = SandboxHost()
    layers = loop.run_until_complete(host.start())
    limits = limits_of(SandboxConfig())
    serial = iter(range(10**9))

    def task(module: bytes) -> str:
        connection = loop.run_until_complete(host.connect())
        try:
            outcome = run_sandboxed(connection, [], module, FileRuntime(), limits, WasmRun(FUEL))
        finally:
            connection.close()
        assert outcome.failure is None, outcome
        return outcome.return_value or ""

    cached = wasmtime.wat2wasm(TRIVIAL.format(7))
    in_process = wamr.compile_module(cached)

    def run_in_process() -> None:
        files = wamr.Files(FileRuntime(), lambda line: None)  # type: ignore[arg-type]
        wamr.run_module(in_process, [], files, memory_bytes=limits.memory_bytes, fuel=FUEL)

    try:
        print(layers.summary())
        baseline = median_ms(options.runs, bare_fork)
        rows = [("bare fork() + numpy sum", baseline),
                ("wasm task, cached module", median_ms(options.runs, lambda: task(cached))),
                ("wasm task, new module", median_ms(options.runs // 4,
                                                    lambda: task(wasmtime.wat2wasm(TRIVIAL.format(next(serial)))))),
                ("in process: instantiate + call", median_ms(options.runs, run_in_process))]
        print(f"{'per task':<32} {'median ms':>10} {'× bare fork':>12}")
        for name, value in rows:
            print(f"{name:<32} {value:>10.2f} {value / baseline:>12.2f}")

        n = options.n
        kernel = wasmtime.wat2wasm(KERNEL.format(n=n))
        compiled_kernel = wamr.compile_module(kernel)
        expected = int(((np.arange(n, dtype=np.int64) ** 2) % 7).sum())

        def wasm_in_process() -> None:
            files = wamr.Files(FileRuntime(), lambda line: None)  # type: ignore[arg-type]
            value = wamr.run_module(compiled_kernel, [], files, memory_bytes=limits.memory_bytes, fuel=FUEL)
            assert int(value) == (expected + 2**31) % 2**32 - 2**31

        def numpy_kernel() -> None:
            values = np.arange(n, dtype=np.int64)
            assert int(((values * values) % 7).sum()) == expected

        def python_kernel() -> None:
            assert sum((i * i) % 7 for i in range(n)) == expected

        kernel_runs = 5
        numpy_ms = median_ms(kernel_runs, numpy_kernel)
        compute = [("numpy (int64 vectors)", numpy_ms),
                   ("wasm, in process", median_ms(kernel_runs, wasm_in_process)),
                   ("wasm, as a sandboxed task", median_ms(kernel_runs, lambda: task(kernel))),
                   ("plain Python", median_ms(1, python_kernel))]
        print(f"\n{'sum((i*i) % 7), n = ' + format(n, ','):<32} {'median ms':>10} {'× numpy':>12}")
        for name, value in compute:
            print(f"{name:<32} {value:>10.1f} {value / numpy_ms:>12.2f}")
    finally:
        loop.run_until_complete(host.close())
        loop.close()


if __name__ == "__main__":
    main()
