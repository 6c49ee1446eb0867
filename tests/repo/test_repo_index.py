"""jobs/index.py's job: a real index of the fixture repository, then add/change/delete
files and check that the incremental run reads and embeds only what changed and ends
equal to a full rebuild; the Serve app loads what it wrote as it is."""

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from r2ps.mining.index import CodeIndex
from r2ps.repo.config import RepoIndexConfig
from r2ps.repo.files import BINARY, GENERATED, IGNORED, MINIFIED, OVERSIZE, VENDORED
from r2ps.repo.indexer import SUMMARY, index_repo
from r2ps.repo.units import CODES


def _cfg(src, out, model, **kw):
    return RepoIndexConfig(source=str(src), out=str(out), model=str(model), **kw)


def _vectors(out):
    index = CodeIndex.load(out / "index")
    return index.code_ids, index._cpu.reconstruct_n(0, len(index))


def _change_tree(src):
    """Add a Go file, change a Python function, delete a Ruby file."""
    (src / "go" / "shapes" / "square.go").write_text(
        "package shapes\n\n// Square of a number.\nfunc Square(x float64) float64 {\n"
        "\treturn x * x\n}\n"
    )
    py = src / "python" / "pkg" / "shapes.py"
    py.write_text(py.read_text().replace("return x * 2", "return x * 3"))
    st = py.stat()
    os.utime(py, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a coarse clock too
    (src / "ruby" / "lib" / "broken.rb").unlink()


def _check_equal_to_full_rebuild(src, out, model, tmp_path, **kw):
    full_out = tmp_path / "full"
    index_repo(_cfg(src, full_out, model, full=True, **kw))
    inc, full = pq.read_table(out / CODES), pq.read_table(full_out / CODES)
    assert inc.equals(full)
    ids_inc, vec_inc = _vectors(out)
    ids_full, vec_full = _vectors(full_out)
    assert ids_inc == ids_full
    # embedded in other batches (other padding): equal up to float rounding
    np.testing.assert_allclose(vec_inc, vec_full, atol=1e-5)


def test_index_then_incremental_add_change_delete(source_repo, tiny_bert_dir, tmp_path):
    out = tmp_path / "out"
    first = index_repo(_cfg(source_repo, out, tiny_bert_dir))
    assert first["run"]["incremental"] is False
    codes = pq.read_table(out / CODES)
    assert set(codes["language"].to_pylist()) == {
        "python", "go", "java", "javascript", "typescript", "php", "ruby"
    }  # fmt: skip
    # every row's lines are the file's lines (a module unit's: blank where other units are)
    for row in codes.to_pylist():
        lines = (source_repo / row["path"]).read_text().split("\n")
        span = lines[row["start_line"] - 1 : row["end_line"]]
        if row["kind"] == "module":
            code = row["code"].split("\n")
            assert all(c in ("", s) for c, s in zip(code, span, strict=True))
        else:
            assert "\n".join(span) == row["code"]
    assert "module" in codes["kind"].to_pylist()
    named = first["skipped_files"]
    assert "python/ignored/" in named[IGNORED] and "build/" in named[IGNORED]
    assert {"go/vendor/", "javascript/node_modules/"} <= set(named[VENDORED])
    assert "go/blob.go" in named[BINARY] and "go/shapes/zz_gen.go" in named[GENERATED]
    assert {"javascript/lib/app.min.js", "javascript/lib/packed.js"} <= set(named[MINIFIED])
    assert named[OVERSIZE] == ["python/big.py"]
    assert "python/pkg/broken.py" in first["syntax_errors"]
    assert first["units"]["total"] == codes.num_rows == first["index"]["count"]
    assert json.loads((out / SUMMARY).read_text())["units"] == first["units"]

    # nothing changed: nothing read, nothing embedded
    again = index_repo(_cfg(source_repo, out, tiny_bert_dir))
    assert again["run"]["incremental"] is True
    assert (again["run"]["files_read"], again["run"]["codes"]["embedded"]) == (0, 0)
    assert pq.read_table(out / CODES).equals(codes)

    old_contents = set(codes["content_id"].to_pylist())
    _change_tree(source_repo)
    inc = index_repo(_cfg(source_repo, out, tiny_bert_dir))
    run = inc["run"]
    assert run["files_read"] == 2  # the new Go file and the changed Python file
    assert run["deleted"] == ["ruby/lib/broken.rb"]
    new_codes = pq.read_table(out / CODES)
    new_contents = set(new_codes["content_id"].to_pylist())
    # Square, undocumented (square.go's module unit, `package shapes`, is broken.go's too)
    assert run["codes"]["embedded"] == len(new_contents - old_contents) == 2
    square = [r for r in new_codes.to_pylist() if r["path"] == "go/shapes/square.go"]
    assert [(r["kind"], r["code"]) for r in square if r["kind"] == "module"] == [
        ("module", "package shapes")
    ]
    assert "ruby/lib/broken.rb" not in set(new_codes["path"].to_pylist())
    assert "Square" in new_codes["symbol"].to_pylist()
    _check_equal_to_full_rebuild(source_repo, out, tiny_bert_dir, tmp_path)

    # the Serve app's loader (the search core, building what is missing) takes the
    # written index as it is (no re-embedding)
    from r2ps.search.searcher import Searcher
    from r2ps.serving.settings import ServeConfig

    serve_cfg = ServeConfig.from_mapping(yaml.safe_load((out / "serve.yaml").read_text()))
    # no --ranker: answers are the retriever's, and /readyz says why
    assert serve_cfg.rerank_k == 0 and "no --ranker" in serve_cfg.served_reason
    # the first stage: repository search (blend + signals), written out and reported
    from r2ps.search.searcher import first_stage
    from r2ps.search.signals import RankingSignals

    assert serve_cfg.retrieval == "repo" and serve_cfg.signals == RankingSignals()
    assert inc["search"] == first_stage(serve_cfg)
    searcher = Searcher.from_config(serve_cfg, build_index=True)
    assert not (out / "embeddings").exists()
    assert searcher.index.code_ids == new_codes["code_id"].to_pylist()
    assert len(searcher.store.rows) == new_codes.num_rows
    assert searcher.search("Square", k=1)[0].symbol == "Square"  # its definition first


@pytest.mark.ray
def test_ray_fan_out_gives_the_same_index(ray_local, source_repo, tiny_bert_dir, tmp_path):
    """Files over Ray Data tasks and codes over the embedding actor pool (local_below=0)
    give the index the in-process path gives."""
    out = tmp_path / "ray"
    summary = index_repo(_cfg(source_repo, out, tiny_bert_dir, local_below=0, files_per_task=4))
    assert summary["run"]["codes"]["embedded"] == summary["run"]["codes"]["unique"]
    local = tmp_path / "local"
    index_repo(_cfg(source_repo, local, tiny_bert_dir))
    assert pq.read_table(out / CODES).equals(pq.read_table(local / CODES))
    ids_r, vec_r = _vectors(out)
    ids_l, vec_l = _vectors(local)
    assert ids_r == ids_l
    np.testing.assert_allclose(vec_r, vec_l, atol=1e-5)
    shutil.rmtree(local)
    # incremental over Ray too
    _change_tree(source_repo)
    inc = index_repo(_cfg(source_repo, out, tiny_bert_dir, local_below=0, files_per_task=4))
    assert inc["run"]["files_read"] == 2
    _check_equal_to_full_rebuild(source_repo, out, tiny_bert_dir, tmp_path, local_below=0)


def test_the_command_line_job(source_repo, tiny_bert_dir, tmp_path):
    """jobs/index.py as a user runs it (small: no Ray started), then a bad source."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root / "platform")}
    out = tmp_path / "cli"
    cmd = [sys.executable, "jobs/index.py", "--source", str(source_repo), "--out", str(out)]
    done = subprocess.run(
        [*cmd, "--model", str(tiny_bert_dir), "rules.max_file_bytes=2000000"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "serve: R2PS_SERVE_CONFIG=" in done.stdout and "(full run" in done.stdout
    summary = json.loads((out / SUMMARY).read_text())
    assert "python/big.py" not in summary["skipped_files"].get(OVERSIZE, [])  # key=value took
    # the user's mistakes: one line naming the setting, exit 2, no traceback, nothing written
    (tmp_path / "a_file").write_text("")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no code\n")
    mistakes = {
        "source: ": ["--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o1")],
        "out: ": ["--source", str(source_repo), "--out", str(tmp_path / "a_file")],
        "files_per_task: must be >= 1": ["--source", str(source_repo), "--files-per-task", "0"],
        "index.kind: expected one of": ["--source", str(source_repo), "index.kind=bogus"],
        "no function, method or class": [
            "--source", str(tmp_path / "empty"), "--out", str(tmp_path / "o2"),
            "--model", str(tiny_bert_dir),
        ],
    }  # fmt: skip
    for message, args in mistakes.items():
        bad = subprocess.run(
            [sys.executable, "jobs/index.py", *args],
            cwd=root, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr[-1000:])
        assert "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert not (tmp_path / "o1").exists()


def test_a_file_that_could_not_be_read_is_read_again(tmp_path, tiny_bert_dir, monkeypatch):
    """A read error (permissions, a flaky mount) is not cached: a permission change keeps
    size and mtime, so the next run must retry the file rather than trust them."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("def a():\n    return 1\n")
    (src / "b.py").write_text("def b():\n    return 2\n")
    denied = str(src / "b.py")
    real_open = os.open

    def flaky_open(path, *args, **kwargs):  # tests run as root, whom no mode stops
        if str(path) == denied:
            raise PermissionError(13, "Permission denied", denied)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", flaky_open)
    first = index_repo(_cfg(src, tmp_path / "out", tiny_bert_dir))
    assert first["files"]["skipped"]["unreadable"] == 1 and first["files"]["indexed"] == 1
    monkeypatch.undo()
    second = index_repo(_cfg(src, tmp_path / "out", tiny_bert_dir))
    assert second["run"]["files_read"] == 1 and second["run"]["files_unchanged"] == 1
    assert second["files"]["indexed"] == 2 and "unreadable" not in second["skipped_files"]


def test_bad_ignore_lines_are_named_in_the_summary_and_damaged_state_is_rebuilt(
    tmp_path, tiny_bert_dir
):
    """psf/black's `!` .gitignore: the job indexes the tree and its summary names the line
    (file, number, text, a count by reason), as skipped.jsonl does. A last run's state
    damaged by hand or by a disk is named in a warning and rebuilt, not a crash."""
    from r2ps.repo.files import INVALID_PATTERN
    from r2ps.repo.indexer import SKIPPED
    from r2ps.repo.units import FILES

    src = tmp_path / "src"
    (src / "tests" / "data" / "invalid_gitignore_tests").mkdir(parents=True)
    (src / "tests" / "data" / "invalid_gitignore_tests" / ".gitignore").write_bytes(b"!\n")
    (src / "tests" / "data" / "invalid_gitignore_tests" / "a.py").write_bytes(b"")
    (src / "black.py").write_text("def main():\n    return 1\n")
    out = tmp_path / "out"
    first = index_repo(_cfg(src, out, tiny_bert_dir))
    where = {"file": "tests/data/invalid_gitignore_tests/.gitignore", "line": 1, "text": "!"}
    assert first["ignore_lines_skipped"] == {INVALID_PATTERN: 1}
    assert first["skipped_ignore_lines"] == {INVALID_PATTERN: [where]}
    assert json.loads((out / SUMMARY).read_text())["skipped_ignore_lines"] == {
        INVALID_PATTERN: [where]
    }
    records = [json.loads(line) for line in (out / SKIPPED).read_text().splitlines()]
    assert {"path": where["file"], "line": 1, "text": "!", "reason": INVALID_PATTERN} in records
    assert first["files"]["indexed"] == 2 and first["units"]["total"] == 1

    (out / FILES).write_bytes(b"not parquet")
    (out / "vectors" / "manifest.json").write_text("[1, 2")
    second = index_repo(_cfg(src, out, tiny_bert_dir))
    assert second["run"]["incremental"] is False and second["run"]["files_read"] == 2
    assert second["run"]["codes"]["embedded"] == 1
    third = index_repo(_cfg(src, out, tiny_bert_dir))  # and the state written is good again
    assert third["run"]["incremental"] is True and third["run"]["files_read"] == 0
