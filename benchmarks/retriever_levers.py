"""Retriever levers on the VALID split: WiSE-FT weights and other trained retrievers.

    python benchmarks/retriever_levers.py --valid runs/base/corpus/valid \
        --trained runs/base/retriever --weights 0,0.25,0.5,0.75,1 \
        --others lr1e-5=runs/lr/retriever --json benchmarks/results/retriever_levers.json

For each WiSE-FT weight w the retriever `(1-w)*start + w*trained` (models/encoder.py
`interpolate_encoders`; start = the bundled MiniLM unless --start) is scored on the
whole valid pool (MRR, R@1, R@10), with the paired bootstrap interval of its MRR
difference to the trained retriever (w = 1) on the same queries, and the weight the
valid rule of train/wise_ft.py (`wise_ft_choose`) keeps is printed. `--others` adds
retrievers trained with other settings (e.g. a smaller lr, web-register queries).
`--cosqa` also REPORTS CoSQA dev for each row (never used to choose anything).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from r2ps.data.cosqa import read_cosqa
from r2ps.data.schema import RetrievalSet
from r2ps.evaluation.metrics import (
    paired_bootstrap,
    rank_of_gold_topk,
    reciprocal_ranks,
    retrieval_metrics,
)
from r2ps.evaluation.retrieval import MRR_CUTOFF, retrieve
from r2ps.models.dual import DualEncoder
from r2ps.models.encoder import default_model_path
from r2ps.train.wise_ft import closest_to_start, interpolated


def scores(path: str, sets: dict[str, RetrievalSet]) -> dict[str, tuple[dict, object]]:
    model = DualEncoder.from_pretrained(path).eval()
    out = {}
    for name, rset in sets.items():
        got = retrieve(model, rset, 0, 64)
        ranks = rank_of_gold_topk(got.ids, got.gold)
        out[name] = (retrieval_metrics(ranks), reciprocal_ranks(ranks, MRR_CUTOFF))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--valid", required=True)
    p.add_argument("--trained", required=True)
    p.add_argument("--start", default="")
    p.add_argument("--weights", default="0,0.25,0.5,0.75,1")
    p.add_argument("--others", default="", help="name=path,... more retrievers")
    p.add_argument("--cosqa", default="", help="also report CoSQA dev (not used to choose)")
    p.add_argument("--json", default="")
    args = p.parse_args()
    torch.set_num_threads(2)
    start = args.start or default_model_path()
    sets = {"valid": RetrievalSet.read(args.valid)}
    if args.cosqa:
        sets["cosqa"] = read_cosqa(args.cosqa)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        candidates = []
        weights = [float(x) for x in args.weights.split(",")]
        for w in weights:
            candidates.append(
                (f"WiSE-FT w={w}", interpolated(start, args.trained, w, Path(tmp, f"w{w}")))
            )
        for item in filter(None, args.others.split(",")):
            name, path = item.split("=", 1)
            candidates.append((name, path))
        results = {name: scores(path, sets) for name, path in candidates}
    ref = results[f"WiSE-FT w={1.0}"]
    for name, by_set in results.items():
        row = {"retriever": name}
        for s, (metrics, rr) in by_set.items():
            row[s] = {k: metrics[k] for k in ("mrr", "recall@1", "recall@10", "n_queries")} | {
                "vs_trained": paired_bootstrap(rr, ref[s][1])
            }
        rows.append(row)
        cells = "  ".join(
            f"{s} MRR {100 * row[s]['mrr']:.1f} ({100 * row[s]['vs_trained']['diff']:+.1f} "
            f"[{100 * row[s]['vs_trained']['lo']:+.1f}, {100 * row[s]['vs_trained']['hi']:+.1f}])"
            for s in sets
        )
        print(f"{name:<28} {cells}", flush=True)
    chosen, _ = closest_to_start({w: results[f"WiSE-FT w={w}"]["valid"][1] for w in weights})
    print(f"the valid rule (train/wise_ft.py) keeps w={chosen}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"rows": rows, "rule_keeps": chosen}, indent=1))


if __name__ == "__main__":
    main()
