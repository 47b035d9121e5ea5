"""Per-task overhead of the Python sandbox, against a bare ``fork()`` of a numpy-loaded process in the same run.

Three timings, each the median of many runs on a warm node:

* ``bare fork``: this process (numpy imported) forks a child that computes
  ``np.arange(1000).sum()`` and exits; the parent waits. The least a fresh
  process per task can cost.
* ``sandbox, trivial``: a whole sandboxed task as the worker runs it —
  request to the zygote, fork, every layer (namespaces, cgroup, rlimits, uid,
  Landlock, seccomp), the payload's ``entrypoint`` returning a string, the
  result back, the exit report.
* ``sandbox, numpy``: the same with the payload computing the same numpy sum.

    .venv/bin/python bench/bench_sandbox.py [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from kettle.config import SandboxConfig
from kettle.executors.runtime import FileRuntime
from kettle.executors.sandboxed import limits_of
from kettle.sandbox.host import SandboxHost
from kettle.sandbox.supervisor import run_sandboxed

TRIVIAL = b"def entrypoint(argv):\n    return 'ok'\n"
NUMPY = b"import numpy as np\ndef entrypoint(argv):\n    return str(np.arange(1000).sum())\n"


def median_ms(runs: int, once: Callable[[], None]) -> float:
    once()  # warm-up
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        once()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def bare_fork() -> None:
    pid = os.fork()
    if pid == 0:
        int(np.arange(1000).sum())
        os._exit(0)
    os.waitpid(pid, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    runs = parser.parse_args().runs
    loop = asyncio.new_event_loop()
    host = SandboxHost()
    layers = loop.run_until_complete(host.start())
    limits = limits_of(SandboxConfig())
    connection = None

    def sandboxed(payload: bytes) -> Callable[[], None]:
        def once() -> None:
            nonlocal connection
            connection = loop.run_until_complete(host.connect())
            try:
                outcome = run_sandboxed(connection, [], payload, FileRuntime(), limits)
            finally:
                connection.close()
            assert outcome.failure is None, outcome
        return once

    try:
        print(layers.summary())
        baseline = median_ms(runs, bare_fork)
        rows = [("bare fork() + numpy sum", baseline),
                ("sandbox, trivial function", median_ms(runs, sandboxed(TRIVIAL))),
                ("sandbox, numpy function", median_ms(runs, sandboxed(NUMPY)))]
        print(f"{'per task':<30} {'median ms':>10} {'× bare fork':>12}")
        for name, value in rows:
            print(f"{name:<30} {value:>10.2f} {value / baseline:>12.2f}")
    finally:
        loop.run_until_complete(host.close())
        loop.close()


if __name__ == "__main__":
    main()
