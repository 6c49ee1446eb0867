"""Retrieve -> rerank -> fuse: the cascade, shared by evaluation and serving (METHOD.md section 3).

The retriever ranks the whole pool; the ranker rescores only its top K. Those K are
placed first, in ranker order (or in the order of a fused score); everything below K
keeps its retriever order. Evaluation and the Serve app both call these functions, so
the served ranking is exactly the evaluated one.

Fusion: `alpha * DE + (1 - alpha) * tanh(CE)`. The retriever's score is a cosine in
[-1, 1]; the ranker is trained on `scale * tanh(score)` (losses.listwise_ce), so
`tanh(score)` is its score on the same [-1, 1] range and the weight means what it says.
`alpha = 0` is the plain cascade (ranker order), `alpha = 1` the retriever alone. The
weight is a setting, chosen on validation data (`choose_alpha`), never on test data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from r2ps.finite import check_finite


def fuse(de_scores: np.ndarray, ce_scores: np.ndarray, alpha: float = 0.0) -> np.ndarray:
    """`alpha * de + (1 - alpha) * tanh(ce)`, elementwise, float32.

    Raises ValueError naming the candidates whose score is NaN or inf (ordering by a NaN
    is undefined).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    de = np.asarray(de_scores, dtype=np.float32)
    ce = np.asarray(ce_scores, dtype=np.float32)
    if de.shape != ce.shape:
        raise ValueError(f"retriever scores {de.shape} and ranker scores {ce.shape} differ")
    if de.ndim:
        check_finite(de, "retriever scores")
        check_finite(ce, "ranker scores")
    return (alpha * de + (1.0 - alpha) * np.tanh(ce)).astype(np.float32)


def rerank(
    de_scores: np.ndarray, ce_scores: np.ndarray, alpha: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Cascade order of K candidates given in retriever order.

    Returns (order, fused): `order` holds positions into the K candidates, best first;
    `fused` the score each candidate was ordered by. Ties keep the retriever's order
    (a stable sort), so a ranker that cannot tell two codes apart never reshuffles them.
    """
    fused = fuse(de_scores, ce_scores, alpha)
    order = np.argsort(-fused, kind="stable")
    return order, fused


def cascade_ids(
    retrieved: Sequence[int] | np.ndarray,
    de_scores: np.ndarray,
    ce_scores: np.ndarray,
    alpha: float = 0.0,
) -> np.ndarray:
    """The full cascade ranking: the first K = len(ce_scores) ids reranked, the rest as retrieved.

    `retrieved` and `de_scores` are the retriever's list (best first, any length >= K).
    """
    retrieved = np.asarray(retrieved)
    k = len(ce_scores)
    if k > len(retrieved):
        raise ValueError(f"{k} ranker scores for only {len(retrieved)} retrieved candidates")
    order, _ = rerank(np.asarray(de_scores)[:k], ce_scores, alpha)
    return np.concatenate([retrieved[:k][order], retrieved[k:]])


def choose_alpha(
    evaluate: Callable[[float], float], grid: Sequence[float] = tuple(np.linspace(0, 1, 11))
) -> tuple[float, dict[float, float]]:
    """The fusion weight with the best validation score, and the score of every weight tried.

    `evaluate(alpha)` returns a validation metric (higher is better, e.g. MRR). Ties go to
    the smaller alpha, i.e. to trusting the ranker.
    """
    scores = {round(float(a), 4): float(evaluate(float(a))) for a in grid}
    best = max(scores, key=lambda a: (scores[a], -a))
    return best, scores
