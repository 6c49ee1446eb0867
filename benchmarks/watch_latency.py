"""Edit-to-searchable seconds with `r2ps index --watch`: from writing a file change that adds
a uniquely named function to the moment a search in a separate reader returns it.

1. the tree (`--source`, default a semble tree: laravel-framework) is copied to a scratch
   folder (never edited in place);
2. `r2ps index COPY --watch` starts in a subprocess; its first (full) index is timed until
   the index folder's first version is published;
3. a reader in this process (`r2ps.search.live.LiveSearcher`: what the MCP server and the
   Serve app's retriever hold) opens the index;
4. `--edits` times: a function with a unique name is appended to an existing file of the
   tree's main language, or written in a new file (alternately); the clock starts just
   before the write, and the reader searches for the function's name (`repo` first stage,
   the index's own) every `--poll` seconds until it is among the top 10. Each edit also
   records when the watcher published the version holding it (the pointer's time) and
   that run's own seconds (its index_summary.json), so the total splits into the
   watcher's part and the reader's (its pointer check, the reload of codes, index and
   BM25, the query);
5. the watcher is stopped with SIGTERM (its exit status is recorded: 0 expected).

Prints a table, writes JSON (`--out`, default benchmarks/results/watch_latency.json). The
issue's target: an edit to one file of a 30k-unit repository searchable within 5 s.

    python benchmarks/watch_latency.py [--source /work/trees/laravel-framework] [--edits 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from r2ps.search import versions
from r2ps.storage import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
R2PS = Path(sys.executable).with_name("r2ps")
DEFAULT_SOURCE = Path("/work/trees/laravel-framework")
# a function appended at the end of a file, valid there in each language, by extension
TEMPLATES = {
    ".php": "\nfunction {name}($value)\n{{\n    return strrev((string) $value) . '{tag}';\n}}\n",
    ".py": "\n\ndef {name}(value):\n    return str(value)[::-1] + '{tag}'\n",
    ".go": '\nfunc {name}(value string) string {{\n\treturn value + "{tag}"\n}}\n',
    ".js": "\nfunction {name}(value) {{\n  return String(value) + '{tag}';\n}}\n",
    ".ts": "\nexport function {name}(value: string): string {{\n  return value + '{tag}';\n}}\n",
    ".rb": "\ndef {name}(value)\n  value.to_s + '{tag}'\nend\n",
}
NEW_FILE_HEAD = {".php": "<?php\n", ".go": "package probe\n"}


def copy_tree(source: Path, scratch: Path) -> Path:
    """`source` copied under `scratch` (without .git, which the index never reads, and an
    index a run left there: the first run here is a full one)."""
    dest = scratch / source.name
    shutil.copytree(source, dest, symlinks=True, ignore=shutil.ignore_patterns(".git", ".r2ps"))
    return dest


def main_language(out: Path) -> tuple[str, list[str]]:
    """(extension, indexed files with it) of the tree's most common indexed extension."""
    import pyarrow.parquet as pq

    paths = pq.read_table(out / "codes.parquet", columns=["path"])["path"].to_pylist()
    by_ext: dict[str, set[str]] = {}
    for p in paths:
        by_ext.setdefault(Path(p).suffix, set()).add(p)
    ext = max((e for e in by_ext if e in TEMPLATES), key=lambda e: len(by_ext[e]))
    return ext, sorted(by_ext[ext])


def wait_for(check, timeout: float, poll: float = 0.05):
    """The first true value of `check()` within `timeout` seconds, else TimeoutError."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(poll)
    raise TimeoutError(f"nothing after {timeout} s")


def one_edit(i: int, tree: Path, out: Path, ext: str, files: list[str], live, poll: float) -> dict:
    """Write edit `i`, then search until the reader finds it; what it took."""
    name = f"r2psWatchProbe{i}{uuid.uuid4().hex[:8]}"
    code = TEMPLATES[ext].format(name=name, tag=uuid.uuid4().hex[:6])
    before = versions.current(out).number
    if i % 2 == 0:  # append to an existing file (a modified file)
        rel = files[(i * 7919) % len(files)]
        kind = "modify"
        start_wall, start = time.time(), time.perf_counter()
        with open(tree / rel, "a") as f:
            f.write(code)
    else:  # a new file
        rel = f"r2ps_probe_{i}{ext}"
        kind = "add"
        start_wall, start = time.time(), time.perf_counter()
        (tree / rel).write_text(NEW_FILE_HEAD.get(ext, "") + code)
    searches = 0

    def found():
        nonlocal searches
        searches += 1
        hits = live.search(name, k=10)
        return any((h.symbol or "").split(".")[-1].split("\\")[-1] == name for h in hits)

    wait_for(found, timeout=300, poll=poll)
    seconds = time.perf_counter() - start
    version = versions.current(out)
    served = live.version
    summary = json.loads((served.folder / "index_summary.json").read_text())
    return {
        "edit": i,
        "kind": kind,
        "file": rel,
        "symbol": name,
        "seconds": round(seconds, 3),
        "published_after_s": round(served.published - start_wall, 3),
        "reader_after_publish_s": round(start_wall + seconds - served.published, 3),
        "watcher_run_s": summary["seconds"]["total"],
        "run_seconds": summary["seconds"],
        "versions": [before, served.number, version.number],
        "searches": searches,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="a tree (copied first)")
    p.add_argument("--edits", type=int, default=5)
    p.add_argument("--model", default="", help="retriever folder (default: the bundled MiniLM)")
    p.add_argument("--poll", type=float, default=0.1, help="seconds between the reader's searches")
    p.add_argument("--settle", type=float, default=2.0, help="seconds between edits")
    p.add_argument("--scratch", type=Path, help="work folder (default: a temporary one, removed)")
    p.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "watch_latency.json"
    )
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="r2ps-watch-"))
    scratch.mkdir(parents=True, exist_ok=True)
    load = {"before": os.getloadavg()}
    watcher = None
    try:
        t = time.perf_counter()
        tree = copy_tree(args.source, scratch)
        copy_s = time.perf_counter() - t
        out = tree / ".r2ps" / "index"
        cmd = [str(R2PS), "index", str(tree), "--watch"] + (
            ["--model", args.model] if args.model else []
        )
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        t = time.perf_counter()
        with open(scratch / "watch.log", "w") as log:  # the child keeps its own descriptor
            watcher = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_for(lambda: versions.current(out) or watcher.poll() is not None, 3600, 0.5)
        if watcher.poll() is not None:
            raise RuntimeError(f"the watcher exited: {(scratch / 'watch.log').read_text()[-2000:]}")
        first_s = time.perf_counter() - t
        first = json.loads((versions.current(out).folder / "index_summary.json").read_text())
        wait_for(lambda: "watching" in (scratch / "watch.log").read_text(), 60)
        from r2ps.search.live import LiveSearcher

        t = time.perf_counter()
        live = LiveSearcher.open(out)
        live.searcher.lexical(), live.searcher.symbols()  # what a served replica builds at start
        open_s = time.perf_counter() - t
        ext, files = main_language(out)
        edits = []
        for i in range(args.edits):
            time.sleep(args.settle)
            edits.append(one_edit(i, tree, out, ext, files, live, args.poll))
            print(f"edit {i} ({edits[-1]['kind']}): {edits[-1]['seconds']:.2f} s", flush=True)
        watcher.send_signal(signal.SIGTERM)
        rc = watcher.wait(timeout=120)
        watcher = None
    finally:
        if watcher is not None:
            watcher.kill()
        load["after"] = os.getloadavg()
    seconds = [e["seconds"] for e in edits]
    result = {
        "benchmark": "edit-to-searchable seconds with r2ps index --watch",
        "settings": {
            "source": str(args.source),
            "edits": args.edits,
            "model": args.model or "bundled MiniLM",
            "reader": "LiveSearcher in a separate process, first stage: the index's own (repo)",
            "poll_s": args.poll,
            "language": ext,
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load": load},
        "tree": {
            "units": first["units"]["total"],
            "files": first["files"]["indexed"],
            "copy_s": round(copy_s, 2),
            "first_index_s": round(first_s, 1),
            "first_index_seconds": first["seconds"],
            "reader_open_s": round(open_s, 2),
        },
        "edit_to_searchable_s": {
            "median": round(statistics.median(seconds), 3),
            "max": round(max(seconds), 3),
            "min": round(min(seconds), 3),
        },
        "watcher_exit_status": rc,
        "edits": edits,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
    if not args.scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\n{args.source.name}: {first['units']['total']} units, first index {first_s:.1f} s")
    print(f"{'edit':>4}  {'kind':<6}  {'total s':>8}  {'published s':>11}  {'run s':>6}  "
          f"{'reader s':>8}")  # fmt: skip
    for e in edits:
        print(f"{e['edit']:>4}  {e['kind']:<6}  {e['seconds']:>8.2f}  {e['published_after_s']:>11.2f}"
              f"  {e['watcher_run_s']:>6.2f}  {e['reader_after_publish_s']:>8.2f}")  # fmt: skip
    s = result["edit_to_searchable_s"]
    print(f"median {s['median']:.2f} s, max {s['max']:.2f} s (target: 5 s at 30k units); "
          f"watcher exit status {rc}; {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
