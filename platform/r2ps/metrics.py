"""Retrieval metrics over a whole candidate pool: MRR, Recall@k, NDCG@10 (METHOD.md section 5).

Everything goes through per-query gold ranks: one array per query holding the rank
(1 = first) of each of its gold codes, `inf` for a gold code that was not ranked
(outside a top-k list). Rankers, retrievers and cascades only differ in how they
produce those ranks.

Ties: one rule on every path, owned here (`tie_order`, `top_k_tied`). Scores equal
within float noise are ties: two neighbours of a row sorted by score tie when
`|a - b| <= TIE_ATOL + TIE_RTOL * max(|a|, |b|)`, and a run of such neighbours is one
tie group (ties chain, so the rule is an ordering and every path gets the same one).
Candidates are ordered by group (best scores first), and inside a group by pool position
(lower first). The tolerance is there because the same scores are not the same floats
on every path or CPU: BLAS, faiss and torch sum a dot product in different orders (SIMD
widths, blocking), so identical vectors score 1 ulp apart on one CPU and exactly equal
on another, and a rule of exact equality ranked them differently. The full score
matrix (`rank_of_gold`), the exact top list (`top_k_of_scores`, used by
`retrieval.top_candidates` and `bm25.BM25.top_k`), a faiss index
(`index.CodeIndex.search`) and the cascade's reranking (`cascade.rerank`, whose
"position" is the retriever's order) all order through `tie_order`. The rule never looks
at which code is gold: a gold code tied with others gets no lucky rank, and a collapsed
model that scores every code the same is at chance (a query whose gold sits at pool
position p gets rank p + 1; one gold per query, each a different code: MRR = H_n / n,
the expected MRR of a random order).

Non-finite scores (NaN, +-inf) are no scores: such a candidate is never ranked ahead
of another, and a gold code scored so is not ranked at all (rank `inf`, counting 0),
so a NaN model scores 0, not 1 (every comparison with NaN is False). The boundaries
that make vectors refuse them first (`r2ps.finite`); a metric only never rewards them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from r2ps.finite import describe_rows, nonfinite_rows
from r2ps.log import get_logger

log = get_logger(__name__)

Ranks = Sequence[float | Sequence[float] | np.ndarray]

# The tie tolerance (see the module docstring). Scores of normalised vectors are cosines in
# [-1, 1], and a float32 dot product of unit vectors is off by at most Σ|x_i y_i| <= 1
# times its summation error: measured <= 2.3e-7 from the float64 value for d = 8..4096 on
# numpy, torch and faiss alike, so two paths differ by < 5e-7. TIE_ATOL leaves 20x that
# for deeper computations (a ranker's fused score) yet stays far below the score gaps a
# model means (bf16 inference resolves ~4e-3). TIE_RTOL (~8 float32 ulps) covers scores
# off that scale: BM25 sums, unnormalised vectors.
TIE_ATOL = 1e-5
TIE_RTOL = 1e-6


def _gold_array(gold: Iterable[int], query: int) -> np.ndarray:
    g = np.fromiter(sorted(set(gold)), dtype=np.int64)
    if g.size == 0:
        raise ValueError(f"query {query} has no gold code")
    return g


def _tie_sorted(scores: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, group), both [..., m]: `order` lists the last axis by the tie rule, best
    first; `group[..., j]` is the tie group of the j-th listed candidate (0 = best,
    non-decreasing). Non-finite scores come last, as one group in position order."""
    s = np.asarray(scores)
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    pos = np.broadcast_to(np.asarray(positions, dtype=np.int64), s.shape)
    if s.shape[-1] == 0:
        return np.zeros(s.shape, np.int64), np.zeros(s.shape, np.int64)
    # any order inside exact ties: they share a group, which the second sort orders
    by_score = np.argsort(np.where(np.isfinite(s), -s, np.inf), axis=-1)
    v = np.take_along_axis(s, by_score, axis=-1).astype(np.float64)  # the gap must not round
    a, b = v[..., :-1], v[..., 1:]  # non-finite scores sort last: b finite means a is
    with np.errstate(invalid="ignore"):
        close = a - b <= TIE_ATOL + TIE_RTOL * np.maximum(np.abs(a), np.abs(b))
    tied = np.where(np.isfinite(b), close, ~np.isfinite(a))
    starts = np.concatenate([np.zeros(s.shape[:-1] + (1,), bool), ~tied], axis=-1)
    group = np.cumsum(starts, axis=-1)
    p = np.take_along_axis(pos, by_score, axis=-1)
    # one int key, (group, position): groups are already in order, so this stable sort
    # only reorders inside groups (timsort is near-linear on it; -1 padding allowed)
    span = int(p.max(initial=0)) + 2
    within = np.argsort(group * span + (p + 1), axis=-1, kind="stable")
    return np.take_along_axis(by_score, within, axis=-1), group


def tie_order(
    scores: np.ndarray, positions: np.ndarray | Sequence[int] | None = None
) -> np.ndarray:
    """Indices that list candidates best first by the tie rule (module docstring).

    scores: [..., m], higher = better, any order; positions: the tie-break, [..., m] or
    [m] (default 0..m-1, i.e. the order given). Returns int64 [..., m] indices into the
    last axis; non-finite scores are listed last, in position order.
    """
    s = np.asarray(scores)
    if positions is None:
        positions = np.arange(s.shape[-1])
    return _tie_sorted(s, np.asarray(positions))[0]


def top_k_tied(
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    n_queries: int,
    n: int,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the top k candidates by the tie rule: (scores [Q, k], positions int64
    [Q, k]) best first, padded with (-inf, -1) where fewer than k were found.

    search(rows, m) returns (scores, positions), each [len(rows), m], of the m highest
    scores of query `rows` (int64 indices into the Q queries) out of the n candidates,
    in any order inside ties, position -1 with a non-finite score for "no result" (a
    faiss search, an argpartition of a score matrix). The highest m by score are not the
    first m by the rule when a tie group crosses the cut, so the search asks for one
    more than k, and a row whose k-th candidate ties on to the last one found is searched
    again with twice the m, until its group ends inside the list or all n are searched.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    out_s = np.full((n_queries, k), -np.inf, dtype=np.float32)
    out_p = np.full((n_queries, k), -1, dtype=np.int64)
    cut = min(k, n)
    rows = np.arange(n_queries)
    m = min(n, cut + 1)
    while rows.size and cut:
        s, p = search(rows, m)
        s = np.where(p < 0, -np.inf, s)
        order, group = _tie_sorted(s, p)
        s, p = np.take_along_axis(s, order, axis=1), np.take_along_axis(p, order, axis=1)
        out_s[rows, :cut], out_p[rows, :cut] = s[:, :cut], p[:, :cut]
        if m >= n:
            break
        crossing = (group[:, cut - 1] == group[:, m - 1]) & np.isfinite(s[:, m - 1])
        rows, m = rows[crossing], min(n, 2 * m)
    return out_s, out_p


def top_k_of_scores(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact top min(k, N) of each row of a full score matrix [Q, N] by the tie rule:
    (scores float32 [Q, min(k, N)], positions int64 [Q, min(k, N)]) best first; k >= 0.

    Non-finite scores are listed last (callers that must refuse them check first).
    """
    s = np.asarray(scores, dtype=np.float32)
    if s.ndim != 2:
        raise ValueError(f"scores must be [Q, N], got shape {s.shape}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    n = s.shape[1]
    if min(k, n) == 0:
        return np.empty((len(s), 0), np.float32), np.empty((len(s), 0), np.int64)
    ranked = np.where(np.isfinite(s), s, -np.inf)  # argpartition must not see NaN

    def best(rows: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        if m >= n:
            return s[rows], np.broadcast_to(np.arange(n), (len(rows), n))
        part = np.argpartition(-ranked[rows], m - 1, axis=1)[:, :m]
        return np.take_along_axis(s[rows], part, axis=1), part

    return top_k_tied(best, len(s), n, min(k, n))


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
