"""Reciprocal rank fusion (Cormack et al. 2009) of BM25 and dense lists."""

import numpy as np
import pytest

from r2ps.search.fusion import rrf


def test_rrf_sums_reciprocal_ranks_over_lists():
    ids, scores = rrf([[3, 1, 2], [1, 4]], k=60)
    # 1: 1/62 + 1/61; 3: 1/61; 4: 1/62; 2: 1/63
    assert ids.tolist() == [1, 3, 4, 2]
    np.testing.assert_allclose(scores, [1 / 62 + 1 / 61, 1 / 61, 1 / 62, 1 / 63])


def test_rrf_ties_keep_first_appearance_and_skip_missing_slots():
    ids, _ = rrf([[5, -1], [7]], k=0, top=2)
    assert ids.tolist() == [5, 7]  # equal 1/1 scores: the first list's first
    with pytest.raises(ValueError):
        rrf([[1]], k=-1)
