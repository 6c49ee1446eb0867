"""How far the exported retriever moves from its start: WiSE-FT, its weight chosen on valid.

Fine-tuning on docstring summaries can cost the start model part of its strength on other
query registers (web queries: CoSQA). WiSE-FT (Wortsman et al., "Robust fine-tuning of
zero-shot models", CVPR 2022) exports `(1 - w) * start + w * trained`; `w` is chosen here
on the corpus valid split only, by a rule fixed before any run:

    among the weights whose valid MRR is not distinguishably below the best weight's
    (the paired bootstrap 95% interval of the difference includes 0), keep the one
    closest to the start (the smallest w).

It is the one-standard-error rule of model selection (Breiman et al. 1984; Hastie,
Tibshirani & Friedman, ESL 2nd ed., section 7.10) with "simplest" read as "least moved
from the start model": valid cannot tell those weights apart, and the one closest to the
start keeps the most of what valid does not measure.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from r2ps.data.schema import RetrievalSet
from r2ps.evaluation.metrics import paired_bootstrap, rank_of_gold_topk, reciprocal_ranks
from r2ps.evaluation.retrieval import MRR_CUTOFF, retrieve
from r2ps.log import get_logger
from r2ps.models.dual import DualEncoder
from r2ps.models.encoder import interpolate_encoders, read_meta, write_meta

log = get_logger(__name__)


def interpolated(start: str | Path, trained: str | Path, weight: float, out: str | Path) -> str:
    """The retriever folder at WiSE-FT `weight` (1: `trained` itself, nothing written),
    with the trained folder's r2ps.json (pooling, lengths), which applies to the mix too."""
    if weight == 1.0:
        return str(trained)
    interpolate_encoders(start, trained, weight, out)
    meta = read_meta(trained)
    if meta is not None:
        write_meta(out, meta)
    return str(out)


def reciprocal_ranks_on(
    path: str, rset: RetrievalSet, max_queries: int = 0, batch_size: int = 64
) -> np.ndarray:
    """Per-query reciprocal ranks (cut at MRR_CUTOFF) of the retriever at `path` over the
    whole pool of `rset`; shape (n_queries,)."""
    got = retrieve(DualEncoder.from_pretrained(path).eval(), rset, max_queries, batch_size)
    return reciprocal_ranks(rank_of_gold_topk(got.ids, got.gold), MRR_CUTOFF)


def closest_to_start(rr_by_weight: dict[float, np.ndarray]) -> tuple[float, dict[float, dict]]:
    """The module's rule over per-query reciprocal ranks on the same valid queries.

    Returns the chosen weight and, per weight, the paired bootstrap of its MRR minus the
    best weight's (`{"diff", "lo", "hi"}`, fractions of MRR). Raises ValueError when empty.
    """
    if not rr_by_weight:
        raise ValueError("no WiSE-FT weights to choose from")
    best = max(rr_by_weight, key=lambda w: float(np.mean(rr_by_weight[w])))
    vs_best = {w: paired_bootstrap(rr, rr_by_weight[best]) for w, rr in rr_by_weight.items()}
    return min(w for w, d in vs_best.items() if d["hi"] >= 0.0), vs_best


def choose_weight(
    start: str | Path,
    trained: str | Path,
    weights: Sequence[float],
    valid: RetrievalSet,
    max_queries: int = 0,
    batch_size: int = 64,
) -> dict:
    """Score every weight in `weights` (and 1, the trained model) on `valid` and apply the
    rule; returns {"chosen", "valid_mrr": {w: MRR}, "vs_best": {w: interval}} (weights as
    strings, for JSON). Each weight costs one embedding of the valid pool."""
    if any(not 0.0 <= w <= 1.0 for w in weights):
        raise ValueError(f"WiSE-FT weights must lie in [0, 1], got {list(weights)}")
    rr = {}
    with tempfile.TemporaryDirectory() as tmp:
        for w in sorted(set(weights) | {1.0}):
            path = interpolated(start, trained, w, Path(tmp, f"w{w}"))
            rr[w] = reciprocal_ranks_on(path, valid, max_queries, batch_size)
            log.info("WiSE-FT w=%.2f: valid MRR %.4f", w, rr[w].mean())
    chosen, vs_best = closest_to_start(rr)
    log.info(
        "WiSE-FT: w=%.2f chosen on valid (closest to the start within noise of the best)", chosen
    )
    return {
        "chosen": chosen,
        "valid_mrr": {str(w): float(r.mean()) for w, r in rr.items()},
        "vs_best": {str(w): d for w, d in vs_best.items()},
    }
