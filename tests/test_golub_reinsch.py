"""The Golub–Reinsch SVD port behind PCA (functions.md §5.8): same decomposition as LAPACK, the algorithm's signs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kettle.functions._golub_reinsch import right_singular_vectors
from staged import run_builtin

RNG = np.random.default_rng(20261122)


def _rank_deficient() -> np.ndarray:
    base = RNG.normal(size=(30, 4))
    return np.c_[base, base[:, 0] + base[:, 1]]


MATRICES = {
    "tall": RNG.normal(size=(50, 5)),
    "square": RNG.normal(size=(6, 6)),
    "one column": RNG.normal(size=(7, 1)),
    "zero column": np.c_[RNG.normal(size=(40, 3)), np.zeros(40), RNG.normal(size=(40, 2))],
    "rank deficient": _rank_deficient(),
    "constant": np.ones((10, 4)),
    "zero": np.zeros((5, 3)),
    "scaled features": RNG.normal(size=(200, 6)) * np.array([1e-6, 1.0, 1e3, 1e6, 5.0, 0.1]),
    # enough columns that the iteration's order of values is a general permutation, not a transposition
    "many columns": RNG.normal(size=(1000, 30)),
}


@pytest.mark.parametrize("name", MATRICES)
def test_the_decomposition_is_lapacks_up_to_signs(name: str) -> None:
    matrix = MATRICES[name]
    values, vectors = right_singular_vectors(matrix)
    _, expected_values, expected_vt = np.linalg.svd(matrix, full_matrices=False)
    scale = max(expected_values[0], 1.0)
    assert np.all(np.diff(values) <= 0)
    assert np.allclose(values, expected_values, rtol=0, atol=1e-13 * scale)
    assert np.allclose(vectors.T @ vectors, np.eye(matrix.shape[1]), rtol=0, atol=1e-13)
    # every column is the singular vector of its value: |A v_i| = s_i
    assert np.allclose(np.linalg.norm(matrix @ vectors, axis=0), values, rtol=0, atol=1e-12 * scale)
    # well-separated values have a unique vector up to sign
    separated = [i for i in range(len(values)) if values[i] > 1e-9 * scale
                 and all(abs(values[i] - values[j]) > 1e-6 * scale for j in range(len(values)) if j != i)]
    for i in separated:
        sign = np.sign(vectors[:, i] @ expected_vt[i])
        assert np.allclose(vectors[:, i], sign * expected_vt[i], rtol=0, atol=1e-9)


def test_a_tall_matrix_takes_the_reflectors_sign_and_the_correction_flips_v() -> None:
    # One column x: the reflector maps it to -sign(x0)·|x|, a negative value for x0 > 0; with more rows
    # than columns the correction negates V's column, so the component is -1.
    values, vectors = right_singular_vectors(np.array([[3.0], [4.0]]))
    assert (values.tolist(), vectors.tolist()) == ([5.0], [[-1.0]])
    values, vectors = right_singular_vectors(np.array([[-3.0], [4.0]]))
    assert (values.tolist(), vectors.tolist()) == ([5.0], [[1.0]])


def test_a_square_matrix_has_its_correction_in_u_so_v_keeps_its_sign() -> None:
    values, vectors = right_singular_vectors(np.array([[3.0]]))
    assert (values.tolist(), vectors.tolist()) == ([3.0], [[1.0]])


def test_the_same_data_always_gives_the_same_vectors() -> None:
    matrix = MATRICES["many columns"]
    first, second = right_singular_vectors(matrix), right_singular_vectors(matrix.copy())
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])


def test_fewer_rows_than_columns_is_refused() -> None:
    with pytest.raises(ValueError, match="at least as many rows as columns"):
        right_singular_vectors(np.ones((2, 3)))


def test_pca_output_carries_the_algorithms_signs(tmp_path: Path) -> None:
    arguments = {"n": 1, "center": False, "feature_size": 1}
    tall = run_builtin(tmp_path / "tall", "builtin_principal_components_analysis", arguments,
                       {"input_data": b"3,0\n4,0\n"}, ["output_data"])
    assert tall.outputs["output_data"] == b"-3.0\n-4.0\n"
    square = run_builtin(tmp_path / "square", "builtin_principal_components_analysis", arguments,
                         {"input_data": b"3,0\n"}, ["output_data"])
    assert square.outputs["output_data"] == b"3.0\n"


def test_a_constant_feature_is_projected_to_zero_instead_of_failing(tmp_path: Path) -> None:
    data = b"".join(f"{x},7,{2 * x + 1},0\n".encode() for x in range(6))
    outcome = run_builtin(tmp_path, "builtin_principal_components_analysis", {"n": 3, "center": True, "feature_size": 3},
                          {"input_data": data}, ["output_data"])
    rows = [[float(v) for v in line.split(b",")] for line in (outcome.outputs["output_data"] or b"").splitlines()]
    assert len(rows) == 6 and all(abs(row[1]) < 1e-12 and abs(row[2]) < 1e-12 for row in rows)
    assert np.allclose(np.abs([row[0] for row in rows]), np.abs(np.arange(6) - 2.5) * np.sqrt(5), atol=1e-12)
