"""The GBDT model shared by ``builtin-gbdt-train`` and ``-predict`` (``spec/functions.md`` §5.4–5.5).

The model is gbdt-rs's JSON: a configuration, the trees (nodes in pre-order,
children by position), and the bias. Values the reference keeps in single
precision are ``numpy.float32`` here and are written with the single-precision
float layout (Appendix A.3), so a model trained by Kettle is the reference's
text, and one trained by the reference reads back exactly.

Reading is strict: a model is data from another party, so every field is type
checked, and children must come after their parent (as pre-order numbering
puts them), which makes every traversal finite.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import FunctionError
from ._numbers import format_shortest

MISSING = np.float32(-3.4028235e38)
"""The most negative finite single: a feature with this value is unknown."""

LOSS_NAMES = {
    "SquaredError": "SquaredError",
    "LogLikelyhood": "LogLikelyhood",
    "LAD": "LAD",
    "reg:linear": "RegLinear",
    "reg:logistic": "RegLogistic",
    "binary:logistic": "BinaryLogistic",
    "binary:logitraw": "BinaryLogitraw",
    "multi:softprob": "MultiSoftprob",
    "multi:softmax": "MultiSoftmax",
    "rank:pairwise": "RankPairwise",
}
"""Argument string → the internal name written in the model; anything else is SquaredError (§5.4)."""


@dataclass(frozen=True)
class Config:
    feature_size: int
    max_depth: int
    iterations: int
    shrinkage: np.float32
    feature_sample_ratio: float
    data_sample_ratio: float
    min_leaf_size: int
    loss: str
    """The internal name (``LAD``, ``RegLogistic`` …)."""
    training_optimization_level: int


@dataclass
class Tree:
    """Nodes in pre-order, as parallel arrays (a child index of 0 means none)."""

    feature_index: np.ndarray
    feature_value: np.ndarray
    """float32"""
    pred: np.ndarray
    """float32"""
    missing: np.ndarray
    is_leaf: np.ndarray
    left: np.ndarray
    right: np.ndarray

    def __len__(self) -> int:
        return len(self.pred)


@dataclass
class Model:
    config: Config
    trees: list[Tree]
    bias: np.float32


# --- writing ------------------------------------------------------------------------------------


def _single(value: Any) -> str:
    return format_shortest(value, single=True)


def _config_json(config: Config) -> str:
    return (
        f'{{"feature_size":{config.feature_size},"max_depth":{config.max_depth},'
        f'"iterations":{config.iterations},"shrinkage":{_single(config.shrinkage)},'
        f'"feature_sample_ratio":{format_shortest(config.feature_sample_ratio)},'
        f'"data_sample_ratio":{format_shortest(config.data_sample_ratio)},'
        f'"min_leaf_size":{config.min_leaf_size},"loss":"{config.loss}","debug":false,'
        f'"initial_guess_enabled":false,"training_optimization_level":{config.training_optimization_level}}}'
    )


def _tree_json(tree: Tree, config: Config) -> str:
    nodes = ",".join(
        f'{{"value":{{"feature_index":{int(tree.feature_index[i])},"feature_value":{_single(tree.feature_value[i])},'
        f'"pred":{_single(tree.pred[i])},"missing":{int(tree.missing[i])},'
        f'"is_leaf":{"true" if tree.is_leaf[i] else "false"}}},"index":{i},'
        f'"left":{int(tree.left[i])},"right":{int(tree.right[i])}}}'
        for i in range(len(tree))
    )
    return (
        f'{{"tree":{{"tree":[{nodes}]}},"feature_size":{config.feature_size},"max_depth":{config.max_depth},'
        f'"min_leaf_size":{config.min_leaf_size},"loss":"{config.loss}",'
        f'"feature_sample_ratio":{format_shortest(config.feature_sample_ratio)}}}'
    )


def model_json(model: Model) -> str:
    """One line, no white space, fields in the reference's order."""
    trees = ",".join(_tree_json(tree, model.config) for tree in model.trees)
    return f'{{"conf":{_config_json(model.config)},"trees":[{trees}],"bias":{_single(model.bias)}}}'


# --- reading ------------------------------------------------------------------------------------


def invalid_model(detail: str) -> FunctionError:
    return FunctionError(f"Invalid model: {detail}")


def _field(container: Any, key: str, kind: str, where: str) -> Any:
    if not isinstance(container, dict) or key not in container:
        raise invalid_model(f"{where} has no field {key}")
    value = container[key]
    valid = {
        "int": isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        "signed": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "list": isinstance(value, list),
        "object": isinstance(value, dict),
    }[kind]
    if not valid:
        raise invalid_model(f"{where}.{key} has the wrong type")
    return value


def _read_config(conf: Any) -> Config:
    loss = _field(conf, "loss", "str", "conf")
    if loss not in LOSS_NAMES.values():
        raise invalid_model(f"unknown loss {loss!r}")
    for key in ("debug", "initial_guess_enabled"):
        _field(conf, key, "bool", "conf")
    return Config(
        feature_size=_field(conf, "feature_size", "int", "conf"),
        max_depth=_field(conf, "max_depth", "int", "conf"),
        iterations=_field(conf, "iterations", "int", "conf"),
        shrinkage=np.float32(_field(conf, "shrinkage", "number", "conf")),
        feature_sample_ratio=float(_field(conf, "feature_sample_ratio", "number", "conf")),
        data_sample_ratio=float(_field(conf, "data_sample_ratio", "number", "conf")),
        min_leaf_size=_field(conf, "min_leaf_size", "int", "conf"),
        loss=loss,
        training_optimization_level=_field(conf, "training_optimization_level", "int", "conf"),
    )


def _read_tree(entry: Any, number: int) -> Tree:
    where = f"tree {number}"
    nodes = _field(_field(entry, "tree", "object", where), "tree", "list", where)
    if not nodes:
        raise invalid_model(f"{where} has no nodes")
    count = len(nodes)
    columns: dict[str, list[Any]] = {k: [] for k in
                                     ("feature_index", "feature_value", "pred", "missing", "is_leaf", "left", "right")}
    for position, node in enumerate(nodes):
        at = f"{where} node {position}"
        value = _field(node, "value", "object", at)
        if _field(node, "index", "int", at) != position:
            raise invalid_model(f"{at}: index is not its position")
        is_leaf = _field(value, "is_leaf", "bool", at)
        missing = _field(value, "missing", "signed", at)
        if missing not in (-1, 0, 1):
            raise invalid_model(f"{at}: missing must be -1, 0 or 1")
        left, right = _field(node, "left", "int", at), _field(node, "right", "int", at)
        if not is_leaf and not (position < left < count and position < right < count):
            # pre-order puts children after their parent: this also rules out cycles
            raise invalid_model(f"{at}: children must be later nodes of the tree")
        columns["feature_index"].append(_field(value, "feature_index", "int", at))
        columns["feature_value"].append(_field(value, "feature_value", "number", at))
        columns["pred"].append(_field(value, "pred", "number", at))
        columns["missing"].append(missing)
        columns["is_leaf"].append(is_leaf)
        columns["left"].append(left)
        columns["right"].append(right)
    try:
        return Tree(
            feature_index=np.array(columns["feature_index"], dtype=np.int64),
            feature_value=np.array(columns["feature_value"], dtype=np.float64).astype(np.float32),
            pred=np.array(columns["pred"], dtype=np.float64).astype(np.float32),
            missing=np.array(columns["missing"], dtype=np.int8),
            is_leaf=np.array(columns["is_leaf"], dtype=bool),
            left=np.array(columns["left"], dtype=np.int64),
            right=np.array(columns["right"], dtype=np.int64),
        )
    except OverflowError:
        raise invalid_model(f"{where}: a value is out of range") from None


def read_model(data: bytes) -> Model:
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise invalid_model("not JSON") from None
    config = _read_config(_field(document, "conf", "object", "the model"))
    entries = _field(document, "trees", "list", "the model")
    bias = np.float32(_field(document, "bias", "number", "the model"))
    if config.iterations != len(entries):
        raise invalid_model(f"conf.iterations is {config.iterations} but there are {len(entries)} trees")
    return Model(config, [_read_tree(entry, number) for number, entry in enumerate(entries)], bias)


# --- evaluation -----------------------------------------------------------------------------------


def evaluate(tree: Tree, features: np.ndarray, widths: np.ndarray, first_line: int = 1) -> np.ndarray:
    """The tree's value for every row of ``features`` (rows × columns, float32), all rows at once.

    ``widths`` is each row's number of fields: a row without the feature a split
    needs fails (the reference crashes there). Rows step down one level per pass;
    children come after their parents, so at most ``len(tree)`` passes."""
    rows = len(features)
    node = np.zeros(rows, dtype=np.int64)
    result = np.zeros(rows, dtype=np.float32)
    active = np.arange(rows)
    while active.size:
        at = node[active]
        leaf = tree.is_leaf[at]
        result[active[leaf]] = tree.pred[at[leaf]]
        active, at = active[~leaf], at[~leaf]
        if not active.size:
            break
        feature = tree.feature_index[at]
        short = feature >= widths[active]
        if short.any():
            row = int(active[short][0])
            raise FunctionError(
                f"Data format error: line {first_line + row} has {int(widths[row])} features, "
                f"the model needs feature {int(feature[short][0])}"
            )
        value = features[active, feature]
        unknown = value == MISSING
        stop = unknown & (tree.missing[at] == 0)
        result[active[stop]] = tree.pred[at[stop]]
        go_left = np.where(unknown, tree.missing[at] == -1, value < tree.feature_value[at])
        node[active] = np.where(go_left, tree.left[at], tree.right[at])
        keep = ~stop
        active = active[keep]
    return result
