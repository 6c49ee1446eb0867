"""Index speed and what it costs in quality: the repository index job (`r2ps index`,
`jobs/index.py`) under several of its settings (`RepoIndexConfig`), on semble's trees, in
one run on this machine. Prints a table, writes `benchmarks/results/index_speed_<tag>.json`.

A row per setting (`SETTINGS`; `today` is the job as it was before issue 31, `default` is
`RepoIndexConfig()` as it is now): every tree of `--repos` indexed from scratch (`full`, a
fresh Ray per tree where the setting uses Ray, as each `r2ps index` starts one), then
searched with semble's queries through `benchmarks/repo_search.py`'s own path (the search
core the Serve app runs, on the serve.yaml the job wrote; `evaluate_repo`, the scorer of
`r2ps.evaluation.metrics`):

- units, and the seconds of each stage the job records in `index_summary.json` (walk,
  extract = read + parse, embed, index, write), summed over the trees;
- codes/s: codes embedded / embed seconds (model load, and Ray's start where used, in);
- peak memory: the largest sum of RSS over the setting's process and all its
  descendants (Ray's included), sampled every 0.2 s (pages shared between processes count
  once per process), and the driver's own peak (`ru_maxrss`);
- NDCG@10, dense: mean over the trees of each tree's mean over its queries (repo_search's
  rule), with the queries embedded as served (serve.yaml's backend) and, for a setting
  whose codes are not torch's, with torch queries too (the mismatch); the difference
  from `today`, per query, with a paired bootstrap interval;
- `choice`: the fastest setting (total seconds) within `--tolerance` (0.005) NDCG@10 of
  the best, and the speed ratio of each setting to `today`.

Each setting runs in a child process of its own (so peak memory is its own); `--resume`
keeps the settings a results file already holds for the same trees and model, so a long
run can go in parts (each part under `flock /tmp/r2ps-heavy.lock`). `--first-answer NAME`
also times, as a user waits for it, `today`'s job and the default `r2ps index NAME`, each
followed by `r2ps search` of the tree's first query: from the command to the first answer,
process starts and imports included.

    flock /tmp/r2ps-heavy.lock python benchmarks/index_speed.py --data ../shared/data/semble \\
        --trees /work/trees [--repos chi,express,...] [--settings today,int8,default] \\
        [--first-answer aiohttp] [--tag NAME] [--resume]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # repo_search, beside this file
import repo_search  # noqa: E402
from repo_search import evaluate_repo, open_retriever, read_semble  # noqa: E402

from r2ps.evaluation.metrics import paired_bootstrap  # noqa: E402
from r2ps.log import get_logger, setup_logging  # noqa: E402
from r2ps.models.encoder import model_or_default  # noqa: E402
from r2ps.repo.config import RepoIndexConfig  # noqa: E402
from r2ps.repo.indexer import index_repo  # noqa: E402
from r2ps.search.searcher import SERVE_FILE  # noqa: E402
from r2ps.storage import write_text_atomic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
log = get_logger("r2ps.index_speed")

DEV_REPOS = "chi,express,starlette,httpx,fastapi,aiohttp"
STAGES = ("walk", "extract", "embed", "index", "write", "total")
IN_PROCESS = 1_000_000_000  # local_below: never Ray
# The index job before issue 31: torch fp32, the model's 256 code tokens, Ray Data (tasks
# for >= 256 files, the actor pool for >= 256 codes: 1 actor x 2 threads on 2 CPUs).
TODAY = {"backend": "torch", "max_code_len": 0, "local_below": 256, "threads": 0, "actors": 0}
HERE = {**TODAY, "local_below": IN_PROCESS}
SETTINGS: dict[str, tuple[str, dict]] = {
    "today": ("before issue 31: torch, 256 tokens, Ray from 256 codes", TODAY),
    "ray-2x1": ("Ray actor pool, 2 actors x 1 thread", {**TODAY, "actors": 2, "threads": 1}),
    "here": ("in process, no Ray (torch, 2 threads)", HERE),
    "here-1t": ("in process, torch 1 thread", {**HERE, "threads": 1}),
    "onnx": ("in process, ONNX Runtime fp32", {**HERE, "backend": "onnx"}),
    "int8": ("in process, ONNX Runtime int8", {**HERE, "backend": "onnx-int8"}),
    "len128": ("in process, torch, 128 code tokens", {**HERE, "max_code_len": 128}),
    "int8-len128": (
        "in process, ONNX Runtime int8, 128 code tokens",
        {**HERE, "backend": "onnx-int8", "max_code_len": 128},
    ),
    "int8-len128-1t": (
        "in process, ONNX Runtime int8 on 1 thread, 128 code tokens",
        {**HERE, "backend": "onnx-int8", "max_code_len": 128, "threads": 1},
    ),
    "int8-len128-ray": (
        "Ray from 256 codes (1 actor x 2 threads here), ONNX Runtime int8, 128 code tokens",
        {**TODAY, "backend": "onnx-int8", "max_code_len": 128},
    ),
    "default": ("RepoIndexConfig() now: what `r2ps index` runs", {}),
}


# ------------------------------------------------------------------ one setting (child)


def _setting_config(name: str, source: Path, out: Path, model: str) -> RepoIndexConfig:
    """The index job's settings of row `name` for one tree: a full run on a Ray of its own."""
    return RepoIndexConfig(
        source=str(source), out=str(out), model=model, full=True, ray_address="local",
        **SETTINGS[name][1],
    )  # fmt: skip


def _dense(out: Path, tasks: list, **overrides) -> dict:
    """Dense NDCG@10 and per-query scores of the index in `out`, searched as served
    (`repo_search.open_retriever`: the Serve app's search core on the index's serve.yaml;
    `overrides`: serve.yaml settings)."""
    import torch

    threads = torch.get_num_threads()  # the replica sets its own; the next index keeps ours
    try:
        retriever = open_retriever(out, 0, lexical=False, **overrides)
        found = evaluate_repo(retriever, tasks, ["dense"], latency_runs=1)["dense"]
    finally:
        torch.set_num_threads(threads)
    return {
        "ndcg10": found["ndcg10"],
        "p50_ms": found["p50_ms"],
        "queries": [q["ndcg10"] for q in found["queries"]],
    }


def run_tree(name: str, tree: str, semble, args) -> dict:
    """Index one tree with setting `name`, then search it; a crash is recorded."""
    spec = semble.repos[tree]
    source = args.trees / tree / spec.get("benchmark_root", "")
    out = args.out_dir / name / tree
    shutil.rmtree(out, ignore_errors=True)
    record: dict = {"name": tree, "queries": len(semble.tasks[tree]), "crash": None}
    try:
        cfg = _setting_config(name, source, out, args.model)
        start = time.perf_counter()
        summary = index_repo(cfg)
        record["wall_seconds"] = round(time.perf_counter() - start, 3)
    except Exception as e:  # noqa: BLE001  (one tree never stops the run)
        record["crash"] = repo_search._crash(tree, "index", e)
        return record
    finally:
        _stop_ray()
    codes = summary["run"]["codes"]
    record.update(
        units=summary["units"]["total"],
        embedded=codes["embedded"],
        seconds=summary["seconds"],
        codes_per_s=codes["codes_per_s"],
        embedding={k: codes[k] for k in ("backend", "max_code_len", "in_process")},
    )
    try:
        served = _dense(out, semble.tasks[tree])
        record["dense"] = {"served": served}
        if cfg.backend != "torch":  # these codes with torch's queries, and with their own
            as_served = served_backend(out)
            for key, backend in (("torch_queries", "torch"), ("same_backend_queries", cfg.backend)):
                record["dense"][key] = (
                    served if backend == as_served
                    else _dense(out, semble.tasks[tree], backend=backend)
                )  # fmt: skip
    except Exception as e:  # noqa: BLE001
        record["crash"] = repo_search._crash(tree, "search", e)
    return record


def run_large(name: str, args) -> dict:
    """Index `args.large` (any tree: no queries, so no NDCG) with setting `name`."""
    out = args.out_dir / name / "large"
    shutil.rmtree(out, ignore_errors=True)
    record: dict = {"name": str(args.large), "queries": 0, "crash": None}
    try:
        start = time.perf_counter()
        summary = index_repo(_setting_config(name, args.large, out, args.model))
        record["wall_seconds"] = round(time.perf_counter() - start, 3)
    except Exception as e:  # noqa: BLE001
        record["crash"] = repo_search._crash(str(args.large), "index", e)
        return record
    finally:
        _stop_ray()
    codes = summary["run"]["codes"]
    return record | {
        "files": summary["files"]["indexed"],
        "units": summary["units"]["total"],
        "embedded": codes["embedded"],
        "seconds": summary["seconds"],
        "codes_per_s": codes["codes_per_s"],
        "embedding": {k: codes[k] for k in ("backend", "max_code_len", "in_process")},
    }


def served_backend(out: Path) -> str:
    """The query encoder's backend the index's serve.yaml names (torch when it names none)."""
    import yaml

    return (yaml.safe_load((out / SERVE_FILE).read_text()) or {}).get("backend", "torch")


def _stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def run_child(args) -> None:
    """One setting over every tree, in this process; its record to `args.child_out`."""
    setup_logging()
    # imports first, so the first tree's timings hold no more than the others' do
    import faiss  # noqa: F401
    import onnxruntime  # noqa: F401
    import ray  # noqa: F401

    from r2ps.models import dual  # noqa: F401
    from r2ps.search import searcher  # noqa: F401

    if args.large:
        trees = [run_large(args.child, args)]
    else:
        semble = read_semble(args.data)
        trees = [run_tree(args.child, tree, semble, args) for tree in args.repos]
    usage = {
        "driver_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "children_peak_rss_mib": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1
        ),
    }
    args.child_out.write_text(json.dumps({"trees": trees, **usage}) + "\n")


# ------------------------------------------------------------------ the parent


def _tree_rss(root) -> int:
    """Bytes: RSS of `root` (a psutil.Process) and every descendant, now."""
    import psutil

    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):  # ended since it was listed
            total += p.memory_info().rss
    return total


def run_setting(name: str, args, large: bool = False) -> dict:
    """Setting `name` in a child process, its process tree's RSS sampled meanwhile (on
    `args.large` alone when `large`)."""
    import psutil

    with tempfile.TemporaryDirectory() as tmp:
        child_out = Path(tmp) / "child.json"
        cmd = [
            sys.executable, __file__, f"--data={args.data}", f"--trees={args.trees}",
            f"--repos={','.join(args.repos)}", f"--model={args.model}",
            f"--out-dir={args.out_dir}", f"--child={name}", f"--child-out={child_out}",
        ] + ([f"--large={args.large}"] if large else [])  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.Popen(cmd)
        root = psutil.Process(proc.pid)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                peak[0] = max(peak[0], _tree_rss(root))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        done.set()
        sampler.join()
        if code != 0:
            raise RuntimeError(f"setting {name}: the child process exited {code}")
        result = json.loads(child_out.read_text())
    label, overrides = SETTINGS[name]
    return {
        "setting": name,
        "label": label,
        "overrides": overrides,
        "config": {
            k: v
            for k, v in asdict(RepoIndexConfig(**overrides)).items()
            if k in ("backend", "max_code_len", "local_below", "threads", "actors", "batch_size")
        },
        "process_seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mib": round(peak[0] / 2**20, 1),
        **result,
        **aggregate(result["trees"]),
    }


def aggregate(trees: list[dict]) -> dict:
    """Sums of units and stage seconds, codes/s, mean NDCG over the trees (none crashed)."""
    ok = [t for t in trees if not t["crash"]]
    seconds = {s: round(sum(t["seconds"][s] for t in ok), 3) for s in STAGES}
    embedded = sum(t["embedded"] for t in ok)
    out = {
        "crashed": [t["name"] for t in trees if t["crash"]],
        "units": sum(t["units"] for t in ok),
        "embedded": embedded,
        "seconds": seconds,
        "codes_per_s": round(embedded / seconds["embed"], 1) if seconds["embed"] else None,
    }
    for queries in ("served", "torch_queries", "same_backend_queries"):
        scored = [t["dense"][queries]["ndcg10"] for t in ok if queries in t.get("dense", {})]
        if scored and len(scored) == len(ok):
            out[f"ndcg10_{queries}"] = float(np.mean(scored))
    return out


def per_query(row: dict, queries: str = "served") -> np.ndarray:
    """Every query's NDCG@10 of a row, trees in order (for paired comparisons)."""
    return np.array(
        [s for t in row["trees"] if not t["crash"] for s in t["dense"][queries]["queries"]]
    )


def compare(rows: dict[str, dict], tolerance: float) -> dict:
    """Each row against `today` (speed ratio, paired NDCG difference) and the choice: the
    fastest row (total seconds) within `tolerance` NDCG@10 of the best row. Rows are
    compared on the same trees: those that crashed on others than `today` (else the first
    row) did are left out, and named."""
    if not rows:
        return {}
    ref = rows.get("today") or next(iter(rows.values()))
    scored = {
        n: r for n, r in rows.items() if r["crashed"] == ref["crashed"] and "ndcg10_served" in r
    }
    if not scored:
        return {}
    best = max(r["ndcg10_served"] for r in scored.values())
    within = [n for n, r in scored.items() if r["ndcg10_served"] >= best - tolerance]
    choice = min(within, key=lambda n: scored[n]["seconds"]["total"])
    out = {
        "best_ndcg10": best,
        "tolerance": tolerance,
        "within": within,
        "choice": choice,
        "not_comparable": sorted(set(rows) - set(scored)),
    }
    today = scored.get("today")
    if today:
        for r in scored.values():
            r["vs_today"] = {
                "speed": round(today["seconds"]["total"] / r["seconds"]["total"], 2),
                "codes_per_s": round(r["codes_per_s"] / today["codes_per_s"], 2)
                if r["codes_per_s"] and today["codes_per_s"]
                else None,
                "ndcg10": paired_bootstrap(per_query(r), per_query(today)),
            }
    return out


def first_answer(name: str, tree: str, semble, args) -> dict:
    """Seconds from the index command to the first answer of `r2ps search` on `tree`, as a
    user runs them (fresh processes): `r2ps index` for `default`, else jobs/index.py with
    the row's settings and a Ray of its own, as `r2ps index` starts one."""
    r2ps = str(Path(sys.executable).with_name("r2ps"))
    if tree in semble.repos:
        source = args.trees / tree / semble.repos[tree].get("benchmark_root", "")
        query = semble.tasks[tree][0].query
    else:  # a folder of one's own: the query --first-answer-query names
        source, tree, query = Path(tree), Path(tree).name, args.first_answer_query
    out = args.out_dir / f"first-answer-{name}" / tree
    shutil.rmtree(out, ignore_errors=True)
    if name == "default":
        index_cmd = [r2ps, "index", str(source), "--out", str(out), "--full"]
    else:
        settings = [f"{k}={v}" for k, v in SETTINGS[name][1].items()]
        index_cmd = [sys.executable, str(REPO / "jobs" / "index.py"), "--source", str(source),
                     "--out", str(out), "full=true", "ray_address=local", *settings]  # fmt: skip
    if args.model != model_or_default(""):
        index_cmd += ["--model", args.model] if name == "default" else [f"model={args.model}"]
    search_cmd = [r2ps, "search", query, "--index", str(out), "--json", "-k", "10"]
    times = {}
    for step, cmd in (("index", index_cmd), ("search", search_cmd)):
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        times[step] = round(time.perf_counter() - start, 2)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd[:3])}...: exit {done.returncode}\n{done.stderr[-2000:]}"
            )
    summary = json.loads((out / "index_summary.json").read_text())
    hits = json.loads(done.stdout)["hits"]
    return {
        "setting": name,
        "tree": tree,
        "source": str(source),
        "query": query,
        "units": summary["units"]["total"],
        "index_command": " ".join(index_cmd[:2]),
        "index_seconds": times["index"],
        "search_seconds": times["search"],
        "to_first_answer_seconds": round(times["index"] + times["search"], 2),
        "job_seconds": summary["seconds"],
        "first_hit": hits[0]["path"] if hits else None,
    }


# ------------------------------------------------------------------ table


def print_table(report: dict) -> None:
    rows = report["settings_run"]
    print(f"\nindex speed on {', '.join(report['settings']['repos'])} ({os.cpu_count()} CPUs)")
    head = (
        f"  {'setting':<16} {'units':>6} " + " ".join(f"{s:>7}" for s in STAGES)
        + f" {'codes/s':>8} {'peak MiB':>9} {'NDCG@10':>8} {'torch-q':>8} {'own-q':>8} {'vs today':>9}"
        + "  NDCG - today [95% CI]"
    )  # fmt: skip
    print(head)
    for name, r in rows.items():
        line = f"  {name:<16} {r['units']:>6} " + " ".join(
            f"{r['seconds'][s]:>7.1f}" for s in STAGES
        )
        line += f" {r['codes_per_s'] or 0:>8.1f} {r['peak_rss_mib']:>9.0f}"
        for queries in ("served", "torch_queries", "same_backend_queries"):
            ndcg = r.get(f"ndcg10_{queries}")
            line += f" {ndcg:>8.4f}" if ndcg is not None else f" {'-':>8}"
        vs = r.get("vs_today")
        if vs:
            d = vs["ndcg10"]
            line += f" {vs['speed']:>8.2f}x  {d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"
        if r["crashed"]:
            line += f"  CRASHED: {', '.join(r['crashed'])}"
        print(line)
    choice = report.get("comparison", {})
    if choice:
        print(
            f"\nbest NDCG@10 {choice['best_ndcg10']:.4f}; within {choice['tolerance']}: "
            f"{', '.join(choice['within'])}; fastest of those: {choice['choice']}"
        )
    for name, r in report.get("large", {}).get("settings_run", {}).items():
        print(
            f"large tree {report['large']['source']}, {name}: {r['units']} units, "
            f"{r['seconds']['total']:.1f} s ({r['codes_per_s'] or 0:.1f} codes/s), "
            f"peak {r['peak_rss_mib']:.0f} MiB" + ("  CRASHED" if r["crashed"] else "")
        )
    for fa in report.get("first_answer", []):
        print(
            f"first answer, {fa['setting']} on {fa['tree']} ({fa['units']} units): index "
            f"{fa['index_seconds']:.1f} s + search {fa['search_seconds']:.1f} s = "
            f"{fa['to_first_answer_seconds']:.1f} s"
        )


# ------------------------------------------------------------------ the run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="semble's benchmark folder")
    p.add_argument("--trees", type=Path, required=True, help="DIR/<name>/<benchmark_root>/...")
    p.add_argument("--repos", type=repo_search._csv, default=repo_search._csv(DEV_REPOS))
    p.add_argument(
        "--settings",
        type=repo_search._csv,
        default=["today", "ray-2x1", "here", "onnx", "int8", "len128", "int8-len128", "default"],
        help=f"rows, of {', '.join(SETTINGS)}",
    )
    p.add_argument("--model", default="", help="retriever dir ('' = the bundled MiniLM)")
    p.add_argument("--tolerance", type=float, default=0.005, help="NDCG@10 below the best")
    p.add_argument(
        "--first-answer",
        default="",
        help="a tree to time index + first search on: a semble repository (its first query) "
        "or a folder (--first-answer-query)",
    )
    p.add_argument("--first-answer-query", default="where is the configuration read")
    p.add_argument(
        "--large",
        type=Path,
        help="also index this tree (any folder, e.g. ~30k units; no queries: speed and peak "
        "memory only) with each of --large-settings",
    )
    p.add_argument("--large-settings", type=repo_search._csv, default=["default"])
    p.add_argument("--out-dir", type=Path, default=Path(tempfile.gettempdir()) / "r2ps_index_speed")
    p.add_argument("--tag", default="dev", help="results file index_speed_<tag>.json")
    p.add_argument("--resume", action="store_true", help="keep the rows the file holds")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = sorted(set(args.settings + args.large_settings) - set(SETTINGS))
    if unknown:
        p.error(f"--settings: unknown {unknown}; expected some of {list(SETTINGS)}")
    args.model = model_or_default(args.model)
    return args


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.child:
        run_child(args)
        return None
    setup_logging()
    semble = read_semble(args.data)
    unknown = sorted(set(args.repos) - set(semble.repos))
    if unknown:
        raise SystemExit(f"--repos: not in {args.data / 'repos.json'}: {unknown}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"index_speed_{args.tag}.json"
    settings = {
        "repos": args.repos,
        "model": args.model,
        "data": str(args.data.resolve()),
        "trees": str(args.trees.resolve()),
        "tolerance": args.tolerance,
    }
    rows: dict[str, dict] = {}
    if args.resume and path.exists():
        last = json.loads(path.read_text())
        same = all(last["settings"].get(k) == v for k, v in settings.items() if k != "tolerance")
        if not same:
            raise SystemExit(f"--resume: {path} was run on other trees or another model")
        rows = last["settings_run"]
    report = {
        "benchmark": "repository index speed and quality (semble's trees and queries)",
        "settings": settings,
        "r2ps": repo_search._git_commit(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "onnx_export": _ensure_exports(args),
        "settings_run": rows,
        "large": {"source": str(args.large) if args.large else None, "settings_run": {}},
        "first_answer": [],
    }

    def save() -> None:
        report["comparison"] = compare(rows, args.tolerance)
        write_text_atomic(path, json.dumps(report, indent=1) + "\n")

    for name in args.settings:
        log.info("setting %s: %s", name, SETTINGS[name][0])
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        rows[name] = {"started": started, **run_setting(name, args)}
        save()
    if args.large:
        for name in args.large_settings:
            log.info("large tree %s, setting %s", args.large, name)
            started = time.strftime("%Y-%m-%d %H:%M:%S")
            report["large"]["settings_run"][name] = {
                "started": started,
                **run_setting(name, args, large=True),
            }
            save()
    if args.first_answer:
        for name in ("today", "default"):
            report["first_answer"].append(first_answer(name, args.first_answer, semble, args))
            save()
    save()
    print_table(report)
    print(f"\nwrote {path}")
    return report


def _ensure_exports(args) -> dict:
    """The ONNX export of the model, made here (not inside a timed row) when missing."""
    from r2ps.models.onnx_export import ensure_export

    start = time.perf_counter()
    manifest = ensure_export(args.model, "onnx-int8")
    return {"seconds_here": round(time.perf_counter() - start, 1), "fused": manifest.get("fused")}


if __name__ == "__main__":
    main()
