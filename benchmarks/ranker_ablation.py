"""Ranker recipes at a preset's budget (demo unless --preset), side by side on the VALID split
(issue 15's ablation).

    python benchmarks/ranker_ablation.py --base runs/base --out runs/ablation \
        --variants baseline,residual,residual_init --json benchmarks/results/ranker_ablation.json

`--base` is a pipeline output (`jobs/pipeline.py --preset demo`) whose corpus, retriever
and mined negatives already exist; every variant trains the `ranker_ps` stage's config
(same preset budget: steps, groups, pair length, seed) with its own overrides, so rows
differ only in the lever. A variant with mining overrides (`window_start`, `margin`, ...)
re-mines into its own folder from the base's index (same retriever, same pool).

Each row is the model after its LAST step (not the best checkpoint: a lever is judged at
a fixed budget), scored as the cascade scores it: the retriever's top K of every valid
query reranked by the ranker's own score (a residual ranker: DE + tanh(CE)). Reported:
valid MRR and R@1, the MRR difference to the retriever with a paired bootstrap 95%
interval (same queries, seeded), and what the ranker learned (ranker_probe.py): mean
per-query Spearman correlation of its scores with the retriever's score, with query/code
token overlap and with code length. Nothing here reads CoSQA.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from ranker_probe import mean_spearman, n_tokens, overlap  # noqa: E402

from r2ps.data.schema import RetrievalSet  # noqa: E402
from r2ps.evaluation.metrics import paired_bootstrap, reciprocal_ranks, retrieval_metrics  # noqa: E402
from r2ps.evaluation.retrieval import (  # noqa: E402
    MRR_CUTOFF,
    cascade_ranks,
    ranker_scores,  # noqa: E402
    retrieve,
)
from r2ps.models.cross import CrossEncoder  # noqa: E402
from r2ps.models.dual import DualEncoder  # noqa: E402
from r2ps.pipeline.config import PipelineConfig, build_stages  # noqa: E402
from r2ps.pipeline.stages import mine_negatives  # noqa: E402

# Every variant sets every lever, so a row does not depend on the preset's recipe.
OFF = {"residual": False, "start_from_retriever": False, "ps_random": 0}
RES = {"residual": True, "start_from_retriever": True, "ps_random": 0}
# name -> (ranker overrides, mining overrides)
VARIANTS: dict[str, tuple[dict, dict]] = {
    "baseline": (OFF, {}),
    "residual": ({**OFF, "residual": True}, {}),
    "retriever_init": ({**OFF, "start_from_retriever": True}, {}),
    "residual_init": (RES, {}),
    "residual_init_in_batch": ({**RES, "negatives_source": "in_batch"}, {}),
    "residual_init_random1": ({**RES, "ps_random": 1}, {}),
    "residual_init_window3": (RES, {"window_start": 3}),
    "residual_init_window10": (RES, {"window_end": 10}),  # what a K = 10 cascade reranks
    "residual_init_margin": (RES, {"margin": 0.05}),
    "residual_init_pair128_x2steps": ({**RES, "max_pair_len": 128, "max_steps": 60}, {}),
    "residual_init_group8_halfsteps": ({**RES, "num_negatives": 7, "max_steps": 15}, {}),
    "residual_init_lr5e-5": ({**RES, "lr": 5e-5}, {}),
    "residual_init_head_lr1e-4": ({**RES, "head_lr": 1e-4}, {}),
    "residual_init_head_lr1e-3": ({**RES, "head_lr": 1e-3}, {}),
    # the head reads the query and code segments' mean states multiplied (what the
    # mean-pooling retriever it starts from compares), not the [CLS] state
    "residual_init_segments": ({**RES, "pooling": "segments"}, {}),
    # the first 3 of MiniLM's 6 layers: half the arithmetic per pair (issue 18's speed lever)
    "residual_init_layers3": ({**RES, "num_layers": 3}, {}),
    # ... trained on twice the queries (twice the steps), about the 6-layer run's time
    "residual_init_layers3_x2queries": ({**RES, "num_layers": 3, "max_train_pairs": 1920}, {}),
}


def last_model(cfg) -> tuple[CrossEncoder, int]:
    """Train `cfg` on Ray Train; the model of its last checkpoint and the steps it took
    (`max_steps` is 0 where the budget is `max_train_pairs`)."""
    from r2ps.train.launch import make_trainer
    from r2ps.train.loop import HF_DIR
    from r2ps.train.ranker import RankerTask

    result = make_trainer(cfg, RankerTask()).fit()
    with result.checkpoint.as_directory() as d:
        model = CrossEncoder.from_pretrained(Path(d) / HF_DIR).eval()
    return model, int(result.metrics["step"])


def score_row(model: CrossEncoder, got, codes, lengths, k: int, base_rr, seed: int) -> dict:
    ce = ranker_scores(model, got, codes, k, 64)
    ranks = cascade_ranks(got, ce, k, model.trained_alpha)
    rr = reciprocal_ranks(ranks, MRR_CUTOFF)
    metrics = retrieval_metrics(ranks, mrr_cutoff=MRR_CUTOFF)
    ov = np.array(
        [[overlap(q, codes[p]) for p in got.ids[i, :k]] for i, q in enumerate(got.queries)]
    )
    return {
        "valid_mrr": metrics["mrr"],
        "valid_recall@1": metrics["recall@1"],
        "vs_de": paired_bootstrap(rr, base_rr, 2000, seed),
        "ranker_alone_mrr": retrieval_metrics(cascade_ranks(got, ce, k, 0.0))["mrr"],
        "spearman_ce_vs_de": mean_spearman(ce, got.scores[:, :k]),
        "spearman_ce_vs_overlap": mean_spearman(ce, ov),
        "spearman_ce_vs_length": mean_spearman(ce, lengths[got.ids[:, :k]]),
        "ce_std_within_query": float(ce.std(axis=1).mean()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--base", required=True, help="a pipeline output of --preset (corpus, retriever, mined)"
    )
    p.add_argument("--preset", default="demo", help="the pipeline preset --base was made with")
    p.add_argument("--out", required=True)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="0", help="comma-separated ranker seeds")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--queries", type=int, default=0, help="valid queries scored (0: all)")
    p.add_argument("--json", default="", help="append rows to this JSON file")
    p.add_argument(
        "--saved",
        default="",
        help="NAME=DIR,...: also score these saved rankers (no training) on the same queries",
    )
    p.add_argument("overrides", nargs="*", help="ranker key=value for every variant")
    args = p.parse_args()

    import ray
    import torch
    import yaml

    from r2ps.log import setup_logging

    setup_logging()
    ray.init(ignore_reinit_error=True)
    stages = {s.name: s for s in build_stages(PipelineConfig(preset=args.preset, out=args.base))}
    ranker_cfg, mine_cfg = stages["ranker_ps"].config, stages["mine"].config
    shared = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.overrides)}
    valid = RetrievalSet.read(Path(ranker_cfg.corpus) / "valid")
    torch.set_num_threads(2)
    retriever = DualEncoder.from_pretrained(ranker_cfg.retriever).eval()
    got = retrieve(retriever, valid, args.queries, 64)
    del retriever
    codes = valid.codes["code"].to_pylist()
    base_ranks = cascade_ranks(got, np.zeros((len(got.queries), 0)), 0, 0.0)
    base_rr = reciprocal_ranks(base_ranks, MRR_CUTOFF)
    tok = CrossEncoder.from_pretrained(ranker_cfg.retriever).tokenizer
    lengths = n_tokens(tok, codes)
    out = Path(args.out)
    rows = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).exists() else []
    print(f"retriever on valid: MRR {100 * base_rr.mean():.1f} over {len(base_rr)} queries")

    def report(row: dict, seconds: float) -> None:
        rows.append(row)
        d = row["vs_de"]
        print(
            f"ROW {row['variant']} seed {row['seed']}: valid MRR {100 * row['valid_mrr']:.1f} "
            f"(DE {100 * base_rr.mean():.1f}; diff {100 * d['diff']:+.1f} "
            f"[{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]) R@1 {100 * row['valid_recall@1']:.1f} "
            f"rho(ce,de) {row['spearman_ce_vs_de']:+.2f} rho(ce,overlap) "
            f"{row['spearman_ce_vs_overlap']:+.2f} rho(ce,len) {row['spearman_ce_vs_length']:+.2f} "
            f"({seconds:.0f} s)",
            flush=True,
        )
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(rows, indent=1))

    for name, folder in (kv.split("=", 1) for kv in filter(None, args.saved.split(","))):
        model = CrossEncoder.from_pretrained(folder).eval()
        row = {
            "variant": name,
            "seed": None,
            "saved": folder,
            "valid_queries": len(base_rr),
            "retriever_valid_mrr": float(base_rr.mean()),
            **score_row(model, got, codes, lengths, args.k, base_rr, 0),
        }
        report(row, 0.0)
    for name in filter(None, args.variants.split(",")):
        ranker_over, mine_over = VARIANTS[name]
        for seed in [int(s) for s in args.seeds.split(",")]:
            t0 = time.time()
            negatives = ranker_cfg.negatives
            if mine_over:
                mined = dataclasses.replace(
                    mine_cfg,
                    **mine_over,
                    out=str(out / f"mined-{name}"),
                    index_dir=mine_cfg.out,
                )
                if not (Path(mined.out) / "mine_summary.json").exists():
                    mine_negatives(mined)
                negatives = mined.out
            cfg = dataclasses.replace(
                ranker_cfg,
                **{**ranker_over, **shared},
                seed=seed,
                negatives=negatives,
                out=str(out / f"{name}-s{seed}"),
                run_name=f"abl-{name}-s{seed}-{int(t0)}",
                storage=str((out / "ray_results").resolve()),
                max_eval_queries=5,  # the loop's own start/end checks; the row is scored below
            )
            model, steps = last_model(cfg)
            seconds = time.time() - t0
            model.save_pretrained(out / f"{name}-s{seed}-last")  # for serving or export
            row = {
                "variant": name,
                "seed": seed,
                "ranker_overrides": {**ranker_over, **shared},
                "mine_overrides": mine_over,
                "steps": steps,
                "train_seconds": round(seconds, 1),
                "valid_queries": len(base_rr),
                "retriever_valid_mrr": float(base_rr.mean()),
                **score_row(model, got, codes, lengths, args.k, base_rr, seed),
            }
            report(row, seconds)


if __name__ == "__main__":
    main()
