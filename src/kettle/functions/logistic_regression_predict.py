"""``builtin-logistic-regression-predict`` (``spec/functions.md`` §5.7): probabilities with 4 decimals.

The data file is streamed in chunks; each row's probability is the sigmoid of
the 8-lane dot product of ``[1, x…]`` with the model's parameters (Appendix B),
printed ``{:.4}``-style. The model is checked strictly, so a tampered or
foreign model fails with a reason instead of a half-written result: it must be
the JSON object of §5.6 with a positive ``alpha`` (the reference aborts
otherwise), a non-negative integer ``iters`` and at least one finite number in
``parameters`` (a model trained on nothing has ``null`` parameters).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from . import BuiltinFunction, FunctionError, FunctionRuntime
from ._linear import dot8_rows, sigmoid
from ._numbers import fixed_lines
from ._tables import iter_table


def invalid_model(detail: str) -> FunctionError:
    return FunctionError(f"Invalid model: {detail}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_model(data: bytes) -> np.ndarray:
    """The parameters of a §5.6 model, intercept first."""
    try:
        model = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise invalid_model("not JSON") from None
    if not isinstance(model, dict):
        raise invalid_model("not a JSON object")
    for key in ("alpha", "iters", "parameters"):
        if key not in model:
            raise invalid_model(f"missing field {key}")
    alpha, iterations, parameters = model["alpha"], model["iters"], model["parameters"]
    if not _is_number(alpha) or not alpha > 0 or not math.isfinite(alpha):
        raise invalid_model("alpha must be a positive number")
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 0:
        raise invalid_model("iters must be a non-negative integer")
    if not isinstance(parameters, list) or not parameters:
        raise invalid_model("parameters must be a non-empty list")
    if not all(_is_number(value) for value in parameters):
        raise invalid_model("parameters must be numbers (a model trained on no data has none)")
    return np.array(parameters, dtype=np.float64)


def logistic_regression_predict(arguments: dict[str, Any], runtime: FunctionRuntime) -> str:
    with runtime.open_input("model_file") as reader:
        parameters = parse_model(reader.read())
    features = len(parameters) - 1
    rows = 0
    with runtime.open_input("data_file") as reader, runtime.create_output("result_file") as writer:
        for chunk in iter_table(reader, features):
            design = np.hstack([np.ones((len(chunk), 1)), chunk])
            probabilities = sigmoid(dot8_rows(design, parameters))
            writer.write(fixed_lines(probabilities, 4))
            rows += len(chunk)
    return f"Predicted {rows} lines of data."


FUNCTION = BuiltinFunction(
    name="builtin-logistic-regression-predict",
    run=logistic_regression_predict,
    inputs=("model_file", "data_file"),
    outputs=("result_file",),
    description="Predicts a probability per data line with a model of builtin-logistic-regression-train.",
)
