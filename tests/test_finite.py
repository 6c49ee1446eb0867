"""The finiteness check every vector boundary uses: it names the rows, for arrays and tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from r2ps.finite import check_finite, nonfinite_rows


@pytest.mark.parametrize("as_tensor", [False, True])
def test_rows_with_nan_or_inf_are_named(as_tensor):
    x = np.ones((5, 3), np.float32)
    x[1, 2], x[3, 0] = np.nan, -np.inf
    x = torch.from_numpy(x) if as_tensor else x
    assert nonfinite_rows(x).tolist() == [1, 3]
    with pytest.raises(ValueError, match=r"emb: 2 of 5 rows .* \(rows 1, 3\); e.g. \['b', 'd'\]"):
        check_finite(x, "emb", names="abcde")


def test_finite_integer_and_empty_input_pass():
    check_finite(np.ones((4, 2)), "ok")
    check_finite(torch.zeros(3), "ok")
    check_finite(np.arange(3), "ok")
    check_finite(np.zeros((0, 8), np.float32), "ok")


def test_a_chunk_reports_its_rows_in_the_whole_matrix():
    chunk = np.array([[0.0], [np.nan]])
    with pytest.raises(ValueError, match=r"1 of 100 rows .* \(rows 51\); e.g. \['c51'\]"):
        check_finite(chunk, "emb", [f"c{i}" for i in range(100)], first_row=50, total=100)
    many = np.full((30, 2), np.inf)
    with pytest.raises(
        ValueError, match=r"30 of 30 rows .* \(rows 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, \.\.\.\)"
    ):
        check_finite(many, "emb")
