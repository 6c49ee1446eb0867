"""Hybrid first stage against dense alone: BM25 (bm25s, identifier-split tokens) fused with
the dense retriever's list by reciprocal rank fusion (r2ps.search.fusion), the way the Serve
app's `retrieval=hybrid` does it, on whole pools. Prints a table, writes JSON.

Each query: the dense top `--depth` and BM25's top `--depth` (codes sharing a term) are
fused by RRF (k = 60); below the fused list the dense list goes on, so every method
ranks down to 1,000 and MRR (0 past rank 1,000) and Recall compare. The MRR difference
hybrid - dense gets a paired bootstrap 95% interval over queries (seeded).
Nothing is chosen here: CoSQA is reported, never tuned on.

    python benchmarks/hybrid_first_stage.py --split runs/corpus/test --cosqa ../shared/data/cosqa [--model DIR]
"""

from __future__ import annotations

import argparse
import json
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
from r2ps.evaluation.retrieval import MRR_CUTOFF, retrieve
from r2ps.models.dual import DualEncoder
from r2ps.models.encoder import default_model_path
from r2ps.search.bm25 import BM25
from r2ps.search.fusion import RRF_K, rrf

METRICS = ("mrr", "recall@1", "recall@5", "recall@10", "ndcg@10")


def evaluate(name: str, rset: RetrievalSet, model: DualEncoder, depth: int, max_queries: int):
    t0 = time.perf_counter()
    dense = retrieve(model, rset, max_queries, batch_size=64)
    t_dense = time.perf_counter() - t0
    t0 = time.perf_counter()
    bm25 = BM25(rset.codes["code"].to_pylist())
    lexical = [bm25.top_k(q, MRR_CUTOFF) for q in dense.queries]
    t_bm25 = time.perf_counter() - t0
    lex_lists = [ids for ids, _ in lexical]
    hybrid_lists = []
    for d_ids, (l_ids, l_scores) in zip(dense.ids, lexical, strict=True):
        fused, _ = rrf([d_ids[:depth], l_ids[:depth][l_scores[:depth] > 0]], k=RRF_K)
        seen = set(fused.tolist())
        rest = [i for i in d_ids if i not in seen]
        hybrid_lists.append(np.concatenate([fused, np.asarray(rest, dtype=np.int64)]))
    lists = {"dense": dense.ids, "BM25": lex_lists, "hybrid (RRF)": hybrid_lists}
    rows = {
        m: retrieval_metrics(rank_of_gold_topk(ls, dense.gold), mrr_cutoff=MRR_CUTOFF)
        for m, ls in lists.items()
    }
    rr = {
        m: reciprocal_ranks(rank_of_gold_topk(ls, dense.gold), MRR_CUTOFF)
        for m, ls in lists.items()
    }
    gain = paired_bootstrap(rr["hybrid (RRF)"], rr["dense"], 1000, seed=0)
    return {
        "data": name,
        "n_queries": len(dense.queries),
        "n_codes": rset.codes.num_rows,
        "methods": rows,
        "hybrid_minus_dense_mrr": {"mean": gain["diff"], "ci95": [gain["lo"], gain["hi"]]},
        "seconds": {"dense": round(t_dense, 1), "bm25_index_and_search": round(t_bm25, 1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--split", help="a corpus split folder (e.g. <corpus>/test)")
    parser.add_argument("--cosqa", help="the CoSQA folder (dev queries, whole pool)")
    parser.add_argument("--model", default="", help="retriever dir ('' = bundled MiniLM)")
    parser.add_argument("--depth", type=int, default=100, help="each list's depth before RRF")
    parser.add_argument("--max-queries", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    model_path = args.model or default_model_path()
    model = DualEncoder.from_pretrained(model_path).eval()
    sets = {}
    if args.split:
        sets[f"corpus {Path(args.split).name}"] = RetrievalSet.read(args.split)
    if args.cosqa:
        sets["CoSQA dev"] = read_cosqa(args.cosqa)
    if not sets:
        parser.error("give --split and/or --cosqa")
    results = [evaluate(n, r, model, args.depth, args.max_queries) for n, r in sets.items()]

    print(
        f"first stage: dense ({model_path}) vs BM25 vs hybrid (RRF k={RRF_K}, depth {args.depth})"
    )
    print(f"{'data':<18} {'method':<13} " + " ".join(f"{m:>9}" for m in METRICS))
    for r in results:
        for method, row in r["methods"].items():
            print(
                f"{r['data']:<18} {method:<13} "
                + " ".join(f"{100 * row[m]:>9.1f}" for m in METRICS)
            )
        d = r["hybrid_minus_dense_mrr"]
        print(f"{'':<18} hybrid - dense MRR {100 * d['mean']:+.1f} "
              f"(95% CI {100 * d['ci95'][0]:+.1f} .. {100 * d['ci95'][1]:+.1f}; "
              f"{r['n_queries']} queries, {r['n_codes']} codes)")  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": model_path, "rrf_k": RRF_K, "depth": args.depth, "results": results}
    (out / "hybrid_first_stage.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out / 'hybrid_first_stage.json'}")


if __name__ == "__main__":
    main()
