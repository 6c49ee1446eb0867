"""Index kinds on real retriever embeddings: memory per code, build and search time, and
what each approximation costs in neighbours found and in the task's MRR.

Claim: `ivfpq` (`pq_m` bytes a code) cuts index memory 8-32x against `flat` (4 x d bytes)
at a measurable loss of the true top-k; this benchmark says how much, on the vectors r2ps
really indexes, so docs/SCALING.md's 100M-code memory figures have a recall beside them.

Inputs: an embedding run (`<out>/embeddings`, written by `jobs/embed.py` or the mining
job; its manifest names the retriever) and the split its codes came from, whose queries
(with their gold codes) are embedded here with the same retriever. Every index is built
from the same vectors in this process and compared with `flat` (exact) on the same
queries: recall@k = share of flat's top k found; MRR of the gold code within the top 100.

    python benchmarks/index_kinds.py --embeddings runs/demo/mined/embeddings \
        --split runs/demo/corpus20k/train
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow.compute as pc

from r2ps.data.schema import RetrievalSet
from r2ps.evaluation.metrics import rank_of_gold_topk, retrieval_metrics
from r2ps.mining.index import CodeIndex, IndexConfig, read_embeddings, read_manifest
from r2ps.models.dual import DualEncoder

K = 100  # retrieved per query: what a cascade hands its ranker is at most this


def queries_with_gold(split: Path, code_ids: list[str], n: int, seed: int):
    """(query texts, gold positions) of `n` seeded queries whose gold code is indexed."""
    rset = RetrievalSet.read(split).sample(n, seed)
    where = {cid: i for i, cid in enumerate(code_ids)}
    gold: dict[str, list[int]] = {}
    for qid, cid in zip(
        rset.qrels["query_id"].to_pylist(), rset.qrels["code_id"].to_pylist(), strict=True
    ):
        if cid in where:
            gold.setdefault(qid, []).append(where[cid])
    keep = rset.queries.filter(pc.is_in(rset.queries["query_id"], pc.cast(list(gold), "string")))
    return keep["query"].to_pylist(), [gold[q] for q in keep["query_id"].to_pylist()]


def cases(d: int) -> list[tuple[str, IndexConfig]]:
    return [
        ("flat", IndexConfig()),
        ("ivf nprobe 16", IndexConfig(kind="ivf")),
        ("ivf nprobe 64", IndexConfig(kind="ivf", nprobe=64)),
        ("hnsw M 32", IndexConfig(kind="hnsw")),
        (f"ivfpq m {d // 4}", IndexConfig(kind="ivfpq", pq_m=d // 4)),
        (f"ivfpq m {d // 8}", IndexConfig(kind="ivfpq", pq_m=d // 8)),
        (f"ivfpq m {d // 8} nprobe 64", IndexConfig(kind="ivfpq", pq_m=d // 8, nprobe=64)),
        (f"ivfpq m {d // 8} nprobe 256", IndexConfig(kind="ivfpq", pq_m=d // 8, nprobe=256)),
        (f"ivfpq m {d // 16}", IndexConfig(kind="ivfpq", pq_m=d // 16)),
    ]


def overlap(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(
        np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth, strict=True)])
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--embeddings", required=True, help="folder of part-*.parquet + manifest")
    ap.add_argument("--split", required=True, help="split folder the codes came from")
    ap.add_argument("--n-queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/index_kinds.json")
    args = ap.parse_args()

    faiss.omp_set_num_threads(args.threads)
    manifest = read_manifest(args.embeddings)
    ids, emb = read_embeddings(args.embeddings)
    n, d = emb.shape
    texts, gold = queries_with_gold(Path(args.split), ids, args.n_queries, args.seed)
    start = time.perf_counter()
    model = DualEncoder.from_pretrained(manifest["model_path"])
    queries = model.embed_queries(texts)
    print(f"{n} codes x {d}; {len(texts)} queries embedded in {time.perf_counter() - start:.0f} s")

    rows, truth = [], None
    for name, cfg in cases(d):
        start = time.perf_counter()
        index = CodeIndex.build(emb, ids, cfg, {})
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        _, pos = index.search(queries, K)
        search_s = time.perf_counter() - start
        truth = pos if truth is None else truth  # the first case is flat: exact
        metrics = retrieval_metrics(rank_of_gold_topk(pos, gold), ks=(1, 10, 100), mrr_cutoff=K)
        rows.append(
            {
                "index": name,
                "settings": {**index.manifest["settings"], "nprobe": cfg.nprobe},
                "nlist_used": index.manifest.get("nlist_used"),
                "bytes_per_code": round(len(faiss.serialize_index(index._cpu)) / n, 1),
                "build_s": round(build_s, 2),
                "ms_per_query": round(1000 * search_s / len(queries), 3),
                "top10_found": round(overlap(pos, truth, 10), 4),
                "top100_found": round(overlap(pos, truth, 100), 4),
                "mrr@100": round(metrics["mrr"], 4),
                "recall@10": round(metrics["recall@10"], 4),
                "recall@100": round(metrics["recall@100"], 4),
            }
        )
        print(rows[-1])

    flat_mrr = rows[0]["mrr@100"]
    head = ["index", "B/code", "build s", "ms/query", "top10 found", "top100 found", "MRR", "vs flat", "R@10", "R@100"]  # fmt: skip
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        cells = [r["index"], r["bytes_per_code"], r["build_s"], r["ms_per_query"],
                 r["top10_found"], r["top100_found"], r["mrr@100"],
                 f"{r['mrr@100'] / flat_mrr:.3f}", r["recall@10"], r["recall@100"]]  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "embeddings": args.embeddings,
                "split": args.split,
                "model": manifest["model_path"],
                "codes": n,
                "dim": d,
                "queries": len(texts),
                "threads": args.threads,
                "k": K,
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
