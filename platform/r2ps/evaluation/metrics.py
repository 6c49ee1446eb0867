"""Retrieval metrics over a whole candidate pool: MRR, Recall@k, NDCG@10 (METHOD.md section 5).

Everything goes through per-query gold ranks: one array per query holding the rank
(1 = first) of each of its gold codes, `inf` for a gold code that was not ranked
(outside a top-k list). Rankers, retrievers and cascades only differ in how they
produce those ranks.

Ties: one rule on every path, owned by `r2ps.ranking` (scores equal within float noise
are ties, broken by pool position); every metric here orders through it.

Non-finite scores (NaN, +-inf) are no scores: such a candidate is never ranked ahead
of another, and a gold code scored so is not ranked at all (rank `inf`, counting 0),
so a NaN model scores 0, not 1 (every comparison with NaN is False). The boundaries
that make vectors refuse them first (`r2ps.finite`); a metric only never rewards them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from r2ps.finite import describe_rows, nonfinite_rows
from r2ps.log import get_logger
from r2ps.ranking import tie_order

log = get_logger(__name__)

Ranks = Sequence[float | Sequence[float] | np.ndarray]


def _gold_array(gold: Iterable[int], query: int) -> np.ndarray:
    g = np.fromiter(sorted(set(gold)), dtype=np.int64)
    if g.size == 0:
        raise ValueError(f"query {query} has no gold code")
    return g


def rank_of_gold(
    scores: torch.Tensor | np.ndarray, gold: Sequence[Iterable[int]]
) -> list[np.ndarray]:
    """Ranks of each query's gold codes from a full score matrix [Q, N] (higher = better).

    Returns, per query, the ascending ranks of its gold codes (see the module docstring
    for ties and non-finite scores).
    """
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().float().cpu().numpy()
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] != len(gold):
        raise ValueError(f"scores {tuple(scores.shape)} do not match {len(gold)} gold sets")
    order = tie_order(scores)
    rank = np.empty(order.shape, dtype=np.float64)
    np.put_along_axis(rank, order, np.arange(1.0, scores.shape[1] + 1), axis=1)
    rank[~np.isfinite(scores)] = math.inf  # listed last, but never ranked
    return [np.sort(rank[i, _gold_array(g, i)]) for i, g in enumerate(gold)]


def rank_of_gold_topk(
    topk_ids: Sequence[Sequence[int]] | np.ndarray, gold: Sequence[Iterable[int]]
) -> list[np.ndarray]:
    """Ranks of each query's gold codes in ranked id lists [Q, K]; `inf` when not listed.

    For cascades and ANN indexes, which return an ordering rather than all scores.
    Ids that are not codes (e.g. faiss's -1 padding) simply never match.
    """
    if len(topk_ids) != len(gold):
        raise ValueError(f"{len(topk_ids)} ranked lists but {len(gold)} gold sets")
    out = []
    for i, (ids, g) in enumerate(zip(topk_ids, gold, strict=True)):
        first: dict[int, int] = {}
        for pos, cid in enumerate(np.asarray(ids).tolist()):
            first.setdefault(int(cid), pos + 1)
        ranks = [float(first.get(int(c), math.inf)) for c in _gold_array(g, i)]
        out.append(np.sort(np.asarray(ranks, dtype=np.float64)))
    return out


def _dcg(ranks: np.ndarray, k: int) -> float:
    r = ranks[ranks <= k]
    return float(np.sum(1.0 / np.log2(r + 1.0)))


def retrieval_metrics(
    ranks: Ranks, ks: Sequence[int] = (1, 5, 10), mrr_cutoff: int = 1000, ndcg_k: int = 10
) -> dict[str, float]:
    """MRR, Recall@k and NDCG@ndcg_k (binary relevance), as fractions in [0, 1].

    ranks: per query, the rank of its gold code or an array of the ranks of all its gold
    codes (NDCG needs all of them; MRR and Recall use the best). MRR is the mean
    reciprocal rank of the best-ranked gold, 0 past `mrr_cutoff` (the CodeSearchNet
    convention the paper follows); Recall@k is the fraction of queries with a gold code
    in the top k.
    """
    if len(ranks) == 0:
        raise ValueError("no queries to evaluate")
    per_query = [np.atleast_1d(np.asarray(r, dtype=np.float64)) for r in ranks]
    best = np.array([r.min() for r in per_query])
    out = {"mrr": float(np.mean(np.where(best <= mrr_cutoff, 1.0 / best, 0.0)))}
    for k in ks:
        out[f"recall@{k}"] = float(np.mean(best <= k))
    out[f"ndcg@{ndcg_k}"] = float(np.mean([ndcg(r, ndcg_k) for r in per_query]))
    out["n_queries"] = len(per_query)
    return out


def ndcg(ranks: float | Sequence[float] | np.ndarray, k: int = 10) -> float:
    """NDCG@k of one query from the ranks of its gold codes (`inf`: not ranked), binary
    gains: DCG = sum of 1 / log2(rank + 1) over ranks <= k; the ideal ranking has
    min(k, number of golds) hits. Raises ValueError for a query with no gold."""
    r = np.atleast_1d(np.asarray(ranks, dtype=np.float64))
    if r.size == 0:
        raise ValueError("NDCG of a query with no gold")
    return _dcg(r, k) / _dcg(np.arange(1.0, r.size + 1), k)


@dataclass(frozen=True)
class Target:
    """A located gold: a file path and, when both are given, a 1-based inclusive line span."""

    path: str
    start_line: int | None = None
    end_line: int | None = None


def path_matches(a: str, b: str) -> bool:
    """The same file: equal paths, or one ends with "/" + the other (a path relative to a
    tree's root and one relative to a folder inside it); backslashes count as slashes."""
    a, b = a.replace("\\", "/"), b.replace("\\", "/")
    return a == b or a.endswith("/" + b) or b.endswith("/" + a)


def hits_target(path: str, start_line: int, end_line: int, target: Target) -> bool:
    """A result at `path` lines `start_line`..`end_line` (inclusive) hits `target` when the
    paths match and, if the target has a line span, the lines overlap it."""
    if not path_matches(path, target.path):
        return False
    if target.start_line is None or target.end_line is None:
        return True
    return not (end_line < target.start_line or start_line > target.end_line)


def target_ranks(results: Sequence[tuple[str, int, int]], targets: Sequence[Target]) -> np.ndarray:
    """Gold ranks of one query whose golds are `targets`, from its ranked results
    (path, start_line, end_line), best first; float64 [len(targets)], ascending.

    semble's rule: a target's rank is the rank of the first result that hits it, and a
    result gains 1 however many targets it is the first hit of; so ranks shared by
    several targets are kept once and the other targets count as not ranked (`inf`),
    still counting in the ideal (`ndcg`: min(k, len(targets)) hits). Two results of one
    file are two places. Raises ValueError when `targets` is empty.
    """
    if not targets:
        raise ValueError("a query with no target")
    first = set()
    for target in targets:
        for rank, (path, start, end) in enumerate(results, start=1):
            if hits_target(path, start, end, target):
                first.add(rank)
                break
    ranks = sorted(float(r) for r in first) + [math.inf] * (len(targets) - len(first))
    return np.asarray(ranks, dtype=np.float64)


@torch.no_grad()
def evaluate_dense(
    q_emb: torch.Tensor | np.ndarray,
    c_emb: torch.Tensor | np.ndarray,
    gold: Sequence[Iterable[int]],
    ks: Sequence[int] = (1, 5, 10),
    mrr_cutoff: int = 1000,
    chunk_size: int = 256,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Exact inner-product retrieval metrics of queries [Q, d] against the whole pool [N, d].

    Scores are computed `chunk_size` queries at a time, so memory stays at
    chunk_size x N scores whatever the number of queries. Rows of either matrix holding
    NaN or inf are named in a warning and never ranked (a NaN query scores 0).
    """
    q = torch.as_tensor(q_emb, dtype=torch.float32, device=device)
    c = torch.as_tensor(c_emb, dtype=torch.float32, device=device)
    for x, what in ((q, "query embeddings"), (c, "code embeddings")):
        rows = nonfinite_rows(x)
        if rows.size:
            log.warning("%s: never ranked", describe_rows(rows.tolist(), len(x), what))
    if q.shape[0] != len(gold):
        raise ValueError(f"{q.shape[0]} query embeddings but {len(gold)} gold sets")
    ranks: list[np.ndarray] = []
    for start in range(0, q.shape[0], chunk_size):
        scores = q[start : start + chunk_size] @ c.T
        ranks.extend(rank_of_gold(scores, gold[start : start + chunk_size]))
    return retrieval_metrics(ranks, ks=ks, mrr_cutoff=mrr_cutoff)


def reciprocal_ranks(ranks: Ranks, mrr_cutoff: int = 1000) -> np.ndarray:
    """Per query, 1 / the rank of its best gold code (0 past `mrr_cutoff`): MRR's terms."""
    best = np.array([np.atleast_1d(np.asarray(r, dtype=np.float64)).min() for r in ranks])
    return np.where(best <= mrr_cutoff, 1.0 / best, 0.0)


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, n_resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Mean of `a - b` over queries and its percentile bootstrap interval.

    a, b: per-query scores of two methods on the SAME queries (e.g. reciprocal ranks), so
    the resampling draws queries, keeping each query's pair together (Efron & Tibshirani
    1993, ch. 13; the usual test for IR system comparisons, Sakai 2006). Seeded.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired scores must be two equal 1-D arrays, got {a.shape}, {b.shape}")
    diff = a - b
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(n_resamples, diff.size))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return {"diff": float(diff.mean()), "lo": float(lo), "hi": float(hi)}
