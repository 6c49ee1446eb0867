"""PS mining at scale: time and peak memory against corpus size and against query count.

Claim: mining time grows with corpus size (exact search is linear in N), and peak memory
does not grow with the number of queries (queries are embedded, searched, filtered and
written one shard at a time).

What it measures: `r2ps.mining.mine.mine` on precomputed *random* unit embeddings (d=384,
seeded; a query vector is its gold code's vector plus noise), so the figures are mining
alone (index build, guard, search, filter, write), not the retriever's forward passes.
The codes are real: runs/demo/corpus train+valid+test codes (about 60k); sizes above that
add copies of them with one extra statement (distinct code ids). Queries are train
queries whose gold code is in the corpus. The test split is excluded as an evaluation
pool wherever its codes are in the corpus, so the pool guard is exercised too.

Each case runs in a fresh subprocess: its peak RSS is sampled (psutil, every 20 ms) from
just before `mine()` starts, and `ru_maxrss` covers the whole process.

    python benchmarks/mine_scale.py --corpus runs/demo/corpus
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

DIM = 384
SPLITS = ("train", "valid", "test")


def corpus_codes(corpus: Path, n: int) -> pa.Table:
    """The first `n` codes of train, valid, test, then copies with one extra statement."""
    from r2ps.data.codetext import code_id

    codes = pa.concat_tables(pq.read_table(corpus / s / "codes.parquet") for s in SPLITS)
    parts, copy = [codes], 0
    while sum(t.num_rows for t in parts) < n:
        copy += 1
        texts = [f"{c}\n_copy_{copy} = {copy}\n" for c in codes["code"].to_pylist()]
        extra = codes.set_column(1, "code", pa.array(texts)).set_column(
            0, "code_id", pa.array([code_id(t) for t in texts])
        )
        parts.append(extra.cast(codes.schema))
    return pa.concat_tables(parts).slice(0, n)


def make_case(corpus: Path, root: Path, n_codes: int, n_queries: int) -> Path:
    """A split folder of `n_codes` codes and `n_queries` train queries, with embeddings."""
    from r2ps.mining.index import corpus_fingerprint
    from r2ps.models.encoder import default_model_path, model_fingerprint

    case = root / f"n{n_codes}_q{n_queries}"
    if (case / "out" / "embeddings" / "manifest.json").exists():
        return case
    split = case / "split"
    split.mkdir(parents=True, exist_ok=True)
    codes = corpus_codes(corpus, n_codes)
    qrels = pq.read_table(corpus / "train" / "qrels.parquet")
    qrels = qrels.filter(pc.is_in(qrels["code_id"], codes["code_id"]))
    qids = sorted(set(qrels["query_id"].to_pylist()))[:n_queries]
    qrels = qrels.filter(pc.is_in(qrels["query_id"], pa.array(qids)))
    queries = pq.read_table(corpus / "train" / "queries.parquet")
    queries = queries.filter(pc.is_in(queries["query_id"], pa.array(qids)))
    pq.write_table(codes, split / "codes.parquet")
    pq.write_table(queries, split / "queries.parquet")
    pq.write_table(qrels, split / "qrels.parquet")

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((n_codes, DIM), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb_dir = case / "out" / "embeddings"
    emb_dir.mkdir(parents=True, exist_ok=True)
    ids = codes["code_id"].to_pylist()
    flat = pa.array(emb.reshape(-1))
    table = pa.table(
        {
            "pos": pa.array(np.arange(n_codes, dtype=np.int64)),
            "code_id": pa.array(ids, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, DIM),
        }
    )
    pq.write_table(table, emb_dir / "part-00000.parquet")
    model = default_model_path()
    manifest = {
        "model_fingerprint": model_fingerprint(model),
        "corpus_fingerprint": corpus_fingerprint(ids),
        "count": n_codes,
        "model_path": model,
        "codes": str((split / "codes.parquet").resolve()),
        "dim": DIM,
        "max_code_len": 256,
        "note": "random unit vectors written by benchmarks/mine_scale.py",
    }
    (emb_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return case


def run_case(case: Path, exclude: list[str]) -> dict:
    """Mine `case` in this process (the child side); returns timings and memory."""
    import psutil

    from r2ps.mining.index import read_embeddings
    from r2ps.mining.mine import MineConfig, mine

    split, out = case / "split", case / "out"
    ids, emb = read_embeddings(str(out / "embeddings"))
    position = {cid: i for i, cid in enumerate(ids)}
    qrels = pq.read_table(split / "qrels.parquet")
    queries = pq.read_table(split / "queries.parquet")
    gold_of = dict(zip(qrels["query_id"].to_pylist(), qrels["code_id"].to_pylist(), strict=True))
    text_gold = {
        t: position[gold_of[q]]
        for q, t in zip(queries["query_id"].to_pylist(), queries["query"].to_pylist(), strict=True)
    }
    del qrels, queries, gold_of

    def embed_queries(texts: list[str]) -> np.ndarray:
        """Its gold code's vector plus seeded noise: a retriever that mostly works."""
        out_ = np.empty((len(texts), DIM), dtype=np.float32)
        for i, t in enumerate(texts):
            noise = np.random.default_rng(zlib.crc32(t.encode())).standard_normal(DIM)
            out_[i] = emb[text_gold[t]] + noise.astype(np.float32) / np.sqrt(DIM)
        return out_ / np.linalg.norm(out_, axis=1, keepdims=True)

    proc = psutil.Process()
    peak = {"rss": proc.memory_info().rss}
    before = peak["rss"]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], proc.memory_info().rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    cfg = MineConfig(pairs=str(split), out=str(out), exclude=exclude, shard_queries=4096)
    summary = mine(cfg, embed_queries=embed_queries)
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    mib = 1024 * 1024
    return {
        "codes": len(ids),
        "queries": summary["queries"],
        "rows": summary["rows"],
        "seconds": round(seconds, 2),
        "stages": summary["seconds"],
        "ms_per_query": round(1000 * seconds / max(1, summary["queries"]), 3),
        "rss_before_mib": round(before / mib, 1),
        "peak_rss_mib": round(peak["rss"] / mib, 1),
        "mining_rss_mib": round((peak["rss"] - before) / mib, 1),
        "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "removed": summary["removed"],
        "candidates_per_row": summary["candidates_per_row"],
        "queries_searched_again": summary["queries_searched_again"],
    }


def child(case: Path, exclude: list[str]) -> dict:
    """Run one case in a fresh interpreter, so its memory figures are its own.

    The index, cached match keys and earlier negatives are removed first: every case
    is a full run (only the embeddings stay).
    """
    for stale in ("index", "negatives"):
        shutil.rmtree(case / "out" / stale, ignore_errors=True)
    (case / "out" / "match_keys.parquet").unlink(missing_ok=True)
    cmd = [
        sys.executable,
        __file__,
        "--child",
        str(case),
        *sum((["--exclude", e] for e in exclude), []),
    ]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict], title: str) -> str:
    head = f"{'codes':>7} {'queries':>7} {'s':>7} {'ms/q':>6} {'search':>7} {'filter':>7} {'guard':>6} {'index':>6} {'peak MiB':>8} {'mining MiB':>10}"
    lines = [title, head]
    for r in rows:
        st = r["stages"]
        lines.append(
            f"{r['codes']:>7} {r['queries']:>7} {r['seconds']:>7} {r['ms_per_query']:>6} "
            f"{st['search']:>7} {st['filter']:>7} {st['guard']:>6} {st['embed_index']:>6} "
            f"{r['peak_rss_mib']:>8} {r['mining_rss_mib']:>10}"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--corpus", default="runs/demo/corpus")
    ap.add_argument("--work", default="/tmp/r2ps_mine_scale", help="scratch folder for the cases")
    ap.add_argument("--sizes", default="10000,50000,120000", help="corpus sizes (codes)")
    ap.add_argument("--queries", type=int, default=4000, help="queries in the size sweep")
    ap.add_argument("--query-sizes", default="1000,4000,16000,40000", help="queries at 50k codes")
    ap.add_argument("--out", default="benchmarks/results/mine_scale.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--exclude", action="append", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_case(Path(args.child), args.exclude)))
        return 0

    corpus, work = Path(args.corpus), Path(args.work)
    pool = [str(corpus / "test")]  # the test split is an evaluation pool: never a negative
    by_size = []
    for n in [int(s) for s in args.sizes.split(",")]:
        by_size.append(child(make_case(corpus, work, n, args.queries), pool))
        print(table(by_size[-1:], f"corpus {n}"), flush=True)
    by_queries = []
    for q in [int(s) for s in args.query_sizes.split(",")]:
        by_queries.append(child(make_case(corpus, work, 50000, q), pool))
        print(table(by_queries[-1:], f"queries {q}"), flush=True)
    report = (
        table(by_size, f"mining time vs corpus size ({args.queries} queries)")
        + "\n\n"
        + table(by_queries, "peak memory vs queries (50000 codes)")
    )
    print("\n" + report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "embeddings": "random unit vectors, d=384 (query = gold + noise); real code texts",
                "machine": "2 CPU cores, shared",
                "by_corpus_size": by_size,
                "by_queries": by_queries,
                "table": report,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
