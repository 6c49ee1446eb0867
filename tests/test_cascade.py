"""The cascade ordering shared by evaluation and serving."""

from __future__ import annotations

import numpy as np
import pytest

from r2ps.cascade import cascade_ids, choose_alpha, fuse, rerank


def test_plain_cascade_orders_the_top_k_by_the_ranker():
    de = np.array([0.9, 0.8, 0.7])
    ce = np.array([-2.0, 3.0, 0.5])
    order, fused = rerank(de, ce)
    assert order.tolist() == [1, 2, 0]
    assert np.allclose(fused, np.tanh(ce))


def test_alpha_one_keeps_the_retriever_order_and_fusion_is_weighted():
    de = np.array([0.9, 0.8, 0.7])
    ce = np.array([-2.0, 3.0, 0.5])
    assert rerank(de, ce, alpha=1.0)[0].tolist() == [0, 1, 2]
    assert np.allclose(fuse(de, ce, 0.25), 0.25 * de + 0.75 * np.tanh(ce))


def test_ties_keep_the_retriever_order():
    order, _ = rerank(np.array([0.5, 0.4, 0.3]), np.zeros(3))
    assert order.tolist() == [0, 1, 2]


def test_cascade_ids_rerank_only_the_first_k():
    retrieved = np.array([10, 11, 12, 13, 14])
    de = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    ce = np.array([0.0, 1.0])  # only the first two are rescored
    assert cascade_ids(retrieved, de, ce).tolist() == [11, 10, 12, 13, 14]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="alpha"):
        fuse(np.zeros(2), np.zeros(2), 1.5)
    with pytest.raises(ValueError, match="differ"):
        fuse(np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="retrieved"):
        cascade_ids([1], np.zeros(1), np.zeros(2))


def test_non_finite_scores_are_refused_naming_the_candidates():
    with pytest.raises(ValueError, match=r"ranker scores: 1 of 3 rows .* \(rows 2\)"):
        cascade_ids([4, 5, 6], np.zeros(3), np.array([0.1, 0.2, np.nan]))
    with pytest.raises(ValueError, match=r"retriever scores: 1 of 2 rows .* \(rows 0\)"):
        fuse(np.array([np.inf, 0.0]), np.zeros(2))


def test_choose_alpha_takes_the_best_validation_score_and_prefers_the_ranker_on_ties():
    best, scores = choose_alpha(lambda a: -((a - 0.3) ** 2))
    assert best == 0.3 and len(scores) == 11
    best, _ = choose_alpha(lambda a: 1.0, grid=[0.0, 0.5, 1.0])
    assert best == 0.0
