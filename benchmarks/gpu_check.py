"""GPU paths on a CUDA machine: the four figures docs/SCALING.md had to assume.

Each check runs r2ps's own code, in one process, without Ray (no cluster is needed):
1. `train`: the retriever's training step as the Ray Train loop takes it
   (`RetrieverTask.build_model` / `.loss`, `deepspeed_config`, `linear_schedule`, bf16 on
   CUDA) under a plain single-process `deepspeed.initialize` (Ray Train's context is not
   needed for one step): pairs/s. Batches are tokenised beforehand, as the loop's Ray Data
   stream does off the training path.
1b. `ranker_train`: the ranker's step (cross encoder over groups of 1 positive + m
   negatives, listwise loss, bf16 DeepSpeed), timed twice: tokenising inside each step
   (its share of the step reported), then one step ahead in a background thread as the
   training loop now runs `RankerTask.prepare` (`loop.prefetched`).
2. `embed`: the embedding job's `CodeEmbedder` (the Ray Data actor class, called here in
   process: length-grouped batches, bf16 autocast on GPU) on blocks of 1,024 rows, as the
   actor pool feeds it: codes/s, tokenising timed apart (separate Ray Data tasks in the job).
   `DualEncoder.embed_codes` (fp32, tokenising included) is measured beside it.
3. `ranker`: `CrossEncoder.score_pairs` exactly as a Serve `Ranker` replica calls it
   (bundled MiniLM with a fresh head, pairs <= 384 tokens, fp32, batches of the pair budget
   64 = 6 requests of K = 10): latency of one request, pairs/s of full batches, and the
   replicas 1,000 QPS would need; then the same under bf16 autocast (not what Serve does
   today: a measured option).
4. `faiss`: `r2ps.mining.index.CodeIndex` over `--n-codes` random unit vectors (d = 384, MiniLM):
   build seconds, then queries/s for serving (batches of 32, k = 10), mining (chunks of 512,
   k = 64) and one query at a time. The index goes to the GPU when CUDA and a faiss GPU
   build are both present (`CodeIndex` detects it); the JSON says where it ran.

Texts are real code: the split folder `--corpus` when it exists, else functions extracted
from this Python's standard library (r2ps's corpus extractor). Without CUDA the script
exits with status 2 and writes nothing. A check that fails is reported (with its error)
in the table and the JSON, the others still run, and the exit status is 1.

    python benchmarks/gpu_check.py [--n-codes 1000000] [--corpus runs/demo/corpus/train]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import socket
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import torch

from r2ps.data.corpus import CorpusConfig, discover_sources, extract_files
from r2ps.data.schema import RetrievalSet
from r2ps.mining.embed import DEFAULT_MAX_CODE_LEN, CodeEmbedder, EmbedConfig, tokenize_codes
from r2ps.mining.index import CodeIndex, IndexConfig, gpu_available
from r2ps.mining.mine import MineConfig
from r2ps.models.cross import CrossEncoder
from r2ps.models.cross import tokenize_pairs as tokenize_ranker_pairs
from r2ps.models.dual import DualEncoder
from r2ps.models.encoder import default_model_path, load_tokenizer
from r2ps.serving.settings import ServeConfig
from r2ps.train.config import RankerConfig, RetrieverConfig
from r2ps.train.loop import build_engine, deepspeed_config, prefetched
from r2ps.train.losses import listwise_ce
from r2ps.train.ranker import RankerTask
from r2ps.train.retriever import RetrieverTask, group_keys, model_path, tokenize_pairs

NO_CUDA = "no CUDA device: gpu_check measures GPU paths only"
CHECKS = ("train", "ranker_train", "embed", "ranker", "faiss")
BLOCK_ROWS = EmbedConfig().block_rows  # rows per actor call in the embedding job
SERVE_BATCH = ServeConfig().retriever_batch_size  # queries per retriever search
DEVICE = "cuda"
DEFAULT_CORPUS = "runs/demo/corpus/train"  # `make demo`'s split; optional


# ------------------------------------------------------------------ helpers


def cuda_timed(fn: Callable[[], object]) -> float:
    """Seconds of `fn()`, with the GPU drained before and after (kernels run async)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def free_gpu() -> None:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def peak_gpu_mib() -> float:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def device_info() -> dict:
    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": torch.cuda.get_device_name(0),
        "gpus": torch.cuda.device_count(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "bf16_supported": torch.cuda.is_bf16_supported(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "faiss": getattr(faiss, "__version__", "?"),
        "faiss_gpu": gpu_available(),
        "python": platform.python_version(),
    }


def load_pairs(corpus: str, n: int) -> tuple[list[str], list[str], dict]:
    """`n` (query, code) pairs of real code, seeded-shuffled; cycled when fewer exist."""
    split = Path(corpus) if corpus else None
    if split is not None and corpus != DEFAULT_CORPUS and not split.exists():
        raise FileNotFoundError(f"--corpus {corpus}: no such split folder")
    if split is not None and (split / "qrels.parquet").exists():
        pairs = RetrievalSet.read(split).pairs()
        source = f"corpus split {split}"
    else:
        files = discover_sources(CorpusConfig(site_packages=False))
        tables, rows = [], 0
        for i in range(0, len(files), 200):  # stop once there are enough pairs
            tables.append(extract_files(files[i : i + 200], CorpusConfig().extract)[0])
            rows += tables[-1].num_rows
            if rows >= n:
                break
        pairs = pa.concat_tables(tables)
        source = "functions of this Python's standard library (no --corpus split found)"
    if pairs.num_rows == 0:
        raise RuntimeError(f"no (query, code) pairs found in {source}")
    order = np.random.default_rng(0).permutation(pairs.num_rows)
    order = np.resize(order, n)  # repeats the shuffled order when n > rows
    queries = pairs["query"].take(pa.array(order)).to_pylist()
    codes = pairs["code"].take(pa.array(order)).to_pylist()
    return queries, codes, {"source": source, "distinct_pairs": pairs.num_rows, "used": n}


def single_process_dist_env() -> None:
    """What `deepspeed.initialize` reads to set up a world of one (Ray Train sets it there)."""
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for key, value in {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
    }.items():
        os.environ.setdefault(key, value)


# ------------------------------------------------------------------ 1. training step


def check_train(queries: list[str], codes: list[str], args) -> dict:
    """Pairs/s of the retriever's DeepSpeed step (bf16 on CUDA), warm-up steps excluded."""
    cfg = RetrieverConfig(
        batch_size=args.train_batch, max_train_pairs=0, use_gpu=True, model=args.model
    )
    steps = args.train_warmup + args.train_steps
    n = steps * cfg.batch_size
    table = pa.table(
        {
            "query": queries[:n],
            "code": codes[:n],
            "group": group_keys(queries[:n], codes[:n]),  # texts stand in for ids
        }
    )
    tokens = tokenize_pairs(
        table, load_tokenizer(model_path(cfg)), cfg.max_query_len, cfg.max_code_len
    )
    batches = []
    for i in range(steps):
        part = tokens.slice(i * cfg.batch_size, cfg.batch_size)
        batches.append({c: part[c].to_numpy(zero_copy_only=False) for c in part.column_names})

    single_process_dist_env()
    torch.manual_seed(cfg.seed)
    task = RetrieverTask()
    model = task.build_model(cfg)
    engine, _ = build_engine(model, cfg, steps, True, task.param_groups(model, cfg))
    losses: list[float] = []

    def run(part: list[dict]) -> None:
        for batch in part:  # the loop's step: loss, backward, step, loss.item()
            loss = task.loss(engine, batch, cfg)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())

    warm_s = cuda_timed(lambda: run(batches[: args.train_warmup]))
    seconds = cuda_timed(lambda: run(batches[args.train_warmup :]))
    q_tokens = sum(len(x) for b in batches for x in b["q_ids"]) / n
    c_tokens = sum(len(x) for b in batches for x in b["c_ids"]) / n
    out = {
        "pairs_per_s": args.train_steps * cfg.batch_size / seconds,
        "step_ms": 1000 * seconds / args.train_steps,
        "batch_size": cfg.batch_size,
        "timed_steps": args.train_steps,
        "warmup_steps": args.train_warmup,
        "warmup_s": warm_s,
        "max_query_len": cfg.max_query_len,
        "max_code_len": cfg.max_code_len,
        "mean_query_tokens": q_tokens,
        "mean_code_tokens": c_tokens,
        "bf16": deepspeed_config(cfg, use_cuda=True)["bf16"]["enabled"],
        "zero_stage": cfg.zero_stage,
        "engine_dtype": str(next(engine.module.parameters()).dtype),
        "optimizer": type(engine.optimizer).__name__,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "peak_gpu_mib": peak_gpu_mib(),
    }
    return out  # the engine is freed with this frame; free_gpu() collects it


# ------------------------------------------------------------------ 1b. ranker training


def check_ranker_train(queries: list[str], codes: list[str], args) -> dict:
    """Pairs/s of the ranker's DeepSpeed step (bf16 on CUDA): groups of 1 positive + m
    negatives scored by the cross encoder, listwise loss, as `RankerTask.loss` does it;
    tokenising inside the step, then prepared a step ahead in a thread (the loop's way)."""
    cfg = RankerConfig(
        batch_size=args.ranker_train_groups,
        num_negatives=args.ranker_train_m,
        max_pair_len=args.ranker_train_len,
        use_gpu=True,
        model=args.model,
    )
    size = cfg.num_negatives + 1
    steps = args.train_warmup + args.train_steps

    def groups(step: int) -> tuple[list[str], list[str]]:
        qs, cs = [], []
        for g in range(cfg.batch_size):
            i = step * cfg.batch_size + g
            qs += [queries[i % len(queries)]] * size
            cs += [codes[(i + j * 7919) % len(codes)] for j in range(size)]  # j = 0: the positive
        return qs, cs

    single_process_dist_env()
    torch.manual_seed(cfg.seed)
    model = CrossEncoder.from_pretrained(
        args.model or default_model_path(),
        max_query_len=cfg.max_query_len,
        max_len=cfg.max_pair_len,
    )
    head_groups = RankerTask().param_groups(model, cfg)  # the head at head_lr, as the loop
    engine, _ = build_engine(model, cfg, steps + args.train_steps, True, head_groups)
    losses: list[float] = []
    tokenize_s = [0.0]

    def tokenized(step: int) -> dict:
        qs, cs = groups(step)
        start = time.perf_counter()
        inputs = tokenize_ranker_pairs(
            engine.module.tokenizer, qs, cs, cfg.max_query_len, cfg.max_pair_len
        )
        tokenize_s[0] += time.perf_counter() - start
        return inputs

    def run(first: int, last: int, ahead: bool = False) -> None:
        """The steps with tokenising inside each, or (`ahead`) one step ahead in a thread
        as the training loop runs the ranker's (loop.prefetched)."""
        steps = range(first, last)
        for inputs in prefetched(steps, tokenized) if ahead else map(tokenized, steps):
            scores = engine(**{k: v.to(engine.device) for k, v in inputs.items()})
            loss = listwise_ce(scores.view(-1, size), cfg.ranker_scale)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())

    warm_s = cuda_timed(lambda: run(0, args.train_warmup))
    tokenize_s[0] = 0.0
    seconds = cuda_timed(lambda: run(args.train_warmup, steps))
    in_step_tokenize_s = tokenize_s[0]
    ahead_s = cuda_timed(lambda: run(steps, steps + args.train_steps, ahead=True))
    pairs = args.train_steps * cfg.batch_size * size
    return {
        "pairs_per_s": pairs / ahead_s,
        "pairs_per_s_tokenising_in_step": pairs / seconds,
        "groups_per_s": args.train_steps * cfg.batch_size / ahead_s,
        "step_ms": 1000 * ahead_s / args.train_steps,
        "step_ms_tokenising_in_step": 1000 * seconds / args.train_steps,
        "tokenize_share": in_step_tokenize_s / seconds,
        "groups_per_step": cfg.batch_size,
        "group_size": size,
        "max_pair_len": cfg.max_pair_len,
        "max_query_len": cfg.max_query_len,
        "timed_steps": args.train_steps,
        "warmup_s": warm_s,
        "bf16": deepspeed_config(cfg, use_cuda=True)["bf16"]["enabled"],
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "peak_gpu_mib": peak_gpu_mib(),
    }


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


# ------------------------------------------------------------------ report


def figure_rows(name: str, result: dict) -> list[tuple[str, str, str]]:
    """(check, setting, figure) lines of the table."""
    if "error" in result:
        return [(name, "FAILED", result["error"].splitlines()[-1][:60])]
    if name == "train":
        return [
            (
                name,
                f"DualEncoder DeepSpeed step, bf16={result['bf16']}, batch {result['batch_size']}",
                f"{result['pairs_per_s']:.0f} pairs/s ({result['step_ms']:.0f} ms/step)",
            )
        ]
    if name == "ranker_train":
        return [
            (
                name,
                f"CrossEncoder DeepSpeed step, bf16={result['bf16']}, {result['groups_per_step']} "
                f"groups of {result['group_size']}, pairs <= {result['max_pair_len']}",
                f"{result['pairs_per_s']:.0f} pairs/s tokenising a step ahead; "
                f"{result['pairs_per_s_tokenising_in_step']:.0f} inside the step "
                f"({100 * result['tokenize_share']:.0f}% of it)",
            )
        ]
    if name == "embed":
        out = [(name, r["run"], f"{r['codes_per_s']:.0f} codes/s") for r in result["results"]]
        out.append(
            (name, "tokenising, 1 CPU process", f"{result['tokenize_codes_per_s']:.0f} codes/s")
        )
        return out
    if name == "ranker":
        return [
            (
                name,
                f"score_pairs {r['run']}, K={result['k']}",
                f"{r['pairs_per_s']:.0f} pairs/s, 1 req p50 {r['request_ms_p50']:.1f} ms, "
                f"{r['replicas_per_1000_qps']} replica(s)/1000 QPS",
            )
            for r in result["results"]
        ]
    return [
        (
            name,
            f"{r['kind']} on {r['device']}, {result['codes']} x {result['dim']}, {r['pattern']} "
            f"({r['queries_per_search']} q/search, k={r['k']})",
            f"{r['queries_per_s']:.0f} queries/s ({r['ms_per_search']:.2f} ms/search)",
        )
        for r in result["results"]
    ]


def csv_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--corpus", default=DEFAULT_CORPUS, help="split folder of real pairs (optional)"
    )
    parser.add_argument(
        "--model",
        default="",
        help="encoder folder (default: the bundled all-MiniLM-L6-v2); speed depends on its "
        "shape, not its weights",
    )
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"subset of {','.join(CHECKS)}")
    parser.add_argument("--train-batch", type=int, default=64, help="pairs per step (paper: 64)")
    parser.add_argument("--train-steps", type=int, default=30, help="timed training steps")
    parser.add_argument("--train-warmup", type=int, default=5, help="untimed first steps")
    parser.add_argument("--ranker-train-groups", type=int, default=8, help="groups per step")
    parser.add_argument("--ranker-train-m", type=int, default=31, help="negatives (paper: 31)")
    parser.add_argument("--ranker-train-len", type=int, default=384, help="pair tokens (paper)")
    parser.add_argument("--n-embed", type=int, default=20000, help="codes embedded per pass")
    parser.add_argument(
        "--embed-batch-sizes", type=csv_ints, default=[64, 256], help="codes per forward pass"
    )
    parser.add_argument("--k", type=int, default=10, help="codes reranked per query (paper: 10)")
    parser.add_argument("--ranker-requests", type=int, default=50, help="single requests timed")
    parser.add_argument("--ranker-batches", type=int, default=50, help="full pair batches timed")
    parser.add_argument("--n-codes", type=int, default=1_000_000, help="vectors in the index")
    parser.add_argument("--n-queries", type=int, default=10240, help="queries per search pattern")
    parser.add_argument("--dim", type=int, default=384, help="vector width (MiniLM: 384)")
    parser.add_argument(
        "--index-kinds", type=lambda s: s.split(","), default=["flat"], help="e.g. flat,ivf"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best is kept")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    checks = [c for c in args.checks.split(",") if c]
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        parser.error(f"--checks: unknown {unknown}; choose from {list(CHECKS)}")
    try:
        for kind in args.index_kinds:
            IndexConfig(kind=kind)  # a bad kind fails here, before any work
    except ValueError as e:
        parser.error(f"--index-kinds: {e}")

    if not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2

    device = device_info()
    print(
        f"{device['gpu']} x{device['gpus']} ({device['gpu_memory_gib']} GiB), {device['cpus']} CPUs, "
        f"torch {device['torch']} CUDA {device['cuda']}, faiss {device['faiss']} "
        f"(GPU build: {device['faiss_gpu']})",
        flush=True,
    )
    per_batch = max(1, ServeConfig().ranker_pair_budget // args.k)
    need = max(
        (args.train_warmup + args.train_steps) * args.train_batch if "train" in checks else 0,
        (args.train_warmup + args.train_steps) * args.ranker_train_groups
        if "ranker_train" in checks
        else 0,
        args.n_embed if "embed" in checks else 0,
        max(args.ranker_batches * per_batch, args.ranker_requests) if "ranker" in checks else 0,
        1,
    )
    queries: list[str] = []
    codes: list[str] = []
    texts: dict = {}
    if set(checks) - {"faiss"}:
        queries, codes, texts = load_pairs(args.corpus, need)
        print(f"texts: {texts['distinct_pairs']} distinct pairs from {texts['source']}", flush=True)

    runs = {
        "train": lambda: check_train(queries, codes, args),
        "ranker_train": lambda: check_ranker_train(queries, codes, args),
        "embed": lambda: check_embed(codes[: args.n_embed], args),
        "ranker": lambda: check_ranker(queries, codes, args),
        "faiss": lambda: check_faiss(args),
    }
    results: dict[str, dict] = {}
    for name in [c for c in CHECKS if c in checks]:
        free_gpu()
        start = time.perf_counter()
        try:
            results[name] = runs[name]()
        except Exception:  # one failed path must not hide the others' figures
            results[name] = {"error": traceback.format_exc()}
            print(results[name]["error"], file=sys.stderr, flush=True)
        results[name]["check_s"] = round(time.perf_counter() - start, 1)
        for row in figure_rows(name, results[name]):
            print(f"  {row[0]:<7} {row[1]:<72} {row[2]}", flush=True)

    print(f"\n{'check':<7} {'setting':<72} figure")
    for name, result in results.items():
        for row in figure_rows(name, result):
            print(f"{row[0]:<7} {row[1]:<72} {row[2]}")
    failed = [name for name, r in results.items() if "error" in r]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "device": device,
        "texts": texts,
        "settings": {k: v for k, v in vars(args).items()},
        "checks": results,
        "failed": failed,
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'gpu_check.json'}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
