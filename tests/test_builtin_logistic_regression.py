"""``builtin-logistic-regression-train`` / ``-predict`` (functions.md §5.6, §5.7, Appendix B)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from staged import run_builtin

from kettle.functions._linear import dot8_columns, dot8_rows, exp, log, sum8

VECTORS = Path("/work/shared/vectors/functions")
TRAIN = "builtin-logistic-regression-train"
PREDICT = "builtin-logistic-regression-predict"
ARGUMENTS = {"alg_alpha": 0.3, "alg_iters": 100, "feature_size": 30}


def dot8(u: list[float], v: list[float]) -> float:
    """Appendix B's dot8, literally."""
    n = min(len(u), len(v))
    full = n // 8 * 8
    partial = [0.0] * 8
    for block in range(0, full, 8):
        for k in range(8):
            partial[k] = partial[k] + u[block + k] * v[block + k]
    total = 0.0
    for k in range(4):
        total = (total + partial[k]) + partial[k + 4]
    for i in range(full, n):
        total = total + u[i] * v[i]
    return total


def plain_sum8(x: list[float]) -> float:
    full = len(x) // 8 * 8
    partial = [0.0] * 8
    for block in range(0, full, 8):
        for k in range(8):
            partial[k] = partial[k] + x[block + k]
    total = 0.0
    for k in range(4):
        total = total + (partial[k] + partial[k + 4])
    for i in range(full, len(x)):
        total = total + x[i]
    return total


@pytest.mark.parametrize("rows", [1, 7, 8, 9, 17, 100])
@pytest.mark.parametrize("columns", [1, 5, 8, 9, 31])
def test_the_vectorised_kernels_add_in_the_specified_order(rows: int, columns: int) -> None:
    rng = np.random.default_rng(rows * 100 + columns)
    # wildly different magnitudes, so that any other order gives other bits
    matrix = rng.normal(size=(rows, columns)) * np.exp(rng.normal(size=(rows, columns)) * 8)
    vector_m, vector_n = rng.normal(size=columns), rng.normal(size=rows)
    assert dot8_rows(matrix, vector_m).tolist() == [dot8(list(row), list(vector_m)) for row in matrix]
    assert dot8_columns(matrix, vector_n).tolist() == [dot8(list(col), list(vector_n)) for col in matrix.T]
    assert sum8(matrix[:, 0]) == plain_sum8(matrix[:, 0].tolist())


def test_exp_and_log_are_the_c_librarys_without_exceptions() -> None:
    values = np.random.default_rng(1).normal(size=2000) * 20
    assert exp(values).tolist() == [math.exp(v) for v in values]
    assert exp(np.array([710.0, -800.0, np.nan])).tolist()[:2] == [math.inf, 0.0]
    assert log(np.array([0.0, -1.0, 1.0])).tolist()[0::2] == [-math.inf, 0.0]
    assert math.isnan(log(np.array([-1.0]))[0])


def test_training_and_prediction_reproduce_the_reference_vectors(tmp_path: Path) -> None:
    folder = VECTORS / "logistic_regression_training"
    trained = run_builtin(tmp_path / "train", TRAIN, ARGUMENTS, {"training_data": (folder / "train.txt").read_bytes()},
                          ["model_file"])
    assert trained.return_value == "Trained 100 lines of data."
    assert trained.outputs["model_file"] == (folder / "expected_model.txt").read_bytes()
    folder = VECTORS / "logistic_regression_prediction"
    predicted = run_builtin(tmp_path / "predict", PREDICT, {}, {
        "model_file": (folder / "model.txt").read_bytes(), "data_file": (folder / "predict_input.txt").read_bytes(),
    }, ["result_file"])
    assert predicted.return_value == "Predicted 5 lines of data."
    assert predicted.outputs["result_file"] == (folder / "expected_result.txt").read_bytes()


def test_a_model_it_trains_predicts(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    features = rng.normal(size=(300, 3))
    labels = (features @ [2.0, -1.0, 0.5] > 0).astype(float)
    data = "".join(",".join(repr(float(v)) for v in (*row, label)) + "\n" for row, label in zip(features, labels))
    trained = run_builtin(tmp_path / "t", TRAIN, {"alg_alpha": 1.0, "alg_iters": 200, "feature_size": 3},
                          {"training_data": data.encode()}, ["model_file"])
    rows = "".join(",".join(repr(float(v)) for v in row) + "\n" for row in features)
    predicted = run_builtin(tmp_path / "p", PREDICT, {"save_log": "true"},
                            {"model_file": trained.outputs["model_file"] or b"", "data_file": rows.encode()}, ["result_file"])
    assert predicted.return_value == "Predicted 300 lines of data."
    probabilities = [float(line) for line in (predicted.outputs["result_file"] or b"").decode().splitlines()]
    accuracy = np.mean([(p > 0.5) == bool(label) for p, label in zip(probabilities, labels)])
    assert accuracy > 0.95


GOOD_LINE = ",".join(["0.5"] * 30) + ",1\n"


@pytest.mark.parametrize(("arguments", "training", "reason"), [
    ({"alg_alpha": 0.3, "alg_iters": 100}, GOOD_LINE, "Cannot deserialize arguments"),
    ({**ARGUMENTS, "alg_iters": 1.0}, GOOD_LINE, "Cannot deserialize arguments"),
    ({**ARGUMENTS, "alg_alpha": "0.3"}, GOOD_LINE, "Cannot deserialize arguments"),
    ({**ARGUMENTS, "feature_size": -1}, GOOD_LINE, "Cannot deserialize arguments"),
    ({**ARGUMENTS, "alg_alpha": 0}, GOOD_LINE, "alg_alpha must be a positive number, not 0.0"),
    ({**ARGUMENTS, "alg_alpha": -0.5}, GOOD_LINE, "alg_alpha must be a positive number, not -0.5"),
    (ARGUMENTS, "", "Empty training data"),
    (ARGUMENTS, GOOD_LINE + "\n", "Empty line"),
    (ARGUMENTS, GOOD_LINE + "1,2\n", "Data format error: column len = 2, expected = 31"),
    (ARGUMENTS, GOOD_LINE.replace("0.5", "0.5 ", 1), "invalid float literal"),
    (ARGUMENTS, GOOD_LINE.replace("0.5", "0x1", 1), "invalid float literal"),
    (ARGUMENTS, GOOD_LINE.replace("0.5", "", 1), "cannot parse float from empty string"),
    (ARGUMENTS, GOOD_LINE + "\udcff", "stream did not contain valid UTF-8"),
])
def test_bad_training_tasks_fail_and_upload_nothing(tmp_path: Path, arguments: dict, training: str, reason: str) -> None:
    data = training.encode("utf-8", "surrogateescape")
    outcome = run_builtin(tmp_path, TRAIN, arguments, {"training_data": data}, ["model_file"])
    assert (outcome.failure, outcome.outputs) == (reason, {"model_file": None})


def test_extra_arguments_are_ignored(tmp_path: Path) -> None:
    outcome = run_builtin(tmp_path, TRAIN, {**ARGUMENTS, "unused": [1]}, {"training_data": GOOD_LINE.encode()},
                          ["model_file"])
    assert outcome.return_value == "Trained 1 lines of data."


MODEL = (VECTORS / "logistic_regression_prediction" / "model.txt").read_text()


@pytest.mark.parametrize(("model", "data", "reason"), [
    ("not json", "1\n", "Invalid model: not JSON"),
    ("[1, 2]", "1\n", "Invalid model: not a JSON object"),
    ('{"alpha": 0.3, "iters": 1}', "1\n", "Invalid model: missing field parameters"),
    ('{"alpha": 0, "iters": 1, "parameters": [1, 2]}', "1\n", "Invalid model: alpha must be a positive number"),
    ('{"alpha": 0.3, "iters": -1, "parameters": [1, 2]}', "1\n", "Invalid model: iters must be a non-negative integer"),
    ('{"alpha": 0.3, "iters": 1, "parameters": []}', "1\n", "Invalid model: parameters must be a non-empty list"),
    ('{"alpha": 0.3, "iters": 1, "parameters": [null, null]}', "1\n",
     "Invalid model: parameters must be numbers (a model trained on no data has none)"),
    (MODEL, "1,2\n", "Data format error: column len = 2, expected = 30"),
    (MODEL, "\n", "Empty line"),
    (MODEL, "a" * 10, "invalid float literal"),
])
def test_bad_prediction_tasks_fail_and_upload_nothing(tmp_path: Path, model: str, data: str, reason: str) -> None:
    outcome = run_builtin(tmp_path, PREDICT, {}, {"model_file": model.encode(), "data_file": data.encode()},
                          ["result_file"])
    assert (outcome.failure, outcome.outputs) == (reason, {"result_file": None})


def test_prediction_needs_both_files(tmp_path: Path) -> None:
    outcome = run_builtin(tmp_path, PREDICT, {}, {"model_file": MODEL.encode()}, ["result_file"])
    assert (outcome.failure, outcome.outputs) == ("Invalid input file identifier.", {"result_file": None})
