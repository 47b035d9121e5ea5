"""The right singular vectors of a tall matrix by the Golub–Reinsch SVD (``spec/functions.md`` §5.8).

The sign of a singular vector is arbitrary in any SVD; the reference's come
out of rulinalg's Golub–Reinsch iteration. This module follows that iteration
step by step so that the signs are the ones the algorithm produces:

1. Householder bidiagonalisation, column reflection then row reflection per
   step, each reflector built from ``x`` with ``v = x / (x0 + sign(x0)·‖x‖)``,
   ``v0 = 1`` (so the reflected entry becomes ``-sign(x0)·‖x‖``);
2. implicit-shift Golub–Kahan steps with Givens rotations ``(c, s) = (a/r, -b/r)``,
   ``r = hypot(a, b) ≥ 0``, the shift being the eigenvalue of the trailing 2×2
   block of BᵀB closest to its last diagonal entry;
3. a superdiagonal entry is zeroed when ``|e_i| ≤ 3ε·(|d_i| + |d_i+1|)``;
4. negative singular values become positive by negating the matching column of
   V when the matrix has more rows than columns (of U otherwise, which does
   not change V);
5. values sorted descending (stable), V's columns moved with them.

Only V is accumulated: U is m × m in the reference, and PCA does not need it.

The library moves the columns by swapping each with its sorted place, which
is right only when the sort is a set of transpositions; Kettle applies the
sort's permutation, which is the same in that case and right in every other.

Kettle choices where the reference fails: a column or row that is already zero
is left as it is (the reference cannot build a reflector from it, so a constant
feature after centering would end the task); a slightly negative discriminant
of the 2×2 block, which can only come from rounding, counts as zero; and the
iteration gives up (``SVDNotConverged``) after a bound the reference does not
have.
"""

from __future__ import annotations

import math

import numpy as np

EPSILON = 3.0 * float(np.finfo(np.float64).eps)
SWEEPS_PER_COLUMN = 75


class SVDNotConverged(ArithmeticError):
    """The Golub–Kahan iteration did not reduce the bidiagonal matrix to a diagonal one."""


def right_singular_vectors(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(singular values descending, V with matching columns) of an m × n matrix with m ≥ n ≥ 1."""
    rows, columns = matrix.shape
    if rows < columns or columns == 0:
        raise ValueError("the Golub–Reinsch routine needs at least as many rows as columns, and one column")
    bidiagonal, v = _bidiagonalise(np.array(matrix, dtype=np.float64))
    _diagonalise(bidiagonal, v)
    values = bidiagonal.diagonal().copy()
    if rows > columns:
        negative = values < 0
        v[:, negative] = -v[:, negative]
    values = np.abs(values)
    return _sort(values, v)


def _reflector(column: np.ndarray) -> np.ndarray | None:
    """The Householder vector (first entry 1) for ``column``, or None when the column is zero."""
    norm = math.sqrt(float(column @ column))
    head = float(column[0])
    denominator = head + math.copysign(norm, head)
    if denominator == 0.0:
        return None
    vector = column / denominator
    vector[0] = 1.0
    return vector


def _bidiagonalise(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper bidiagonal B (n × n) and V with A = U B Vᵀ; A is overwritten."""
    rows, columns = a.shape
    v = np.eye(columns)
    for k in range(columns):
        reflector = _reflector(a[k:, k].copy())
        if reflector is not None:
            block = a[k:, k:]
            block -= np.outer(reflector, (2.0 / float(reflector @ reflector)) * (reflector @ block))
        if k < columns - 2:
            reflector = _reflector(a[k, k + 1:].copy())
            if reflector is not None:
                scale = 2.0 / float(reflector @ reflector)
                block = a[k:, k + 1:]
                block -= np.outer(scale * (block @ reflector), reflector)
                v_block = v[:, k + 1:]
                v_block -= np.outer(scale * (v_block @ reflector), reflector)
    bidiagonal = np.triu(np.tril(a[:columns], 1))
    return bidiagonal, v


def _givens(a: float, b: float) -> tuple[float, float]:
    r = math.hypot(a, b)
    if r == 0.0:
        return 1.0, 0.0
    return a / r, -b / r


def _diagonalise(b: np.ndarray, v: np.ndarray) -> None:
    """Golub–Kahan iteration on the bidiagonal ``b`` in place, accumulating the right rotations in ``v``."""
    n = b.shape[0]
    for _ in range(SWEEPS_PER_COLUMN * n):
        for i in range(n - 1):
            if abs(b[i, i + 1]) <= EPSILON * (abs(b[i, i]) + abs(b[i + 1, i + 1])):
                b[i, i + 1] = 0.0
        q = 0
        while q < n - 1 and b[n - 2 - q, n - 1 - q] == 0.0:
            q += 1
        if q == n - 1:
            return
        last = n - q - 1
        p = last - 1
        while p > 0 and b[p - 1, p] != 0.0:
            p -= 1
        zero = next((i for i in range(p, last) if b[i, i] == 0.0), None)
        if zero is None:
            _golub_kahan_step(b, v, p, last)
        else:
            _chase_row(b, zero, last)
    raise SVDNotConverged("the Golub–Kahan iteration did not converge")


def _chase_row(b: np.ndarray, row: int, last: int) -> None:
    """Zero row ``row`` of B (whose diagonal entry is zero) with left rotations against the rows below."""
    for j in range(row + 1, last + 1):
        c, s = _givens(b[j, j], b[row, j])
        upper, lower = b[row, j:].copy(), b[j, j:].copy()
        b[j, j:] = c * lower - s * upper
        b[row, j:] = s * lower + c * upper
        b[row, j] = 0.0


def _golub_kahan_step(b: np.ndarray, v: np.ndarray, p: int, last: int) -> None:
    n = b.shape[0]
    above = b[last - 2, last - 1] if last - 2 >= p else 0.0
    c11 = above * above + b[last - 1, last - 1] ** 2
    c12 = b[last - 1, last - 1] * b[last - 1, last]
    c22 = b[last - 1, last] ** 2 + b[last, last] ** 2
    trace, determinant = c11 + c22, c11 * c22 - c12 * c12
    root = math.sqrt(max(trace * trace - 4.0 * determinant, 0.0))
    low, high = (trace - root) / 2.0, (trace + root) / 2.0
    shift = low if abs(low - c22) < abs(high - c22) else high

    alpha = b[p, p] * b[p, p] - shift
    beta = b[p, p] * b[p, p + 1]
    for k in range(p, last):
        c, s = _givens(alpha, beta)
        top = max(k - 1, 0)
        bottom = min(k + 2, n)
        left, right = b[top:bottom, k].copy(), b[top:bottom, k + 1].copy()
        b[top:bottom, k] = c * left - s * right
        b[top:bottom, k + 1] = s * left + c * right
        left, right = v[:, k].copy(), v[:, k + 1].copy()
        v[:, k] = c * left - s * right
        v[:, k + 1] = s * left + c * right

        c, s = _givens(b[k, k], b[k + 1, k])
        end = min(k + 3, n)
        upper, lower = b[k, k:end].copy(), b[k + 1, k:end].copy()
        b[k, k:end] = c * upper - s * lower
        b[k + 1, k:end] = s * upper + c * lower
        b[k + 1, k] = 0.0
        if k + 2 <= last:
            alpha, beta = b[k, k + 1], b[k, k + 2]


def _sort(values: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-values, kind="stable")
    return values[order], v[:, order]
