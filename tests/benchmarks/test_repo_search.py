"""benchmarks/repo_search.py end to end on tiny trees and annotations in semble's format:
the indexer, the Retriever's own search and the scorer, with a tiny random BERT; a tree
that crashes the index is recorded and the run goes on; a second run reuses the index."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CIRCLE = "def circle_area(radius):\n    return 3.14159 * radius * radius\n"
DOUBLE = "func Double(x int) int { return 2 * x }"


def _benchmark():
    spec = importlib.util.spec_from_file_location(
        "repo_search", REPO / "benchmarks" / "repo_search.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while defined
    spec.loader.exec_module(module)
    return module


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def semble(tmp_path) -> tuple[Path, Path]:
    """(data, trees): three repositories. pyrepo (dev, indexed folder src/pkg): a query
    that is a function's own text, so the tiny model still finds it first (NDCG 1), and
    one whose file does not exist (0); gorepo (test, the whole tree): one found query;
    empty (dev): a tree without code, which the indexer refuses."""
    data, trees = tmp_path / "semble", tmp_path / "trees"
    _write(
        trees / "pyrepo/src/pkg/geometry.py",
        CIRCLE + "\n\ndef square(side):\n    return 4 * side\n",
    )
    _write(trees / "gorepo/shapes.go", f"package shapes\n\n{DOUBLE}\n")
    _write(trees / "empty/docs/README.md", "no code here\n")
    repos = [
        {"name": "pyrepo", "language": "python", "url": "u", "revision": "r1", "benchmark_root": "src/pkg"},
        {"name": "gorepo", "language": "go", "url": "u", "revision": "r2"},
        {"name": "empty", "language": "python", "url": "u", "revision": "r3", "benchmark_root": "docs"},
    ]  # fmt: skip
    _write(data / "repos.json", json.dumps(repos))
    _write(data / "splits.json", json.dumps({"dev": ["pyrepo", "empty"], "test": ["gorepo"]}))
    py = [
        {
            "query": CIRCLE.strip(),
            "relevant": [{"path": "src/pkg/geometry.py", "start_line": 1, "end_line": 2}],
            "secondary": [],
            "category": "symbol",
        },
        {"query": "constants", "relevant": ["src/pkg/gone.py"], "secondary": [], "category": "architecture"},
    ]  # fmt: skip
    go = [{"query": DOUBLE, "relevant": [], "secondary": ["shapes.go"], "category": "symbol"}]
    _write(data / "annotations/pyrepo.json", json.dumps(py))
    _write(data / "annotations/gorepo.json", json.dumps(go))
    _write(data / "annotations/empty.json", json.dumps(py[1:]))
    published = {
        "toolA (a description)": {n: {"ndcg10": v, "index_ms": 1.0, "p50_ms": 1.0}
                                  for n, v in (("pyrepo", 0.8), ("gorepo", 0.6), ("empty", 0.1))}
    }  # fmt: skip
    _write(data / "published.json", json.dumps(published))
    _write(trees / "revisions.json", json.dumps({"pyrepo": {"revision": "abc", "pinned": False}}))
    return data, trees


def test_repo_search_end_to_end(semble, tmp_path, tiny_bert_dir, capsys):
    data, trees = semble
    bench = _benchmark()
    argv = [
        f"--data={data}",
        f"--trees={trees}",
        f"--out-dir={tmp_path / 'indexes'}",
        f"--model={tiny_bert_dir}",
        f"--results={tmp_path / 'results'}",
        "--tag=t",
        "--retrieval=dense,hybrid,bm25",
        "--latency-runs=1",
    ]
    report = bench.main(argv)
    saved = json.loads((tmp_path / "results" / "repo_search_t.json").read_text())
    assert saved["summary"] == report["summary"]
    repos = {r["name"]: r for r in saved["repositories"]}

    # the tree without code crashed in the index stage; the others ran
    assert repos["empty"]["crash"]["stage"] == "index"
    assert "NothingToIndex" in repos["empty"]["crash"]["error"]
    assert repos["pyrepo"]["crash"] is None and repos["gorepo"]["crash"] is None
    assert (repos["pyrepo"]["revision"], repos["pyrepo"]["pinned"]) == ("abc", False)
    assert repos["gorepo"]["revision"] is None  # not in revisions.json: unknown, not guessed
    assert repos["pyrepo"]["index"]["units"] == 2 and not repos["pyrepo"]["index"]["incremental"]
    assert repos["pyrepo"]["coverage"]["files_without_unit"] == ["src/pkg/gone.py"]
    assert repos["pyrepo"]["coverage"]["queries_without_unit"] == ["constants"]

    for mode in ("dense", "hybrid", "bm25"):
        py = repos["pyrepo"]["retrieval"][mode]
        assert [q["ndcg10"] for q in py["queries"]] == [1.0, 0.0]
        assert py["ndcg10"] == 0.5 and py["by_category"] == {"symbol": 1.0, "architecture": 0.0}
        assert repos["gorepo"]["retrieval"][mode]["ndcg10"] == 1.0  # a secondary target
        assert py["p50_ms"] > 0
    # means over the repositories scored; the published tool's over the same ones
    split = saved["summary"]["split"]
    assert split["dev"] == pytest.approx(
        {"repositories": 1, "r2ps dense": 0.5, "r2ps hybrid": 0.5, "r2ps bm25": 0.5, "toolA (a description)": 0.8}
    )  # fmt: skip
    assert split["test"]["r2ps dense"] == 1.0 and split["test"]["toolA (a description)"] == 0.6
    assert split["all"]["r2ps hybrid"] == 0.75
    assert split["all"]["toolA (a description)"] == pytest.approx(0.7)
    assert saved["summary"]["language"]["go"]["r2ps bm25"] == 1.0
    category = saved["summary"]["category"]
    assert category["symbol"]["r2ps dense"] == 1.0 and category["architecture"]["r2ps dense"] == 0.0
    assert category["semantic"] == {
        "repositories": 0,
        "r2ps dense": None,
        "r2ps hybrid": None,
        "r2ps bm25": None,
    }
    assert saved["summary"]["crashed"] == ["empty"]
    printed = capsys.readouterr().out
    assert "toolA" in printed and "CRASH (index)" in printed

    # a second run reuses the index (nothing re-read) and scores the same
    again = bench.main(argv + ["--repos=pyrepo"])
    (py,) = again["repositories"]
    assert py["index"]["incremental"] and py["index"]["embedded"] == 0
    assert py["retrieval"]["dense"]["ndcg10"] == 0.5

    # --resume keeps what the results file scored (pyrepo, as it was) and runs the rest
    resumed = bench.main(argv + ["--resume"])
    assert [r["name"] for r in resumed["repositories"]] == ["pyrepo", "gorepo", "empty"]
    assert resumed["repositories"][0] == {**py, "r2ps": again["r2ps"]}
    assert resumed["summary"]["split"]["all"]["r2ps dense"] == 0.75
    with pytest.raises(SystemExit, match="other retrieval"):
        bench.main(argv[:-2] + ["--retrieval=dense", "--resume"])
