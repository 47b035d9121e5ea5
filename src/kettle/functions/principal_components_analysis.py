"""``builtin_principal_components_analysis`` (``spec/functions.md`` §5.8): project data on its first n components.

The components are the right singular vectors from a port of the
reference's Golub–Reinsch SVD (``_golub_reinsch``), so their signs are the
ones that algorithm gives; the values agree with LAPACK's to about 1e-15.

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
from ._golub_reinsch import SVDNotConverged, right_singular_vectors
from ._numbers import format_debug
from ._tables import read_table
from .arguments import BOOL, USIZE

TOO_MANY_COMPONENTS = "Input data must have equal or larger number of columns than n"
SVD_FAILED = "Could not compute SVD."


def check_components(arguments: dict[str, Any]) -> None:
    if arguments["n"] > arguments["feature_size"]:
        raise FunctionError(TOO_MANY_COMPONENTS)


def components(data: np.ndarray) -> np.ndarray:
    """The right singular vectors (F × F, columns by descending singular value)."""
    try:
        return right_singular_vectors(data)[1]
    except SVDNotConverged:
        raise FunctionError(SVD_FAILED) from None


def transform(table: np.ndarray, count: int, center: bool) -> np.ndarray:
    """The rows projected on the first ``count`` components, with the reference's summation orders."""
    # Column sums in file order (cumsum is sequential; ``sum`` would be pairwise).
    data = table - np.cumsum(table, axis=0)[-1] / len(table) if center else table
    if not np.isfinite(data).all():
        raise FunctionError(SVD_FAILED)
    kept = components(data)[:, :count]
    # A plain matrix product, each element summed over k = 0..F-1 from 0.0, as the reference does.
    projected = np.zeros((len(data), count))
    for k in range(data.shape[1]):
        projected += data[:, k, None] * kept[k]
    return projected


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
