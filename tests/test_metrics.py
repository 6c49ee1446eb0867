"""Retrieval metrics on hand-made rankings: MRR with its cutoff, Recall@k, NDCG@10, ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from r2ps.index import CodeIndex, IndexConfig
from r2ps.metrics import (
    evaluate_dense,
    paired_bootstrap,
    rank_of_gold,
    rank_of_gold_topk,
    reciprocal_ranks,
    retrieval_metrics,
)
from r2ps.retrieval import top_candidates


def _as_lists(ranks):
    return [r.tolist() for r in ranks]


def test_rank_of_gold_single_multiple_and_ties():
    scores = np.array(
        [
            [0.9, 0.5, 0.3, 0.1, 0.0, -0.2],  # gold 2: two codes above -> rank 3
            [0.1, 0.8, 0.1, 0.7, 0.9, 0.0],  # golds 4 (best) and 0 (tied with code 2)
            [0.7, 0.5, 0.5, 0.5, 0.2, 0.1],  # gold 2 tied with codes 1 (ahead) and 3
            [0.5, 0.5, 0.9, 0.0, 0.0, 0.0],  # two golds tied with each other
        ],
        dtype=np.float32,
    )
    gold = [{2}, {0, 4}, {2}, {0, 1}]
    expected = [[3.0], [1.0, 4.0], [3.0], [2.0, 3.0]]
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


def _every_path(q: np.ndarray, c: np.ndarray, gold: list[set[int]]) -> list[dict]:
    """The metrics of one scoring by each path: full scores, exact top list, faiss flat."""
    ids, _ = top_candidates(q, c, 1000)
    index = CodeIndex.build(c, [f"c{i}" for i in range(len(c))], IndexConfig(), {})
    _, pos = index.search(q, len(c))
    return [
        evaluate_dense(q, c, gold),
        retrieval_metrics(rank_of_gold_topk(ids, gold)),
        retrieval_metrics(rank_of_gold_topk(pos, gold)),
    ]


def test_a_constant_scorer_is_at_chance_on_every_path():
    # A collapsed model (one vector for everything) once scored MRR 1.0 in validation:
    # ties counted in the gold's favour. Now it is a random order's H_n / n on all paths.
    n = 50
    vec = np.ones((n, 8), np.float32) / np.sqrt(8)
    gold = [{i} for i in range(n)]
    chance = sum(1 / r for r in range(1, n + 1)) / n
    for m in _every_path(vec, vec, gold):
        assert m["mrr"] == pytest.approx(chance)
        assert m["recall@1"] == pytest.approx(1 / n)


def test_ties_never_favour_the_gold_and_every_path_agrees():
    # Scores rounded to a few levels: most candidates tie. The one rule is pool order.
    rng = np.random.default_rng(1)
    q = rng.integers(0, 3, size=(30, 4)).astype(np.float32)
    c = rng.integers(0, 3, size=(40, 4)).astype(np.float32)
    gold = [{int(i) % 40, (7 * int(i)) % 40} for i in range(30)]
    first, *others = _every_path(q, c, gold)
    for m in others:
        assert m == pytest.approx(first)
    scores = q @ c.T
    stable = np.argsort(-scores, axis=1, kind="stable")
    assert _as_lists(rank_of_gold(scores, gold)) == _as_lists(rank_of_gold_topk(stable, gold))
    # The gold's rank moves with its pool position inside a tie, not with being gold.
    row = np.array([[0.5, 0.5, 0.5]], np.float32)
    assert [rank_of_gold(row, [{g}])[0].tolist() for g in range(3)] == [[1.0], [2.0], [3.0]]


def test_non_finite_scores_are_never_ranked(caplog):
    scores = np.array(
        [
            [np.nan, np.nan, np.nan],  # a NaN query: nothing is ranked
            [0.2, np.nan, 0.1],  # a NaN gold code is not ranked
            [np.inf, 0.1, 0.3],  # +inf is no score: it is not ahead of the gold
            [-np.inf, 0.1, 0.3],
        ],
        np.float32,
    )
    ranks = rank_of_gold(scores, [{0}, {1}, {1}, {1}])
    assert _as_lists(ranks) == [[math.inf], [math.inf], [2.0], [2.0]]
    q = np.full((4, 3), np.nan, np.float32)
    c = np.eye(3, dtype=np.float32)
    with caplog.at_level("WARNING", logger="r2ps.metrics"):
        m = evaluate_dense(q, c, [{0}, {1}, {2}, {0}])
    assert m["mrr"] == 0.0 and m["recall@10"] == 0.0
    assert "query embeddings: 4 of 4 rows hold NaN or inf values (rows 0, 1, 2, 3)" in caplog.text
