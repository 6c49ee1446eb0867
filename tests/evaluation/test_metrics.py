"""Retrieval metrics on hand-made rankings: MRR with its cutoff, Recall@k, NDCG@10, ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from r2ps.evaluation.metrics import (
    Target,
    evaluate_dense,
    ndcg,
    paired_bootstrap,
    rank_of_gold,
    rank_of_gold_topk,
    reciprocal_ranks,
    retrieval_metrics,
    target_ranks,
)
from r2ps.evaluation.retrieval import top_candidates
from r2ps.mining.index import CodeIndex, IndexConfig
from r2ps.ranking import TIE_ATOL, TIE_RTOL, tie_order, top_k_of_scores
from r2ps.search.cascade import rerank


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


# --- the tie rule under float noise: what another CPU's rounding does to tied scores ---

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None)


def _pool_order(levels: np.ndarray) -> np.ndarray:
    """By definition, without r2ps: each row's candidates listed best first, exactly equal
    levels in pool order. levels [Q, N] -> positions [Q, N]."""
    return np.array([sorted(range(len(row)), key=lambda j: (-row[j], j)) for row in levels])


def _ranks_of(order: np.ndarray, gold: list[set[int]]) -> list[list[float]]:
    return [
        sorted(float(list(row).index(g) + 1) for g in gs)
        for row, gs in zip(order, gold, strict=True)
    ]


def _rounding_noise(shape, seed: int) -> np.ndarray:
    """Relative noise of up to ~4 float32 ulps (5e-7): the size of the rounding differences
    between BLAS, faiss and torch measured on float32 dot products."""
    return np.random.default_rng(seed).uniform(-5e-7, 5e-7, size=shape)


@given(
    st.integers(1, 4),
    st.integers(2, 40),
    st.sampled_from([0.01, 0.3, 1.0, 25.0]),  # step between levels: cosines to BM25 sums
    st.sampled_from([-1.0, 0.0, 0.5]),  # where the levels start, in steps
    st.integers(0, 2**32 - 1),
)
@PROPERTY
def test_scores_tied_up_to_rounding_rank_as_exact_ties_on_every_path(q, n, step, start, seed):
    rng = np.random.default_rng(seed)
    levels = rng.integers(0, 4, size=(q, n))  # few levels: most candidates tie
    exact = (start + levels) * step
    noisy = (exact * (1 + _rounding_noise(exact.shape, seed))).astype(np.float32)
    expected = _pool_order(levels)
    assert tie_order(noisy).tolist() == expected.tolist()
    gold = [set(rng.choice(n, size=rng.integers(1, 3), replace=False).tolist()) for _ in range(q)]
    got = [r.tolist() for r in rank_of_gold(noisy, gold)]
    assert got == _ranks_of(expected, gold)
    assert [r.tolist() for r in rank_of_gold(torch.from_numpy(noisy), gold)] == got
    k = int(rng.integers(1, n + 1))
    positions, scores = top_k_of_scores(noisy, k)[::-1]
    assert positions.tolist() == expected[:, :k].tolist()
    np.testing.assert_array_equal(scores, np.take_along_axis(noisy, positions, axis=1))


@given(
    st.lists(st.lists(st.integers(0, 3), min_size=4, max_size=4), min_size=1, max_size=6),
    st.integers(5, 60),
    st.integers(0, 2**32 - 1),
)
@PROPERTY
def test_near_identical_vectors_rank_in_pool_order_on_every_path(q_levels, n, seed):
    # Codes are copies of four unit directions, each copy off by ~1e-7 (a float32 rounding
    # of it); a query weighs the directions by levels. Equal levels are ties, whatever the
    # rounding of the dot product on this CPU: full scores, exact top list, faiss agree.
    rng = np.random.default_rng(seed)
    q = np.array([lv + [0.0] * 4 for lv in q_levels], np.float32) + np.eye(1, 8, 7, np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    direction = rng.integers(0, 4, size=n)
    c = np.eye(8, dtype=np.float32)[direction] * (1 + _rounding_noise((n, 8), seed)).astype(
        np.float32
    )
    expected = _pool_order(np.array(q_levels)[:, direction])
    gold = [{int(g)} for g in rng.integers(0, n, size=len(q))]
    k = int(rng.integers(1, n + 1))
    ids, _ = top_candidates(q, c, k)
    index = CodeIndex.build(c, [f"c{i}" for i in range(n)], IndexConfig(), {})
    _, pos = index.search(q, k)
    assert ids.tolist() == expected[:, :k].tolist()
    assert pos.tolist() == expected[:, :k].tolist()
    assert [r.tolist() for r in rank_of_gold(q @ c.T, gold)] == _ranks_of(expected, gold)


def test_a_tie_group_across_the_cut_is_cut_in_pool_order():
    # 300 copies of one vector, each rounded differently: the top 10 are positions 0-9 on
    # the exact list and on faiss, however many copies score 1 ulp higher further down.
    n = 300
    c = (np.ones((n, 8)) / np.sqrt(8) * (1 + _rounding_noise((n, 8), 7))).astype(np.float32)
    q = c[:5]
    assert np.ptp(q @ c.T, axis=1).min() > 0  # the noise does split the scores
    index = CodeIndex.build(c, [f"c{i}" for i in range(n)], IndexConfig(), {})
    for k in (1, 10, 299, 300):
        assert top_candidates(q, c, k)[0].tolist() == [list(range(k))] * 5
        assert index.search(q, k)[1].tolist() == [list(range(k))] * 5
    # more than the index holds: padded, as before
    assert index.search(q[:1], n + 2)[1].tolist() == [list(range(n)) + [-1, -1]]


def test_ties_chain_up_to_the_tolerance_and_no_further():
    tol = TIE_ATOL + TIE_RTOL * 0.5  # at scores near 0.5
    chain = 0.5 + np.array([0.0, 0.6, 1.2]) * tol  # each within tol of the next, not of both
    apart = [0.5 + 1.2 * tol + 2.5 * tol, 0.5 - 2.5 * tol]  # beyond tol of every neighbour
    scores = np.array([*chain[::-1], *apart])  # positions 0-2: the chain, best first
    assert tie_order(scores).tolist() == [3, 0, 1, 2, 4]
    assert tie_order(scores[::-1]).tolist() == [1, 2, 3, 4, 0]  # the chain is pool order
    # a model's real gaps stay orders, at every scale
    for s in (1e-3, 0.5, 30.0):
        assert tie_order([s, s * (1 + 1e-4) + 1e-4]).tolist() == [1, 0]
    # a tie breaks by position, however noise orders the scores
    assert rerank(np.full(4, 0.7), 0.3 * (1 + _rounding_noise(4, 1)))[0].tolist() == [0, 1, 2, 3]


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
    with caplog.at_level("WARNING", logger="r2ps.evaluation.metrics"):
        m = evaluate_dense(q, c, [{0}, {1}, {2}, {0}])
    assert m["mrr"] == 0.0 and m["recall@10"] == 0.0
    assert "query embeddings: 4 of 4 rows hold NaN or inf values (rows 0, 1, 2, 3)" in caplog.text


# --- located golds: semble's path / line rule (target_ranks), scored by ndcg ---

LOG3, LOG4 = math.log2(3), math.log2(4)


def _located_ndcg(results, targets):
    return ndcg(target_ranks(results, targets), 10)


def test_target_paths_match_by_suffix_after_a_slash():
    target = Target("src/flask/sansio/scaffold.py")
    # relative to the indexed folder (src/flask) or to the repository root: both match
    assert target_ranks([("sansio/scaffold.py", 1, 9)], [target]).tolist() == [1.0]
    assert target_ranks([("src/flask/sansio/scaffold.py", 1, 9)], [target]).tolist() == [1.0]
    # the other way round too, and a backslash is a slash
    assert target_ranks([("repo\\src/app.py", 1, 9)], [Target("src/app.py")]).tolist() == [1.0]
    assert target_ranks([("app.py", 1, 9)], [Target("src/app.py")]).tolist() == [1.0]
    # a name that only ends the same is another file
    assert target_ranks([("myscaffold.py", 1, 9)], [Target("scaffold.py")]).tolist() == [math.inf]


def test_a_target_with_lines_is_hit_only_by_overlapping_lines():
    target = Target("a.py", 10, 20)
    results = [("a.py", 1, 9), ("a.py", 21, 30), ("a.py", 20, 25), ("a.py", 5, 40)]
    assert target_ranks(results, [target]).tolist() == [3.0]  # the first to overlap
    assert _located_ndcg(results, [target]) == pytest.approx(1 / LOG4)
    assert _located_ndcg(results[:2], [target]) == 0.0
    # a span needs both ends: one alone is a file target
    assert target_ranks([("a.py", 1, 2)], [Target("a.py", 10, None)]).tolist() == [1.0]


def test_secondary_targets_count_and_the_ideal_is_min_10_targets():
    relevant, secondary = Target("a.py"), Target("b.py")
    results = [("b.py", 1, 5), ("x.py", 1, 5), ("a.py", 1, 5)]
    # ranks 1 and 3; ideal: two hits at ranks 1 and 2
    assert _located_ndcg(results, [relevant, secondary]) == pytest.approx(
        (1 + 1 / LOG4) / (1 + 1 / LOG3)
    )
    # 12 targets, the top 10 hitting 10 of them: ideal is 10 hits, so a perfect 1
    targets = [Target(f"f{i}.py") for i in range(12)]
    assert _located_ndcg([(f"f{i}.py", 1, 2) for i in range(10)], targets) == pytest.approx(1.0)
    # past the tenth result nothing counts
    late = [("x.py", 1, 2)] * 10 + [("a.py", 1, 2)]
    assert _located_ndcg(late, [relevant]) == 0.0


def test_two_units_of_a_file_take_two_places():
    a, b = Target("a.py"), Target("b.py")
    results = [("a.py", 1, 5), ("a.py", 6, 10), ("b.py", 1, 5)]
    # b is third, not second: the second unit of a.py holds a place (and gains nothing)
    assert target_ranks(results, [a, b]).tolist() == [1.0, 3.0]
    assert _located_ndcg(results, [a, b]) == pytest.approx((1 + 1 / LOG4) / (1 + 1 / LOG3))


def test_a_result_gains_once_however_many_targets_it_hits_first():
    spans = [Target("a.py", 1, 10), Target("a.py", 5, 20)]
    one = [("a.py", 1, 30), ("a.py", 8, 9)]
    # both spans are first hit at rank 1: one gain, both still in the ideal
    assert target_ranks(one, spans).tolist() == [1.0, math.inf]
    assert _located_ndcg(one, spans) == pytest.approx(1 / (1 + 1 / LOG3))
    # a target listed twice counts twice in the ideal, once in the gains (as semble's)
    assert _located_ndcg([("a.py", 1, 2)], [Target("a.py"), Target("a.py")]) == pytest.approx(
        1 / (1 + 1 / LOG3)
    )
    with pytest.raises(ValueError, match="no target"):
        target_ranks(one, [])
