"""Indexing a source tree (jobs/index.py): extraction rate, embedding rate, and a full
index against an incremental re-index after one file changed. Prints a table, writes JSON.

1. extraction (walk + read + tree-sitter) of every file of `--source` (default: this
   environment's site-packages; `--max-files` spread over it, 8,000 by default), with
   1 and 2 Ray Data workers, no embedding: files/s and units (functions, methods,
   classes)/s;
2. on `--subset` packages of that tree copied to a scratch folder (embedding all of
   site-packages is hours on 2 CPUs: see the JSON's `extrapolated_full_embed_hours`):
   a full index (embedding every unit with the bundled MiniLM over the Ray Data actor
   pool: codes/s), then one file changed and re-indexed incrementally, both in this
   process, and once more through the command line (`python jobs/index.py`, process
   start and imports included: what a user waits for).

    python benchmarks/index_repo.py [--source DIR] [--subset requests,yaml,...] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import ray

from r2ps.repo.config import RepoIndexConfig
from r2ps.repo.files import FileRules, walk_sources
from r2ps.repo.indexer import index_repo
from r2ps.repo.units import read_files

SUBSET = "requests,yaml,fsspec,jinja2,click,urllib3"


def site_packages() -> str:
    import sysconfig

    return sysconfig.get_paths()["purelib"]


def extraction(source: str, workers: int, max_files: int) -> dict:
    """One pass of walk + read + parse over Ray Data tasks (nothing embedded); with
    `max_files`, every n-th file of the walk, so the sample spans every package."""
    start = time.perf_counter()
    keep, skipped = walk_sources(source, FileRules())
    if max_files and len(keep) > max_files:
        keep = keep[:: -(-len(keep) // max_files)]
    walked = time.perf_counter()
    cfg = RepoIndexConfig(source=source, workers=workers, local_below=0)
    files, units = read_files([asdict(f) for f in keep], cfg)
    seconds = time.perf_counter() - start
    return {
        "run": f"Ray Data, {workers} worker{'s' if workers > 1 else ''}",
        "files": files.num_rows,
        "units": units.num_rows,
        "walk_seconds": round(walked - start, 2),
        "seconds": round(seconds, 2),
        "files_per_s": round(files.num_rows / seconds, 1),
        "units_per_s": round(units.num_rows / seconds, 1),
        "skipped_in_walk": len(skipped),
    }


def change_one_file(root: Path) -> str:
    """Append a small function to the first Python file (a real edit: new content)."""
    path = sorted(root.rglob("*.py"))[0]
    stamp = time.time_ns()
    with open(path, "a") as f:
        f.write(f"\n\ndef _bench_edit_{stamp}(x):\n    return x + {stamp % 97}\n")
    return str(path.relative_to(root))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--source", default=site_packages(), help="tree for the extraction rows")
    parser.add_argument("--subset", default=SUBSET, help="packages of --source for the index rows")
    parser.add_argument(
        "--max-files", type=int, default=8000, help="extraction rows: a spread sample (0: all)"
    )
    parser.add_argument("--skip-extraction", action="store_true")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    report: dict = {"cpus": os.cpu_count(), "source": args.source}

    if not args.skip_extraction:
        # read every file once first, so no row pays for a cold page cache
        for path in Path(args.source).rglob("*"):
            if path.is_file() and not path.is_symlink():
                with open(path, "rb") as f:
                    f.read()
        report["extraction"] = [extraction(args.source, w, args.max_files) for w in (1, 2)]

    scratch = Path(tempfile.mkdtemp(prefix="r2ps-index-bench-"))
    try:
        src = scratch / "src"
        for pkg in args.subset.split(","):
            shutil.copytree(Path(args.source) / pkg, src / pkg)
        out = scratch / "index"
        cfg = RepoIndexConfig(source=str(src), out=str(out))
        full = index_repo(cfg)
        changed = change_one_file(src)
        inc = index_repo(cfg)
        changed_cli = change_one_file(src)
        start = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "platform")}
        subprocess.run(
            [sys.executable, "jobs/index.py", "--source", str(src), "--out", str(out)],
            check=True,
            env=env,
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
        )
        cli_seconds = time.perf_counter() - start
        cli = json.loads((out / "index_summary.json").read_text())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    codes_per_s = full["run"]["codes"]["codes_per_s"]
    units_full_tree = None
    if "extraction" in report:  # units of the whole tree, from the sample's units per file
        ex = report["extraction"][-1]
        report["tree_files"] = len(walk_sources(args.source, FileRules())[0])
        units_full_tree = round(ex["units"] / ex["files"] * report["tree_files"])
        report["tree_units_estimated"] = units_full_tree
    report["index"] = {
        "subset": args.subset,
        "files": full["files"]["indexed"],
        "units": full["units"]["total"],
        "unique_codes": full["run"]["codes"]["unique"],
        "full_seconds": full["seconds"],
        "embed_codes_per_s": codes_per_s,
        "incremental": {
            "changed": changed,
            "files_read": inc["run"]["files_read"],
            "codes_embedded": inc["run"]["codes"]["embedded"],
            "seconds": inc["seconds"],
            "fraction_of_full": round(inc["seconds"]["total"] / full["seconds"]["total"], 4),
        },
        "incremental_cli": {
            "changed": changed_cli,
            "files_read": cli["run"]["files_read"],
            "codes_embedded": cli["run"]["codes"]["embedded"],
            "wall_seconds": round(cli_seconds, 2),
            "fraction_of_full": round(cli_seconds / full["seconds"]["total"], 4),
        },
    }
    if units_full_tree and codes_per_s:
        report["extrapolated_full_embed_hours"] = round(units_full_tree / codes_per_s / 3600, 1)

    print(f"indexing benchmark ({os.cpu_count()} CPUs)")
    if "extraction" in report:
        print(f"extraction of {args.source} (walk + read + tree-sitter, no embedding):")
        print(
            f"  {'run':<22} {'files':>7} {'units':>8} {'seconds':>8} {'files/s':>8} {'units/s':>8}"
        )
        for r in report["extraction"]:
            print(f"  {r['run']:<22} {r['files']:>7} {r['units']:>8} {r['seconds']:>8.1f} "
                  f"{r['files_per_s']:>8.1f} {r['units_per_s']:>8.1f}")  # fmt: skip
    ix = report["index"]
    print(f"index of {ix['subset']} ({ix['files']} files, {ix['units']} units, "
          f"{ix['unique_codes']} distinct codes):")  # fmt: skip
    print(f"  full run: {ix['full_seconds']['total']:.1f} s "
          f"(embedding {ix['full_seconds']['embed']:.1f} s, {codes_per_s} codes/s)")  # fmt: skip
    i, c = ix["incremental"], ix["incremental_cli"]
    print(f"  one file changed, in process: {i['seconds']['total']:.1f} s "
          f"({100 * i['fraction_of_full']:.1f}% of full; {i['files_read']} file read, "
          f"{i['codes_embedded']} codes embedded)")  # fmt: skip
    print(f"  one file changed, python jobs/index.py: {c['wall_seconds']:.1f} s wall "
          f"({100 * c['fraction_of_full']:.1f}% of full, process start included)")  # fmt: skip
    if "extrapolated_full_embed_hours" in report:
        print(f"  embedding all {units_full_tree} units of the tree at that rate: "
              f"~{report['extrapolated_full_embed_hours']} h (not run)")  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "index_repo.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out / 'index_repo.json'}")


if __name__ == "__main__":
    main()
