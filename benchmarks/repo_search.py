"""Repository search on semble's benchmark, by semble's protocol: each tree indexed as
`jobs/index.py` indexes it, each query searched as the Serve app's Retriever searches,
NDCG@10 beside the published numbers of every tool. Prints tables, writes JSON.

The data (`--data`, never copied into this repository) is MinishLab/semble's benchmark in
r2ps's languages: `repos.json` (name, language, pinned revision, `benchmark_root`),
`splits.json` (dev: choose settings; test: report), `annotations/<name>.json` (queries with
their `relevant` and `secondary` targets: a path, or a path and a line span, and a
`category`), `published.json` (per tool and repository: NDCG@10, index ms, query p50 ms).
`--trees DIR` holds each repository as `DIR/<name>/<benchmark_root>/...` (what
`git archive <revision> <benchmark_root>` writes) and, optionally, `DIR/revisions.json`:
`{name: {"revision": sha, "pinned": bool}}`, the commit each tree is (results name it).

Per repository:
1. index `DIR/<name>/<benchmark_root>` with `r2ps.repo.indexer.index_repo` (the code of
   `jobs/index.py`) into `--out-dir/<name>`; a later run reuses what is up to date (the
   indexer is incremental; `--full` rebuilds). A repository whose index crashes is
   recorded as a crash and the run goes on;
2. load the index as a Serve replica does: the search core its Retriever deployment
   runs (`r2ps.search.searcher.Searcher`, in this process, no Ray Serve) on the
   `serve.yaml` the indexer wrote; `dense`, `hybrid` and `repo` (blend + the repository
   signals, `r2ps.search.signals`) are its `search`; `bm25` is the BM25 half of hybrid
   alone (its index, positive scores only), a baseline, not a served mode;
3. each query's top 10 units scored by `r2ps.evaluation.metrics.target_ranks` + `ndcg`
   (semble's rule: path equal or one ends with "/" + the other, line overlap when the
   target has lines, secondary targets relevant too, binary gains, ideal min(10,
   targets), two units of a file two places); a repository's score is the mean over its
   queries, a split's the mean over its repositories. Query latency: the median of `--latency-runs`
   searches of one query, p50 over the repository's queries (one query at a time, the
   replica's threads).

    python benchmarks/repo_search.py --data ../shared/data/semble --trees /work/trees \\
        [--split dev|test|all] [--repos flask,chi] [--retrieval dense,hybrid,repo,bm25] \\
        [--model DIR] [--out-dir DIR] [--tag NAME]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from r2ps.data.errors import BadRecord
from r2ps.evaluation.metrics import Target, hits_target, ndcg, path_matches, target_ranks
from r2ps.log import get_logger, setup_logging
from r2ps.models.backends import BACKENDS
from r2ps.models.encoder import model_or_default
from r2ps.repo.config import RepoIndexConfig
from r2ps.repo.indexer import index_repo
from r2ps.repo.units import CODES
from r2ps.serving.settings import ServeConfig
from r2ps.storage import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `serve` lives at the repository root
    sys.path.insert(0, str(REPO))

log = get_logger("r2ps.repo_search")

TOP_K = 10  # semble's protocol: each query's top 10 results
MODES = ("dense", "hybrid", "repo", "bm25")
CATEGORIES = ("semantic", "architecture", "symbol")


# ------------------------------------------------------------------ semble's data


@dataclass(frozen=True)
class Task:
    """One query: its targets (relevant then secondary: all count) and category."""

    query: str
    category: str
    targets: tuple[Target, ...]


@dataclass
class Semble:
    repos: dict[str, dict]  # name -> {name, language, url, revision, benchmark_root?}
    splits: dict[str, list[str]]  # dev / test -> names
    tasks: dict[str, list[Task]]  # name -> its queries, in annotation order
    published: dict[str, dict[str, dict]]  # tool -> name -> {ndcg10, index_ms, p50_ms}

    def split_of(self, name: str) -> str:
        return next((s for s, names in self.splits.items() if name in names), "none")


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: not found (is --data semble's benchmark folder?)"
        ) from None
    except json.JSONDecodeError as e:
        raise BadRecord(path, e.lineno, None, f"not JSON: {e.msg}") from None


def _target(raw, file: Path, field: str) -> Target:
    """A target as the annotations write it: a path, or {path, start_line, end_line}."""
    if isinstance(raw, str) and raw:
        return Target(raw)
    if isinstance(raw, dict) and isinstance(raw.get("path"), str) and raw["path"]:
        lines = [raw.get("start_line"), raw.get("end_line")]
        if any(v is not None and (not isinstance(v, int) or v < 1) for v in lines):
            raise BadRecord(file, None, field, f"line numbers must be integers >= 1: {raw}")
        return Target(raw["path"], *lines)
    raise BadRecord(
        file, None, field, f"a target is a path or {{path, start_line, end_line}}: {raw!r}"
    )


def read_tasks(file: Path) -> list[Task]:
    """The queries of one `annotations/<name>.json`; BadRecord names the entry and field."""
    entries = _json(file)
    if not isinstance(entries, list):
        raise BadRecord(file, None, None, "expected a list of queries")
    tasks = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("query"), str) or not e["query"].strip():
            raise BadRecord(file, None, f"[{i}].query", "missing or empty")
        if e.get("category") not in CATEGORIES:
            raise BadRecord(file, None, f"[{i}].category", f"expected one of {CATEGORIES}")
        targets = []
        for key in ("relevant", "secondary"):
            if not isinstance(e.get(key, []), list):
                raise BadRecord(file, None, f"[{i}].{key}", "expected a list")
            targets += [_target(t, file, f"[{i}].{key}[{j}]") for j, t in enumerate(e.get(key, []))]
        if not targets:
            raise BadRecord(file, None, f"[{i}]", "a query with no relevant or secondary target")
        tasks.append(Task(e["query"], e["category"], tuple(targets)))
    return tasks


def read_semble(data: Path) -> Semble:
    """semble's benchmark folder (see the module docstring); every repository in repos.json
    has an annotation file and a split."""
    repos = {r["name"]: r for r in _json(data / "repos.json")}
    splits = _json(data / "splits.json")
    for split, names in splits.items():
        unknown = sorted(set(names) - set(repos))
        if unknown:
            raise BadRecord(data / "splits.json", None, split, f"not in repos.json: {unknown}")
    tasks = {name: read_tasks(data / "annotations" / f"{name}.json") for name in repos}
    return Semble(repos, splits, tasks, _json(data / "published.json"))


def tree_revisions(trees: Path) -> dict[str, dict]:
    """`trees/revisions.json` ({name: {revision, pinned}}), or {} when there is none."""
    path = trees / "revisions.json"
    return _json(path) if path.exists() else {}


# ------------------------------------------------------------------ searching one tree


def open_retriever(index_dir: Path, threads: int, lexical: bool, **overrides):
    """The search core the Serve app's Retriever runs (`r2ps.search.searcher.Searcher`) on
    the index jobs/index.py wrote to `index_dir`, in this process, on the indexer's
    serve.yaml; `threads` 0: a replica's (`replica_threads`). With `lexical` its BM25 is
    built now (as Serve does for a hybrid or repo default), not at the first query.
    `overrides`: other serve.yaml settings (e.g. `backend`, the query encoder's)."""
    from r2ps.search.searcher import Searcher
    from r2ps.serving.replicas import replica_threads

    threads = replica_threads(threads, ServeConfig().retriever_cpus)
    retrieval = "hybrid" if lexical else "dense"
    searcher = Searcher.open(index_dir, retrieval=retrieval, threads=threads, **overrides)
    if lexical:
        searcher.lexical()
    return searcher


def search(retriever, query: str, mode: str, k: int = TOP_K) -> list[tuple[str, int, int]]:
    """The top `k` units of `query` as (path, start_line, end_line), best first."""
    if mode == "bm25":  # the lexical list hybrid fuses, alone: terms shared or nothing
        positions, scores = retriever.lexical().top_k(query, k)
        ids = [retriever.index.code_ids[p] for p in positions[scores > 0]]
        return [
            (loc["path"], loc["start_line"], loc["end_line"])
            for loc in map(retriever.store.location, ids)
        ]
    return [(h.path, h.start_line, h.end_line) for h in retriever.search(query, k, mode)]


def target_coverage(index_dir: Path, tasks: list[Task]) -> dict:
    """How many targets some unit hits at all (a target no unit hits can never be found),
    and the queries none of whose targets is hit."""
    units = pq.read_table(index_dir / CODES, columns=["path", "start_line", "end_line"])
    by_path: dict[str, list[tuple[int, int]]] = {}
    for p, s, e in zip(*(units[c].to_pylist() for c in units.column_names), strict=True):
        by_path.setdefault(p, []).append((s, e))

    def indexed(t: Target) -> bool:
        return any(
            hits_target(p, s, e, t)
            for p, spans in by_path.items()
            if path_matches(p, t.path)
            for s, e in spans
        )

    lost: list[Target] = []
    unanswerable = []
    for task in tasks:
        found = [indexed(t) for t in task.targets]
        lost += [t for t, ok in zip(task.targets, found, strict=True) if not ok]
        if not any(found):
            unanswerable.append(task.query)
    return {
        "targets": sum(len(t.targets) for t in tasks),
        "targets_without_unit": len(lost),
        "files_without_unit": sorted({t.path for t in lost if t.start_line is None}),
        "spans_without_unit": sorted(
            {f"{t.path}:{t.start_line}-{t.end_line}" for t in lost if t.start_line is not None}
        ),
        "queries_without_unit": unanswerable,
    }


def evaluate_repo(retriever, tasks: list[Task], modes: list[str], latency_runs: int) -> dict:
    """Per mode: mean NDCG@10, per category, query p50 ms; per query its NDCG and ranks."""
    out = {}
    for mode in modes:
        scores, latencies, per_query = [], [], []
        for task in tasks:
            runs = []
            for _ in range(latency_runs):
                t0 = time.perf_counter()
                results = search(retriever, task.query, mode)
                runs.append((time.perf_counter() - t0) * 1e3)
            ranks = target_ranks(results, task.targets)
            score = ndcg(ranks, TOP_K)
            scores.append(score)
            latencies.append(float(np.median(runs)))
            per_query.append(
                {
                    "query": task.query,
                    "category": task.category,
                    "ndcg10": round(score, 4),
                    "ranks": [int(r) for r in ranks if math.isfinite(r)],
                }
            )
        by_category = {
            c: float(np.mean([s for s, t in zip(scores, tasks, strict=True) if t.category == c]))
            for c in CATEGORIES
            if any(t.category == c for t in tasks)
        }
        out[mode] = {
            "ndcg10": float(np.mean(scores)),
            "by_category": by_category,
            "p50_ms": float(np.median(latencies)),
            "queries": per_query,
        }
    return out


def _crash(name: str, stage: str, e: BaseException) -> dict:
    log.error("%s: %s crashed: %s: %s", name, stage, type(e).__name__, e)
    return {
        "stage": stage,
        "error": f"{type(e).__name__}: {e}",
        "traceback": traceback.format_exc(limit=-8),
    }


def run_repo(name: str, semble: Semble, args, revision: dict) -> dict:
    """Index, load, search and score one repository; a failure is recorded, never raised."""
    spec = semble.repos[name]
    tasks = semble.tasks[name]
    record = {
        "name": name,
        "language": spec["language"],
        "split": semble.split_of(name),
        "queries": len(tasks),
        "pinned_revision": spec["revision"],
        "revision": revision.get("revision"),
        "pinned": revision.get("pinned"),
        "crash": None,
    }
    source = args.trees / name / spec.get("benchmark_root", "")
    out = args.out_dir / name
    if not source.is_dir():
        record["crash"] = {"stage": "tree", "error": f"no tree at {source}", "traceback": ""}
        log.error("%s: no tree at %s", name, source)
        return record
    log.info("%s: indexing %s -> %s", name, source, out)
    t0 = time.perf_counter()
    try:
        summary = index_repo(
            RepoIndexConfig(source=str(source), out=str(out), model=args.model, full=args.full)
        )
    except Exception as e:  # noqa: BLE001  (one repository never stops the run)
        record["crash"] = _crash(name, "index", e)
        return record
    record["index"] = {
        "seconds": summary["seconds"]["total"],
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "stage_seconds": summary["seconds"],
        "incremental": summary["run"]["incremental"],
        "files": summary["files"]["indexed"],
        "files_skipped": summary["files"]["skipped"],
        "files_with_syntax_errors": summary["files"]["with_syntax_errors"],
        "units": summary["units"]["total"],
        "documented_units": summary["units"]["documented"],
        "units_by_kind": summary["units"]["by_kind"],
        "embedded": summary["run"]["codes"]["embedded"],
    }
    threads = torch.get_num_threads()  # the replica sets its own; the next index keeps ours
    try:
        record["coverage"] = target_coverage(out, tasks)
        t0 = time.perf_counter()
        lexical = bool({"hybrid", "repo", "bm25"} & set(args.retrieval))
        query = {"backend": args.query_backend} if args.query_backend else {}
        retriever = open_retriever(out, args.threads, lexical=lexical, **query)
        record["load_seconds"] = round(time.perf_counter() - t0, 3)
        record["search_threads"] = torch.get_num_threads()
        record["retrieval"] = evaluate_repo(retriever, tasks, args.retrieval, args.latency_runs)
    except Exception as e:  # noqa: BLE001
        record["crash"] = _crash(name, "search", e)
    finally:
        torch.set_num_threads(threads)
    return record


# ------------------------------------------------------------------ tables


def short_tool(name: str) -> str:
    """A published tool's name without its parenthesised description."""
    return re.sub(r"\s*\([^)]*\)", "", name).strip()


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarise(records: list[dict], semble: Semble, modes: list[str]) -> dict:
    """Means over repositories (ours and every published tool's over the same scored
    repositories) by split, language and category."""
    scored = [r for r in records if r.get("retrieval")]
    # columns: the splits in splits.json's order, languages in repos.json's
    groups: dict[str, dict[str, list[str]]] = {
        "split": {s: [] for s in [*semble.splits, "none"]},
        "language": {spec["language"]: [] for spec in semble.repos.values()},
    }
    for r in scored:
        groups["split"][r["split"]].append(r["name"])
        groups["language"][r["language"]].append(r["name"])
    groups = {by: {g: names for g, names in named.items() if names} for by, named in groups.items()}
    if len(groups["split"]) > 1:
        groups["split"]["all"] = [r["name"] for r in scored]
    ours = {r["name"]: r["retrieval"] for r in scored}
    out: dict = {}
    for by, named in groups.items():
        out[by] = {}
        for group, names in named.items():
            row = {"repositories": len(names)}
            for mode in modes:
                row[f"r2ps {mode}"] = _mean(ours[n][mode]["ndcg10"] for n in names)
            for tool, per_repo in semble.published.items():
                row[tool] = _mean(per_repo.get(n, {}).get("ndcg10") for n in names)
            out[by][group] = row
    out["category"] = {
        c: {
            "repositories": sum(c in ours[n][modes[0]]["by_category"] for n in ours),
            **{f"r2ps {m}": _mean(ours[n][m]["by_category"].get(c) for n in ours) for m in modes},
        }
        for c in CATEGORIES
    }
    out["crashed"] = [r["name"] for r in records if r["crash"]]
    return out


def _fmt(v, width: int, digits: int = 3) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.{digits}f}"


def print_group_table(title: str, table: dict, semble: Semble, modes: list[str]) -> None:
    """Rows: our modes, then every published tool; columns: the groups."""
    if not table:
        return
    groups = list(table)
    heads = [f"{g} ({table[g]['repositories']})" for g in groups]
    width = max(9, *(len(h) for h in heads))
    print(f"\n{title}")
    print(f"  {'':<34}" + "".join(f" {h:>{width}}" for h in heads))
    names = [f"r2ps {m}" for m in modes] + [t for t in semble.published if t in table[groups[0]]]
    for name in names:
        label = name if name.startswith("r2ps") else short_tool(name)
        print(
            f"  {label[:34]:<34}" + "".join(f" {_fmt(table[g].get(name), width)}" for g in groups)
        )


def print_repo_table(records: list[dict], semble: Semble, modes: list[str]) -> None:
    """Per repository: units, index seconds, and per mode NDCG@10 and query p50."""
    best = {}
    for name in semble.repos:
        scores = {t: v[name]["ndcg10"] for t, v in semble.published.items() if name in v}
        if scores:
            tool = max(scores, key=scores.get)
            best[name] = (short_tool(tool), scores[tool])
    print("\nper repository (* a tree not at the pinned revision; NDCG@10, query p50 ms)")
    head = f"  {'repository':<18} {'split':<5} {'language':<10} {'units':>6} {'index s':>8}"
    head += "".join(f" {m + ' ndcg':>12} {'p50':>6}" for m in modes)
    print(head + "  best published")
    for r in records:
        mark = "*" if r.get("pinned") is False else ""
        line = f"  {(r['name'] + mark):<18} {r['split']:<5} {r['language']:<10}"
        if r.get("index"):
            line += f" {r['index']['units']:>6} {r['index']['seconds']:>8.1f}"
        else:
            line += f" {'-':>6} {'-':>8}"
        if r.get("retrieval"):
            for m in modes:
                line += f" {r['retrieval'][m]['ndcg10']:>12.3f} {r['retrieval'][m]['p50_ms']:>6.1f}"
        else:
            line += f"  CRASH ({r['crash']['stage']}): {r['crash']['error'][:80]}"
        tool, score = best.get(r["name"], ("-", None))
        print(line + (f"  {score:.3f} {tool}" if score is not None else ""))


def print_tables(records: list[dict], summary: dict, semble: Semble, modes: list[str]) -> None:
    print_repo_table(records, semble, modes)
    print_group_table(
        "NDCG@10 by split, mean over repositories (published: over the same repositories)",
        summary["split"], semble, modes,
    )  # fmt: skip
    print_group_table(
        "NDCG@10 by language, mean over repositories", summary["language"], semble, modes
    )
    print_group_table(
        "NDCG@10 by category, mean over repositories (published.json has no per-category numbers)",
        summary["category"], semble, modes,
    )  # fmt: skip
    if summary["crashed"]:
        print(f"\ncrashed (not in the means): {', '.join(summary['crashed'])}")


# ------------------------------------------------------------------ the run


def _git_commit() -> dict:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def _csv(text: str) -> list[str]:
    return [t for t in (s.strip() for s in text.split(",")) if t]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="semble's benchmark folder")
    p.add_argument("--trees", type=Path, required=True, help="DIR/<name>/<benchmark_root>/...")
    p.add_argument(
        "--out-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "r2ps_repo_search",
        help="the indexes, one folder per repository (kept: a later run reuses them)",
    )
    p.add_argument("--split", choices=("dev", "test", "all"), default="all")
    p.add_argument("--repos", type=_csv, default=[], help="only these (comma-separated)")
    p.add_argument(
        "--retrieval", type=_csv, default=["dense", "hybrid", "bm25"], help=f"of {MODES}"
    )
    p.add_argument("--model", default="", help="retriever dir ('' = the bundled MiniLM)")
    p.add_argument("--full", action="store_true", help="rebuild every index from scratch")
    p.add_argument("--threads", type=int, default=0, help="search threads (0: a replica's)")
    p.add_argument(
        "--query-backend",
        default="",
        choices=("", *BACKENDS),
        help="the query encoder's backend ('': the one serve.yaml names)",
    )
    p.add_argument("--latency-runs", type=int, default=3, help="searches per query for p50")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="", help="results file repo_search_<tag>.json")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the repositories the results file already scored (same settings) and "
        "run the others: a long run in parts, or one cut short",
    )
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)
    bad = sorted(set(args.retrieval) - set(MODES))
    if bad or not args.retrieval:
        p.error(f"--retrieval: expected some of {MODES}, got {args.retrieval}")
    if args.latency_runs < 1:
        p.error("--latency-runs must be >= 1")
    args.model = model_or_default(args.model)
    args.tag = args.tag or re.sub(r"[^\w.-]+", "_", Path(args.model).name)
    return args


# What must be the same for results of two runs to stand in one table.
SAME_SETTINGS = (
    "model",
    "retrieval",
    "search_threads",
    "query_backend",
    "latency_runs",
    "data",
    "trees",
)


def kept_records(path: Path, settings: dict) -> dict[str, dict]:
    """The repositories `path` (a results file) scored, by name, each with the r2ps
    commit it ran at; crashed ones are left out (run again). SystemExit when it was run
    with other SAME_SETTINGS."""
    if not path.exists():
        return {}
    last = _json(path)
    differ = [k for k in SAME_SETTINGS if last["settings"].get(k) != settings[k]]
    if differ:
        raise SystemExit(
            f"--resume: {path} was run with other {', '.join(differ)}: use another --tag"
        )
    kept = {r["name"]: {"r2ps": last["r2ps"], **r} for r in last["repositories"] if not r["crash"]}
    log.info("--resume: keeping %d repositories of %s: %s", len(kept), path, ", ".join(kept))
    return kept


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    setup_logging()
    semble = read_semble(args.data)
    unknown = sorted(set(args.repos) - set(semble.repos))
    if unknown:
        raise SystemExit(f"--repos: not in {args.data / 'repos.json'}: {unknown}")
    names = [
        n
        for n in semble.repos
        if (args.split == "all" or semble.split_of(n) == args.split)
        and (not args.repos or n in args.repos)
    ]
    if not names:
        raise SystemExit(f"no repository in split {args.split!r} among {args.repos}")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    revisions = tree_revisions(args.trees)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"repo_search_{args.tag}.json"
    report = {
        "benchmark": "semble repository search (MinishLab/semble benchmarks/), r2ps languages",
        "protocol": {
            "top_k": TOP_K,
            "metric": "NDCG@10, binary gains, relevant + secondary targets, ideal "
            "min(10, targets); path equal or suffix after '/', line overlap when the target "
            "has lines; repository = mean over queries; group = mean over repositories",
            "latency": f"median of {args.latency_runs} searches per query, p50 over queries",
        },
        "settings": {
            "model": args.model,
            "retrieval": args.retrieval,
            "split": args.split,
            "repos": names,
            "index": asdict(RepoIndexConfig(model=args.model)),
            "search_threads": args.threads,
            "query_backend": args.query_backend,
            "latency_runs": args.latency_runs,
            "full_rebuild": args.full,
            "seed": args.seed,
            "data": str(args.data.resolve()),
            "trees": str(args.trees.resolve()),
            "out_dir": str(args.out_dir.resolve()),
        },
        "r2ps": _git_commit(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "repositories": [],
    }
    done = kept_records(path, report["settings"]) if args.resume else {}
    todo = [n for n in names if n not in done]

    def save() -> None:  # after every repository: a run cut short keeps its part
        report["repositories"] = [done[n] for n in semble.repos if n in done]  # repos.json order
        report["settings"]["repos"] = [r["name"] for r in report["repositories"]]
        report["summary"] = summarise(report["repositories"], semble, args.retrieval)
        write_text_atomic(path, json.dumps(report, indent=1) + "\n")

    save()
    for i, name in enumerate(todo, start=1):
        log.info("[%d/%d] %s", i, len(todo), name)
        record = run_repo(name, semble, args, revisions.get(name, {}))
        done[name] = {"r2ps": report["r2ps"], **record}
        save()
    print_tables(report["repositories"], report["summary"], semble, args.retrieval)
    print(f"\nwrote {path}")
    return report


if __name__ == "__main__":
    main()
