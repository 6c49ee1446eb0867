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
in the table and the JSON, the others still run, and the exit status is 1. The checks
are in gpu_train_checks.py (1, 1b) and gpu_inference_checks.py (2-4), what they share in
gpu_setup.py; this script runs them and writes the report.

    python benchmarks/gpu_check.py [--n-codes 1000000] [--corpus runs/demo/corpus/train]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch
from gpu_inference_checks import check_embed, check_faiss, check_ranker
from gpu_setup import DEFAULT_CORPUS, device_info, free_gpu, load_pairs
from gpu_train_checks import check_ranker_train, check_train

from r2ps.mining.index import IndexConfig
from r2ps.serving.settings import ServeConfig

NO_CUDA = "no CUDA device: gpu_check measures GPU paths only"
CHECKS = ("train", "ranker_train", "embed", "ranker", "faiss")


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
