"""``builtin-logistic-regression-train`` (``spec/functions.md`` §5.6): batch gradient descent, bit for bit.

The reference trains with rusty-machine's logistic regressor: weights start at
0.5, each iteration computes the sigmoid of every row's dot product, the cost
(to stop once it no longer changes) and the gradient, all with the 8-lane
summation orders of Appendix B (:mod:`._linear`), so the model text matches the
reference's to the last digit.

Kettle choices: ``alg_alpha`` must be a positive number (the reference aborts
otherwise); an empty training file fails with ``Empty training data`` instead
of writing a model of ``null`` parameters that no prediction can read.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import BuiltinFunction, FunctionError, FunctionRuntime
from ._linear import dot8_columns, dot8_rows, log, sigmoid, sum8
from ._numbers import format_shortest
from ._tables import read_table
from .arguments import F64, USIZE

EMPTY_TRAINING_DATA = "Empty training data"
INITIAL_WEIGHT = 0.5
CONVERGED = 1e-20


def check_alpha(arguments: dict[str, Any]) -> None:
    alpha = arguments["alg_alpha"]
    if not alpha > 0 or math.isinf(alpha):
        raise FunctionError(f"alg_alpha must be a positive number, not {alpha!r}")


def train(features: np.ndarray, targets: np.ndarray, alpha: float, iterations: int) -> np.ndarray:
    """The parameters (intercept first) after gradient descent from 0.5."""
    rows = len(targets)
    design = np.hstack([np.ones((rows, 1)), features])
    weights = np.full(design.shape[1], INITIAL_WEIGHT)
    previous = 0.0
    for _ in range(iterations):
        outputs = sigmoid(dot8_rows(design, weights))
        with np.errstate(invalid="ignore"):  # 0·(−inf) = NaN, as in the reference
            terms = targets * log(outputs) + (1.0 - targets) * log(1.0 - outputs)
        cost = -sum8(terms) / rows
        if abs(previous - cost) < CONVERGED:
            break
        gradient = dot8_columns(design, outputs - targets) / rows
        weights = weights - gradient * alpha
        previous = cost
    return weights


def model_json(alpha: float, iterations: int, parameters: np.ndarray) -> str:
    values = ",".join(format_shortest(value) for value in parameters)
    return f'{{"alpha":{format_shortest(alpha)},"iters":{iterations},"parameters":[{values}]}}'


def logistic_regression_train(arguments: dict[str, Any], runtime: FunctionRuntime) -> str:
    alpha, iterations, features = arguments["alg_alpha"], arguments["alg_iters"], arguments["feature_size"]
    with runtime.open_input("training_data") as reader:
        table = read_table(reader, features + 1)
    if not len(table):
        raise FunctionError(EMPTY_TRAINING_DATA)
    parameters = train(table[:, :features], table[:, features], alpha, iterations)
    with runtime.create_output("model_file") as writer:
        writer.write(model_json(alpha, iterations, parameters).encode("ascii"))
    return f"Trained {len(table)} lines of data."


FUNCTION = BuiltinFunction(
    name="builtin-logistic-regression-train",
    run=logistic_regression_train,
    arguments={"alg_alpha": F64, "alg_iters": USIZE, "feature_size": USIZE},
    inputs=("training_data",),
    outputs=("model_file",),
    validate=check_alpha,
    description="Trains a logistic regression model by batch gradient descent (label: the last column).",
)
