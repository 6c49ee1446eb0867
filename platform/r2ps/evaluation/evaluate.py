"""The cascade evaluation: the paper's quality table and its efficiency table on this machine.

Quality (every data set, whole pool, METHOD.md section 5): BM25 and the untrained
encoder (what a user has without r2ps), the trained retriever (DE), and each ranker
(`RR` = in-batch negatives, `RR+PS` = PS negatives) reranking the retriever's top K for
every K, with and without the fusion `alpha * DE + (1 - alpha) * tanh(CE)`. The ranker
scores the top max(K) of each query once; a smaller K reuses the first K of those
scores, which is exactly what a cascade at that K would have computed.

The fusion weight of each (ranker, K) is chosen on the VALID split only
(`choose_fusion`), never on a data set that is reported: a weight tuned on test data
would make the fused rows look better than they are.

Efficiency (the paper's Table 5, efficiency.py): seconds per query of the retriever, of
the cross encoder over the whole pool and of the cascade, for pools of `pool_sizes` codes.

Output, in `out`, each part written as soon as it is computed, so a job that stops late
keeps what it finished: served.json (the cascade the endpoint serves, chosen on valid:
cascade.ServedCascade) once chosen; results.json (everything), results.md and results.png
(report.py) after each data set's quality table and again after the efficiency table,
with `pending` naming the parts not computed yet.

Every input is checked before any model loads (`EvalConfig.inputs`, config.check_inputs):
a path that is given must hold what is read from it; a model left empty ('') is left out.
Defaults name what the main job (`make demo`) writes under runs/demo/pipeline.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from r2ps.config import check_inputs, to_dict
from r2ps.data.schema import TRAIN_SUMMARY, RetrievalSet
from r2ps.evaluation.config import RANKERS, EvalConfig, check_config
from r2ps.evaluation.efficiency import efficiency
from r2ps.evaluation.metrics import (
    paired_bootstrap,
    rank_of_gold_topk,
    reciprocal_ranks,
    retrieval_metrics,
)
from r2ps.evaluation.report import write_results
from r2ps.evaluation.retrieval import (
    MRR_CUTOFF,
    Retrieved,
    cascade_metrics_at,
    cascade_ranks,
    eval_queries,
    ranker_scores,
    retrieve,
)
from r2ps.log import get_logger
from r2ps.models.cross import HEAD_FILE, CrossEncoder
from r2ps.models.dual import DualEncoder
from r2ps.models.encoder import model_or_default
from r2ps.search.bm25 import BM25
from r2ps.search.cascade import ServedCascade, best_setting, choose_alpha, choose_served

log = get_logger(__name__)

# --- inputs -------------------------------------------------------------------------


def load_sets(cfg: EvalConfig) -> dict[str, RetrievalSet]:
    """The data sets to report, by name: the split folder's name and/or `cosqa`."""
    from r2ps.data.cosqa import read_cosqa

    sets = {}
    if cfg.split:
        sets[Path(cfg.split).name or "split"] = RetrievalSet.read(cfg.split)
    if cfg.cosqa:
        sets["cosqa"] = read_cosqa(cfg.cosqa)
    for name, rset in sets.items():
        if rset.queries.num_rows == 0 or rset.codes.num_rows == 0:
            raise ValueError(f"data set {name!r} has no queries or no codes")
    return sets


def exported_checkpoint(model_dir: str) -> dict | None:
    """Which training step a trained model folder holds and how many its run made
    ({"step", "of"}), from its train_summary.json; None when there is none (a model not
    trained by r2ps). A residual ranker exported at step 0 scores like the retriever
    (its head starts at zero), which is what makes its rows equal DE's."""
    path = Path(model_dir, TRAIN_SUMMARY)
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    steps = [h["step"] for h in summary.get("history", []) if "step" in h]
    step = summary.get("best_metrics", {}).get("step")
    return None if step is None else {"step": int(step), "of": int(max(steps, default=step))}


def given(path: str, reason: str, skipped: list[str]) -> str | None:
    """`path`, or None when the setting was left empty, with `reason` recorded in
    `skipped` (a path that is given was checked before anything ran: `EvalConfig.inputs`)."""
    if path:
        return path
    skipped.append(reason)
    log.warning(reason)
    return None


def load_ranker(path: str) -> CrossEncoder:
    """A saved ranker; a plain encoder dir would get a random head and is refused."""
    if not (Path(path) / HEAD_FILE).exists():
        raise ValueError(f"{path} is not a trained ranker (no {HEAD_FILE}): check rr / rr_ps")
    return CrossEncoder.from_pretrained(path)


# --- quality ------------------------------------------------------------------------


def bm25_ranks(
    rset: RetrievalSet, texts: Sequence[str], gold: Sequence[set[int]]
) -> list[np.ndarray]:
    """Gold ranks of BM25 over the whole pool; its top 1000 per query (past that: inf)."""
    index = BM25(rset.codes["code"].to_pylist())
    lists = [index.top_k(text, MRR_CUTOFF)[0] for text in texts]
    return rank_of_gold_topk(lists, gold)


def choose_fusion(
    retrieved: Retrieved, ce: np.ndarray, ks: Sequence[int], grid: Sequence[float]
) -> dict[str, dict]:
    """Per K, the fusion weight with the best MRR on `retrieved`, which must be VALID data."""
    out = {}
    for k in ks:

        def valid_mrr(alpha: float, k: int = k) -> float:
            return cascade_metrics_at(retrieved, ce, k, alpha)["mrr"]

        alpha, scores = choose_alpha(valid_mrr, grid)
        out[str(k)] = {"alpha": alpha, "valid_mrr": scores}
    return out


def evaluate_set(
    cfg: EvalConfig,
    rset: RetrievalSet,
    encoders: dict[str, DualEncoder],
    rankers: dict[str, CrossEncoder],
    alphas: dict[str, dict],
    served: ServedCascade | None = None,
) -> dict:
    """Every method's metrics on one data set, keyed by method name.

    Cascade rows: each K unfused (the ranker's own score; a residual ranker's is
    DE + tanh(CE), see CrossEncoder.trained_alpha), then each ranker "as served" (its K
    and fusion weight chosen on valid), then "served", the cascade the endpoint serves
    (`served`; the retriever alone when no ranker beat it on valid). Every row carries
    `vs_de`: the MRR difference to the trained retriever with a paired bootstrap 95%
    interval over the same queries (seeded).
    """
    texts, gold = eval_queries(rset, cfg.max_queries)
    codes = rset.codes["code"].to_pylist()
    ranks: dict[str, list[np.ndarray]] = {"BM25": bm25_ranks(rset, texts, gold)}
    methods: dict[str, dict] = {"BM25": {"family": "BM25"}}
    retrieved = None
    for label, model in encoders.items():  # the untrained encoder first, DE (if any) last
        retrieved = retrieve(model, rset, cfg.max_queries, cfg.batch_size)
        ranks[label] = rank_of_gold_topk(retrieved.ids, retrieved.gold)
        methods[label] = {"family": label}
    first_stage = list(encoders)[-1]
    ce_of = {}
    for label, model in rankers.items():
        t0 = time.perf_counter()
        ce = ce_of[label] = ranker_scores(model, retrieved, codes, max(cfg.ks), cfg.batch_size)
        log.info("%s scored %d pairs in %.1f s", label, ce.size, time.perf_counter() - t0)
        for k in cfg.ks:
            name = f"{label} K={k}"
            alpha = model.trained_alpha
            ranks[name] = cascade_ranks(retrieved, ce, k, alpha)
            methods[name] = {"family": label, "k": k, "fused": False, "alpha": alpha}
        if label in alphas:
            _, k, alpha = best_setting(alphas[label])
            name = f"{label} as served"
            ranks[name] = cascade_ranks(retrieved, ce, k, alpha)
            methods[name] = {"family": label, "k": k, "fused": True, "alpha": alpha}
    if served is not None:
        k = served.rerank_k
        ce = ce_of.get(served.ranker)
        ranks["served"] = cascade_ranks(retrieved, ce, k, served.alpha) if k else ranks[first_stage]
        methods["served"] = {
            "family": served.ranker or first_stage,
            "k": k,
            "fused": bool(k),
            "alpha": served.alpha,
        }
    base = reciprocal_ranks(ranks[first_stage], MRR_CUTOFF)
    for name, row in methods.items():
        row.update(retrieval_metrics(ranks[name], mrr_cutoff=MRR_CUTOFF))
        rr = reciprocal_ranks(ranks[name], MRR_CUTOFF)
        row["vs_de"] = paired_bootstrap(rr, base, cfg.bootstrap, cfg.seed)
    return {"n_queries": len(texts), "n_codes": len(codes), "methods": methods}


# --- the job ------------------------------------------------------------------------


def evaluate(cfg: EvalConfig) -> dict:
    """Run the whole evaluation, writing served.json, then results.json, results.md and
    results.png to `out` after each data set and after the efficiency table.

    Raises ConfigError (config.check_inputs) before loading anything when an input is
    missing, ValueError on settings that cannot run (`check_config`).
    """
    check_config(cfg)
    check_inputs(cfg)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)  # an unwritable `out` fails here, not late
    sets = load_sets(cfg)
    skipped: list[str] = []
    untrained_path = model_or_default(cfg.untrained)
    encoders = {"untrained DE": DualEncoder.from_pretrained(untrained_path)}
    retriever_path = given(cfg.retriever, "DE (trained retriever): none given", skipped)
    if retriever_path:
        encoders["DE"] = DualEncoder.from_pretrained(retriever_path)
    else:
        skipped.append("cascades rerank the untrained encoder's ranking (no trained retriever)")
        log.warning(skipped[-1])
    first_stage_label = list(encoders)[-1]
    first_stage = encoders[first_stage_label]
    ranker_paths = {
        label: path
        for name, label in RANKERS.items()
        if (path := given(getattr(cfg, name), f"{label} ({name}): none given", skipped))
    }
    rankers = {label: load_ranker(p) for label, p in ranker_paths.items()}

    alphas: dict[str, dict] = {}
    served = None
    no_valid = "fusion: no valid split given, fused rows skipped"
    valid_path = given(cfg.valid, no_valid, skipped) if rankers else None
    if valid_path:
        valid = RetrievalSet.read(valid_path)
        valid_retrieved = retrieve(first_stage, valid, cfg.max_valid_queries, cfg.batch_size)
        valid_codes = valid.codes["code"].to_pylist()
        valid_ce = {}
        for label, model in rankers.items():
            ce = ranker_scores(model, valid_retrieved, valid_codes, max(cfg.ks), cfg.batch_size)
            valid_ce[label] = ce
            alphas[label] = choose_fusion(valid_retrieved, ce, cfg.ks, cfg.alpha_grid)
            log.info("%s fusion weights (on %s): %s", label, valid_path, alphas[label])

        def valid_gain(label: str, k: int, alpha: float) -> dict[str, float]:
            ranks = cascade_ranks(valid_retrieved, valid_ce[label], k, alpha)
            alone = rank_of_gold_topk(valid_retrieved.ids, valid_retrieved.gold)
            rr, base = (reciprocal_ranks(r, MRR_CUTOFF) for r in (ranks, alone))
            return paired_bootstrap(rr, base, cfg.bootstrap, cfg.seed)

        served = choose_served(
            alphas,
            valid_retrieved.metrics()["mrr"],
            ranker_paths,
            gain=valid_gain if cfg.serve_needs_interval else None,
        )
        log.info("served cascade (chosen on %s): %s", valid_path, served.reason)
    # always a choice on disk (serving reads it): without a ranker or a valid split, the
    # retriever alone, with the reason
    why = "; ".join(skipped) or "no ranker to choose from"
    (served or ServedCascade(reason=f"retriever alone: {why}")).write(cfg.out)

    report: dict = {
        "settings": to_dict(cfg),
        "models": {
            "untrained DE": untrained_path,
            "DE": retriever_path,
            "first_stage": first_stage_label,
            **ranker_paths,
        },
        "checkpoints": {label: exported_checkpoint(p) for label, p in ranker_paths.items()},
        "alpha": {"split": valid_path, "by_ranker": alphas},
        "served": None if served is None else dataclasses.asdict(served),
        "skipped": skipped,
        "datasets": {},
        # parts not computed yet: what results.* lack when the job stopped before them
        "pending": [*sets, *(["efficiency"] if cfg.pool_sizes else [])],
    }
    for name, rset in sets.items():
        log.info("evaluating on %s (%d queries max)", name, cfg.max_queries)
        report["datasets"][name] = evaluate_set(cfg, rset, encoders, rankers, alphas, served)
        report["pending"].remove(name)
        write_results(report, cfg.out)

    if cfg.pool_sizes:
        ranker_label = next(iter(reversed(rankers)), None)  # RR+PS when present
        if ranker_label:
            ranker = rankers[ranker_label]
        else:  # timing does not depend on the head's weights, only on the architecture
            ranker = CrossEncoder.from_pretrained(untrained_path)
            skipped.append("efficiency: no ranker, timed a fresh-head cross encoder instead")
            log.warning(skipped[-1])
        texts, _ = eval_queries(next(iter(sets.values())), cfg.timing_queries)
        report["efficiency"] = {
            "retriever": first_stage_label,
            "ranker": ranker_label or f"fresh head on {untrained_path}",
            **efficiency(cfg, first_stage, ranker, texts),
        }
        report["pending"].remove("efficiency")
        write_results(report, cfg.out)
    return report
