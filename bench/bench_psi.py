"""``builtin-ordered-set-intersect`` on large sorted sets of SHA-256 hex digests, against NumPy.

For each size N: two inputs of N lines each (SHA-256 digests of distinct
integers, 64 lowercase hex characters, sorted ascending, ``\\n`` after every
line) sharing exactly N/2 values, written to temporary files. Measured in the
same run on the same data:

* the built-in end to end through ``FileRuntime``: read both files, decode and
  validate the hex, check the ordering, intersect, write both outputs;
* baseline: ``numpy.intersect1d`` on the digests already in memory as ``S32``
  arrays, as called plainly and with ``assume_unique=True`` (the inputs are sets);
* baseline with parsing: read both files and decode the hex with NumPy (a
  lookup table, no validation), then ``intersect1d(assume_unique=True)``.

All must find the N/2 common values.

    .venv/bin/python bench/bench_psi.py [--sizes 1000000 10000000] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from kettle.executors.runtime import FileRuntime
from kettle.functions import lookup

T = TypeVar("T")

HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)
NIBBLES = np.zeros(256, np.uint8)
NIBBLES[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16)
NIBBLES[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)


def digests(first: int, count: int) -> np.ndarray:
    """Sorted SHA-256 digests of the integers ``first … first + count − 1``, as ``S32``."""
    raw = b"".join(hashlib.sha256(i.to_bytes(8, "little")).digest() for i in range(first, first + count))
    return np.sort(np.frombuffer(raw, "S32"))


def hex_lines(values: np.ndarray) -> bytes:
    """One lowercase hex line per ``S32`` value, each ending with ``\\n``."""
    data = values.view(np.uint8).reshape(-1, 32)
    text = np.empty((len(values), 65), np.uint8)
    text[:, 0:64:2] = HEX_DIGITS[data >> 4]
    text[:, 1:64:2] = HEX_DIGITS[data & 15]
    text[:, 64] = ord("\n")
    return text.tobytes()


def numpy_parse(path: Path) -> np.ndarray:
    """The baseline's reader: fixed 65-byte lines decoded with a lookup table, no checks."""
    text = np.fromfile(path, np.uint8).reshape(-1, 65)[:, :64]
    nibbles = NIBBLES[text]
    return ((nibbles[:, 0::2] << 4) | nibbles[:, 1::2]).view("S32").ravel()


def timed(run: Callable[[], T]) -> tuple[float, T]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def report(label: str, seconds: float, lines: int, reference: float | None = None) -> None:
    ratio = f"  (built-in time / this = {reference / seconds:.2f})" if reference else ""
    print(f"  {label:<52} {seconds:8.2f} s  {lines / seconds / 1e6:7.2f} M lines/s{ratio}")


def bench(size: int, folder: Path) -> None:
    common = size // 2
    started = time.perf_counter()
    first = digests(0, size)
    second = digests(size - common, size)  # integers size−common … size−1 are in both
    input1, input2 = folder / "input1.txt", folder / "input2.txt"
    input1.write_bytes(hex_lines(first))
    input2.write_bytes(hex_lines(second))
    print(f"N = {size:,} lines per input, {common:,} in common "
          f"(generated in {time.perf_counter() - started:.1f} s, {input1.stat().st_size / 2**20:.0f} MiB each)")
    lines = 2 * size

    function = lookup("builtin-ordered-set-intersect")
    assert function is not None
    output1, output2 = folder / "output1.txt", folder / "output2.txt"
    runtime = FileRuntime({"input_data1": input1, "input_data2": input2},
                          {"output_result1": output1, "output_result2": output2})
    builtin, summary = timed(lambda: function.call({"order": "ascending"}, runtime))
    assert summary == f"{common} common items", summary
    for output in (output1, output2):
        flags = output.read_bytes()
        assert len(flags) == size and flags.count(b"1") == common
    report("built-in, end to end (files in, files out)", builtin, lines)

    plain, found = timed(lambda: np.intersect1d(first, second))
    assert len(found) == common
    report("numpy.intersect1d, arrays in memory", plain, lines, builtin)
    unique, found = timed(lambda: np.intersect1d(first, second, assume_unique=True))
    assert len(found) == common
    report("numpy.intersect1d(assume_unique=True), in memory", unique, lines, builtin)
    parsed, found = timed(
        lambda: np.intersect1d(numpy_parse(input1), numpy_parse(input2), assume_unique=True)
    )
    assert len(found) == common
    report("numpy hex parsing + intersect1d(assume_unique=True)", parsed, lines, builtin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000], help="lines per input")
    parser.add_argument("--quick", action="store_true", help="small sizes (10,000 and 100,000 lines)")
    args = parser.parse_args()
    sizes = [10_000, 100_000] if args.quick else args.sizes
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            bench(size, Path(tmp))


if __name__ == "__main__":
    main()
