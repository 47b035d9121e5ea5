"""``builtin-gbdt-predict`` (``spec/functions.md`` §5.5): a GBDT model's value for every data line.

The model (Kettle's or the reference's: the same JSON) is read and checked in
full first (:func:`._gbdt.read_model`); the data file is then streamed in
chunks, each chunk evaluated tree by tree for all its rows at once, and the
results written as they come, ``%.10f`` of the single-precision value.

Data lines follow the reference: trimmed, not empty, fields split at ``,`` and
each trimmed and not empty (``Empty feature``); the field count is not checked
against the model, and extra fields are ignored. Kettle choice: a line with too
few fields for a split it reaches fails with a message naming the line (the
reference crashes).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np

from . import BuiltinFunction, FunctionRuntime
from ._gbdt import MISSING, Model, evaluate, read_model
from ._linear import exp
from ._numbers import fixed_lines
from ._tables import CHUNK_ROWS, iter_trimmed_records

F32_ = np.float32


def _chunks(reader: BinaryIO) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows × widest, float32, NaN-padded; each row's field count) for every chunk of lines."""
    records: list[list[str]] = []
    for fields in iter_trimmed_records(reader):
        records.append(fields)
        if len(records) == CHUNK_ROWS:
            yield _matrix(records)
            records = []
    if records:
        yield _matrix(records)


def _matrix(records: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    widths = np.array([len(fields) for fields in records], dtype=np.int64)
    values = np.array([field for fields in records for field in fields], dtype=np.float64).astype(np.float32)
    if (widths == widths[0]).all():
        return values.reshape(len(records), int(widths[0])), widths
    matrix = np.full((len(records), int(widths.max())), np.nan, dtype=np.float32)
    row_of_value = np.repeat(np.arange(len(records)), widths)
    column_of_value = np.arange(values.size) - np.repeat(np.cumsum(widths) - widths, widths)
    matrix[row_of_value, column_of_value] = values
    return matrix, widths


def predict(model: Model, features: np.ndarray, widths: np.ndarray, first_line: int = 1) -> np.ndarray:
    """The model's value for every row, loss transform applied (float32)."""
    if not model.trees:
        result = np.full(len(features), MISSING, dtype=np.float32)
    else:
        result = np.full(len(features), model.bias, dtype=np.float32)
        for tree in model.trees:
            result = result + model.config.shrinkage * evaluate(tree, features, widths, first_line)
    loss = model.config.loss
    if loss == "LogLikelyhood":
        return _sigmoid(F32_(-2) * result)
    if loss in ("BinaryLogistic", "RegLogistic"):
        return _sigmoid(-result)
    return result


def _sigmoid(negated: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(negated)) in single precision, with the C library's exp."""
    return (F32_(1) / (F32_(1) + exp(negated).astype(np.float32))).astype(np.float32)


def gbdt_predict(arguments: dict[str, Any], runtime: FunctionRuntime) -> str:
    with runtime.open_input("model_file") as reader:
        model = read_model(reader.read())
    lines = 0
    with runtime.open_input("data_file") as reader, runtime.create_output("result_file") as writer:
        for features, widths in _chunks(reader):
            values = predict(model, features, widths, first_line=lines + 1)
            writer.write(fixed_lines(values, 10))
            lines += len(features)
    return f"Predict result has {lines} lines of data."


FUNCTION = BuiltinFunction(
    name="builtin-gbdt-predict",
    run=gbdt_predict,
    inputs=("model_file", "data_file"),
    outputs=("result_file",),
    description="Predicts a value per data line with a model of builtin-gbdt-train.",
)
