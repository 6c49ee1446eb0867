"""Quality cost of the CPU inference backends: MRR of torch fp32, ONNX fp32 and ONNX int8.

For each data set (a corpus split, and CoSQA dev when given) and each backend, in one
process on the same queries (the first `--max-queries` by id, as jobs/evaluate.py):
- `DE (codes+queries)`: the retriever with every vector from that backend: what the
  embedding job (`backend=...`) and its index would give;
- `DE (queries)`: code vectors from torch, query vectors from the backend: what a Serve
  retriever replica with that backend gives over an index built by torch;
- `cascade K=10`: the ranker, on that backend, reranking the top 10 of `DE (queries)`:
  the served cascade with `backend=...` (fused with the weight the ranker was trained
  for, the served default: 0 for a plain ranker, 0.5 for a residual one).
Differences to torch come with a paired bootstrap 95% interval over queries (seeded).
Each backend's code embedding rate and ranker pair rate are timed too (single process).

    python benchmarks/backend_quality.py --retriever runs/demo/pipeline/retriever \\
        --ranker runs/demo/pipeline/ranker_ps --split runs/demo/pipeline/corpus/test \\
        --cosqa ../shared/data/cosqa
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from r2ps.data.cosqa import read_cosqa
from r2ps.data.schema import RetrievalSet
from r2ps.evaluation.metrics import (
    paired_bootstrap,
    rank_of_gold_topk,
    reciprocal_ranks,
    retrieval_metrics,
)
from r2ps.evaluation.retrieval import MRR_CUTOFF, Retrieved, eval_queries, top_candidates
from r2ps.log import setup_logging
from r2ps.models.backends import BACKENDS, load_ranker, load_retriever
from r2ps.models.dual import embed_texts
from r2ps.models.onnx_export import ensure_export
from r2ps.search.cascade import cascade_ids

K = 10


def evaluate_backend(backend, args, texts, gold, codes, torch_codes) -> tuple[dict, np.ndarray]:
    """Metrics, per-query reciprocal ranks and rates of one backend on one data set."""
    threads = args.threads
    retriever = load_retriever(args.retriever, backend, threads).model
    t0 = time.perf_counter()
    c_emb = embed_texts(retriever, retriever.tokenizer, codes, retriever.max_code_len, 64)
    embed_s = time.perf_counter() - t0
    q_emb = embed_texts(retriever, retriever.tokenizer, texts, retriever.max_query_len, 64)
    if torch_codes is None:
        torch_codes = c_emb
    out = {"codes_per_s": round(len(codes) / embed_s, 1)}
    rows = {}
    for name, cvec in (("DE (codes+queries)", c_emb), ("DE (queries)", torch_codes)):
        ids, scores = top_candidates(q_emb, cvec, MRR_CUTOFF)
        rows[name] = (Retrieved(texts, gold, ids, scores), ids)
    ranker = load_ranker(args.ranker, backend, threads).model
    served, _ = rows["DE (queries)"]
    depth = min(K, served.ids.shape[1])
    pair_q = [texts[i] for i in range(len(texts)) for _ in range(depth)]
    pair_c = [codes[p] for i in range(len(texts)) for p in served.ids[i, :depth]]
    t0 = time.perf_counter()
    ce = ranker.score_pairs(pair_q, pair_c, 64).reshape(len(texts), depth)
    out["pairs_per_s"] = round(len(pair_q) / (time.perf_counter() - t0), 1)
    alpha = ranker.trained_alpha
    cascade = [
        cascade_ids(served.ids[i], served.scores[i], ce[i], alpha) for i in range(len(texts))
    ]
    lists = {name: ids for name, (_, ids) in rows.items()}
    lists[f"cascade K={K}"] = cascade
    out["metrics"] = {
        name: retrieval_metrics(rank_of_gold_topk(ls, gold), mrr_cutoff=MRR_CUTOFF)
        for name, ls in lists.items()
    }
    out["rr"] = {
        name: reciprocal_ranks(rank_of_gold_topk(ls, gold), MRR_CUTOFF)
        for name, ls in lists.items()
    }
    return out, torch_codes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--retriever", required=True, help="trained retriever dir")
    parser.add_argument("--ranker", required=True, help="trained ranker dir (with its head)")
    parser.add_argument("--split", default="", help="corpus split folder (e.g. .../corpus/test)")
    parser.add_argument("--cosqa", default="", help="CoSQA folder: its dev set too")
    parser.add_argument("--max-queries", type=int, default=500)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--out", default="benchmarks/results/backend_quality.json")
    args = parser.parse_args()
    setup_logging()
    if args.backends[0] != "torch":
        raise SystemExit("--backends: torch first (the differences are against it)")
    for backend in args.backends[1:]:
        for model in (args.retriever, args.ranker):
            ensure_export(model, backend)
    sets = {}
    if args.split:
        sets[Path(args.split).name] = RetrievalSet.read(args.split)
    if args.cosqa:
        sets["cosqa"] = read_cosqa(args.cosqa)
    report = {"settings": vars(args), "cpus": os.cpu_count(), "datasets": {}}
    for set_name, rset in sets.items():
        texts, gold = eval_queries(rset, args.max_queries)
        codes = rset.codes["code"].to_pylist()
        torch_codes, by_backend = None, {}
        for backend in args.backends:
            by_backend[backend], torch_codes = evaluate_backend(
                backend, args, texts, gold, codes, torch_codes
            )
        base = by_backend["torch"]["rr"]
        for res in by_backend.values():
            rr = res.pop("rr")
            res["mrr_delta_vs_torch"] = {
                name: {
                    "delta": round(d["diff"], 4),
                    "ci95": [round(d["lo"], 4), round(d["hi"], 4)],
                }
                for name, d in (
                    (name, paired_bootstrap(rr[name], base[name], 2000, args.seed)) for name in rr
                )
            }
        report["datasets"][set_name] = {
            "queries": len(texts),
            "codes": len(codes),
            "backends": by_backend,
        }

    print(f"\nMRR x 100 per backend ({os.cpu_count()} CPUs, {args.threads} threads); "
          "delta vs torch with a paired bootstrap 95% interval")  # fmt: skip
    print(f"{'set':<8} {'method':<20} {'backend':<10} {'MRR':>6} {'delta':>6} {'95% CI':>16} "
          f"{'codes/s':>8} {'pairs/s':>8}")  # fmt: skip
    for set_name, ds in report["datasets"].items():
        for backend, res in ds["backends"].items():
            for name, m in res["metrics"].items():
                d = res["mrr_delta_vs_torch"][name]
                ci = f"[{d['ci95'][0] * 100:+.2f}, {d['ci95'][1] * 100:+.2f}]"
                print(f"{set_name:<8} {name:<20} {backend:<10} {m['mrr'] * 100:>6.2f} "
                      f"{d['delta'] * 100:>+6.2f} {ci:>16} {res['codes_per_s']:>8} "
                      f"{res['pairs_per_s']:>8}")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
