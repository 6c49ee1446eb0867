"""The search core (r2ps.search.searcher) on an index jobs/index.py wrote, in this process
(no Ray, no Serve): locations on every hit, dense and hybrid first stages computed again
here from the saved index and the same model, and filters applied before the top-k cut
(a filtered search is the unfiltered ranking with the other units taken out).
tests/repo/test_search_page.py checks the same through the served app."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_source_repo

from r2ps.mining.index import CodeIndex, StaleIndexError
from r2ps.models.backends import load_retriever
from r2ps.models.dual import DualEncoder
from r2ps.repo.config import RepoIndexConfig
from r2ps.repo.indexer import index_repo
from r2ps.repo.units import CODES
from r2ps.search.bm25 import BM25
from r2ps.search.filters import Filters
from r2ps.search.fusion import rrf
from r2ps.search.searcher import Searcher

TESTS = {  # units in test files, for the filters a user asks for most ("not the tests")
    "go/shapes/shapes_test.go": (
        'package shapes\n\nimport "testing"\n\n'
        "// TestCircleArea checks the area of a circle.\n"
        "func TestCircleArea(t *testing.T) {\n\tif (Circle{R: 1}).Area() < 3 {\n"
        '\t\tt.Fatal("area")\n\t}\n}\n'
    ),
    "python/tests/test_shapes.py": (
        "from pkg.shapes import Circle\n\n\ndef test_circle_area():\n"
        '    """The area of a unit circle is pi."""\n    assert Circle(1).area() > 3\n'
    ),
}


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_bert_dir) -> Path:
    root = tmp_path_factory.mktemp("searcher")
    src = make_source_repo(root / "repo")
    for path, text in TESTS.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_text(text)
    out = root / "index"
    index_repo(RepoIndexConfig(source=str(src), out=str(out), model=str(tiny_bert_dir)))
    return out


@pytest.fixture(scope="module")
def searcher(indexed) -> Searcher:
    return Searcher.open(indexed)


@pytest.fixture(scope="module")
def codes(indexed) -> dict[str, dict]:
    return {c["code_id"]: c for c in pq.read_table(indexed / CODES).to_pylist()}


def _ids(hits) -> list[str]:
    return [h.code_id for h in hits]


def test_dense_and_hybrid_with_locations(searcher, indexed, codes, tiny_bert_dir):
    target = next(c for c in codes.values() if c["symbol"] == "Geo.Circle.area")
    (top, *_) = searcher.search(target["code"], k=4, retrieval="dense")
    assert top.code_id == target["code_id"] and top.code == target["code"]
    located = {k: getattr(top, k) for k in ("path", "start_line", "end_line", "symbol")}
    assert located == {k: target[k] for k in located}
    where = f"{target['path']}:{target['start_line']}-{target['end_line']}"
    assert top.heading() == f"{where}  Geo.Circle.area  ({target['language']})  {top.score:.4f}"

    hybrid = searcher.search("circle area", k=6, retrieval="hybrid")
    for hit in hybrid:
        assert (hit.path, hit.symbol) == (codes[hit.code_id]["path"], codes[hit.code_id]["symbol"])
    # the same fusion computed here from the saved index and the same model
    index = CodeIndex.load(indexed / "index")
    n = len(index)
    model = load_retriever(tiny_bert_dir, RepoIndexConfig().backend, threads=1).model
    _, dense = index.search(model.embed_queries(["circle area"]), n)
    # BM25's document of a source tree's unit: its path, symbol and code
    documents = [
        " ".join((codes[i]["path"], codes[i]["symbol"], codes[i]["code"])) for i in index.code_ids
    ]
    lexical, scores = BM25(documents).top_k("circle area", n)
    ids, fused = rrf([dense[0], lexical[scores > 0]], k=60, top=6)
    assert _ids(hybrid) == [index.code_ids[i] for i in ids]
    np.testing.assert_allclose([h.score for h in hybrid], fused)


FILTERS = [
    Filters(language=["go"]),
    Filters(exclude=["**/*_test.go", "tests/"]),
    Filters(path=["python/**", "*.java"]),
    Filters(language=["python", "ruby"], exclude=["**/broken.*"]),
    Filters(path=["go/"], language=["go"], exclude=["*_test.go"]),
]


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: str(f.to_dict()))
def test_a_filtered_search_is_the_full_ranking_without_the_others(searcher, codes, filters, mode):
    query, n, k = "area of a circle", len(searcher), 5
    units = list(codes.values())
    passes = filters.mask([u["path"] for u in units], [u["language"] for u in units])
    allowed = {u["code_id"] for u, ok in zip(units, passes, strict=True) if ok}
    got = searcher.search(query, k, mode, filters)
    assert got and {h.code_id for h in got} <= allowed
    if mode == "dense":  # exactly the unfiltered ranking's first k allowed units
        full = searcher.search(query, n, "dense")
        want = [h for h in full if h.code_id in allowed][:k]
        assert _ids(got) == _ids(want)
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], rtol=1e-6)
    else:  # both lists restricted first, then fused (the ranks are within what passes)
        depth = max(k, searcher.cfg.hybrid_depth)
        position = {cid: i for i, cid in enumerate(searcher.index.code_ids)}
        full = searcher.search(query, n, "dense")
        dense = [position[h.code_id] for h in full if h.code_id in allowed]
        among = np.array(sorted(position[c] for c in allowed))
        lexical, scores = searcher.lexical().top_k(query, n)
        lexical = [p for p, s in zip(lexical, scores, strict=True) if s > 0 and p in among][:depth]
        ids, fused = rrf([dense[:depth], lexical], k=searcher.cfg.rrf_k, top=k)
        assert _ids(got) == [searcher.index.code_ids[i] for i in ids]
        np.testing.assert_allclose([h.score for h in got], fused)


def test_a_filter_that_leaves_fewer_than_k_returns_fewer(searcher):
    only = Filters(path=["python/tests/**"])
    for mode in ("dense", "hybrid"):
        hits = searcher.search("circle", k=10, retrieval=mode, filters=only)
        # the test function and its file's module unit (its import)
        assert sorted(h.symbol for h in hits) == ["test_circle_area", "test_shapes"]
    for nothing in (Filters(path=["nowhere/**"]), Filters(exclude=["**"])):
        assert searcher.search("circle", k=10, retrieval="hybrid", filters=nothing) == []


def test_the_first_stage_is_asked_deeper_until_k_allowed_units_pass(searcher, monkeypatch):
    """A filter whose units all rank in the lower half: the first search holds none of
    them, the next goes four times deeper, and the answer is still the full ranking's
    first k of them."""
    query, n = "area of a circle", len(searcher)
    full = searcher.search(query, n, "dense")
    best: dict[str, int] = {}  # file -> the rank of its best unit
    for rank, h in enumerate(full):
        best.setdefault(h.path, rank)
    low = sorted(path for path, rank in best.items() if rank >= n // 2)
    filters = Filters(path=["/" + path for path in low])  # exactly those files
    depths = []
    real = searcher.index.search

    def counted(embeddings, k, *args, **kwargs):
        depths.append(k)
        return real(embeddings, k, *args, **kwargs)

    monkeypatch.setattr(searcher.index, "search", counted)
    got = searcher.search(query, 2, "dense", filters)
    assert _ids(got) == _ids([h for h in full if h.path in low][:2])
    assert depths[0] <= n // 2 < depths[-1]  # the first list held none of them
    assert depths[1] == min(n, depths[0] * 4)


def test_open_never_rebuilds_a_stale_index(indexed, tmp_path, tiny_bert_dir):
    with pytest.raises(FileNotFoundError, match="no serve.yaml"):
        Searcher.open(tmp_path)
    other = tmp_path / "other_model"
    model = DualEncoder.from_pretrained(tiny_bert_dir)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)  # another retriever: its vectors differ
    model.save_pretrained(other)
    with pytest.raises(StaleIndexError, match="model_fingerprint"):
        Searcher.open(indexed, retriever=str(other))
    assert not (indexed / "embeddings").exists()  # nothing was embedded
