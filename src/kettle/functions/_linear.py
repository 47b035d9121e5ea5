"""The linear-algebra library's exact summation orders (``spec/functions.md`` Appendix B), vectorised.

The reference's logistic regression adds in 8 lanes: element k of each block of
8 goes to partial sum k, the partials are combined in a fixed order, then the
leftover elements are added one by one. Floating-point addition is not
associative, so bit-exact models need exactly that order. numpy reproduces it
while working on many dot products at once: partial sums accumulate block after
block (``np.add.reduce`` over a non-innermost axis adds the slices in order, no
pairwise summation), and elementwise operations are single IEEE operations.
The tests compare every function here with a plain Python loop, bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

LANES = 8


def _combine_dot(partials: np.ndarray) -> np.ndarray:
    """s = (s + p0) + p4; s = (s + p1) + p5; … over the last axis of ``partials`` (shape ..., 8)."""
    total = np.zeros(partials.shape[:-1])
    for k in range(LANES // 2):
        total = (total + partials[..., k]) + partials[..., k + LANES // 2]
    return total


def dot8_rows(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """dot8(row, vector) for every row of ``matrix`` (n × m) with ``vector`` (m)."""
    rows, width = matrix.shape
    blocks = width // LANES
    full = blocks * LANES
    partials = np.zeros((rows, LANES))
    for block in range(blocks):  # few blocks (columns / 8); every row at once
        start = block * LANES
        partials += matrix[:, start:start + LANES] * vector[start:start + LANES]
    total = _combine_dot(partials)
    for column in range(full, width):
        total = total + matrix[:, column] * vector[column]
    return total


def dot8_columns(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """dot8(column, vector) for every column of ``matrix`` (n × m) with ``vector`` (n): Xᵀ·v."""
    rows, width = matrix.shape
    blocks = rows // LANES
    full = blocks * LANES
    if blocks:
        products = matrix[:full].reshape(blocks, LANES, width) * vector[:full].reshape(blocks, LANES, 1)
        partials = np.add.reduce(products, axis=0).T  # (width, 8), blocks added in order
    else:
        partials = np.zeros((width, LANES))
    total = _combine_dot(partials)
    for row in range(full, rows):
        total = total + matrix[row] * vector[row]
    return total


def sum8(vector: np.ndarray) -> float:
    """The 8-lane sum (grouped as s = s + (p0 + p4); s = s + (p1 + p5); …), then the leftovers in order."""
    blocks = len(vector) // LANES
    full = blocks * LANES
    partials = np.add.reduce(vector[:full].reshape(blocks, LANES), axis=0) if blocks else np.zeros(LANES)
    total = 0.0
    for k in range(LANES // 2):
        total = total + (float(partials[k]) + float(partials[k + LANES // 2]))
    for value in vector[full:]:
        total = total + float(value)
    return total


_EXP_OVERFLOW = 709.782712893384
"""ln(largest double): above it exp overflows (to inf in C; OverflowError in Python's math)."""


def exp(values: np.ndarray) -> np.ndarray:
    """The C library's exp of every value, as the reference computes it.

    numpy's own vectorised exp differs from glibc's in the last bit for a few
    percent of inputs, which changes trained models; ``math.exp`` is glibc's.
    Python raises where C returns inf, so overflowing values are set apart."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    overflow = flat > _EXP_OVERFLOW
    result = np.fromiter(map(math.exp, np.where(overflow, 0.0, flat).tolist()), dtype=np.float64, count=flat.size)
    result[overflow] = np.inf
    return result.reshape(np.shape(values))


def log(values: np.ndarray) -> np.ndarray:
    """The C library's natural logarithm: ln(0) = −inf, ln(negative) = NaN, no exceptions."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    zero, negative = flat == 0, flat < 0
    safe = np.where(zero | negative, 1.0, flat)
    result = np.fromiter(map(math.log, safe.tolist()), dtype=np.float64, count=flat.size)
    result[zero] = -np.inf
    result[negative] = np.nan
    return result.reshape(np.shape(values))


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(−z)) with the C library's exp (overflow → inf → 0)."""
    return 1.0 / (1.0 + exp(-z))
