"""PS mining: the filter on hand-made rankings, the sampler's distribution, the job end to end."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import chisquare

from r2ps.data.codetext import code_id, code_match_key
from r2ps.mining.index import CodeIndex, IndexConfig
from r2ps.mining.mine import MineConfig, _Miner, match_groups, mine, search_windows, text_golds
from r2ps.mining.negatives import NEGATIVES_SCHEMA, MiningSettingsError, read_negatives
from r2ps.mining.ps import CandidateFilter, resolve_window, sample_negatives

# ------------------------------------------------------------------ the filter, by hand

# Index positions 0..7. The query's positive is 0, its other gold code is 5; code 3 is a
# normalised duplicate of the positive (same group), code 6 sits in an evaluation pool.
GROUPS = np.array([0, 1, 2, 0, 3, 4, 5, 6])
POOL = np.array([False, False, False, False, False, False, True, False])
RANKING = np.array([0, 1, 3, 2, 5, 6, 4, 7, -1])
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, -np.inf], dtype=np.float32)


def _filter(**kw) -> CandidateFilter:
    return CandidateFilter(GROUPS, POOL, kw.pop("start", 0), kw.pop("end", 100), **kw)


def test_guard_removes_positive_duplicate_gold_and_pool_and_they_take_no_rank():
    kept = _filter().apply(RANKING, SCORES, positive=0, gold=np.array([0, 5]), pos_score=0.9)
    assert kept.positions.tolist() == [1, 2, 4, 7]
    assert kept.ranks.tolist() == [0, 1, 2, 3]
    assert np.allclose(kept.scores, [0.8, 0.6, 0.3, 0.2])
    assert kept.removed == {
        "positive": 1,
        "gold": 1,
        "duplicate": 1,
        "pool": 1,
        "window_start": 0,
        "rho2": 0,
        "margin": 0,
        "rho1": 0,
    }


def test_duplicates_of_every_gold_code_are_guarded():
    # Code 2 is the positive of this pair; 0 is another gold code and 3 duplicates it.
    kept = _filter().apply(RANKING, SCORES, positive=2, gold=np.array([0, 2]), pos_score=0.6)
    assert 3 not in kept.positions and 0 not in kept.positions and 2 not in kept.positions
    assert kept.removed["duplicate"] == 1 and kept.removed["gold"] == 1


def test_rank_window_counts_eligible_codes_only():
    kept = _filter(start=1, end=3).apply(RANKING, SCORES, 0, np.array([0, 5]), 0.9)
    assert kept.positions.tolist() == [2, 4]
    assert kept.ranks.tolist() == [1, 2]
    assert kept.removed["window_start"] == 1


def test_score_thresholds_drop_above_rho2_and_below_rho1():
    kept = _filter(rho1=0.25, rho2=0.7).apply(RANKING, SCORES, 0, np.array([0, 5]), 0.9)
    assert kept.positions.tolist() == [2, 4]  # 0.8 > rho2, 0.2 < rho1
    assert kept.removed["rho2"] == 1 and kept.removed["rho1"] == 1
    with pytest.raises(ValueError, match="rho1"):
        _filter(rho1=0.5, rho2=0.5)


def test_margin_is_relative_to_the_positive_with_the_right_sign():
    # Positive scores 0.8: margin 0.1 drops candidates above 0.72.
    kept = _filter(margin=0.1).apply(RANKING, SCORES, 0, np.array([0, 5]), 0.8)
    assert kept.positions.tolist() == [2, 4, 7] and kept.removed["margin"] == 1
    # Negative scores: the positive at -0.5, margin 0.2 drops above -0.6 (not -0.4).
    neg = np.array([1, 2, 4, 7])
    neg_scores = np.array([-0.3, -0.55, -0.65, -0.9], dtype=np.float32)
    kept = _filter(margin=0.2).apply(neg, neg_scores, 0, np.array([0]), -0.5)
    assert kept.positions.tolist() == [4, 7]
    assert kept.removed["margin"] == 2
    assert kept.ranks.tolist() == [2, 3]  # ranks are positions in the ranking, not after


def test_each_removal_is_counted_once_under_the_first_reason():
    kept = _filter(start=1, rho2=0.5, margin=0.0).apply(RANKING, SCORES, 0, np.array([0]), 0.55)
    # eligible: 1 (0.8, rank 0), 2 (0.6), 5 (0.5), 4 (0.3), 7 (0.2)
    assert kept.removed["window_start"] == 1  # code 1
    assert kept.removed["rho2"] == 1  # code 2 (0.6 > 0.5), not also counted by the margin
    assert kept.removed["margin"] == 0
    assert kept.positions.tolist() == [5, 4, 7]


def test_resolve_window_absolute_and_fraction():
    assert resolve_window(0, 64, 1000) == (0, 64)
    assert resolve_window(0.004, 0.01, 1000) == (4, 10)
    assert resolve_window(0.25, 0.3, 10) == (2, 3)
    assert resolve_window(5, 100, 20) == (5, 20)  # clipped to N
    with pytest.raises(ValueError, match="window_end=1.5"):
        resolve_window(0, 1.5, 100)
    with pytest.raises(ValueError, match="empty rank window"):
        resolve_window(10, 10, 100)


def test_match_groups_join_normalised_and_docstring_duplicates():
    a = "def f(x):\n    return x + 1\n"
    b = "def f(x):\n    # add one\n    return  x+1\n"
    c = 'def f(x):\n    """Add one."""\n    return x + 1\n'
    d = "def g(x):\n    return x - 1\n"
    keys = np.asarray([code_match_key(t) for t in (a, b, c, d)], dtype=object)
    groups = match_groups(keys)
    assert groups[0] == groups[1] == groups[2] != groups[3]


def test_search_windows_searches_again_when_pool_codes_crowd_the_top():
    from r2ps.mining.index import CodeIndex, IndexConfig

    # 200 codes on a line of decreasing similarity to the query; the best 40 are pool codes.
    n, d = 200, 8
    rng = np.random.default_rng(0)
    q = np.zeros((1, d), dtype=np.float32)
    q[0, 0] = 1.0
    angles = np.linspace(0.0, 1.5, n)
    emb = np.zeros((n, d), dtype=np.float32)
    emb[:, 0], emb[:, 1] = np.cos(angles), np.sin(angles)
    ids = [f"c{i}" for i in range(n)]
    index = CodeIndex.build(emb[rng.permutation(n)], ids, IndexConfig(), {})
    ranking = index.search(q, n)[1][0]
    pool = np.zeros(n, dtype=bool)
    pool[ranking[:40]] = True
    positive = int(ranking[50])
    filt = CandidateFilter(np.arange(n), pool, 0, 10)
    gold = np.array([positive])
    assert filt.first_k(gold) == 10 + 1 + 10  # not enough: 40 pool codes come first
    scores, positions, again = search_windows(index, filt, q, [gold])
    assert again == 1 and filt.complete(positions[0], gold)
    kept = filt.apply(positions[0], scores[0], positive, gold, pos_score=float(scores[0][50]))
    assert kept.positions.tolist() == ranking[40:50].tolist()
    assert kept.removed["pool"] == 40


# ------------------------------------------------------------------ sampling


def _ordered_pair_counts(n: int, m: int, inv_tau: float, scores, trials: int) -> dict:
    rng = np.random.default_rng(1234)
    counts: dict[tuple, int] = {}
    for _ in range(trials):
        key = tuple(sample_negatives(scores, m, inv_tau, rng).tolist())
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_uniform_draw_gives_every_ordered_pair_equally_often():
    n, trials = 5, 20000
    counts = _ordered_pair_counts(n, 2, 0.0, np.linspace(1, -1, n), trials)
    cells = list(itertools.permutations(range(n), 2))
    assert set(counts) == set(cells)  # no repeats: without replacement
    observed = [counts[c] for c in cells]
    assert chisquare(observed).pvalue > 1e-3


def test_softmax_draw_follows_successive_sampling_probabilities():
    scores = np.array([0.9, 0.5, 0.1, -0.4])
    inv_tau, trials = 3.0, 20000
    p = np.exp(inv_tau * scores) / np.exp(inv_tau * scores).sum()
    cells = list(itertools.permutations(range(4), 2))
    expected = np.array([p[i] * p[j] / (1 - p[i]) for i, j in cells]) * trials
    counts = _ordered_pair_counts(4, 2, inv_tau, scores, trials)
    observed = np.array([counts.get(c, 0) for c in cells])
    assert chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > 1e-3
    # and the softmax really prefers high scores: the best code is drawn far more often
    first = np.bincount([i for (i, _), k in counts.items() for _ in range(k)], minlength=4)
    assert first[0] > 2 * first[2]


def test_fewer_candidates_than_m_returns_all_then_draws_with_replacement():
    scores = np.array([1.0, 0.0])
    rng = np.random.default_rng(7)
    out = sample_negatives(scores, 4002, 1.0, rng)
    assert out.shape == (4002,) and out[:2].tolist() == [0, 1]
    extra = out[2:]
    p0 = np.exp(1.0) / (np.exp(1.0) + 1.0)
    observed = np.bincount(extra, minlength=2)
    assert chisquare(observed, [p0 * 4000, (1 - p0) * 4000]).pvalue > 1e-3


def test_sampling_is_seeded_and_robust():
    scores = np.linspace(0.9, 0.1, 20)
    one = sample_negatives(scores, 5, 2.0, np.random.default_rng(3))
    two = sample_negatives(scores, 5, 2.0, np.random.default_rng(3))
    assert one.tolist() == two.tolist() and len(set(one.tolist())) == 5
    # a huge 1/tau underflows exp(): still a valid draw, the top-5 scores
    top = sample_negatives(scores, 5, 1e4, np.random.default_rng(0))
    assert sorted(top.tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="no candidates"):
        sample_negatives(np.array([]), 3, 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="finite"):
        sample_negatives(np.array([0.1, np.nan]), 1, 0.0, np.random.default_rng(0))


# ------------------------------------------------------------------ the job, end to end


def _func(i: int) -> str:
    return f"def fn_{i}(x, y):\n    z = x * {i} + y\n    return z - {i % 7}\n"


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory) -> Path:
    """30 codes, 24 queries: some with two gold codes, some with a normalised duplicate
    of their positive in the split, and a pool file holding two of the codes."""
    root = tmp_path_factory.mktemp("mine_split")
    texts = [_func(i) for i in range(30)]
    texts[20] = _func(3).replace("    z =", "    # same code as fn_3\n    z =")  # dup of 3
    texts[21] = _func(7).replace("return z", "return  z")  # dup of 7 (layout only)
    codes = pa.table(
        {
            "code_id": [code_id(t) if i < 20 else f"cdup{i}" for i, t in enumerate(texts)],
            "code": texts,
            "language": ["python"] * 30,
            "source": ["test"] * 30,
        }
    )
    ids = codes["code_id"].to_pylist()
    qrels = [(f"q{i:02d}", ids[i]) for i in range(24)]
    qrels += [("q01", ids[11]), ("q02", ids[12]), ("q02", ids[13])]  # several gold codes
    queries = pa.table(
        {
            "query_id": [f"q{i:02d}" for i in range(24)],
            "query": [f"compute z from x {i}" for i in range(24)],
        }
    )
    split = root / "train"
    split.mkdir()
    pq.write_table(codes, split / "codes.parquet")
    pq.write_table(queries, split / "queries.parquet")
    pq.write_table(
        pa.table({"query_id": [q for q, _ in qrels], "code_id": [c for _, c in qrels]}),
        split / "qrels.parquet",
    )
    pool_codes = [
        'def fn_25(x, y):\n    """Pool copy."""\n    z = x * 25 + y\n    return z - 4\n',
        _func(26),
    ]
    pq.write_table(pa.table({"code": pool_codes}), root / "pool.parquet")
    return split


def _run_job(args: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jobs"))
    try:
        import mine as mine_job
    finally:
        sys.path.pop(0)
    return mine_job.main(args)


def _settings(split_dir: Path, out: Path, model: Path) -> list[str]:
    return [
        "--model", str(model), "--pairs", str(split_dir), "--out", str(out),
        "--exclude", str(split_dir.parent / "pool.parquet"),
        "window_end=12", "shard_queries=5", "query_chunk=3", "actors=2", "m=4",
    ]  # fmt: skip


@pytest.mark.ray
def test_mine_end_to_end_resume_and_settings_guard(ray_local, tiny_bert_dir, split_dir, tmp_path):
    from r2ps.mining.index import read_embeddings
    from r2ps.models.dual import DualEncoder

    out = tmp_path / "mined"
    assert _run_job(_settings(split_dir, out, tiny_bert_dir)) == 0
    first = read_negatives(out)
    summary = json.loads((out / "mine_summary.json").read_text())
    assert first.schema.equals(NEGATIVES_SCHEMA, check_metadata=False)
    assert summary["queries"] == 24 and summary["pairs_mined"] == 27
    assert summary["pairs"] == str(split_dir.resolve()) and summary["shards"]["total"] == 5
    assert summary["removed"]["pool"] >= 1 and summary["removed"]["duplicate"] >= 1
    assert summary["settings"]["exclude"] == {str((split_dir.parent / "pool.parquet").resolve()): 2}

    # Brute force from the stored embeddings: the rows hold exactly the true top window.
    codes = pq.read_table(split_dir / "codes.parquet")
    qrels = pq.read_table(split_dir / "qrels.parquet").to_pylist()
    queries = pq.read_table(split_dir / "queries.parquet")
    ids, emb = read_embeddings(str(out / "embeddings"))
    key_of = dict(
        zip(
            codes["code_id"].to_pylist(),
            map(code_match_key, codes["code"].to_pylist()),
            strict=True,
        )
    )
    pool_keys = {
        code_match_key(c)
        for c in pq.read_table(split_dir.parent / "pool.parquet")["code"].to_pylist()
    }
    q_emb = DualEncoder.from_pretrained(tiny_bert_dir).embed_queries(queries["query"].to_pylist())
    q_row = {q: i for i, q in enumerate(queries["query_id"].to_pylist())}
    for row in first.to_pylist():
        gold = {
            c for q, c in ((r["query_id"], r["code_id"]) for r in qrels) if q == row["query_id"]
        }
        banned_keys = {key_of[g] for g in gold} | pool_keys
        assert row["code_id"] in gold
        assert not set(row["cand_ids"]) & gold
        assert not {key_of[c] for c in row["cand_ids"]} & banned_keys
        eligible = [i for i, c in enumerate(ids) if key_of[c] not in banned_keys and c not in gold]
        s = emb[eligible] @ q_emb[q_row[row["query_id"]]]
        assert len(row["cand_ids"]) == min(12, len(eligible))
        assert row["cand_ranks"] == list(range(len(row["cand_ids"])))
        brute = dict(zip([ids[i] for i in eligible], s.tolist(), strict=True))
        assert np.allclose(row["cand_scores"], [brute[c] for c in row["cand_ids"]], atol=1e-5)
        outside = [v for c, v in brute.items() if c not in set(row["cand_ids"])]
        assert max(outside, default=-1) <= min(row["cand_scores"]) + 1e-5

    # Crash and resume: a lost shard is redone, the rest reused, the output identical.
    (out / "negatives" / "part-00002.parquet").unlink()
    (out / "negatives" / "part-00004.parquet.tmp-1").write_bytes(b"half a shard")
    again = mine(MineConfig(**_cfg_dict(split_dir, out, tiny_bert_dir)))
    assert again["shards"] == {"total": 5, "written": 1, "reused": 4}
    assert read_negatives(out).equals(first)
    assert not list((out / "negatives").glob("*.tmp-*"))
    assert {k: again[k] for k in ("rows", "removed", "candidates_per_row")} == {
        k: summary[k] for k in ("rows", "removed", "candidates_per_row")
    }

    # Other settings never mix with these shards.
    with pytest.raises(MiningSettingsError, match="window_end"):
        mine(MineConfig(**{**_cfg_dict(split_dir, out, tiny_bert_dir), "window_end": 8}))


def _cfg_dict(split_dir: Path, out: Path, model: Path) -> dict:
    return {
        "model": str(model),
        "pairs": str(split_dir),
        "out": str(out),
        "exclude": [str(split_dir.parent / "pool.parquet")],
        "window_end": 12,
        "shard_queries": 5,
        "query_chunk": 3,
        "actors": 2,
        "m": 4,
    }


# ------------------------------------------------------------------ the guard's identity


@pytest.mark.parametrize("one_shard", [True, False])
def test_golds_of_the_same_query_text_under_other_ids_are_never_negatives(one_shard):
    # Two records with one docstring: two query ids (q0, q1), one text, codes 0 and 1 both
    # gold for it. Code 1 is the nearest to the text: it must not become q0's negative
    # (nor code 0 q1's), also when the two ids are mined in different shards.
    emb = np.eye(8, dtype=np.float32)
    emb[1] = (emb[0] + 0.1 * emb[1]) / np.linalg.norm(emb[0] + 0.1 * emb[1])
    code_ids = [f"c{i}" for i in range(8)]
    index = CodeIndex.build(emb, code_ids, IndexConfig(), {})
    queries = pa.table({"query_id": ["q0", "q1", "q2"], "query": ["Name.", " Name. ", "Other."]})
    qrels = pa.table({"query_id": ["q0", "q1", "q2"], "code_id": ["c0", "c1", "c5"]})
    filt = CandidateFilter(np.arange(8), np.zeros(8, bool), 0, 4)
    shared = text_golds(queries, qrels, code_ids)
    assert {k: sorted(v) for k, v in shared.items()} == {"Name.": [0, 1]}
    miner = _Miner(MineConfig(m=2), index, emb, filt, lambda t: emb[[0] * len(t)], shared)
    shards = (
        [(queries, qrels)]
        if one_shard
        else [(queries[i : i + 1], qrels[i : i + 1]) for i in range(3)]
    )
    rows = [r for n, (q, r) in enumerate(shards) for r in miner.shard(q, r, n)[0].to_pylist()]
    cands = {r["query_id"]: r["cand_ids"] for r in rows}
    assert "c1" not in cands["q0"] and "c0" not in cands["q1"]
    assert cands["q2"][:2] == ["c0", "c1"]  # another text: they are its nearest negatives
