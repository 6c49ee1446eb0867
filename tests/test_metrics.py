"""Retrieval metrics on hand-made rankings: MRR with its cutoff, Recall@k, NDCG@10, ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from r2ps.metrics import (
    evaluate_dense,
    paired_bootstrap,
    rank_of_gold,
    rank_of_gold_topk,
    reciprocal_ranks,
    retrieval_metrics,
)


def _as_lists(ranks):
    return [r.tolist() for r in ranks]


def test_rank_of_gold_single_multiple_and_ties():
    scores = np.array(
        [
            [0.9, 0.5, 0.3, 0.1, 0.0, -0.2],  # gold 2: two codes above -> rank 3
            [0.1, 0.8, 0.1, 0.7, 0.9, 0.0],  # golds 4 (best) and 0 (tied with code 2)
            [0.7, 0.5, 0.5, 0.5, 0.2, 0.1],  # gold 2 tied with codes 1 and 3
            [0.5, 0.5, 0.9, 0.0, 0.0, 0.0],  # two golds tied with each other
        ],
        dtype=np.float32,
    )
    gold = [{2}, {0, 4}, {2}, {0, 1}]
    expected = [[3.0], [1.0, 4.0], [2.0], [2.0, 3.0]]
    assert _as_lists(rank_of_gold(scores, gold)) == expected
    assert _as_lists(rank_of_gold(torch.from_numpy(scores), gold)) == expected
    with pytest.raises(ValueError):
        rank_of_gold(scores, [{1}, set(), {1}, {1}])
    with pytest.raises(ValueError):
        rank_of_gold(scores, gold[:2])


def test_rank_of_gold_topk():
    ranks = rank_of_gold_topk([[5, 2, 9, 9], [1, 2, -1, -1]], [{9, 7}, {4}])
    assert _as_lists(ranks) == [[3.0, math.inf], [math.inf]]


def test_retrieval_metrics_by_hand():
    m = retrieval_metrics([3, [1, 4], [2]], ks=(1, 5, 10))
    assert m["mrr"] == pytest.approx((1 / 3 + 1 + 1 / 2) / 3)
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@5"] == 1.0 and m["recall@10"] == 1.0
    ndcg = [
        1 / math.log2(4),
        (1 + 1 / math.log2(5)) / (1 + 1 / math.log2(3)),
        1 / math.log2(3),
    ]
    assert m["ndcg@10"] == pytest.approx(sum(ndcg) / 3)
    assert m["n_queries"] == 3


def test_mrr_cutoff_and_unranked_golds():
    assert retrieval_metrics([1000])["mrr"] == pytest.approx(0.001)
    assert retrieval_metrics([1001])["mrr"] == 0.0
    m = retrieval_metrics([[math.inf], [2, math.inf]], ks=(1, 2))
    assert m["mrr"] == pytest.approx(0.25)
    assert m["recall@2"] == 0.5
    # The unranked second gold still counts in the ideal DCG.
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)) / 2)
    with pytest.raises(ValueError):
        retrieval_metrics([])


def test_ndcg_ignores_golds_past_10_and_caps_the_ideal_at_10():
    m = retrieval_metrics([list(range(1, 13))])
    assert m["ndcg@10"] == pytest.approx(1.0)
    assert retrieval_metrics([[11]])["ndcg@10"] == 0.0


def test_evaluate_dense_matches_a_brute_force_ranking():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((7, 5)).astype(np.float32)
    c = rng.standard_normal((20, 5)).astype(np.float32)
    gold = [{i} for i in range(7)]
    gold[3] = {3, 11}
    order = np.argsort(-(q @ c.T), axis=1)
    expected = retrieval_metrics(rank_of_gold_topk(order, gold), ks=(1, 5, 10))
    for chunk in (1, 3, 100):
        got = evaluate_dense(q, c, gold, ks=(1, 5, 10), chunk_size=chunk)
        assert got == pytest.approx(expected)
    assert evaluate_dense(torch.from_numpy(q), torch.from_numpy(c), gold) == pytest.approx(expected)


def test_reciprocal_ranks_are_mrr_terms():
    ranks = [[2.0, 5.0], 1.0, math.inf, [1001.0]]
    rr = reciprocal_ranks(ranks)
    np.testing.assert_allclose(rr, [0.5, 1.0, 0.0, 0.0])
    assert rr.mean() == pytest.approx(retrieval_metrics(ranks)["mrr"])


def test_paired_bootstrap_interval():
    rng = np.random.default_rng(1)
    b = rng.random(400)
    same = paired_bootstrap(b, b)
    assert same == {"diff": 0.0, "lo": 0.0, "hi": 0.0}
    better = paired_bootstrap(b + 0.05 + rng.normal(0, 0.01, 400), b, seed=3)
    assert 0.04 < better["lo"] < better["diff"] < better["hi"] < 0.06
    assert paired_bootstrap(b + 0.05, b, seed=3) == paired_bootstrap(b + 0.05, b, seed=3)
    noisy = paired_bootstrap(rng.random(50), rng.random(50))
    assert noisy["lo"] < 0 < noisy["hi"]  # two draws of the same distribution
    with pytest.raises(ValueError):
        paired_bootstrap(b, b[:-1])
