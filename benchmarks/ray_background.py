"""What idle Ray processes cost a CPU training loop that uses every core.

A Ray Train run keeps about ten Ray worker processes alive beside the training worker
(Train controller, placement-group cleaner, preemption watcher, synchronisation actor,
Ray Data's split coordinator, stats and autoscaling actors, idle workers). Each wakes
about 300 times a second even when idle (a 10 ms signal-check timer in every worker's
main thread, plus gRPC and heartbeat threads). On a machine whose every core runs a
compute thread, each wake-up preempts one; the other then waits at the next barrier.

This times the plain PyTorch loop of `train_throughput.py` in this process, alternating
phases with no extra actors and with `--actors` idle ones (num_cpus=0, never called),
and reports the slowdown, with the context switches per second those actors cause.

    python benchmarks/ray_background.py --corpus runs/demo/corpus [--actors 10 --steps 16]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import psutil
import ray
from train_throughput import plain_loop, small_corpus, steady

from r2ps.data.schema import RetrievalSet
from r2ps.train.config import TrainConfig


@ray.remote(num_cpus=0)
class Idle:
    """Does nothing: what it costs is Ray's own threads in its process."""

    def pid(self) -> int:
        import os

        return os.getpid()


def wakeups_per_s(pids: list[int], seconds: float = 5.0) -> float:
    """Context switches per second of all threads of `pids`, over `seconds`."""

    def total() -> int:
        n = 0
        for pid in pids:
            ctx = psutil.Process(pid).num_ctx_switches()
            n += ctx.voluntary + ctx.involuntary
        return n

    before = total()
    time.sleep(seconds)
    return (total() - before) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--corpus", default="runs/demo/corpus")
    parser.add_argument("--actors", type=int, default=10)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    cfg = TrainConfig(
        batch_size=32, max_code_len=256, max_query_len=64, threads_per_worker=args.threads
    )

    ray.init(include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        small_corpus(args.corpus, args.steps * cfg.batch_size, Path(tmp))
        pairs = RetrievalSet.read(Path(tmp) / "train").pairs()
        rows = []
        for phase in ("without", "with", "without", "with"):
            actors = [Idle.remote() for _ in range(args.actors if phase == "with" else 0)]
            pids = ray.get([a.pid.remote() for a in actors])
            switches = wakeups_per_s(pids) if pids else 0.0
            rate = steady(plain_loop(pairs, cfg, args.steps, args.window))
            rows.append(
                {
                    "phase": phase,
                    "actors": len(actors),
                    "pairs_per_s": rate,
                    "actor_switches_per_s": switches,
                }
            )
            for a in actors:
                ray.kill(a)
            time.sleep(3)

    base = sum(r["pairs_per_s"] for r in rows if r["actors"] == 0) / 2
    loaded = sum(r["pairs_per_s"] for r in rows if r["actors"]) / 2
    print(f"plain loop, MiniLM, batch 32, {args.threads} threads, {args.steps} steps per phase")
    print(f"{'phase':<32} {'pairs/s':>8} {'actor switches/s':>17}")
    for r in rows:
        name = f"{r['actors']} idle Ray actors"
        print(f"{name:<32} {r['pairs_per_s']:>8.2f} {r['actor_switches_per_s']:>17.0f}")
    print(f"slowdown from {args.actors} idle actors: {1 - loaded / base:.1%}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"ray_background_t{args.threads}.json").write_text(
        json.dumps(
            {
                "threads": args.threads,
                "actors": args.actors,
                "rows": rows,
                "slowdown": 1 - loaded / base,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
