"""`r2ps index PATH --watch`: after the first run, re-index whenever a file that the index
reads is added, changed or deleted.

The tree is watched with `watchfiles` (inotify, FSEvents, ...; polling where those are
missing). Changes are grouped: a run starts once the tree has been quiet for `step_ms`
(an editor's save, a `git checkout` of many files: one run), at most `debounce_ms` after
the first change; changes made during a run are kept for the next. Each run is the
incremental index job (`index_repo`: only changed files are re-read, only new code is
embedded) and publishes a new version of the index folder (`r2ps.search.versions`), which
readers load before their next search.

What does not trigger a run (`SourceChanges`, the walk's own rules: `r2ps.repo.files`): the
index's output folder, `.git`, files ignored by a `.gitignore` (every level, as the walk
applies them), vendored folders and files of no supported language. A `.gitignore` that
changes does trigger one (it changes what is indexed), and so does a change to any file or
folder the last run read.

A run that fails is logged and the last version stays served; the watch goes on. Ctrl-C
or SIGTERM stops the watch, a run under way included: its version is not published
(`index_repo` discards it), the last complete one stays current.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import pyarrow.parquet as pq

from r2ps.data.grammars import grammar_for
from r2ps.log import get_logger
from r2ps.repo.config import RepoIndexConfig
from r2ps.repo.files import (
    MAX_IGNORE_BYTES,
    VCS_DIRS,
    FileRules,
    NotRead,
    _Ignores,
    parse_gitignore,
    read_regular,
)
from r2ps.repo.units import FILES

log = get_logger(__name__)

DEBOUNCE_MS = 1600  # a run starts at most this long after the first change of a group
STEP_MS = 100  # ... and once no change came for this long


class SourceChanges:
    """watchfiles' `watch_filter`: whether a changed path under `root` can change the
    index, by the rules the walk applies (`r2ps.repo.files.walk_sources`)."""

    def __init__(self, root: str | Path, rules: FileRules, out: str | Path | None = None):
        self.root = Path(root).resolve()
        self.rules = rules
        self.out: str | None = None  # the output folder, relative, when inside root
        if out is not None:
            with suppress(ValueError):
                self.out = Path(out).resolve().relative_to(self.root).as_posix()
        self.vendored = set(rules.vendored_dirs)
        self._specs: dict[str, tuple[tuple, object]] = {}  # folder -> (file stamp, spec)
        self.known: set[str] = set()  # the files the last run read, and their folders
        self.known_dirs: set[str] = set()

    def remember(self, paths: list[str]) -> None:
        """The files (relative paths) the last run read: any change to them, or to a
        folder holding them, triggers a run."""
        self.known = set(paths)
        self.known_dirs = {p.rsplit("/", i)[0] for p in paths for i in range(1, p.count("/") + 1)}

    def __call__(self, change, path: str) -> bool:
        try:
            rel = Path(path).resolve().relative_to(self.root).as_posix()
        except (ValueError, OSError):
            return False
        if rel == "." or (self.out and (rel == self.out or rel.startswith(self.out + "/"))):
            return False
        parts = rel.split("/")
        if VCS_DIRS.intersection(parts):
            return False
        if rel in self.known or rel in self.known_dirs:
            return True
        name = parts[-1]
        if name == ".gitignore":
            return self.rules.gitignore and not self.ignored("/".join(parts[:-1]), True)
        is_dir = Path(path).is_dir()
        if not is_dir and grammar_for(name) is None:
            return False
        return not self.ignored(rel, is_dir)

    def ignored(self, rel: str, is_dir: bool) -> bool:
        """Whether the walk leaves `rel` out by name: a folder on its way (or itself)
        vendored or ignored by a .gitignore above it, as the walk meets them."""
        if not rel:
            return False
        parts = rel.split("/")
        ignores = _Ignores()
        for depth, part in enumerate(parts):
            prefix = "/".join(parts[:depth])
            spec = self._spec(prefix)
            if spec is not None:
                ignores.push(prefix + "/" if prefix else "", spec)
            here = "/".join(parts[: depth + 1])
            last = depth == len(parts) - 1
            folder = not last or is_dir
            if folder and part in self.vendored:
                return True
            if self.rules.gitignore and ignores.ignored(here, is_dir=folder):
                return True
        return False

    def _spec(self, folder: str):
        """The rules of `folder`'s .gitignore (None: none, or not applied), re-read when
        the file changed."""
        if not self.rules.gitignore:
            return None
        path = self.root / folder / ".gitignore"
        try:
            st = path.lstat()
        except OSError:
            self._specs.pop(folder, None)
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._specs.get(folder)
        if cached and cached[0] == stamp:
            return cached[1]
        try:
            spec, _ = parse_gitignore(read_regular(path, MAX_IGNORE_BYTES))
        except NotRead:
            spec = None
        self._specs[folder] = (stamp, spec)
        return spec


def read_paths(out: str | Path) -> list[str]:
    """The files the last run read (its files.parquet), [] when there is none."""
    try:
        return pq.read_table(Path(out, FILES), columns=["path"])["path"].to_pylist()
    except (OSError, ValueError, KeyError):
        return []


def run_line(summary: dict, changed: int) -> str:
    """The one line a re-index prints: version, files, units, seconds."""
    run, units = summary["run"], summary["units"]
    return (
        f"r2ps index: version {summary['version']['number']}: {changed} changes seen, "
        f"{run['files_read']} files read, {run['files_deleted']} deleted; "
        f"{units['total']} units ({run['codes']['embedded']} embedded) "
        f"in {summary['seconds']['total']:.2f} s"
    )


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def stop_on_signals(report: Callable[[str], None] | None = None):
    """The block ends at Ctrl-C or SIGTERM, quietly (a run under way is cut short and not
    published: `index_repo`); SIGTERM's own handler is back afterwards."""
    previous = None
    with suppress(ValueError):  # only the main thread may set a handler
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    except KeyboardInterrupt:
        (report or _stderr)("r2ps index: stopped")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def watch_index(
    cfg: RepoIndexConfig,
    *,
    debounce_ms: int = DEBOUNCE_MS,
    step_ms: int = STEP_MS,
    report: Callable[[str], None] | None = None,
    stop_event=None,
) -> int:
    """Re-index `cfg.source` into `cfg.out` (incrementally, whatever `cfg.full` says) on
    every change that matters, until `stop_event` is set or KeyboardInterrupt (Ctrl-C;
    SIGTERM too inside `stop_on_signals`); returns 0. `report` gets one line per run
    (default: stderr). The first run is the caller's."""
    import watchfiles

    from r2ps.repo.indexer import NothingToIndex, changed_since_last_run, index_repo

    report = report or _stderr
    if "R2PS_LOG_LEVEL" not in os.environ:  # the run's line (`report`), not each stage's
        logging.getLogger().setLevel(logging.WARNING)
    cfg = dataclasses.replace(cfg, full=False)
    changes = SourceChanges(cfg.source, cfg.rules, cfg.out)
    changes.remember(read_paths(cfg.out))
    report(f"r2ps index: watching {changes.root} (Ctrl-C stops)")
    # The watcher starts with the first step of this loop, after the caller's first run
    # walked the tree: an edit made in between would be missed. So the watcher yields
    # once on a short timeout, and that first (empty) batch runs the index again when
    # the walk finds anything changed since that run.
    caught_up = False
    for batch in watchfiles.watch(
        changes.root, watch_filter=changes, debounce=debounce_ms, step=step_ms,
        stop_event=stop_event, raise_interrupt=True, rust_timeout=step_ms * 4,
        yield_on_timeout=True,
    ):  # fmt: skip
        seen = len(batch)
        if not batch:
            if caught_up:
                continue
            caught_up = True
            seen = changed_since_last_run(cfg)
            if not seen:
                continue
        caught_up = True
        start = time.perf_counter()
        try:
            summary = index_repo(cfg)
        except NothingToIndex as e:
            report(f"r2ps index: {e}: the last version stays served")
            continue
        except Exception as e:  # the last version stays served; the watch goes on
            log.exception("index run failed")
            report(f"r2ps index: run failed ({type(e).__name__}: {e}); the last version "
                   f"stays served ({time.perf_counter() - start:.2f} s)")  # fmt: skip
            continue
        changes.remember(read_paths(cfg.out))
        report(run_line(summary, seen))
    return 0
