"""An index that follows edits: `r2ps index --watch` as a subprocess on the fixture
repository (the tiny random BERT) while a reader searches it; versions published whole
(a reader opened before a run sees the new version after it, a failed run publishes
nothing); the watcher's rules for which changes matter."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import make_source_repo

from r2ps.repo.config import RepoIndexConfig
from r2ps.repo.files import FileRules
from r2ps.repo.indexer import RUNNING, index_repo
from r2ps.repo.units import CODES
from r2ps.repo.watch import SourceChanges
from r2ps.search import versions
from r2ps.search.filters import Filters
from r2ps.search.live import LiveSearcher
from r2ps.search.searcher import Searcher

R2PS = Path(sys.executable).with_name("r2ps")
ADDED = "python/pkg/added.py"


def _until(check, timeout: float = 20.0, what: str = ""):
    """Poll `check` until it returns something true; its value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def _symbols(live, query: str, **filters) -> list[str]:
    f = Filters(**filters) if filters else None
    return [h.symbol for h in live.search(query, k=10, filters=f)]


def test_watch_follows_edits_adds_and_deletes(tmp_path, tiny_bert_dir):
    src = make_source_repo(tmp_path / "repo")
    out = src / ".r2ps" / "index"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [str(R2PS), "index", str(src), "--model", str(tiny_bert_dir), "--watch"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        first = _until(lambda: versions.current(out), 120, "the first version")
        assert first.number == 1
        live = LiveSearcher(Searcher.open(out), check_every_s=0.1)
        assert live.version.number == 1 and "frobnicate_widget" not in _symbols(live, "x")
        # an edit: a function appended to an indexed file
        with open(src / "python" / "pkg" / "shapes.py", "a") as f:
            f.write("\n\ndef frobnicate_widget(w):\n    return w * 2\n")
        _until(lambda: "frobnicate_widget" in _symbols(live, "frobnicate_widget"), what="edit")
        assert live.version.number == 2
        # what the walk leaves out does not start a run: an ignored file, a file of no
        # supported language, the index folder itself (read by the reader's searches)
        (src / "build" / "more.py").write_text("def built_too():\n    return 2\n")
        (src / "python" / "notes.txt").write_text("still not code\n")
        (src / "debug.log").write_text("x\n")
        time.sleep(0.5)  # what a run started by those would need to show (none expected)
        # an added file
        (src / ADDED).write_text("def zanzibar_quokka_counter(n):\n    return n + 1\n")
        _until(lambda: "zanzibar_quokka_counter" in _symbols(live, "zanzibar_quokka_counter"))
        assert live.version.number == 3, "a change the walk leaves out started a run"
        # a deleted file: its units are gone
        (src / ADDED).unlink()
        _until(lambda: not _symbols(live, "zanzibar_quokka_counter", path=[ADDED]), what="delete")
        assert live.version.number == 4
        assert ADDED not in set(pq.read_table(out / CODES)["path"].to_pylist())
        assert "frobnicate_widget" in _symbols(live, "frobnicate_widget")  # the others stay
        # a change, then SIGTERM at once (a run under way, or about to be): exit 0, and
        # what is current is a whole version
        (src / ADDED).write_text("def late_addition():\n    return 3\n")
        time.sleep(0.15)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("r2ps index: version")]
    assert [line.split(":")[1].strip() for line in lines[:3]] == [
        "version 2", "version 3", "version 4",
    ], err[-3000:]  # fmt: skip
    assert "1 files read" in lines[0] and "1 deleted" in lines[2]
    assert err.rstrip().endswith("r2ps index: stopped")
    last = versions.current(out)
    assert last.number >= 4 and not (out / RUNNING).exists()
    assert sorted(int(p.name) for p in (out / versions.VERSIONS).iterdir()) == [
        last.number - 1, last.number,
    ]  # fmt: skip
    assert len(Searcher.open(out)) == int(pq.read_metadata(last.folder / CODES).num_rows)


@pytest.fixture
def indexed(tmp_path, tiny_bert_dir) -> dict:
    src = make_source_repo(tmp_path / "repo")
    cfg = RepoIndexConfig(source=str(src), out=str(tmp_path / "index"), model=str(tiny_bert_dir))
    index_repo(cfg)
    return {"src": src, "out": tmp_path / "index", "cfg": cfg}


def test_a_reader_opened_before_a_reindex_sees_the_new_version_after_it(indexed):
    src, out, cfg = indexed["src"], indexed["out"], indexed["cfg"]
    live = LiveSearcher(Searcher.open(out), check_every_s=0)
    pinned = Searcher.open(out)  # a plain Searcher: the version it loaded, for good
    before = len(live)
    assert live.version.number == pinned.version.number == 1
    (src / ADDED).write_text("def zanzibar_quokka_counter(n):\n    return n + 1\n")
    summary = index_repo(cfg)
    assert summary["version"]["number"] == 2 and summary["run"]["files_read"] == 1
    assert "zanzibar_quokka_counter" in _symbols(live, "zanzibar_quokka_counter")
    assert live.version.number == 2 and len(live) == before + 1 and live.reloads == 1
    assert len(pinned) == before  # its own version's files stay on disk: still whole
    assert "zanzibar_quokka_counter" not in [h.symbol for h in pinned.search("x", k=len(pinned))]
    status = live.status()
    assert status["version"] == status["latest_version"] == 2 and 0 <= status["age_seconds"] < 60
    # the top level's files are the current version's (the layout before versions)
    assert pq.read_table(out / CODES).equals(pq.read_table(live.version.folder / CODES))
    # a third run: two versions stay on disk
    (src / ADDED).unlink()
    index_repo(cfg)
    assert sorted(p.name for p in (out / versions.VERSIONS).iterdir()) == ["2", "3"]
    assert len(live.current()) == before and live.version.number == 3


def test_a_failed_run_leaves_the_previous_version_served(indexed, tmp_path, tiny_bert_dir):
    src, out, cfg = indexed["src"], indexed["out"], indexed["cfg"]
    live = LiveSearcher(Searcher.open(out), check_every_s=0)
    hits = [h.code_id for h in live.search("area of a circle", k=5)]
    # a real failure mid-run: a retriever whose weights cannot be read, met when the
    # run embeds (after its version folder was started)
    broken = tmp_path / "broken_model"
    shutil.copytree(tiny_bert_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    (src / ADDED).write_text("def zanzibar_quokka_counter(n):\n    return n + 1\n")
    with pytest.raises(Exception):  # noqa: B017  (whatever the loader raises)
        index_repo(RepoIndexConfig(source=cfg.source, out=cfg.out, model=str(broken)))
    assert versions.current(out).number == 1
    assert sorted(p.name for p in (out / versions.VERSIONS).iterdir()) == ["1"]
    assert not (out / RUNNING).exists()
    assert [h.code_id for h in live.search("area of a circle", k=5)] == hits
    assert live.version.number == 1 and live.last_error is None
    assert "zanzibar_quokka_counter" not in _symbols(live, "zanzibar_quokka_counter")
    # the next run that works publishes the next version, the change in it
    assert index_repo(cfg)["version"]["number"] == 2
    assert "zanzibar_quokka_counter" in _symbols(live, "zanzibar_quokka_counter")


def test_a_folder_written_before_versions_is_read_and_then_versioned(indexed):
    """The layout before versions (no pointer: the top level's files alone) is searched
    as it is; the next run publishes version 1... its next number, and readers follow."""
    out, cfg = indexed["out"], indexed["cfg"]
    (out / versions.POINTER).unlink()
    shutil.rmtree(out / versions.VERSIONS)
    old = LiveSearcher(Searcher.open(out), check_every_s=0)
    assert old.version is None and len(old) > 0 and old.status()["version"] is None
    assert index_repo(cfg)["version"]["number"] == 1
    assert old.current().version.number == 1


def test_only_changes_the_walk_would_read_start_a_run(tmp_path):
    src = make_source_repo(tmp_path / "repo")
    (src / "python" / "ignored" / ".gitignore").write_text("# nothing\n")
    changes = SourceChanges(src, FileRules(), src / ".r2ps" / "index")
    changes.remember(["python/pkg/shapes.py"])
    for rel, want in {
        "python/pkg/shapes.py": True,  # indexed
        "python/pkg/new.py": True,  # a new source file
        "python/pkg": True,  # a folder holding indexed files (removed, renamed)
        "python/newpkg": False,  # not there, not a folder: a file of no language
        ".gitignore": True,  # changes what is indexed
        "python/notes.txt": False,  # no supported language
        "debug.log": False,
        "build/out.py": False,  # ignored by .gitignore (build/)
        "build/.gitignore": False,  # inside an ignored folder
        "javascript/node_modules/dep/index.js": False,  # vendored
        "go/vendor/v.go": False,
        ".git/index": False,
        ".r2ps/index/version.json": False,  # the index's own folder
        ".r2ps/index/versions/3/codes.parquet": False,
    }.items():
        assert changes(None, str(src / rel)) is want, rel
    (src / "python" / "newpkg").mkdir()
    assert changes(None, str(src / "python" / "newpkg"))  # a new folder: its files may count
    (src / ".gitignore").write_text("python/pkg/\n")  # rules re-read when the file changes
    assert not changes(None, str(src / "python" / "pkg" / "new.py"))


def test_a_damaged_pointer_is_named_and_the_next_run_writes_it_again(indexed):
    out, cfg = indexed["out"], indexed["cfg"]
    (out / versions.POINTER).write_text('{"version": ')
    with pytest.raises(versions.VersionError, match="not a version pointer"):
        Searcher.open(out)
    assert index_repo(cfg)["version"]["number"] == 2  # above the folders there
    assert Searcher.open(out).version.number == 2


def test_an_edit_made_before_the_watcher_starts_is_indexed_once_it_does(indexed):
    """The watcher starts after the first run walked the tree: a change in between
    (a slow machine widens the gap) is caught by the watcher's first look, and a watcher
    that finds nothing changed publishes nothing."""
    import threading

    from r2ps.repo.watch import watch_index

    src, out, cfg = indexed["src"], indexed["out"], indexed["cfg"]
    lines: list[str] = []
    stop = threading.Event()
    quiet = threading.Thread(target=watch_index, args=(cfg,), daemon=True,
                             kwargs={"report": lines.append, "stop_event": stop})  # fmt: skip
    quiet.start()
    time.sleep(1.5)  # past the watcher's first look (4 steps of 0.1 s)
    stop.set()
    quiet.join(30)
    assert versions.current(out).number == 1 and len(lines) == 1  # "watching ..." only
    with open(src / "python" / "pkg" / "shapes.py", "a") as f:
        f.write("\n\ndef missed_by_no_one(w):\n    return w\n")
    stop = threading.Event()
    watcher = threading.Thread(target=watch_index, args=(cfg,), daemon=True,
                               kwargs={"report": lines.append, "stop_event": stop})  # fmt: skip
    watcher.start()
    try:
        _until(lambda: versions.current(out).number == 2, what="the missed edit")
    finally:
        stop.set()
        watcher.join(30)
    assert "missed_by_no_one" in pq.read_table(out / CODES)["symbol"].to_pylist()
    assert "version 2: 1 changes seen, 1 files read" in lines[-1]
