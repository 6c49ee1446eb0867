"""Corpus extraction throughput: pairs/s with 1 and 2 Ray Data workers.

A plain single-process loop over the same files is the baseline, run in the same
process so machine noise hits every row alike. Prints a table and writes JSON.

    python benchmarks/corpus_extract.py [--files 4000] [--repeats 2] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import ray

from r2ps.data.corpus_config import CorpusConfig
from r2ps.data.sources import discover_sources, extract, extract_files


def timed(fn) -> tuple[float, int]:
    start = time.perf_counter()
    n = fn()
    return time.perf_counter() - start, n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--files", type=int, default=4000, help="source files to extract from")
    parser.add_argument("--repeats", type=int, default=2, help="runs per row; the best is kept")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    cfg = CorpusConfig(max_files=args.files)
    files = discover_sources(cfg)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False

    runs = {
        "plain loop (1 process, no Ray)": lambda: extract_files(files, cfg.extract)[0].num_rows,
        "Ray Data, 1 worker": lambda: extract(files, CorpusConfig(workers=1))[0].num_rows,
        "Ray Data, 2 workers": lambda: extract(files, CorpusConfig(workers=2))[0].num_rows,
    }
    results = []
    for name, fn in runs.items():
        best = min((timed(fn) for _ in range(args.repeats)), key=lambda r: r[0])
        results.append(
            {"run": name, "seconds": best[0], "pairs": best[1], "pairs_per_s": best[1] / best[0]}
        )
    base = results[0]["pairs_per_s"]
    print(
        f"corpus extraction over {len(files)} files ({os.cpu_count()} CPUs, best of {args.repeats})"
    )
    print(f"{'run':<34} {'pairs':>7} {'seconds':>8} {'pairs/s':>8} {'vs plain':>8}")
    for r in results:
        r["speedup_vs_plain"] = r["pairs_per_s"] / base
        print(
            f"{r['run']:<34} {r['pairs']:>7} {r['seconds']:>8.1f} {r['pairs_per_s']:>8.0f} {r['speedup_vs_plain']:>7.2f}x"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus_extract.json").write_text(
        json.dumps({"files": len(files), "cpus": os.cpu_count(), "results": results}, indent=1)
    )
    print(f"wrote {out / 'corpus_extract.json'}")


if __name__ == "__main__":
    main()
