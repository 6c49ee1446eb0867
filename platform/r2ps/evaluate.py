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

Output, in `out`: results.json (everything), results.md and results.png (report.py), and
served.json (the cascade the endpoint serves, chosen on valid: cascade.ServedCascade).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from r2ps.bm25 import BM25
from r2ps.cascade import ServedCascade, best_setting, choose_alpha, choose_served
from r2ps.config import to_dict
from r2ps.data.schema import TRAIN_SUMMARY, RetrievalSet
from r2ps.efficiency import efficiency
from r2ps.log import get_logger
from r2ps.metrics import paired_bootstrap, rank_of_gold_topk, reciprocal_ranks, retrieval_metrics
from r2ps.models.cross import HEAD_FILE, CrossEncoder
from r2ps.models.dual import DualEncoder
from r2ps.models.encoder import model_or_default
from r2ps.report import write_results
from r2ps.retrieval import (
    MRR_CUTOFF,
    Retrieved,
    cascade_metrics_at,
    cascade_ranks,
    eval_queries,
    ranker_scores,
    retrieve,
)

log = get_logger(__name__)

RANKERS = {"rr": "RR", "rr_ps": "RR+PS"}  # setting name -> method label


@dataclass
class EvalConfig:
    split: str = field(
        default="runs/demo/corpus/test",
        metadata={"help": "corpus split folder to evaluate on ('' for none)"},
    )
    cosqa: str = field(default="", metadata={"help": "CoSQA folder: also evaluate on CoSQA dev"})
    valid: str = field(
        default="runs/demo/corpus/valid",
        metadata={"help": "split folder the fusion weight is chosen on (never the test split)"},
    )
    retriever: str = field(
        default="runs/demo/retriever", metadata={"help": "trained DualEncoder dir (DE)"}
    )
    untrained: str = field(
        default="", metadata={"help": "untrained encoder dir ('' = bundled MiniLM)"}
    )
    rr: str = field(
        default="runs/demo/ranker_rr", metadata={"help": "ranker trained on in-batch negatives"}
    )
    rr_ps: str = field(
        default="runs/demo/ranker", metadata={"help": "ranker trained on PS negatives"}
    )
    ks: list[int] = field(
        default_factory=lambda: [5, 10, 20, 50], metadata={"help": "cascade depths K"}
    )
    alpha_grid: list[float] = field(
        default_factory=lambda: [round(0.1 * i, 1) for i in range(11)],
        metadata={"help": "fusion weights tried on the valid split"},
    )
    max_queries: int = field(
        default=500, metadata={"help": "queries per data set (0 = all; lowest query ids)"}
    )
    max_valid_queries: int = field(
        default=500, metadata={"help": "valid queries the served K and weight are chosen on"}
    )
    bootstrap: int = field(
        default=2000, metadata={"help": "resamples of the paired bootstrap against DE"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the bootstrap"})
    serve_needs_interval: bool = field(
        default=True,
        metadata={
            "help": "serve a cascade only when its valid MRR gain's bootstrap interval "
            "excludes 0 (false: when its valid MRR is above the retriever's)"
        },
    )
    batch_size: int = 64
    # efficiency (Table 5)
    pool_sizes: list[int] = field(
        default_factory=lambda: [1000, 10000, 100000],
        metadata={"help": "pool sizes of the efficiency table ([] = no efficiency table)"},
    )
    pool_source: str = field(
        default="runs/demo/corpus",
        metadata={"help": "codes for the timing pools: a corpus folder (its splits) or a split"},
    )
    max_embed_codes: int = field(
        default=10000,
        metadata={"help": "codes embedded for timing; larger pools repeat their embeddings"},
    )
    timing_queries: int = field(default=20, metadata={"help": "queries timed one at a time"})
    timing_pairs: int = field(
        default=64, metadata={"help": "(query, code) pairs timed for the cross encoder"}
    )
    efficiency_k: int = field(default=10, metadata={"help": "K of the timed cascade"})
    out: str = field(default="runs/demo/eval", metadata={"help": "results folder"})


def check_config(cfg: EvalConfig) -> None:
    """Fail before loading any model on settings that cannot run."""
    if not cfg.split and not cfg.cosqa:
        raise ValueError("nothing to evaluate: give a corpus split (--split) and/or --cosqa")
    if not cfg.ks or min(cfg.ks) < 1:
        raise ValueError(f"ks must be a non-empty list of positive depths, got {cfg.ks}")
    if any(not 0.0 <= a <= 1.0 for a in cfg.alpha_grid) or not cfg.alpha_grid:
        raise ValueError(f"alpha_grid must be weights in [0, 1], got {cfg.alpha_grid}")
    if cfg.valid and cfg.split and Path(cfg.valid).resolve() == Path(cfg.split).resolve():
        raise ValueError(f"valid ({cfg.valid}) is the evaluated split: choose alpha elsewhere")
    if any(n < 1 for n in cfg.pool_sizes):
        raise ValueError(f"pool_sizes must be positive, got {cfg.pool_sizes}")
    for name in ("timing_queries", "timing_pairs", "efficiency_k", "max_embed_codes"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")


# --- inputs -------------------------------------------------------------------------


def load_sets(cfg: EvalConfig) -> dict[str, RetrievalSet]:
    """The data sets to report, by name: the split folder's name and/or `cosqa`."""
    from r2ps.data.readers import read_cosqa

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


def present(path: str, what: str, skipped: list[str]) -> str | None:
    """`path` if it is a model folder; otherwise None, with a warning recorded in `skipped`."""
    return _holding(path, "config.json", f"{what}: no model at {path!r}, skipped", skipped)


def present_split(path: str, skipped: list[str]) -> str | None:
    """`path` if it is a split folder; else None, recorded (fused rows are then left out)."""
    reason = f"fusion: no valid split at {path!r}, fused rows skipped"
    return _holding(path, "queries.parquet", reason, skipped)


def _holding(path: str, marker: str, reason: str, skipped: list[str]) -> str | None:
    if path and (Path(path) / marker).exists():
        return path
    log.warning(reason)
    skipped.append(reason)
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
    """Run the whole evaluation and write results.json, results.md and results.png to `out`."""
    check_config(cfg)
    sets = load_sets(cfg)
    skipped: list[str] = []
    untrained_path = model_or_default(cfg.untrained)
    encoders = {"untrained DE": DualEncoder.from_pretrained(untrained_path)}
    retriever_path = present(cfg.retriever, "DE (trained retriever)", skipped)
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
        if (path := present(getattr(cfg, name), f"{label} ({name})", skipped))
    }
    rankers = {label: load_ranker(p) for label, p in ranker_paths.items()}

    alphas: dict[str, dict] = {}
    served = None
    valid_path = present_split(cfg.valid, skipped) if rankers else None
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
    }
    for name, rset in sets.items():
        log.info("evaluating on %s (%d queries max)", name, cfg.max_queries)
        report["datasets"][name] = evaluate_set(cfg, rset, encoders, rankers, alphas, served)

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
    write_results(report, cfg.out)
    # always a choice on disk (serving reads it): without a ranker or a valid split, the
    # retriever alone, with the reason
    why = "; ".join(skipped) or "no ranker to choose from"
    (served or ServedCascade(reason=f"retriever alone: {why}")).write(cfg.out)
    return report
