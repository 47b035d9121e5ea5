"""``builtin_principal_components_analysis`` (``spec/functions.md`` §5.8): project data on its first n components.

The reference computes the SVD with rulinalg's Golub–Reinsch routine; Kettle
uses LAPACK's (numpy), which gives the same singular values and vectors to
about 1e-15 relative. The sign of a singular vector is arbitrary in any SVD
and is where the two can differ: Kettle fixes it deterministically, making the
largest-magnitude entry of every component positive (the first such entry on
ties), so the same data always gives the same output; the reference's signs
come out of its iteration and are not reproduced (``docs/builtins.md``).

Input: a numeric table of F+1 doubles per line, the last column ignored (a
label). Output: one line per row, the n projected values in the reference's
debug float text (Appendix A.4), ``,``-separated. Kettle choices: fewer rows
than features fails (the reference's path there is inconsistent), so does an
SVD that does not converge (``Could not compute SVD.``); ``n`` = 0 writes one
empty line per row, which is what the reference's formatting gives.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import BuiltinFunction, FunctionError, FunctionRuntime
from ._numbers import format_debug
from ._tables import read_table
from .arguments import BOOL, USIZE

TOO_MANY_COMPONENTS = "Input data must have equal or larger number of columns than n"
SVD_FAILED = "Could not compute SVD."


def check_components(arguments: dict[str, Any]) -> None:
    if arguments["n"] > arguments["feature_size"]:
        raise FunctionError(TOO_MANY_COMPONENTS)


def components(data: np.ndarray) -> np.ndarray:
    """The right singular vectors (F × F, columns by descending singular value), signs fixed."""
    try:
        _, _, vt = np.linalg.svd(data, full_matrices=False)
    except np.linalg.LinAlgError:
        raise FunctionError(SVD_FAILED) from None
    vectors = vt.T
    largest = np.argmax(np.abs(vectors), axis=0)
    signs = np.sign(vectors[largest, np.arange(vectors.shape[1])])
    return vectors * np.where(signs == 0, 1.0, signs)


def transform(table: np.ndarray, count: int, center: bool) -> np.ndarray:
    data = table - table.sum(axis=0) / len(table) if center else table
    if not np.isfinite(data).all():
        raise FunctionError(SVD_FAILED)
    return data @ components(data)[:, :count]


def principal_components_analysis(arguments: dict[str, Any], runtime: FunctionRuntime) -> str:
    count, features = arguments["n"], arguments["feature_size"]
    with runtime.open_input("input_data") as reader:
        table = read_table(reader, features + 1)[:, :features]
    rows = len(table)
    if not rows:
        raise FunctionError("Empty input data")
    if rows < features:
        raise FunctionError(f"Input data must have at least as many rows ({rows}) as features ({features})")
    projected = transform(table, count, arguments["center"])
    with runtime.create_output("output_data") as writer:
        writer.write("".join(",".join(map(format_debug, row)) + "\n" for row in projected.tolist()).encode("ascii"))
    return f"transform {rows} rows * {count} cols lines of data."


FUNCTION = BuiltinFunction(
    name="builtin_principal_components_analysis",
    run=principal_components_analysis,
    arguments={"n": USIZE, "center": BOOL, "feature_size": USIZE},
    inputs=("input_data",),
    outputs=("output_data",),
    validate=check_components,
    description="Projects the rows (last column ignored) on their first n principal components.",
)
