"""`gpu_check.py`'s inference checks: embedding, a ranker replica, faiss search.

Each times r2ps's own inference path on the GPU in one process: the embedding actor
(`CodeEmbedder`), the Serve ranker's scoring call (`CrossEncoder.score_pairs`), and
`CodeIndex` searches in the patterns of serving and mining.
"""

from __future__ import annotations

import gc
import math
import statistics
import time

import numpy as np
import pyarrow as pa
import torch
from gpu_setup import DEVICE, cuda_timed, peak_gpu_mib

from r2ps.mining.embed import DEFAULT_MAX_CODE_LEN, CodeEmbedder, EmbedConfig, tokenize_codes
from r2ps.mining.index import CodeIndex, IndexConfig, gpu_available
from r2ps.mining.mine import MineConfig
from r2ps.models.cross import CrossEncoder
from r2ps.models.dual import DualEncoder
from r2ps.models.encoder import default_model_path, load_tokenizer
from r2ps.serving.settings import ServeConfig

BLOCK_ROWS = EmbedConfig().block_rows  # rows per actor call in the embedding job
SERVE_BATCH = ServeConfig().retriever_batch_size  # queries per retriever search


# ------------------------------------------------------------------ 2. embedding


def check_embed(codes: list[str], args) -> dict:
    """Codes/s of the embedding actor's model path; tokenising and the fp32 API beside it."""
    model = args.model or default_model_path()
    table = pa.table(
        {
            "pos": pa.array(np.arange(len(codes), dtype=np.int64)),
            "code_id": [str(i) for i in range(len(codes))],
            "code": codes,
        }
    )
    tokenizer = load_tokenizer(model)
    start = time.perf_counter()
    tokens = tokenize_codes(table, tokenizer, DEFAULT_MAX_CODE_LEN)
    tokenize_s = time.perf_counter() - start
    blocks = [tokens.slice(i, BLOCK_ROWS) for i in range(0, tokens.num_rows, BLOCK_ROWS)]
    lengths = [len(x) for x in tokens["input_ids"].to_pylist()]

    embedder = CodeEmbedder(model, args.embed_batch_sizes[0], threads=0)
    rows = []
    for batch_size in args.embed_batch_sizes:
        embedder.batch_size = batch_size
        embedder(blocks[0])  # warm-up: kernels chosen, allocator grown
        best = min(cuda_timed(lambda: [embedder(b) for b in blocks]) for _ in range(args.repeats))
        rows.append(
            {
                "run": f"CodeEmbedder, {embedder.dtype}, batch {batch_size}",
                "batch_size": batch_size,
                "seconds": best,
                "codes_per_s": len(codes) / best,
            }
        )
    dual: DualEncoder = embedder.model
    batch_size = args.embed_batch_sizes[0]
    dual.embed_codes(codes[:BLOCK_ROWS], batch_size)  # warm-up
    best = min(cuda_timed(lambda: dual.embed_codes(codes, batch_size)) for _ in range(args.repeats))
    rows.append(
        {
            "run": f"DualEncoder.embed_codes, fp32, tokenising included, batch {batch_size}",
            "batch_size": batch_size,
            "seconds": best,
            "codes_per_s": len(codes) / best,
        }
    )
    out = {
        "codes": len(codes),
        "max_code_len": DEFAULT_MAX_CODE_LEN,
        "mean_tokens": float(np.mean(lengths)),
        "block_rows": BLOCK_ROWS,
        "repeats": args.repeats,
        "autocast_dtype": str(embedder.dtype),
        "tokenize_codes_per_s": len(codes) / tokenize_s,
        "results": rows,
        "codes_per_s": max(r["codes_per_s"] for r in rows[:-1]),
        "peak_gpu_mib": peak_gpu_mib(),
    }
    return out


# ------------------------------------------------------------------ 3. ranker replica


def check_ranker(queries: list[str], codes: list[str], args) -> dict:
    """The Serve Ranker's scoring call at K pairs per request, fp32 and bf16 autocast."""
    budget = ServeConfig().ranker_pair_budget
    k = args.k
    per_batch = max(1, budget // k)  # Serve fills a batch up to `budget` pairs
    model = CrossEncoder.from_pretrained(args.model or default_model_path()).to(DEVICE).eval()

    def request(i: int) -> tuple[list[str], list[str]]:
        """One search's rerank: a query and K candidate codes."""
        return [queries[i]] * k, [codes[(i + j) % len(codes)] for j in range(k)]

    def batch(b: int) -> tuple[list[str], list[str]]:
        qs, cs = [], []
        for r in range(per_batch):
            q, c = request(b * per_batch + r)
            qs += q
            cs += c
        return qs, cs

    single = [request(i) for i in range(args.ranker_requests)]
    full = [batch(b) for b in range(args.ranker_batches)]
    rows = []
    for name, dtype in (("fp32 (as Serve runs it)", None), ("bf16 autocast", torch.bfloat16)):
        autocast = torch.autocast(DEVICE, dtype=dtype or torch.float32, enabled=dtype is not None)

        def score(qs: list[str], cs: list[str], autocast=autocast) -> np.ndarray:
            with autocast:
                return model.score_pairs(qs, cs, budget)

        for qs, cs in full[:2]:  # warm-up
            score(qs, cs)
        latency = [1000 * cuda_timed(lambda qs=qs, cs=cs: score(qs, cs)) for qs, cs in single]
        seconds = min(
            cuda_timed(lambda: [score(qs, cs) for qs, cs in full]) for _ in range(args.repeats)
        )
        pairs_per_s = sum(len(qs) for qs, _ in full) / seconds
        rows.append(
            {
                "run": name,
                "request_ms_p50": statistics.median(latency),
                "request_ms_p95": float(np.percentile(latency, 95)),
                "pairs_per_s": pairs_per_s,
                "replicas_per_1000_qps": math.ceil(1000 * k / pairs_per_s),
            }
        )
    out = {
        "k": k,
        "pair_budget": budget,
        "requests_per_batch": per_batch,
        "max_len": model.max_len,
        "max_query_len": model.max_query_len,
        "requests_timed": args.ranker_requests,
        "batches_timed": args.ranker_batches,
        "results": rows,
        "pairs_per_s": rows[0]["pairs_per_s"],
        "peak_gpu_mib": peak_gpu_mib(),
    }
    return out


# ------------------------------------------------------------------ 4. faiss search


def check_faiss(args) -> dict:
    """CodeIndex over random unit vectors: build time and queries/s per search pattern."""
    rng = np.random.default_rng(0)
    n, d = args.n_codes, args.dim
    emb = np.empty((n, d), dtype=np.float32)
    for i in range(0, n, 1 << 18):  # in slices: no float64 temporaries of the whole matrix
        part = rng.standard_normal((min(1 << 18, n - i), d), dtype=np.float32)
        emb[i : i + len(part)] = part / np.linalg.norm(part, axis=1, keepdims=True)
    ids = [f"c{i}" for i in range(n)]
    gold = rng.integers(0, n, args.n_queries)
    queries = emb[gold] + rng.standard_normal((args.n_queries, d), dtype=np.float32) / np.sqrt(d)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    mine_chunk, mine_k = MineConfig().query_chunk, MineConfig().window_end

    rows = []
    for kind in args.index_kinds:
        start = time.perf_counter()
        index = CodeIndex.build(emb, ids, IndexConfig(kind=kind), manifest={})
        build_s = time.perf_counter() - start
        _, top = index.search(queries[:SERVE_BATCH], 1)  # warm-up, and a sanity check:
        found = float(np.mean(top[:, 0] == gold[:SERVE_BATCH]))  # expect 1.0
        patterns = [
            ("serve", SERVE_BATCH, 10, args.n_queries),
            ("mine", mine_chunk, mine_k, args.n_queries),
            ("one query", 1, 10, min(args.n_queries, 200)),
        ]
        for name, batch, k, total in patterns:
            q = queries[:total]
            # the search itself is synchronous: faiss returns host arrays
            start = time.perf_counter()
            for i in range(0, total, batch):
                index.search(q[i : i + batch], k)
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "kind": kind,
                    "device": index.device,
                    "pattern": name,
                    "queries_per_search": batch,
                    "k": k,
                    "queries": total,
                    "seconds": seconds,
                    "queries_per_s": total / seconds,
                    "ms_per_search": 1000 * seconds / math.ceil(total / batch),
                    "build_s": build_s,
                    "top1_is_source_vector": found,
                }
            )
        del index
        gc.collect()
    return {
        "codes": n,
        "dim": d,
        "index_bytes_flat": n * d * 4,
        "faiss_gpu": gpu_available(),
        "note": ""
        if gpu_available()
        else "no faiss GPU build here (faiss-cpu installed?): CodeIndex searched on the CPU",
        "results": rows,
    }
