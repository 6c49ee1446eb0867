"""The WiSE-FT weight chosen on valid: the rule, and a choice made over a real pool."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from r2ps.data.schema import split_pairs
from r2ps.models.dual import DualEncoder
from r2ps.models.encoder import load_encoder
from r2ps.train.config import RetrieverConfig
from r2ps.train.wise_ft import choose_weight, closest_to_start, interpolated


def test_the_rule_keeps_the_weight_closest_to_the_start_within_noise_of_the_best():
    rng = np.random.default_rng(0)
    best = rng.uniform(0.0, 1.0, 500)
    near = best.copy()
    near[:20] -= 0.2  # some queries worse, some better: 0.0008 below the best on average,
    near[20:38] += 0.2  # inside the noise of 500 queries
    far = np.clip(best - 0.3, 0.0, 1.0)  # clearly below
    chosen, vs_best = closest_to_start({0.0: far, 0.5: near, 1.0: best})
    assert chosen == 0.5
    assert vs_best[1.0] == {"diff": 0.0, "lo": 0.0, "hi": 0.0}
    assert vs_best[0.0]["hi"] < 0.0 <= vs_best[0.5]["hi"]
    # the start best by a clear margin: nothing else is kept
    assert closest_to_start({0.0: best, 1.0: far})[0] == 0.0
    # only the trained weights are good: they are kept
    assert closest_to_start({0.0: far, 0.5: far, 1.0: best})[0] == 1.0
    with pytest.raises(ValueError, match="no WiSE-FT weights"):
        closest_to_start({})


def test_a_fixed_weight_and_weights_to_choose_from_are_not_both_set():
    RetrieverConfig(wise_ft_choose=[0.5, 1.0])
    with pytest.raises(ValueError, match="not both"):
        RetrieverConfig(wise_ft=0.5, wise_ft_choose=[0.5, 1.0])


def _pool(n: int = 24) -> pa.Table:
    words = ["sort", "parse", "read", "write", "merge", "split", "load", "save"]
    rows = []
    for i in range(n):
        a, b = words[i % len(words)], words[(i * 3 + 1) % len(words)]
        rows.append(
            {
                "query_id": f"q{i}",
                "query": f"{a} the {b} file {i}",
                "code_id": f"c{i}",
                "code": f"def {a}_{b}_{i}(path):\n    return {b}(path, {i})",
                "language": "python",
                "source": "test",
            }
        )
    return pa.Table.from_pylist(rows)


def test_choose_weight_scores_every_weight_on_the_pool_and_applies_the_rule(
    tiny_bert_dir, tmp_path
):
    """Over a real (tiny) pool: one MRR per weight, the trained weights (1) always among
    them, each the same as scoring that interpolation alone; the choice is the rule's."""
    trained, tok = load_encoder(tiny_bert_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trained.save_pretrained(tmp_path / "trained")
    tok.save_pretrained(tmp_path / "trained")
    valid = split_pairs(_pool())

    got = choose_weight(tiny_bert_dir, tmp_path / "trained", [0.0, 0.5], valid)

    assert set(got["valid_mrr"]) == {"0.0", "0.5", "1.0"}
    assert got["chosen"] in (0.0, 0.5, 1.0)
    assert got["vs_best"][str(got["chosen"])]["hi"] >= 0.0
    assert all(got["vs_best"][w]["hi"] < 0.0 for w in got["valid_mrr"] if float(w) < got["chosen"])
    # the MRR reported for w = 0.5 is that of the interpolated model itself
    alone = DualEncoder.from_pretrained(
        interpolated(tiny_bert_dir, tmp_path / "trained", 0.5, tmp_path / "w05")
    )
    from r2ps.evaluation.retrieval import retrieve

    assert got["valid_mrr"]["0.5"] == pytest.approx(
        retrieve(alone.eval(), valid, 0, 64).metrics()["mrr"]
    )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        choose_weight(tiny_bert_dir, tmp_path / "trained", [1.5], valid)
