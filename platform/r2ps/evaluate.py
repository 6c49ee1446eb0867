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

Efficiency (the paper's Table 5): seconds per query of the retriever (query encoding +
exact faiss search), of the cross encoder over every code of the pool (extrapolated from
a timed sample of pairs: a whole 100k pool would take hours per query) and of the
cascade at K = `efficiency_k`, for pools of `pool_sizes` codes. Code embedding is a
one-off indexing cost and is reported on its own.

Output, in `out`: results.json (everything), results.md (the tables) and results.png.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from r2ps.bm25 import BM25
from r2ps.cascade import ServedCascade, best_setting, cascade_ids, choose_alpha, choose_served
from r2ps.config import to_dict
from r2ps.data.schema import SPLITS, RetrievalSet
from r2ps.index import CodeIndex, IndexConfig
from r2ps.log import get_logger
from r2ps.metrics import paired_bootstrap, rank_of_gold_topk, reciprocal_ranks, retrieval_metrics
from r2ps.models.cross import HEAD_FILE, CrossEncoder
from r2ps.models.dual import DualEncoder
from r2ps.models.encoder import model_or_default
from r2ps.retrieval import (
    MRR_CUTOFF,
    Retrieved,
    cascade_metrics_at,
    cascade_ranks,
    eval_queries,
    retrieve,
)

log = get_logger(__name__)

RANKERS = {"rr": "RR", "rr_ps": "RR+PS"}  # setting name -> method label
METRICS = ("mrr", "recall@1", "recall@5", "recall@10", "ndcg@10")


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


def present(path: str, what: str, skipped: list[str]) -> str | None:
    """`path` if it is a model folder; otherwise None, with a warning recorded in `skipped`."""
    if path and (Path(path) / "config.json").exists():
        return path
    reason = f"{what}: no model at {path!r}, skipped"
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


def ranker_scores(
    model: CrossEncoder, retrieved: Retrieved, codes: Sequence[str], depth: int, batch_size: int
) -> np.ndarray:
    """Ranker scores [Q, depth] of each query's top `depth` retrieved codes, in retriever order."""
    depth = min(depth, retrieved.ids.shape[1])
    n = len(retrieved.queries)
    pair_q = [retrieved.queries[i] for i in range(n) for _ in range(depth)]
    pair_c = [codes[p] for i in range(n) for p in retrieved.ids[i, :depth]]
    return model.score_pairs(pair_q, pair_c, batch_size).reshape(n, depth)


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


# --- efficiency ---------------------------------------------------------------------


def extrapolate(seconds: float, measured: int, target: int) -> float:
    """Time of `target` units from `seconds` measured over `measured` units (linear cost)."""
    if measured < 1:
        raise ValueError(f"cannot extrapolate from {measured} measured units")
    return seconds / measured * target


def efficiency_row(
    pool: int,
    de_s: float,
    rr_s: float,
    pair_seconds: float,
    timed_pairs: int,
    embed_seconds: float,
    embedded: int,
    build_s: float,
) -> dict:
    """One row of Table 5 from measured times; what was extrapolated is said so."""
    ce_s = extrapolate(pair_seconds, timed_pairs, pool)
    return {
        "pool": pool,
        "de_s_per_query": de_s,
        "ce_all_s_per_query": ce_s,
        "ce_all_extrapolated": timed_pairs < pool,
        "ce_all_basis": f"{timed_pairs} timed pairs x {pool} codes / {timed_pairs}",
        "rr_s_per_query": rr_s,
        "speedup_rr_vs_ce_all": ce_s / rr_s if rr_s > 0 else math.inf,
        "index_embed_s": extrapolate(embed_seconds, embedded, pool),
        "index_embed_extrapolated": embedded < pool,
        "index_build_s": build_s,
    }


def pool_codes(source: str, n: int) -> tuple[list[str], list[str]]:
    """Up to `n` (code_id, code) from `source`: a split folder, or a corpus of split folders."""
    folder = Path(source)
    if (folder / "codes.parquet").exists():
        files = [folder / "codes.parquet"]
    else:
        files = [folder / s / "codes.parquet" for s in SPLITS if (folder / s).is_dir()]
    if not files:
        raise FileNotFoundError(f"pool_source {source}: no codes.parquet, nor split folders")
    tables, have = [], 0
    for path in files:
        if have >= n:
            break
        table = pq.read_table(path, columns=["code_id", "code"])
        tables.append(table.slice(0, n - have))
        have += tables[-1].num_rows
    table = pa.concat_tables(tables)
    return table["code_id"].to_pylist(), table["code"].to_pylist()


def efficiency(
    cfg: EvalConfig, retriever: DualEncoder, ranker: CrossEncoder, queries: Sequence[str]
) -> dict:
    """Table 5: seconds per query of DE, the cross encoder over the pool and the cascade.

    The pool's distinct codes (at most `max_embed_codes`) are embedded once; a larger
    pool repeats those embeddings, which costs an exact (flat) search exactly what
    distinct codes would. Queries are timed one at a time, as a user sends them.
    """
    largest = max(cfg.pool_sizes)
    ids, codes = pool_codes(cfg.pool_source, min(largest, cfg.max_embed_codes))
    queries = list(queries[: cfg.timing_queries])
    if not queries or not codes:
        raise ValueError("efficiency needs at least one query and one code")
    t0 = time.perf_counter()
    emb = retriever.embed_codes(codes, cfg.batch_size)
    embed_s = time.perf_counter() - t0
    # Cross encoder cost per pair, on pairs of real queries and codes.
    n_pairs = cfg.timing_pairs
    pair_q = [queries[i % len(queries)] for i in range(n_pairs)]
    pair_c = [codes[i % len(codes)] for i in range(n_pairs)]
    t0 = time.perf_counter()
    ranker.score_pairs(pair_q, pair_c, cfg.batch_size)
    pair_s = time.perf_counter() - t0
    k = cfg.efficiency_k
    # One untimed pass of each model first: the first call pays for lazy initialisation.
    retriever.embed_queries(queries[:1])
    ranker.score_pairs(queries[:1], codes[:1])
    rows = []
    for pool in sorted(cfg.pool_sizes):
        take = np.arange(pool) % len(ids)
        pool_ids = [ids[i] if i < len(ids) else f"{ids[i % len(ids)]}#{i}" for i in range(pool)]
        pool_texts = [codes[i] for i in take]
        t0 = time.perf_counter()
        manifest = {"model_path": "efficiency pool"}
        index = CodeIndex.build(emb[take], pool_ids, IndexConfig(kind="flat"), manifest)
        build_s = time.perf_counter() - t0
        de_times, rr_times = [], []
        for text in queries:
            t0 = time.perf_counter()
            q = retriever.embed_queries([text], cfg.batch_size)
            scores, pos = index.search(q, min(k, pool))
            t1 = time.perf_counter()
            ce = ranker.score_pairs([text] * pos.shape[1], [pool_texts[p] for p in pos[0]])
            cascade_ids(pos[0], scores[0], ce)
            t2 = time.perf_counter()
            de_times.append(t1 - t0)
            rr_times.append(t2 - t0)
        rows.append(
            efficiency_row(
                pool,
                float(np.mean(de_times)),
                float(np.mean(rr_times)),
                pair_s,
                n_pairs,
                embed_s,
                len(codes),
                build_s,
            )
        )
        log.info("efficiency at %d codes: %s", pool, rows[-1])
    return {
        "k": k,
        "timed_queries": len(queries),
        "timed_pairs": n_pairs,
        "distinct_codes_embedded": len(codes),
        "ce_s_per_pair": pair_s / n_pairs,
        "rows": rows,
        "note": (
            "ce_all is extrapolated: seconds per timed pair x pool size; pools larger than "
            "distinct_codes_embedded repeat embeddings (same flat-search cost)"
        ),
    }


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
        base = reciprocal_ranks(cascade_ranks(valid_retrieved, None, 0, 1.0), MRR_CUTOFF)

        def valid_gain(label: str, k: int, alpha: float) -> dict[str, float]:
            ranks = cascade_ranks(valid_retrieved, valid_ce[label], k, alpha)
            rr = reciprocal_ranks(ranks, MRR_CUTOFF)
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


def present_split(path: str, skipped: list[str]) -> str | None:
    """`path` if it is a split folder; else None, recorded (fused rows are then left out)."""
    if path and (Path(path) / "queries.parquet").exists():
        return path
    reason = f"fusion: no valid split at {path!r}, fused rows skipped"
    log.warning(reason)
    skipped.append(reason)
    return None


# --- output -------------------------------------------------------------------------


def markdown(report: dict) -> str:
    """The quality table (rows = methods, columns = metrics per data set) and Table 5."""
    names = list(report["datasets"])
    methods: list[str] = []
    for data in report["datasets"].values():
        methods += [m for m in data["methods"] if m not in methods]
    header = ["method"]
    for n in names:
        header += [f"{n} {m.upper() if m == 'mrr' else m}" for m in METRICS]
        header.append(f"{n} MRR - DE [95% CI]")
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for method in methods:
        cells = [_label(method, report["datasets"])]
        for n in names:
            row = report["datasets"][n]["methods"].get(method)
            cells += [f"{100 * row[m]:.1f}" if row else "" for m in METRICS]
            cells.append(_delta(row["vs_de"]) if row and "vs_de" in row else "")
        lines.append("| " + " | ".join(cells) + " |")
    sizes = ", ".join(
        f"{n}: {d['n_queries']} queries, {d['n_codes']} codes"
        for n, d in report["datasets"].items()
    )
    lines += ["", f"Metrics in %, whole pool ({sizes}); MRR counts a rank past 1000 as 0."]
    if report["alpha"]["by_ranker"]:
        chosen = "; ".join(
            f"{label} " + ", ".join(f"K={k}: {v['alpha']}" for k, v in by_k.items())
            for label, by_k in report["alpha"]["by_ranker"].items()
        )
        lines.append(f"Fusion weights chosen on {report['alpha']['split']}: {chosen}.")
    if report.get("served"):
        lines.append(f"Served (chosen on the valid split): {report['served']['reason']}.")
    lines.append(
        "MRR - DE: paired bootstrap over the same queries "
        f"({report['settings'].get('bootstrap')} resamples, seed {report['settings'].get('seed')})."
    )
    for reason in report["skipped"]:
        lines.append(f"- {reason}")
    eff = report.get("efficiency")
    if eff:
        lines += [
            "",
            f"| pool | DE s/query | CE over pool s/query | RR K={eff['k']} s/query | speed-up | "
            "indexing (embed) s |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in eff["rows"]:
            star = " (extrapolated)" if r["ce_all_extrapolated"] else ""
            emb = " (extrapolated)" if r["index_embed_extrapolated"] else ""
            lines.append(
                f"| {r['pool']} | {r['de_s_per_query']:.4f} | {r['ce_all_s_per_query']:.2f}{star} "
                f"| {r['rr_s_per_query']:.4f} | {r['speedup_rr_vs_ce_all']:.3g}x "
                f"| {r['index_embed_s']:.1f}{emb} |"
            )
        lines.append(
            f"\nRetriever {eff['retriever']}, ranker {eff['ranker']}; {eff['timed_queries']} "
            f"queries timed one at a time; cross encoder {eff['ce_s_per_pair'] * 1000:.1f} ms "
            f"per pair over {eff['timed_pairs']} timed pairs. {eff['note']}."
        )
    return "\n".join(lines) + "\n"


def _label(method: str, datasets: dict) -> str:
    """A row's name; "as served" and "served" rows name their K and weight."""
    for data in datasets.values():
        row = data["methods"].get(method)
        if row and method.endswith("served"):
            if not row["k"]:
                return f"{method} (retriever alone)"
            return f"{method} (K={row['k']}, alpha={row['alpha']})"
    return method


def _delta(d: dict) -> str:
    return f"{100 * d['diff']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"


def plot(report: dict, path: Path) -> None:
    """MRR against K per method and data set; time per query against pool size (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"BM25": "tab:grey", "untrained DE": "tab:olive", "DE": "tab:blue"}
    colors.update({"RR": "tab:orange", "RR+PS": "tab:red"})
    markers = "os^vD"
    for d, (name, data) in enumerate(report["datasets"].items()):
        curves: dict[tuple[str, bool], list[tuple[int, float]]] = {}
        for method, row in data["methods"].items():
            if method.endswith("served"):  # one chosen point, named in the table
                continue
            if "k" in row:
                curves.setdefault((row["family"], row["fused"]), []).append((row["k"], row["mrr"]))
            else:  # no K: a level line
                color = colors.get(method, "black")
                left.axhline(
                    100 * row["mrr"], color=color, linestyle=":", label=f"{method} ({name})"
                )
        for (family, fused), points in curves.items():
            points.sort()
            left.plot(
                [k for k, _ in points],
                [100 * m for _, m in points],
                linestyle="--" if fused else "-",
                marker=markers[d % len(markers)],
                color=colors.get(family, "black"),
                label=f"{family}{' fused' if fused else ''} ({name})",
            )
    ks = report["settings"]["ks"]
    left.set_xscale("log")
    left.set_xticks(ks, [str(k) for k in ks])
    left.minorticks_off()
    left.set_xlabel("K (codes reranked)")
    left.set_ylabel("MRR (%)")
    left.set_title("MRR against K")
    if left.get_legend_handles_labels()[0]:
        left.legend(fontsize=7, ncol=2)
    eff = report.get("efficiency")
    if eff:
        pools = [r["pool"] for r in eff["rows"]]
        right.plot(pools, [r["de_s_per_query"] for r in eff["rows"]], "-o", label="DE")
        right.plot(
            pools,
            [r["ce_all_s_per_query"] for r in eff["rows"]],
            "--o",
            label="CE over pool (extrapolated)",
        )
        right.plot(
            pools, [r["rr_s_per_query"] for r in eff["rows"]], "-s", label=f"cascade K={eff['k']}"
        )
        right.set_xscale("log")
        right.set_yscale("log")
        right.legend(fontsize=7)
    right.set_xlabel("pool size (codes)")
    right.set_ylabel("seconds per query")
    right.set_title("time per query")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(report: dict, out: str | Path) -> dict[str, Path]:
    """results.json, results.md and results.png in `out`; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "md": out / "results.md", "png": out / "results.png"}
    paths["json"].write_text(json.dumps(report, indent=1, default=str))
    paths["md"].write_text(markdown(report))
    plot(report, paths["png"])
    report["files"] = {k: str(v) for k, v in paths.items()}
    return paths
