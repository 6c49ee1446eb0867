"""Retriever training throughput: Ray Train + DeepSpeed against a plain PyTorch loop.

Same model, batch, sequence lengths, pairs and thread count, in one process run, so
noise hits both alike. The Ray figure is the steady training rate the loop reports
(start-up, validation and checkpoints excluded: those are per run, not per step).

Both sides are timed in windows of `--window` steps and the first window is dropped as
warm-up: in the Ray run it holds the Ray Data stream's start (tasks scheduled, the first
blocks tokenised), in the plain loop the allocator's first growth. The steady rate is the
mean over the later windows; the first window's rate is printed beside it. Prints a table
with the overhead ratio and writes JSON.

Each row also records how many cores the machine's *other* processes used meanwhile
(`background_cores`: Ray's GCS, raylet, agents, the Train controller and Ray Data's
actors; the row's own training process excluded): about 0.05 beside the plain loop, 0.16-
0.19 beside a Ray run. `--threads 1` runs the plain loop and the 1-worker row with one
compute thread, which leaves that background a core of its own.

    python benchmarks/train_throughput.py --corpus runs/demo/pipeline/corpus [--steps 40 --window 10]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow as pa
import ray
import torch

from r2ps.data.schema import RetrievalSet, split_pairs
from r2ps.models.dual import DualEncoder
from r2ps.models.encoder import default_model_path, load_tokenizer
from r2ps.train.config import RetrieverConfig
from r2ps.train.launch import train
from r2ps.train.loop import linear_schedule
from r2ps.train.losses import info_nce


def small_corpus(corpus: str, n_train: int, out: Path) -> None:
    """The first `n_train` train pairs and a 16-pair valid split (validation is not timed)."""
    train_pairs = RetrievalSet.read(Path(corpus) / "train").pairs().slice(0, n_train)
    valid_pairs = RetrievalSet.read(Path(corpus) / "valid").pairs().slice(0, 16)
    split_pairs(train_pairs).write(out / "train")
    split_pairs(valid_pairs).write(out / "valid")


def plain_loop(pairs: pa.Table, cfg: RetrieverConfig, steps: int, window: int) -> list[float]:
    """The baseline: a hand-written loop, one process, no Ray, no DeepSpeed.

    Pairs/s of each window of `window` steps.
    """
    torch.set_num_threads(cfg.threads_per_worker)
    model = DualEncoder.from_pretrained(default_model_path(), temperature=cfg.temperature)
    tok = model.tokenizer
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = linear_schedule(opt, int(cfg.warmup_ratio * steps), steps)
    queries, codes = pairs["query"].to_pylist(), pairs["code"].to_pylist()
    rates, start = [], time.perf_counter()
    for step in range(steps):
        sl = slice(step * cfg.batch_size, (step + 1) * cfg.batch_size)
        q = tok(
            queries[sl],
            padding=True,
            truncation=True,
            max_length=cfg.max_query_len,
            return_tensors="pt",
        )
        c = tok(
            codes[sl],
            padding=True,
            truncation=True,
            max_length=cfg.max_code_len,
            return_tensors="pt",
        )
        q_emb, c_emb = model(dict(q), dict(c))
        loss = info_nce(q_emb, c_emb, cfg.temperature)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        if (step + 1) % window == 0:
            rates.append(window * cfg.batch_size / (time.perf_counter() - start))
            start = time.perf_counter()
    return rates


def deepspeed_loop(pairs: pa.Table, cfg: RetrieverConfig, steps: int, window: int) -> list[float]:
    """The loop's own step (RetrieverTask.loss, engine.backward, engine.step) under a
    single-process DeepSpeed engine, without Ray: separates DeepSpeed's cost from Ray's.
    Pairs/s of each window."""
    from gpu_setup import single_process_dist_env

    from r2ps.train.loop import build_engine
    from r2ps.train.retriever import RetrieverTask, group_keys, tokenize_pairs

    torch.set_num_threads(cfg.threads_per_worker)
    n = steps * cfg.batch_size
    table = pairs.slice(0, n)
    table = pa.table(
        {
            "query": table["query"],
            "code": table["code"],
            "group": group_keys(table["query"].to_pylist(), table["code"].to_pylist()),
        }
    )
    single_process_dist_env()
    task = RetrieverTask()
    model = task.build_model(cfg)
    engine, _ = build_engine(model, cfg, steps, False, task.param_groups(model, cfg))
    tokenizer = load_tokenizer(default_model_path())
    rates, start = [], time.perf_counter()
    for step in range(steps):
        part = tokenize_pairs(
            table.slice(step * cfg.batch_size, cfg.batch_size),
            tokenizer,
            cfg.max_query_len,
            cfg.max_code_len,
        )
        batch = {c: part[c].to_numpy(zero_copy_only=False) for c in part.column_names}
        loss = task.loss(engine, batch, cfg)
        engine.backward(loss)
        engine.step()
        loss.item()
        if (step + 1) % window == 0:
            rates.append(window * cfg.batch_size / (time.perf_counter() - start))
            start = time.perf_counter()
    return rates


def ray_run(
    corpus: Path,
    storage: str,
    steps: int,
    window: int,
    workers: int,
    threads: int,
    base: RetrieverConfig,
) -> list[float]:
    """Pairs/s of each window: the loop reports the rate since its previous report."""
    cfg = RetrieverConfig(
        **{
            **base.__dict__,
            "corpus": str(corpus),
            "out": str(Path(storage) / f"model-{workers}x{threads}"),
            "storage": storage,
            "run_name": f"bench-{workers}x{threads}-{time.time_ns()}",
            "num_workers": workers,
            "threads_per_worker": threads,
            "max_steps": steps,
            "eval_every_steps": window,
            "max_failures": 0,
        }
    )
    summary = train(cfg)
    by_step = {r["step"]: r["pairs_per_s"] for r in summary["history"] if r.get("step")}
    want = range(window, steps + 1, window)
    missing = [s for s in want if s not in by_step]
    if missing:
        raise RuntimeError(f"no report at steps {missing} in {summary['history']}")
    return [float(by_step[s]) for s in want]


def cpu_seconds(exclude: set[int]) -> dict[int, float]:
    """CPU seconds (user + system) so far of every process but `exclude`'s, by pid."""
    out = {}
    for proc in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
        if proc.info["pid"] in exclude or "RayTrainWorker" in " ".join(proc.info["cmdline"] or []):
            continue  # this process or the row's training workers
        if proc.info["cpu_times"]:
            out[proc.info["pid"]] = proc.info["cpu_times"].user + proc.info["cpu_times"].system
    return out


def timed_with_background(row) -> tuple[list[float], float]:
    """`row()`'s rates and the cores other processes used meanwhile (processes that
    ended during the row are missed, so this is a lower bound)."""
    me = {os.getpid()}
    before, start = cpu_seconds(me), time.perf_counter()
    rates = row()
    after, wall = cpu_seconds(me), time.perf_counter() - start
    used = sum(t - before.get(pid, 0.0) for pid, t in after.items())
    return rates, used / wall


def steady(rates: list[float]) -> float:
    """Mean rate over the windows after the first (warm-up) one."""
    return sum(rates[1:]) / len(rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--corpus", default="runs/demo/pipeline/corpus")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--window", type=int, default=10, help="steps per timed window")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--threads", type=int, default=2, help="compute threads of the plain loop and 1-worker runs"
    )
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument(
        "--runs",
        type=lambda text: text.split(","),
        default=["plain", "deepspeed", "ray1", "ray2x1"],
        help="which rows, in order; the first must be plain (the baseline)",
    )
    parser.add_argument(
        "--worker-niceness",
        type=int,
        default=None,
        help="RAY_worker_niceness for the local Ray (Ray's default: 15)",
    )
    args = parser.parse_args()
    if args.runs[0] != "plain" or set(args.runs) - {"plain", "deepspeed", "ray1", "ray2x1"}:
        parser.error("--runs: plain first, then any of deepspeed, ray1, ray2x1")
    if args.worker_niceness is not None:  # read by the raylet that ray.init starts
        os.environ["RAY_worker_niceness"] = str(args.worker_niceness)  # noqa: SIM112 (Ray spells it so)
    if args.steps % args.window or args.steps < 2 * args.window:
        parser.error("--steps must be a multiple of --window and at least two windows")
    base = RetrieverConfig(
        batch_size=args.batch_size,
        max_code_len=256,
        max_query_len=64,
        lr=2e-5,
        threads_per_worker=args.threads,
    )
    t = args.threads

    ray.init(include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory() as tmp:
        # enough pairs for `steps` steps of the 2-worker run too (2 x batch per step)
        small_corpus(args.corpus, 2 * args.steps * args.batch_size, Path(tmp))
        pairs = RetrievalSet.read(Path(tmp) / "train").pairs()
        run = (Path(tmp), tmp, args.steps, args.window)
        runs = {
            "plain": (
                f"plain PyTorch loop, 1 process x {t} threads",
                lambda: plain_loop(pairs, base, args.steps, args.window),
            ),
            "deepspeed": (
                f"DeepSpeed engine, 1 process x {t} threads, no Ray",
                lambda: deepspeed_loop(pairs, base, args.steps, args.window),
            ),
            "ray1": (
                f"Ray Train + DeepSpeed, 1 worker x {t} threads",
                lambda: ray_run(*run, 1, t, base),
            ),
            "ray2x1": (
                "Ray Train + DeepSpeed, 2 workers x 1 thread",
                lambda: ray_run(*run, 2, 1, base),
            ),
        }
        rows = [(runs[key][0], *timed_with_background(runs[key][1])) for key in args.runs]

    plain = steady(rows[0][1])
    print(
        f"retriever training, MiniLM, batch {args.batch_size} per step, query<=64 code<=256 "
        f"tokens, {args.steps} steps timed in windows of {args.window}"
    )
    print(
        f"{'run':<46} {'steady pairs/s':>15} {'vs plain':>9} {'first window':>13}"
        f" {'background cores':>17}"
    )
    results = []
    for name, rates, background in rows:
        rate = steady(rates)
        print(
            f"{name:<46} {rate:>15.2f} {rate / plain:>8.2f}x {rates[0]:>13.2f} {background:>17.2f}"
        )
        results.append(
            {
                "run": name,
                "pairs_per_s": rate,
                "ratio_vs_plain": rate / plain,
                "window_pairs_per_s": rates,
                "background_cores": background,
            }
        )
    overhead = None
    if "ray1" in args.runs:
        overhead = 1 - steady(rows[args.runs.index("ray1")][1]) / plain
        print(f"overhead of Ray Train + DeepSpeed, 1 worker: {overhead:.1%} (target: at most 15%)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "train_throughput.json" if args.threads == 2 else f"train_throughput_t{t}.json"
    (out / name).write_text(
        json.dumps(
            {
                "steps": args.steps,
                "window": args.window,
                "batch_size": args.batch_size,
                "threads": args.threads,
                "worker_niceness": args.worker_niceness,
                "results": results,
                "overhead_1_worker": overhead,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
