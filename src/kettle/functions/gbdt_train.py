"""``builtin-gbdt-train`` (``spec/functions.md`` §5.4): gradient-boosted regression trees, as gbdt-rs builds them.

Per-row values (labels, features, targets, residuals, predictions, leaf values)
are single precision, sums are double, exactly where the reference has them, so
the model text is the reference's. The split search is vectorised: for a node
and a feature, moving rows one by one from the right group to the left is a
running sum (``np.cumsum`` adds in order) and a running difference
(``np.subtract.accumulate``), and the first strictly best position is an
``argmin``. Trees are built with an explicit stack in pre-order, so no
``max_depth`` can exhaust the interpreter's recursion limit.

Kettle choices: an empty training file fails (``Empty training data``), so
does training that produces NaN or infinite values (the reference writes
``null`` into a model nothing can read); LAD on
a single row takes that row's label as the bias (the reference crashes); rows
whose winning feature is unknown are left out of the subtree, as in the
reference, and their prediction is not updated by that tree. With sampling
ratios below 1 the choice of rows and features is random, as in the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import BuiltinFunction, FunctionError, FunctionRuntime
from ._gbdt import LOSS_NAMES, MISSING, Config, Model, Tree, evaluate, model_json
from ._tables import read_table
from .arguments import F32, F64, STRING, U8, U32, USIZE

EMPTY_TRAINING_DATA = "Empty training data"
NOT_FINITE = "Training produced values that are not finite numbers (LogLikelyhood needs labels -1 and 1)"
ALMOST_EQUAL = 1e-5
TINY_WEIGHT = 1e-10
F32_ = np.float32


@dataclass
class _Round:
    """One tree's inputs: per-row targets and their sums (double), shared by every node."""

    targets: np.ndarray  # float32
    sums: np.ndarray  # s = t·w
    squares: np.ndarray  # ss = t·s
    counts: np.ndarray  # c = w
    leaf_weights: np.ndarray | None  # LogLikelyhood's lc
    residual_rank: np.ndarray | None  # LAD: position of each row in the residual order
    residuals: np.ndarray | None  # LAD: y − p (float32)


def _sequential_sum(values: np.ndarray) -> float:
    """Σ in order (numpy's own sum adds pairwise, which rounds differently)."""
    return float(np.cumsum(values)[-1]) if len(values) else 0.0


def _bias(labels: np.ndarray, loss: str) -> np.float32:
    rows = len(labels)
    if loss == "LAD":
        ordered = np.sort(labels, kind="stable")
        k = rows // 2  # the first k with 2·(k+1) > rows, for unit weights
        if k >= 2:
            return F32_(F32_(ordered[k] + ordered[k - 1]) / F32_(2))
        return ordered[k] if k == 1 else ordered[0]
    mean = F32_(_sequential_sum(labels.astype(np.float64)) / rows)  # Σw = rows ≥ 1
    if loss == "LogLikelyhood":
        with np.errstate(divide="ignore", invalid="ignore"):
            return F32_(np.log(F32_(F32_(1) + mean) / F32_(F32_(1) - mean)) / F32_(2))
    return mean


def _sse(s: np.ndarray, ss: np.ndarray, c: np.ndarray) -> np.ndarray:
    """max(0, ss − s²/c) where c > 1, else 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.maximum(0.0, ss - s * s / c)
    return np.where(c > 1, value, 0.0)


class _Trainer:
    def __init__(self, features: np.ndarray, labels: np.ndarray, config: Config, rng: np.random.Generator) -> None:
        self.features, self.labels, self.config, self.rng = features, labels, config, rng
        self.rows, self.columns = features.shape
        # per feature, every row ordered by its value (stable: ties keep row order)
        self.presorted = [np.argsort(features[:, j], kind="stable") for j in range(self.columns)]

    # -- one round ---------------------------------------------------------------------------

    def round_inputs(self, predictions: np.ndarray) -> _Round:
        labels, loss = self.labels, self.config.loss
        residuals = rank = leaf_weights = None
        if loss == "LAD":
            residuals = labels - predictions
            targets = np.where(residuals >= 0, F32_(1), F32_(-1)).astype(np.float32)
            rank = np.empty(self.rows, dtype=np.int64)
            rank[np.argsort(residuals, kind="stable")] = np.arange(self.rows)
        elif loss == "LogLikelyhood":
            with np.errstate(over="ignore"):
                targets = (F32_(2) * labels) / (F32_(1) + np.exp(F32_(2) * labels * predictions))
        else:
            targets = labels - predictions
        sums = targets.astype(np.float64)  # · w, w = 1
        squares = targets.astype(np.float64) * sums
        counts = np.ones(self.rows)
        if loss == "LogLikelyhood":
            magnitude = np.abs(targets).astype(np.float64)
            leaf_weights = (magnitude * (2.0 - magnitude)).astype(np.float32).astype(np.float64)
        return _Round(targets, sums, squares, counts, leaf_weights, rank, residuals)

    def leaf_value(self, rows: np.ndarray, data: _Round) -> np.float32:
        if self.config.loss == "LAD":
            if not len(rows):
                return F32_(0)
            assert data.residual_rank is not None and data.residuals is not None
            ordered = data.residuals[rows[np.argsort(data.residual_rank[rows])]]
            k = len(rows) // 2
            return F32_(F32_(ordered[k] + ordered[k - 1]) / F32_(2)) if k >= 1 else ordered[0]
        total = _sequential_sum(data.sums[rows])
        weight = _sequential_sum((data.leaf_weights if data.leaf_weights is not None else data.counts)[rows])
        return F32_(total / weight) if abs(weight) >= TINY_WEIGHT else F32_(0)

    def best_split(self, rows: np.ndarray, data: _Round) -> tuple[int, np.float32, np.ndarray] | None:
        """(feature, threshold, the node's rows in that feature's order), or None."""
        in_node = np.zeros(self.rows, dtype=bool)
        in_node[rows] = True
        total = (_sequential_sum(data.sums[rows]), _sequential_sum(data.squares[rows]),
                 _sequential_sum(data.counts[rows]))
        best: tuple[float, int, np.float32, np.ndarray] | None = None
        for feature in self._features_to_try():
            ordered = self.presorted[feature][in_node[self.presorted[feature]]]
            values = self.features[ordered, feature]
            is_known = values != MISSING
            if not is_known.any():
                continue
            unknown = int(np.argmax(is_known))  # the leading run of unknown values
            known = ordered[unknown:]
            if len(known) < 2:
                continue
            unknown_rows = ordered[:unknown]
            unknown_sums = [_sequential_sum(a[unknown_rows]) for a in (data.sums, data.squares, data.counts)]
            f0 = float(_sse(np.array(unknown_sums[0]), np.array(unknown_sums[1]), np.array(unknown_sums[2])))
            lefts, rights = [], []
            for array, whole, part in zip((data.sums, data.squares, data.counts), total, unknown_sums):
                moved = array[known[:-1]]
                lefts.append(np.cumsum(moved))
                rights.append(np.subtract.accumulate(np.concatenate(([whole - part], moved)))[1:])
            a, b = values[unknown:-1], values[unknown + 1:]
            candidate = np.abs(a - b).astype(np.float64) >= ALMOST_EQUAL
            if not candidate.any():
                continue
            fitness = (f0 + _sse(*lefts)) + _sse(*rights)
            fitness = np.where(candidate, fitness, np.inf)
            position = int(np.argmin(fitness))
            if not candidate[position]:
                continue
            if best is None or fitness[position] < best[0]:
                threshold = F32_(F32_(a[position] + b[position]) / F32_(2))
                best = (float(fitness[position]), feature, threshold, ordered)
        return None if best is None else best[1:]

    def _features_to_try(self) -> np.ndarray:
        ratio = self.config.feature_sample_ratio
        if ratio >= 1:
            return np.arange(self.columns)
        return self.rng.permutation(self.columns)[: int(math.floor(ratio * self.columns))]

    def _almost_equal(self, rows: np.ndarray, targets: np.ndarray) -> bool:
        if not len(rows):
            return False
        values = targets[rows]
        return bool(np.all(np.abs(values - values[0]).astype(np.float64) < ALMOST_EQUAL))

    def build_tree(self, subset: np.ndarray, data: _Round) -> tuple[Tree, np.ndarray]:
        """The tree, and the leaf value each subset row fell into (0 for rows left out)."""
        feature_index: list[int] = []
        feature_value: list[np.float32] = []
        preds: list[np.float32] = []
        is_leaf: list[bool] = []
        left: list[int] = []
        right: list[int] = []
        leaf_of_row = np.zeros(self.rows, dtype=np.float32)
        # (rows, depth, parent, is the left child): popping the left child first gives pre-order
        stack: list[tuple[np.ndarray, int, int, bool]] = [(subset, 0, -1, False)]
        while stack:
            rows, depth, parent, is_left = stack.pop()
            index = len(preds)
            if parent >= 0:
                (left if is_left else right)[parent] = index
            pred = self.leaf_value(rows, data)
            preds.append(pred)
            feature_index.append(0)
            feature_value.append(F32_(0))
            is_leaf.append(True)
            left.append(0)
            right.append(0)
            split = None
            if not (depth >= self.config.max_depth or self._almost_equal(rows, data.targets)
                    or len(rows) <= self.config.min_leaf_size):
                split = self.best_split(rows, data)
            if split is not None:
                feature, threshold, ordered = split
                values = self.features[ordered, feature]
                unknown = values == MISSING
                goes_left = ~unknown & (values < threshold)
                goes_right = ~unknown & ~goes_left
                groups = (goes_left.any(), goes_right.any(), unknown.any())
                if sum(groups) >= 2:
                    feature_index[index], feature_value[index], is_leaf[index] = feature, threshold, False
                    stack.append((ordered[goes_right], depth + 1, index, False))
                    stack.append((ordered[goes_left], depth + 1, index, True))
                    continue
            leaf_of_row[rows] = pred
        tree = Tree(
            feature_index=np.array(feature_index, dtype=np.int64),
            feature_value=np.array(feature_value, dtype=np.float32),
            pred=np.array(preds, dtype=np.float32),
            missing=np.zeros(len(preds), dtype=np.int8),
            is_leaf=np.array(is_leaf, dtype=bool),
            left=np.array(left, dtype=np.int64),
            right=np.array(right, dtype=np.int64),
        )
        return tree, leaf_of_row

    def train(self) -> Model:
        config = self.config
        bias = _bias(self.labels, config.loss)
        predictions = np.full(self.rows, bias, dtype=np.float32)
        trees = []
        everyone = np.arange(self.rows)
        for _ in range(config.iterations):
            if config.data_sample_ratio >= 1:
                subset, remaining = everyone, everyone[:0]
            else:
                chosen = self.rng.permutation(self.rows)[: int(math.floor(self.rows * config.data_sample_ratio))]
                subset = np.sort(chosen)
                remaining = np.setdiff1d(everyone, subset)
            data = self.round_inputs(predictions)
            tree, leaf_of_row = self.build_tree(subset, data)
            trees.append(tree)
            update = leaf_of_row[subset] * config.shrinkage
            predictions[subset] = predictions[subset] + update
            if len(remaining):
                values = evaluate(tree, self.features[remaining], np.full(len(remaining), self.columns))
                predictions[remaining] = predictions[remaining] + values * config.shrinkage
        return Model(config, trees, bias)


def train(features: np.ndarray, labels: np.ndarray, config: Config, rng: np.random.Generator | None = None) -> Model:
    """Train on ``features`` (rows × F, float32) and ``labels`` (float32)."""
    if not len(labels):
        raise FunctionError(EMPTY_TRAINING_DATA)
    model = _Trainer(features, labels, config, rng or np.random.default_rng()).train()
    if not np.isfinite(model.bias) or not all(np.isfinite(tree.pred).all() for tree in model.trees):
        # the reference would write null values, and no prediction could read the model
        raise FunctionError(NOT_FINITE)
    return model


def config_of(arguments: dict[str, Any]) -> Config:
    return Config(
        feature_size=arguments["feature_size"],
        max_depth=arguments["max_depth"],
        iterations=arguments["iterations"],
        shrinkage=F32_(arguments["shrinkage"]),
        feature_sample_ratio=arguments["feature_sample_ratio"],
        data_sample_ratio=arguments["data_sample_ratio"],
        min_leaf_size=arguments["min_leaf_size"],
        loss=LOSS_NAMES.get(arguments["loss"], "SquaredError"),
        training_optimization_level=min(arguments["training_optimization_level"], 2),
    )


def gbdt_train(arguments: dict[str, Any], runtime: FunctionRuntime) -> str:
    config = config_of(arguments)
    with runtime.open_input("training_data") as reader:
        table = read_table(reader, config.feature_size + 1, single=True)
    model = train(table[:, : config.feature_size], table[:, config.feature_size], config)
    with runtime.create_output("trained_model") as writer:
        writer.write(model_json(model).encode("ascii"))
    return f"Trained {len(table)} lines of data."


FUNCTION = BuiltinFunction(
    name="builtin-gbdt-train",
    run=gbdt_train,
    arguments={
        "feature_size": USIZE,
        "max_depth": U32,
        "iterations": USIZE,
        "shrinkage": F32,
        "feature_sample_ratio": F64,
        "data_sample_ratio": F64,
        "min_leaf_size": USIZE,
        "loss": STRING,
        "training_optimization_level": U8,
    },
    inputs=("training_data",),
    outputs=("trained_model",),
    description="Trains gradient-boosted regression trees (label: the last column); writes the model as JSON.",
)
