"""The cascade ordering shared by evaluation and serving."""

from __future__ import annotations

import numpy as np
import pytest

from r2ps.search.cascade import (
    ServedCascade,
    best_setting,
    cascade_ids,
    choose_alpha,
    choose_served,
    fuse,
    rerank,
)


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


def _by_k(scores: dict[int, dict[float, float]]) -> dict[str, dict]:
    """choose_fusion's shape: per K, the chosen weight and the valid MRR of each weight."""
    return {
        str(k): {"alpha": max(s, key=lambda a: (s[a], -a)), "valid_mrr": s}
        for k, s in scores.items()
    }


def test_served_cascade_is_the_best_valid_setting_and_round_trips(tmp_path):
    rankers = {
        "RR": _by_k({5: {0.0: 0.60, 1.0: 0.55}, 10: {0.0: 0.58, 0.5: 0.61, 1.0: 0.55}}),
        "RR+PS": _by_k({5: {0.0: 0.62, 0.3: 0.63, 1.0: 0.55}, 10: {0.3: 0.63, 1.0: 0.55}}),
    }
    assert best_setting(rankers["RR"]) == (0.61, 10, 0.5)
    assert best_setting(rankers["RR+PS"]) == (0.63, 5, 0.3)  # a tie goes to the smaller K
    paths = {"RR": "/m/rr", "RR+PS": "/m/ps"}
    served = choose_served(rankers, 0.55, paths)
    assert (served.ranker, served.ranker_path, served.rerank_k, served.alpha) == (
        "RR+PS",
        "/m/ps",
        5,
        0.3,
    )
    assert "RR+PS K=5 alpha=0.3" in served.reason
    served.write(tmp_path)
    assert ServedCascade.read(tmp_path) == served


def test_no_ranker_above_the_retriever_serves_the_retriever_alone(tmp_path):
    rankers = {"RR+PS": _by_k({10: {0.0: 0.40, 0.9: 0.55, 1.0: 0.55}})}
    served = choose_served(rankers, 0.55, {"RR+PS": "/m/ps"})  # equal is not better
    assert (served.ranker, served.rerank_k) == ("", 0)
    assert served.reason.startswith("retriever alone") and "55.0" in served.reason
    assert choose_served({}, 0.5, {}).rerank_k == 0
    with pytest.raises(FileNotFoundError, match="served.json"):
        ServedCascade.read(tmp_path)
    (tmp_path / "served.json").write_text('{"rerank_k": 3, "ranker_path": "x", "bogus": 1}')
    with pytest.raises(ValueError, match="bogus"):
        ServedCascade.read(tmp_path)
    with pytest.raises(ValueError):
        ServedCascade(rerank_k=5)  # a cascade without a ranker


def test_a_valid_gain_inside_the_noise_serves_the_retriever_alone():
    rankers = {"RR+PS": _by_k({10: {0.0: 0.58, 0.3: 0.60, 1.0: 0.55}})}
    asked = []

    def gain(lo):
        def bootstrap(label, k, alpha):
            asked.append((label, k, alpha))
            return {"diff": 0.05, "lo": lo, "hi": 0.09}

        return bootstrap

    served = choose_served(rankers, 0.55, {"RR+PS": "/m/ps"}, gain=gain(-0.004))
    assert asked == [("RR+PS", 10, 0.3)]  # the interval of the setting that would be served
    assert (served.ranker, served.rerank_k, served.valid_gain) == ("", 0, None)
    assert "does not exclude 0" in served.reason and "+5.0 [-0.4, +9.0]" in served.reason
    served = choose_served(rankers, 0.55, {"RR+PS": "/m/ps"}, gain=gain(0.01))
    assert (served.ranker, served.rerank_k, served.alpha) == ("RR+PS", 10, 0.3)
    assert served.valid_gain == {"diff": 0.05, "lo": 0.01, "hi": 0.09}
    assert "gain +5.0 [+1.0, +9.0]" in served.reason
    # below the retriever on average: no interval is computed
    asked.clear()
    served = choose_served(rankers, 0.61, {"RR+PS": "/m/ps"}, gain=gain(0.01))
    assert served.rerank_k == 0 and asked == [] and "not above" in served.reason
