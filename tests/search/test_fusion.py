"""Reciprocal rank fusion (Cormack et al. 2009) of BM25 and dense lists."""

import numpy as np
import pytest

from r2ps.ranking import tie_order
from r2ps.search.fusion import blend, rrf, union


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


def test_union_keeps_first_appearance_and_skips_missing_slots():
    assert union([[3, 1, -1], [1, 4], [], [2, 3]]).tolist() == [3, 1, 4, 2]
    assert union([]).dtype == np.int64


def test_blend_normalises_each_list_over_the_candidates():
    dense = np.array([0.9, 0.5, 0.7])  # cosines
    lexical = np.array([0.0, 12.0, 3.0])  # BM25 sums on another scale
    np.testing.assert_allclose(blend(dense, lexical, 0.5), [0.5, 0.5, 0.25 + 0.125])
    np.testing.assert_allclose(blend(dense, lexical, 1.0), [1.0, 0.0, 0.5])  # dense alone
    np.testing.assert_allclose(blend(dense, lexical, 0.0), [0.0, 1.0, 0.25])  # BM25 alone
    # a list whose scores are all equal says nothing: zeros, the other list decides
    np.testing.assert_allclose(blend(dense, np.zeros(3), 0.5), [0.5, 0.0, 0.25])


def test_blend_keeps_score_gaps_that_rrf_drops():
    # candidate 0: BM25's clear winner (the query names it), 4th of 5 in the dense list
    # but close to the dense best; RRF sees only ranks 4 and 1
    dense = np.array([0.75, 0.80, 0.79, 0.78, 0.30])
    lexical = np.array([30.0, 2.0, 1.9, 1.8, 1.0])
    fused = blend(dense, lexical, 0.5)
    assert tie_order(fused)[0] == 0
    ids, _ = rrf([np.argsort(-dense), np.argsort(-lexical)], k=60)
    assert ids[0] == 1  # RRF: ranks 4 and 1 lose to ranks 1 and 2


def test_blend_refuses_bad_input():
    with pytest.raises(ValueError, match="alpha"):
        blend(np.zeros(2), np.zeros(2), 1.5)
    with pytest.raises(ValueError, match=r"\[m\] each"):
        blend(np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        blend(np.array([np.nan, 1.0]), np.zeros(2))
