"""How scores become an order: the tie rule every ranking path of r2ps shares.

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
`evaluation.retrieval.top_candidates` and `search.bm25.BM25.top_k`), a faiss index
(`mining.index.CodeIndex.search`) and the cascade's reranking (`search.cascade.rerank`, whose
"position" is the retriever's order) all order through `tie_order`. The rule never looks
at which code is gold: a gold code tied with others gets no lucky rank, and a collapsed
model that scores every code the same is at chance (a query whose gold sits at pool
position p gets rank p + 1; one gold per query, each a different code: MRR = H_n / n,
the expected MRR of a random order).

It lives at the package root because every stage ranks: the faiss index (mining), BM25
and the cascade (search), the metrics (evaluation) and validation during training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# The tie tolerance (see the module docstring). Scores of normalised vectors are cosines in
# [-1, 1], and a float32 dot product of unit vectors is off by at most Σ|x_i y_i| <= 1
# times its summation error: measured <= 2.3e-7 from the float64 value for d = 8..4096 on
# numpy, torch and faiss alike, so two paths differ by < 5e-7. TIE_ATOL leaves 20x that
# for deeper computations (a ranker's fused score) yet stays far below the score gaps a
# model means (bf16 inference resolves ~4e-3). TIE_RTOL (~8 float32 ulps) covers scores
# off that scale: BM25 sums, unnormalised vectors.
TIE_ATOL = 1e-5
TIE_RTOL = 1e-6


def tie_sorted(scores: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    return tie_sorted(s, np.asarray(positions))[0]


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
        order, group = tie_sorted(s, p)
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
