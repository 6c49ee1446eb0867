"""Hybrid first stages: BM25 and the dense retriever fused into one list.

Two rules, chosen by the `retrieval` setting (`r2ps.serving.settings`):

- RRF (Cormack, Clarke and Büttcher, SIGIR 2009; `retrieval: hybrid`): a candidate's
  score is the sum over the lists that hold it of `1 / (k + rank)`, rank 1-based, k = 60
  as in the paper. It needs no score calibration between a cosine and a BM25 score,
  which live on unrelated scales, but it throws the score gaps away: a clear BM25 winner
  (the query names the function) counts as much as a near tie.
- Blend (`retrieval: repo`, then `r2ps.search.signals`): the candidates are the union
  of both top lists; each score is min-max normalised over those candidates, so the best
  candidate of each list gets 1 and the worst 0, and the two are mixed linearly,
  `alpha * dense + (1 - alpha) * lexical`. Score gaps survive, and the repository
  signals add fractions of the best score, which mean something only on such a scale.
  On semble's repository-search dev split (MiniLM, the same units, BM25 over path +
  symbol + code) blend at alpha 0.5 and RRF at k 60 tie alone (NDCG@10 0.608 / 0.607);
  under the signals blend scores 0.792 and RRF 0.782 (docs/REPO_SEARCH.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from r2ps.finite import check_finite

# The `retrieval` setting's values: the dense list alone; fused with BM25's by RRF; or
# blended with BM25's and a symbol lookup's, then ranked by the repository signals.
RETRIEVAL_MODES = ("dense", "hybrid", "repo")
RRF_K = 60
BLEND_ALPHA = 0.5


def rrf(
    lists: Sequence[Sequence[int]], k: int = RRF_K, top: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 [n], scores float64 [n]) best first: the union of `lists` (each best
    first, ids >= 0) by RRF score; ties keep the order of first appearance (the first
    list's order first). `top` cuts the answer."""
    if k < 0:
        raise ValueError(f"RRF k must be >= 0, got {k}")
    score: dict[int, float] = {}
    for ranked in lists:
        for rank, doc in enumerate(ranked, start=1):
            if doc < 0:
                continue  # faiss's "no result" slot
            score[int(doc)] = score.get(int(doc), 0.0) + 1.0 / (k + rank)
    ids = list(score)  # insertion order: first appearance
    order = sorted(range(len(ids)), key=lambda i: -score[ids[i]])  # stable
    if top is not None:
        order = order[:top]
    return (
        np.array([ids[i] for i in order], dtype=np.int64),
        np.array([score[ids[i]] for i in order], dtype=np.float64),
    )


def union(lists: Sequence[Sequence[int]]) -> np.ndarray:
    """int64 [m]: every id >= 0 of `lists` once, in order of first appearance (the first
    list's order first); -1, faiss's "no result" slot, is skipped."""
    return np.array(
        list(dict.fromkeys(int(d) for ranked in lists for d in ranked if d >= 0)), dtype=np.int64
    )


def min_max(scores: np.ndarray) -> np.ndarray:
    """float64 [m]: `scores` [m] mapped onto [0, 1], the lowest to 0 and the highest to 1;
    all zeros when they are all equal (no candidate stands out). ValueError on NaN/inf."""
    s = np.asarray(scores, dtype=np.float64)
    check_finite(s, "scores to normalise")
    if s.size == 0:
        return s
    low, high = s.min(), s.max()
    return (s - low) / (high - low) if high > low else np.zeros_like(s)


def blend(dense: np.ndarray, lexical: np.ndarray, alpha: float = BLEND_ALPHA) -> np.ndarray:
    """float64 [m]: `alpha * min_max(dense) + (1 - alpha) * min_max(lexical)`.

    dense, lexical: [m] each, the two first stages' scores of the same m candidates (a
    cosine and a BM25 score; a candidate one list did not return still has the other's
    score, computed for it: the normalisation is over the candidates, not each list).
    alpha: the dense share, in [0, 1] (1: dense alone, 0: BM25 alone). The result is in
    [0, 1]; order it with `r2ps.ranking.tie_order`, which keeps the candidates' order on ties.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"blend alpha must be in [0, 1], got {alpha}")
    d, lex = np.asarray(dense), np.asarray(lexical)
    if d.shape != lex.shape or d.ndim != 1:
        raise ValueError(f"dense scores {d.shape} and lexical scores {lex.shape} must be [m] each")
    return alpha * min_max(d) + (1.0 - alpha) * min_max(lex)
