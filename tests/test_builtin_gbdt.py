"""``builtin-gbdt-train`` / ``-predict`` (functions.md §5.4, §5.5): the reference's model, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from staged import run_builtin

from kettle.functions._gbdt import read_model

VECTORS = Path("/work/shared/vectors/functions/gbdt_prediction")
IRIS = (Path(__file__).parent / "data" / "functions" / "gbdt_train_iris.txt").read_bytes()
TRAIN, PREDICT = "builtin-gbdt-train", "builtin-gbdt-predict"
ARGUMENTS = {
    "feature_size": 4, "max_depth": 4, "iterations": 100, "shrinkage": 0.1, "feature_sample_ratio": 1.0,
    "data_sample_ratio": 1.0, "min_leaf_size": 1, "loss": "LAD", "training_optimization_level": 2,
}
MODEL = (VECTORS / "model.txt").read_bytes()
TEST_DATA = (VECTORS / "test_data.txt").read_bytes()


def train(tmp_path: Path, arguments: dict, data: bytes = IRIS) -> bytes:
    outcome = run_builtin(tmp_path / "train", TRAIN, arguments, {"training_data": data}, ["trained_model"])
    assert outcome.failure is None, outcome.failure
    return outcome.outputs["trained_model"] or b""


def predict(tmp_path: Path, model: bytes, data: bytes = TEST_DATA) -> bytes:
    outcome = run_builtin(tmp_path / "predict", PREDICT, {}, {"model_file": model, "data_file": data}, ["result_file"])
    assert outcome.failure is None, outcome.failure
    return outcome.outputs["result_file"] or b""


def test_training_reproduces_the_reference_model_and_prediction_its_results(tmp_path: Path) -> None:
    outcome = run_builtin(tmp_path / "t", TRAIN, ARGUMENTS, {"training_data": IRIS}, ["trained_model"])
    assert outcome.return_value == "Trained 120 lines of data."
    assert outcome.outputs["trained_model"] == MODEL
    predicted = run_builtin(tmp_path / "p", PREDICT, {"ignored": 1}, {"model_file": MODEL, "data_file": TEST_DATA},
                            ["result_file"])
    assert predicted.return_value == "Predict result has 30 lines of data."
    assert predicted.outputs["result_file"] == (VECTORS / "expected_result.txt").read_bytes()


@pytest.mark.parametrize("loss", ["SquaredError", "LogLikelyhood", "reg:logistic", "binary:logistic", "rank:pairwise",
                                  "no such loss"])
def test_models_of_every_loss_train_and_predict(tmp_path: Path, loss: str) -> None:
    data = IRIS
    if loss == "LogLikelyhood":  # labels ±1: setosa against the rest
        data = b"".join(line.rsplit(b",", 1)[0] + (b",1\n" if line.endswith(b",3") else b",-1\n")
                        for line in IRIS.splitlines())
    model = train(tmp_path, {**ARGUMENTS, "loss": loss, "iterations": 10, "max_depth": 3}, data)
    internal = {"reg:logistic": "RegLogistic", "binary:logistic": "BinaryLogistic", "rank:pairwise": "RankPairwise",
                "no such loss": "SquaredError"}.get(loss, loss)
    assert json.loads(model)["conf"]["loss"] == internal
    assert read_model(model).config.iterations == 10
    values = [float(line) for line in predict(tmp_path, model).splitlines()]
    assert len(values) == 30 and all(np.isfinite(values))
    if internal in ("RegLogistic", "BinaryLogistic", "LogLikelyhood"):
        assert all(0 <= v <= 1 for v in values)


def test_missing_values_and_sampling(tmp_path: Path) -> None:
    lines = IRIS.decode().splitlines()
    lines[::7] = [",".join(["-3.4028235e38", *line.split(",")[1:]]) for line in lines[::7]]
    model = train(tmp_path, {**ARGUMENTS, "loss": "SquaredError", "iterations": 5,
                             "feature_sample_ratio": 0.5, "data_sample_ratio": 0.7},
                  ("\n".join(lines) + "\n").encode())
    parsed = read_model(model)
    assert len(parsed.trees) == 5
    assert len(predict(tmp_path, model, b"-3.4028235e38,3.0,1.5,0.2\n").splitlines()) == 1


def test_prediction_trims_fields_and_ignores_extra_ones(tmp_path: Path) -> None:
    lines = predict(tmp_path, MODEL, b" 5.1 , 3.5,1.4 ,0.2, 99\n7.7,2.6,6.9,2.3\n").splitlines()
    assert lines == [b"2.9999732971", b"2.0000000000"]


def test_a_deep_tree_builds_without_recursion(tmp_path: Path) -> None:
    rows = "".join(f"{i},{i % 2}\n" for i in range(3000)).encode()  # a staircase: one split per level
    model = train(tmp_path, {**ARGUMENTS, "feature_size": 1, "max_depth": 100_000, "iterations": 1,
                             "loss": "SquaredError"}, rows)
    assert len(read_model(model).trees[0]) > 2000


GOOD = IRIS.splitlines()[0] + b"\n"


@pytest.mark.parametrize(("arguments", "data", "reason"), [
    ({k: v for k, v in ARGUMENTS.items() if k != "loss"}, GOOD, "Cannot deserialize arguments"),
    ({**ARGUMENTS, "max_depth": 4.0}, GOOD, "Cannot deserialize arguments"),
    ({**ARGUMENTS, "shrinkage": "0.1"}, GOOD, "Cannot deserialize arguments"),
    ({**ARGUMENTS, "training_optimization_level": 256}, GOOD, "Cannot deserialize arguments"),
    ({**ARGUMENTS, "max_depth": 2**32}, GOOD, "Cannot deserialize arguments"),
    (ARGUMENTS, b"", "Empty training data"),
    (ARGUMENTS, GOOD + b"   \n", "Empty line"),
    (ARGUMENTS, GOOD + b"1,2,3\n", "Data format error: column len = 3, expected = 5"),
    (ARGUMENTS, b"4.8, 3.0,1.4,0.1,3\n", "invalid float literal"),
    (ARGUMENTS, b"4.8,,1.4,0.1,3\n", "cannot parse float from empty string"),
    (ARGUMENTS, b"4.8,3.0,1.4,0.1,\xff\n", "stream did not contain valid UTF-8"),
    ({**ARGUMENTS, "loss": "LogLikelyhood"}, GOOD, "Training produced values that are not finite numbers "
                                                   "(LogLikelyhood needs labels -1 and 1)"),
])
def test_bad_training_tasks_fail_and_upload_nothing(tmp_path: Path, arguments: dict, data: bytes, reason: str) -> None:
    outcome = run_builtin(tmp_path, TRAIN, arguments, {"training_data": data}, ["trained_model"])
    assert (outcome.failure, outcome.outputs) == (reason, {"trained_model": None})


def test_lad_on_one_row_takes_its_label(tmp_path: Path) -> None:
    assert json.loads(train(tmp_path, ARGUMENTS, b"1,2,3,4,7.5\n"))["bias"] == 7.5


def broken(change: str) -> bytes:
    model = json.loads(MODEL)
    if change == "iterations":
        model["conf"]["iterations"] = 99
    elif change == "cycle":
        model["trees"][0]["tree"]["tree"][2]["left"] = 0
    elif change == "child out of range":
        model["trees"][0]["tree"]["tree"][0]["right"] = 10_000
    elif change == "loss":
        model["conf"]["loss"] = "Sideways"
    elif change == "type":
        model["trees"][3]["tree"]["tree"][0]["value"]["pred"] = "1"
    elif change == "missing field":
        del model["bias"]
    return json.dumps(model).encode()


@pytest.mark.parametrize(("model", "data", "reason"), [
    (b"{", TEST_DATA, "Invalid model: not JSON"),
    (b"[]", TEST_DATA, "Invalid model: the model has no field conf"),
    (broken("iterations"), TEST_DATA, "Invalid model: conf.iterations is 99 but there are 100 trees"),
    (broken("cycle"), TEST_DATA, "Invalid model: tree 0 node 2: children must be later nodes of the tree"),
    (broken("child out of range"), TEST_DATA, "Invalid model: tree 0 node 0: children must be later nodes of the tree"),
    (broken("loss"), TEST_DATA, "Invalid model: unknown loss 'Sideways'"),
    (broken("type"), TEST_DATA, "Invalid model: tree 3 node 0.pred has the wrong type"),
    (broken("missing field"), TEST_DATA, "Invalid model: the model has no field bias"),
    (MODEL, b"5.1,3.5\n", "Data format error: line 1 has 2 features, the model needs feature 2"),
    (MODEL, TEST_DATA + b"5.1,3.5, ,0.2\n", "Empty feature"),
    (MODEL, b"\n", "Empty line"),
    (MODEL, b"5.1,3.5,x,0.2\n", "invalid float literal"),
])
def test_bad_prediction_tasks_fail_and_upload_nothing(tmp_path: Path, model: bytes, data: bytes, reason: str) -> None:
    outcome = run_builtin(tmp_path, PREDICT, {}, {"model_file": model, "data_file": data}, ["result_file"])
    assert (outcome.failure, outcome.outputs) == (reason, {"result_file": None})
