"""A BM25 index saved beside what it indexes (r2ps.search.bm25.cached): loaded only for the
documents it was built from, scoring exactly as a fresh build, rebuilt when it cannot be."""

from __future__ import annotations

import numpy as np

from r2ps.search import bm25
from r2ps.search.bm25 import BM25, cached, documents_key

DOCS = [
    "python/pkg/shapes.py Circle.area def area(self): return math.pi * self.r ** 2",
    "go/shapes/shapes.go Circle.Area func (c Circle) Area() float64 { return c.R }",
    "lib/json.js readJSONFile function readJSONFile(path) { return JSON.parse(read(path)) }",
    "größe 数据 HTTPServer parse2D",
    "",
    "tests/test_shapes.py test_circle_area def test_circle_area(): assert area(1) > 3",
]
QUERIES = ["circle area", "read a json file", "größe", "http server", "nothing matches zzz", ""]


def _same(a: BM25, b: BM25) -> None:
    assert (a.n_docs, a.k1, a.b, dict(a._df)) == (b.n_docs, b.k1, b.b, dict(b._df))
    for q in QUERIES:
        np.testing.assert_array_equal(a.scores(q), b.scores(q))
        for got, want in zip(a.top_k(q, 4), b.top_k(q, 4), strict=True):
            np.testing.assert_array_equal(got, want)
        among = np.array([0, 2, 3])
        for got, want in zip(a.top_k(q, 2, among), b.top_k(q, 2, among), strict=True):
            np.testing.assert_array_equal(got, want)
    assert a.idf("circle") == b.idf("circle")


def test_a_saved_index_loads_and_scores_as_a_fresh_build(tmp_path, monkeypatch):
    built = cached(DOCS, tmp_path / "bm25")
    assert (tmp_path / "bm25" / "r2ps_bm25.json").is_file()
    _same(built, BM25(DOCS))

    def no_build(*args, **kwargs):
        raise AssertionError("built again")

    monkeypatch.setattr(bm25, "BM25", type("NoBuild", (BM25,), {"__init__": no_build}))
    loaded = cached(DOCS, tmp_path / "bm25")  # BM25.load, no build
    _same(loaded, built)


def test_other_documents_or_settings_are_built_anew(tmp_path):
    cached(DOCS, tmp_path / "bm25")
    changed = [*DOCS[:-1], DOCS[-1] + " more"]
    assert documents_key(changed) != documents_key(DOCS)
    assert documents_key(DOCS, k1=1.5) != documents_key(DOCS)
    assert documents_key([*DOCS[:2], DOCS[2] + DOCS[3], ""]) != documents_key(DOCS)
    assert BM25.load(tmp_path / "bm25", documents_key(changed)) is None
    _same(cached(changed, tmp_path / "bm25"), BM25(changed))
    assert BM25.load(tmp_path / "bm25", documents_key(changed)) is not None  # replaced
    _same(cached(DOCS, tmp_path / "bm25", k1=1.5), BM25(DOCS, k1=1.5))


def test_a_damaged_or_unwritable_folder_costs_a_build_not_an_answer(tmp_path, caplog):
    cached(DOCS, tmp_path / "bm25")
    (tmp_path / "bm25" / "data.csc.index.npy").write_bytes(b"not numpy")
    _same(cached(DOCS, tmp_path / "bm25"), BM25(DOCS))
    assert "rebuilding it" in caplog.text
    assert BM25.load(tmp_path / "bm25", documents_key(DOCS)) is not None  # saved again

    (tmp_path / "file").write_text("a file, not a folder")
    _same(cached(DOCS, tmp_path / "file" / "bm25"), BM25(DOCS))
    _same(cached(DOCS, None), BM25(DOCS))


def test_an_empty_index_round_trips(tmp_path):
    cached([], tmp_path / "bm25")
    loaded = BM25.load(tmp_path / "bm25", documents_key([]))
    assert loaded is not None and loaded.n_docs == 0
    assert loaded.scores("circle").tolist() == []
