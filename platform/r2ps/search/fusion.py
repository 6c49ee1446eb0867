"""A hybrid first stage: BM25 and the dense retriever fused by reciprocal rank fusion.

RRF (Cormack, Clarke and Büttcher, SIGIR 2009): a candidate's score is the sum over the
lists that hold it of `1 / (k + rank)`, rank 1-based, k = 60 as in the paper. It needs no
score calibration between a cosine and a BM25 score, which live on unrelated scales.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RRF_K = 60


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
