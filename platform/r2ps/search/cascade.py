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

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from r2ps.finite import check_finite
from r2ps.ranking import tie_order


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
    `fused` the score each candidate was ordered by. Ties (fused scores equal within float
    noise: `r2ps.evaluation.metrics`' tie rule) keep the retriever's order, so a ranker that cannot
    tell two codes apart never reshuffles them, whatever CPU rounded its scores.
    """
    fused = fuse(de_scores, ce_scores, alpha)
    return tie_order(fused), fused


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


SERVED_FILE = "served.json"


@dataclass
class ServedCascade:
    """What the endpoint serves, as chosen on VALID data by the evaluation job.

    The one place evaluation ("as served" rows) and serving (`serve.yaml`: ranker,
    rerank_k, alpha) read the cascade's settings from. `rerank_k == 0` means the
    retriever alone: no ranker beat it on the valid split (`reason` says by how much).
    """

    ranker: str = ""  # method label ("RR+PS", "RR"); "" = retriever alone
    ranker_path: str = ""
    rerank_k: int = 0
    alpha: float = 1.0
    valid_mrr: float = 0.0  # the served cascade's MRR on the valid queries it was chosen on
    retriever_valid_mrr: float = 0.0
    # paired bootstrap of valid MRR - retriever's (diff, lo, hi), when the rule used one
    valid_gain: dict[str, float] | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.rerank_k < 0 or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"ServedCascade: bad rerank_k / alpha: {self}")
        if self.rerank_k and not self.ranker_path:
            raise ValueError(f"ServedCascade: rerank_k={self.rerank_k} but no ranker_path")

    def write(self, folder: str | Path) -> Path:
        path = Path(folder, SERVED_FILE)
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def read(cls, folder: str | Path) -> ServedCascade:
        path = Path(folder, SERVED_FILE)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"{path}: no readable served-cascade choice ({e})") from None
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {sorted(unknown)}")
        return cls(**data)


def best_setting(by_k: dict[str, dict]) -> tuple[float, int, float]:
    """(valid MRR, K, alpha) of one ranker's best cascade on valid; ties: the smaller K.

    by_k: {str(K): {"alpha": a, "valid_mrr": {alpha: MRR}}}, as `evaluate.choose_fusion`
    returns it (the weight of each K already chosen on valid).
    """
    best = None
    for k, chosen in sorted(by_k.items(), key=lambda kv: int(kv[0])):
        mrr = chosen["valid_mrr"][chosen["alpha"]]
        if best is None or mrr > best[0]:
            best = (float(mrr), int(k), float(chosen["alpha"]))
    if best is None:
        raise ValueError("no K to choose from")
    return best


def choose_served(
    candidates: dict[str, dict],
    retriever_valid_mrr: float,
    paths: dict[str, str],
    gain: Callable[[str, int, float], dict[str, float]] | None = None,
) -> ServedCascade:
    """The (ranker, K, alpha) with the best valid MRR, served only if it beats the retriever.

    candidates: label -> that ranker's `by_k` (see `best_setting`). Ties go to the ranker
    listed first. `gain(label, K, alpha)`, when given, is the paired bootstrap of that
    cascade's MRR minus the retriever's on the same valid queries ({"diff", "lo", "hi"},
    `metrics.paired_bootstrap`): the cascade is served only if the interval's lower end is
    above 0, because K and alpha were picked on those very queries and a gain inside the
    noise is as likely a loss on new ones. Without `gain`, a valid MRR strictly above the
    retriever's suffices. Otherwise `rerank_k` 0, the retriever alone, and `reason` says why.
    """
    best = None
    for label, by_k in candidates.items():
        mrr, k, alpha = best_setting(by_k)
        if best is None or mrr > best[0]:
            best = (mrr, label, k, alpha)
    mean_ok = best is not None and best[0] > retriever_valid_mrr
    interval = gain(best[1], best[2], best[3]) if mean_ok and gain is not None else None
    if not mean_ok or (interval is not None and interval["lo"] <= 0):
        if best is None:
            why = "no ranker"
        else:
            why = (
                f"the best cascade, {best[1]} K={best[2]} alpha={best[3]}, has valid MRR "
                f"{100 * best[0]:.1f}"
            )
            why += (
                f", not above the retriever's {100 * retriever_valid_mrr:.1f}"
                if not mean_ok
                else f" against the retriever's {100 * retriever_valid_mrr:.1f}, a gain "
                f"{_interval(interval)} whose interval does not exclude 0"
            )
        return ServedCascade(
            retriever_valid_mrr=retriever_valid_mrr,
            valid_mrr=retriever_valid_mrr,
            reason=f"retriever alone: {why}",
        )
    mrr, label, k, alpha = best
    reason = (
        f"{label} K={k} alpha={alpha}: valid MRR {100 * mrr:.1f} against the "
        f"retriever's {100 * retriever_valid_mrr:.1f}"
    )
    if interval is not None:
        reason += f", gain {_interval(interval)}"
    return ServedCascade(
        ranker=label,
        ranker_path=paths[label],
        rerank_k=k,
        alpha=alpha,
        valid_mrr=mrr,
        retriever_valid_mrr=retriever_valid_mrr,
        valid_gain=interval,
        reason=reason,
    )


def _interval(d: dict[str, float]) -> str:
    return f"{100 * d['diff']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"
