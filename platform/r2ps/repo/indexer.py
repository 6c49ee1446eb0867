"""Index a source tree for search, incrementally: `jobs/index.py --source DIR --out OUT`.

The job (`index_repo`, settings in `r2ps.repo.config`); each stage reads what the last
one wrote:
1. walk (`r2ps.repo.files`): the files to parse, and every file or folder skipped with
   its reason;
2. extract (`r2ps.repo.units`): files that are new or whose size or modification time
   changed since the last run are read and parsed (`r2ps.data.extract`, fanned out over
   Ray Data tasks when there are many); unchanged files keep the units the last run
   found; deleted files drop out. Output: `codes.parquet`, one row per function, method
   and class, in (path, line) order, and `files.parquet`, one row per file parsed or
   skipped in the tasks (what the next run compares against);
3. embed (`r2ps.repo.vectors`): only codes whose content id (hash of the code text) has
   no vector yet under this retriever are embedded (Ray Data actor pool, or in this
   process when few); `vectors/` keeps every current content id's vector, those of
   removed code dropped;
4. index (`r2ps.repo.vectors`): the faiss index over every unit, in `codes.parquet`
   order, with the manifest `r2ps.mining.corpus_index.ensure_index` expects, so the Serve app
   loads it as it is; then, here, `serve.yaml` (`R2PS_SERVE_CONFIG=<out>/serve.yaml serve
   run serve.app:cascade`; its first stage `REPO_RETRIEVAL`, with the repository signals)
   and `index_summary.json` (counts, every skipped file named by reason, timings, the
   first stage served).

Each run writes its outputs (codes.parquet, index/, index_summary.json, skipped.jsonl) to a
version folder of its own, `<out>/versions/<n>/`, and publishes it at the end by replacing
the pointer `<out>/version.json` (`r2ps.search.versions`): readers never see half a run,
and a run that fails or is cut short leaves the last version current. The top level keeps
hard links to the current version's files, and the state (`files.parquet`, `vectors/`).
`r2ps index --watch` re-runs the job on every change (`r2ps.repo.watch`).

Because units are kept per file and vectors per content id, an incremental run gives
the same `codes.parquet` and index as a full rebuild of the same tree (tests/repo).
Changing the extraction settings, the extractor or the retriever invalidates what they
shaped: the state records their fingerprints.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from r2ps.log import get_logger
from r2ps.repo.config import RepoIndexConfig, check_paths
from r2ps.repo.files import OTHER_LANGUAGE, UNREADABLE, Skipped, walk_sources
from r2ps.repo.units import (
    CODES,
    FILES,
    load_state,
    read_files,
    state_fingerprint,
    write_atomic,
)
from r2ps.repo.vectors import build_index, update_vectors
from r2ps.search import versions
from r2ps.search.searcher import SERVE_FILE, SearchConfig, first_stage, save_lexical
from r2ps.storage import write_text_atomic

log = get_logger(__name__)

SUMMARY = "index_summary.json"
SKIPPED = "skipped.jsonl"
RUNNING = "index_run.json"  # present while a run writes the folder (`announce_run`)
# The first stage a repository index is served with: the best measured on semble's dev
# split (docs/REPO_SEARCH.md): BM25 + dense blended, then the repository signals.
REPO_RETRIEVAL = "repo"


@contextlib.contextmanager
def announce_run(out: Path):
    """State in `out/RUNNING` that a run is writing `out` ({pid, host, started}: Unix
    seconds) until the block ends, however it ends. Readers (`run_under_way`) then know
    the folder's files may be half the last run's and half this one's."""
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    path = Path(out, RUNNING)
    path.write_text(json.dumps(record) + "\n")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def run_under_way(out: str | Path) -> dict | None:
    """The record of the run writing `out` now (`announce_run`), or None when there is
    none. A run killed before it could remove its record left one naming a process that
    is gone: on this host that is checked, and such a record is ignored."""
    try:
        record = json.loads(Path(out, RUNNING).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # being written this instant
        return {}
    if record.get("host") == socket.gethostname():
        try:
            os.kill(int(record["pid"]), 0)
        except ProcessLookupError:
            return None
        except (PermissionError, KeyError, TypeError, ValueError):
            pass  # alive under another user, or a record without a pid: a run, then
    return record


def served_first_stage() -> dict:
    """The first stage serve.yaml names and its settings (`REPO_RETRIEVAL`, the search
    core's defaults: `r2ps.search.searcher.first_stage`)."""
    return first_stage(SearchConfig(retrieval=REPO_RETRIEVAL))


def write_serve_yaml(cfg: RepoIndexConfig, model: str, out: Path) -> Path:
    """The ServeConfig that serves this index (`R2PS_SERVE_CONFIG=<it> serve run ...`)."""
    trained_ranker = bool(cfg.ranker)
    if trained_ranker:
        from r2ps.models.cross import saved_trained_alpha  # torch: only with a ranker
    settings = {
        "retriever": model,
        "ranker": str(Path(cfg.ranker).resolve()) if trained_ranker else "",
        "codes": str((out / CODES).resolve()),
        "embed_out": str(out.resolve()),
        "index": {
            "kind": cfg.index.kind,
            "nprobe": cfg.index.nprobe,
            "ef_search": cfg.index.ef_search,
        },
        # The weight a trained ranker was trained for (0.5 residual, 0 plain); without one
        # its scores are noise: alpha 1 keeps the retriever's order.
        "alpha": saved_trained_alpha(cfg.ranker) if trained_ranker else 1.0,
        # queries on the graph the codes were embedded with: int8 queries beside int8
        # codes score within 0.005 NDCG@10 of torch's, 4x faster (benchmarks/index_speed.py)
        "backend": cfg.backend,
        # written out, so a user sees (and can change) how the first stage ranks
        **served_first_stage(),
    }
    if not trained_ranker:  # no reranking by default: an untrained ranker only costs time
        settings["rerank_k"] = 0
        settings["served_reason"] = "retriever alone: jobs/index.py was given no --ranker"
    head = (
        f"# Written by jobs/index.py for {Path(cfg.source).resolve()}. Serve it with\n"
        f"#   R2PS_SERVE_CONFIG={(out / SERVE_FILE).resolve()} serve run serve.app:cascade\n"
        "# then open http://127.0.0.1:8000/ (the search page) or POST /search.\n"
    )
    if not trained_ranker:
        head += (
            "# No --ranker given: answers are the retriever's (rerank_k 0); a request that\n"
            "# names a rerank_k is reranked by an untrained ranker, alpha 1.0 keeps its order.\n"
        )
    path = out / SERVE_FILE
    write_text_atomic(path, head + yaml.safe_dump(settings, sort_keys=False))
    return path


def _skip_record(s: Skipped) -> dict:
    if s.line is not None:  # a line of an ignore file
        return {"path": s.path, "line": s.line, "text": s.text, "reason": s.reason}
    return {"path": s.path, "reason": s.reason, "size": s.size}


def summarise(walk_skipped: list[Skipped], files: pa.Table, units: pa.Table, extra: dict) -> dict:
    """index_summary.json: every count, every skipped file named (other languages: by
    extension here, by name in skipped.jsonl), every .gitignore line not applied named
    with its file and line."""
    lines = [s for s in walk_skipped if s.line is not None]
    lines_by_reason: dict[str, list[dict]] = {}
    for s in lines:
        lines_by_reason.setdefault(s.reason, []).append(
            {"file": s.path, "line": s.line, "text": s.text}
        )
    skipped = [_skip_record(s) for s in walk_skipped if s.line is None]
    for row in files.filter(pc.equal(files["status"], "skipped")).to_pylist():
        skipped.append({"path": row["path"], "reason": row["reason"], "size": row["size"]})
    by_reason: dict[str, list[str]] = {}
    for s in skipped:
        key = s["reason"].split(":", 1)[0] if s["reason"].startswith(UNREADABLE) else s["reason"]
        by_reason.setdefault(key, []).append(s["path"])
    other = by_reason.pop(OTHER_LANGUAGE, [])
    indexed = files.filter(pc.equal(files["status"], "indexed"))
    errors = {r["path"]: r["error_lines"] for r in indexed.to_pylist() if r["error_lines"]}
    undecodable = {
        r["path"]: r["undecodable_line"]
        for r in indexed.select(["path", "undecodable_line"]).to_pylist()
        if r["undecodable_line"] is not None
    }
    docs = pc.sum(pc.invert(pc.is_null(units["doc"]))).as_py() or 0
    return {
        **extra,
        "files": {
            "indexed": indexed.num_rows,
            "skipped": {k: len(v) for k, v in sorted(by_reason.items())}
            | {OTHER_LANGUAGE: len(other)},
            "with_syntax_errors": len(errors),
            "with_undecodable_bytes": len(undecodable),
        },
        "ignore_lines_skipped": {k: len(v) for k, v in sorted(lines_by_reason.items())},
        "units": {
            "total": units.num_rows,
            "documented": docs,
            "by_language": dict(Counter(units["language"].to_pylist()).most_common()),
            "by_kind": dict(Counter(units["kind"].to_pylist()).most_common()),
        },
        "skipped_files": {k: sorted(v) for k, v in sorted(by_reason.items())},
        "skipped_ignore_lines": dict(sorted(lines_by_reason.items())),
        "other_languages_by_extension": dict(
            Counter(Path(p).suffix or "(none)" for p in other).most_common()
        ),
        "syntax_errors": errors,
        "undecodable_bytes": undecodable,
    }, skipped + [_skip_record(s) for s in lines]


class NothingToIndex(ValueError):
    """The source tree holds no function, method or class of a supported language."""


def index_repo(cfg: RepoIndexConfig) -> dict:
    """Run every stage; returns the summary (also `<out>/index_summary.json`).

    Raises ConfigError for a bad `--source`, `--out`, `--model` or `--ranker` (before
    anything is written: `check_paths`), and NothingToIndex for a tree without code to
    index (before the index is written; `--out` exists by then). While it runs,
    `<out>/index_run.json` says so (`announce_run`, read by `run_under_way`)."""
    check_paths(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with announce_run(out):
        try:
            return _run_stages(cfg, out)
        except BaseException:  # failed or cut short (Ctrl-C): its version is not published
            versions.discard_unpublished(out)
            raise


def _diff(keep: list, previous) -> tuple[list[str], list[dict], list[str]]:
    """(paths unchanged, files to read, paths deleted) of the walk `keep` against the last
    run's state `previous` (None: read them all)."""
    old_files = (
        {
            r["path"]: r
            for r in previous[0].select(["path", "size", "mtime_ns", "reason"]).to_pylist()
        }
        if previous
        else {}
    )
    reused, to_read = [], []
    for f in keep:
        old = old_files.get(f.path)
        # a file that could not be read is read again: permissions change the ctime only
        retry = old is not None and (old["reason"] or "").startswith(UNREADABLE)
        if old and not retry and old["size"] == f.size and old["mtime_ns"] == f.mtime_ns:
            reused.append(f.path)
        else:
            to_read.append(asdict(f))
    deleted = sorted(set(old_files) - {f.path for f in keep})
    return reused, to_read, deleted


def changed_since_last_run(cfg: RepoIndexConfig) -> int:
    """Files of `cfg.source` to read or drop since the run that wrote `cfg.out` (the walk
    and the stat the next run would do; every file when there is no usable last run)."""
    out = Path(cfg.out)
    keep, _ = walk_sources(cfg.source, cfg.rules, exclude=out)
    _, to_read, deleted = _diff(keep, load_state(out, state_fingerprint(cfg)))
    return len(to_read) + len(deleted)


def _run_stages(cfg: RepoIndexConfig, out: Path) -> dict:
    """`index_repo`'s stages, once its settings are checked and `out` exists."""
    from r2ps.models.light import model_or_default

    t0 = time.perf_counter()
    model = model_or_default(cfg.model)
    # 1. walk (not into the output folder, when it lies inside the source)
    keep, walk_skipped = walk_sources(cfg.source, cfg.rules, exclude=out)
    t_walk = time.perf_counter()
    # 2. extract what changed
    fingerprint = state_fingerprint(cfg)
    previous = None if cfg.full else load_state(out, fingerprint)
    reused, to_read, deleted = _diff(keep, previous)
    log.info("%d files: %d to read, %d unchanged, %d deleted since the last run",
             len(keep), len(to_read), len(reused), len(deleted))  # fmt: skip
    fresh_files, fresh_units = read_files(to_read, cfg)
    files, units = fresh_files, fresh_units
    if previous and reused:
        same = pa.array(reused, pa.string())
        files = pa.concat_tables([previous[0].filter(pc.is_in(previous[0]["path"], same)), files])
        units = pa.concat_tables([previous[1].filter(pc.is_in(previous[1]["path"], same)), units])
    files = files.sort_by([("path", "ascending")])
    units = units.sort_by(
        [
            ("path", "ascending"),
            ("start_line", "ascending"),
            ("end_line", "descending"),
            ("symbol", "ascending"),
            ("kind", "ascending"),
        ]
    )
    t_extract = time.perf_counter()
    if units.num_rows == 0:
        raise NothingToIndex(f"{cfg.source}: no function, method or class found to index")
    # this run's outputs go to a version folder of its own, published whole at the end
    # (r2ps.search.versions): a run that fails or is cut short leaves the last one current
    vdir = versions.start(out)
    write_atomic(units, vdir / CODES)
    t_codes = time.perf_counter()
    # 3. embed what is new
    vectors, vec_stats = update_vectors(units, model, cfg, out)
    t_embed = time.perf_counter()
    # 4. index and outputs
    index = build_index(units, vectors, model, cfg, vdir)
    # BM25 of the `repo` first stage, saved beside the index: `r2ps search` loads it in
    # milliseconds instead of building it (2 s at 15k units; r2ps.search.bm25.cached)
    save_lexical(index.code_ids, vdir / CODES, vdir)
    t_index = time.perf_counter()
    if cfg.ranker and cfg.backend != "torch":  # served on the backend serve.yaml names
        from r2ps.models.onnx_export import ensure_export

        ensure_export(cfg.ranker, cfg.backend)
    serve_yaml = write_serve_yaml(cfg, model, out)
    t_end = time.perf_counter()
    summary, skipped = summarise(
        walk_skipped,
        files,
        units,
        {
            "source": str(Path(cfg.source).resolve()),
            "out": str(out.resolve()),
            "model": model,
            "serve_yaml": str(serve_yaml.resolve()),
            "search": served_first_stage(),  # what serve.yaml serves a query naming none
            "index": {"kind": index.manifest["kind"], "count": len(index), "dim": index.dim},
            "version": {"number": int(vdir.name), "published": round(time.time(), 3)},
            "run": {
                "incremental": previous is not None,
                "files_read": len(to_read),
                "files_unchanged": len(reused),
                "files_deleted": len(deleted),
                "deleted": deleted,
                "units_extracted": fresh_units.num_rows,
                "codes": vec_stats,
            },
            # stages as they ran; "write": codes.parquet, serve.yaml (the vectors' own
            # file is in "embed"; index_summary.json, the version's publication and
            # files.parquet after the clock stops)
            "seconds": {
                "walk": round(t_walk - t0, 3),
                "extract": round(t_extract - t_walk, 3),
                "embed": round(t_embed - t_codes, 3),
                "index": round(t_index - t_embed, 3),
                "write": round((t_codes - t_extract) + (t_end - t_index), 3),
                "total": round(t_end - t0, 3),
            },
            "rates": {
                "files_per_s": round(len(to_read) / (t_extract - t_walk), 1) if to_read else None,
                "units_per_s": (
                    round(fresh_units.num_rows / (t_extract - t_walk), 1) if to_read else None
                ),
                "codes_per_s": vec_stats["codes_per_s"],
            },
        },
    )
    with open(vdir / SKIPPED, "w") as f:
        for s in skipped:
            f.write(json.dumps(s) + "\n")
    (vdir / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")  # last: complete
    versions.publish(out, int(vdir.name), summary["version"]["published"])
    # files.parquet last: it is what the next run trusts
    state = files.replace_schema_metadata({"r2ps_state": fingerprint})
    write_atomic(state, out / FILES)
    return summary


def format_summary(summary: dict) -> str:
    """The few lines a person reads after a run."""
    run, files, units, sec = summary["run"], summary["files"], summary["units"], summary["seconds"]
    skipped = ", ".join(f"{k} {v}" for k, v in files["skipped"].items() if v) or "none"
    bad_lines = ", ".join(f"{k} {v}" for k, v in summary["ignore_lines_skipped"].items())
    langs = ", ".join(f"{k} {v}" for k, v in units["by_language"].items())
    return "\n".join(
        [
            f"indexed {summary['source']} -> {summary['out']}"
            f" ({'incremental' if run['incremental'] else 'full'} run, {sec['total']:.1f} s)",
            f"files: {files['indexed']} indexed ({run['files_read']} read, "
            f"{run['files_unchanged']} unchanged, {run['files_deleted']} deleted); skipped: {skipped}",
            f"syntax errors recovered in {files['with_syntax_errors']} file(s); undecodable bytes "
            f"in {files['with_undecodable_bytes']} (named in {SUMMARY})",
            f".gitignore lines not applied: {bad_lines or 'none'} (named in {SUMMARY})",
            f"units: {units['total']} ({langs}); {units['documented']} documented",
            f"codes: {run['codes']['embedded']} embedded, {run['codes']['reused']} reused",
            f"serve: R2PS_SERVE_CONFIG={summary['serve_yaml']} serve run serve.app:cascade",
        ]
    )
