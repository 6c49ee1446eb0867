"""`r2ps search` from a cold start over an index served on ONNX Runtime int8 (the index
job's default): the command imports neither torch, transformers nor Ray, loads the BM25
index the index job saved, and answers exactly as the search core with the torch-side
ONNX module (`r2ps.models.backends.OrtDualEncoder`) as its query encoder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_source_repo

from r2ps.models.backends import OrtDualEncoder, load_retriever
from r2ps.models.light import OrtRetriever
from r2ps.search import bm25
from r2ps.search.searcher import LEXICAL_DIR, Searcher

R2PS = Path(sys.executable).with_name("r2ps")  # the console script `make venv` installs
HEAVY = ("torch", "transformers", "ray")


@pytest.fixture(scope="module")
def int8_index(tmp_path_factory, tiny_bert_dir) -> Path:
    from r2ps.repo.config import RepoIndexConfig
    from r2ps.repo.indexer import index_repo

    root = tmp_path_factory.mktemp("cold")
    src = make_source_repo(root / "project")
    out = root / "index"
    cfg = RepoIndexConfig(
        source=str(src), out=str(out), model=str(tiny_bert_dir), backend="onnx-int8",
        ray_address="local",
    )  # fmt: skip
    index_repo(cfg)
    return out


def search(index: Path, *args: str) -> tuple[dict, set[str]]:
    """`r2ps search ... --json` in a fresh process: (its answer, the top-level packages it
    imported, from Python's own import log: PYTHONPROFILEIMPORTTIME)."""
    if not R2PS.exists():
        pytest.fail(f"{R2PS} is missing: `make venv` (pip install -e .) installs the command")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPROFILEIMPORTTIME"] = "1"
    done = subprocess.run(
        [str(R2PS), "search", *args, "--index", str(index), "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    assert "r2ps" in imported and "onnxruntime" in imported  # the log is read right
    return json.loads(done.stdout), imported


@pytest.mark.parametrize("flags", [[], ["--retrieval", "hybrid"], ["--retrieval", "dense"]])
def test_search_imports_no_torch_and_answers_as_the_torch_side_module(int8_index, flags):
    answer, imported = search(int8_index, "area of a circle", "-k", "8", *flags)
    assert not imported & set(HEAVY), imported & set(HEAVY)
    searcher = Searcher.open(int8_index, threads=1)
    assert isinstance(searcher.model, OrtRetriever)
    searcher.loaded = load_retriever(searcher.model_dir, "onnx-int8", 1)  # torch's wrapper
    assert isinstance(searcher.model, OrtDualEncoder)
    want = searcher.search("area of a circle", 8, answer["retrieval"])
    assert answer["retrieval"] == (flags[1] if flags else "repo")
    assert len(want) == 8 and answer["hits"] == [h.to_dict() for h in want]


def test_the_index_job_saves_the_bm25_a_search_loads(int8_index, monkeypatch):
    searcher = Searcher.open(int8_index, threads=1)
    assert Path(searcher.cfg.embed_out, LEXICAL_DIR, "r2ps_bm25.json").is_file()

    def no_build(*args, **kwargs):
        raise AssertionError("BM25 built at search time")

    monkeypatch.setattr(bm25, "BM25", type("NoBuild", (bm25.BM25,), {"__init__": no_build}))
    assert searcher.lexical().n_docs == len(searcher)
