"""`retrieval: repo` in the search core (r2ps.search.searcher) on an index jobs/index.py
wrote: the candidates (dense list, BM25's, the definitions a query names), the blend and
the repository signals computed again here from the saved index and the same model; the
off switch; filters; a corpus without paths refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import make_source_repo

from r2ps.mining.index import CodeIndex
from r2ps.models.backends import load_retriever
from r2ps.ranking import tie_order, top_k_of_scores
from r2ps.repo.config import RepoIndexConfig
from r2ps.repo.indexer import index_repo
from r2ps.repo.units import CODES
from r2ps.search.bm25 import BM25
from r2ps.search.filters import Filters
from r2ps.search.fusion import blend, union
from r2ps.search.searcher import Searcher, first_stage
from r2ps.search.signals import RankingSignals, SymbolTable, apply_signals, symbol_name
from r2ps.search.store import CodeStore

TESTS = {  # test files, which the signals demote unless a query asks for tests
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
QUERIES = ["area of a circle", "Circle", "tests of the circle area", "how is the shape drawn"]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_bert_dir) -> Path:
    root = tmp_path_factory.mktemp("repo_retrieval")
    src = make_source_repo(root / "repo")
    for path, text in TESTS.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_text(text)
    out = root / "index"
    index_repo(RepoIndexConfig(source=str(src), out=str(out), model=str(tiny_bert_dir)))
    return out


@pytest.fixture(scope="module")
def searcher(indexed) -> Searcher:
    return Searcher.open(indexed, retrieval="repo")


def expected(indexed: Path, model_dir: Path, query: str, k: int, signals: RankingSignals):
    """(code ids, scores) of `retrieval: repo`, computed here: depth 100, alpha 0.5."""
    index = CodeIndex.load(indexed / "index")
    units = {c["code_id"]: c for c in pq.read_table(indexed / CODES).to_pylist()}
    rows = [units[i] for i in index.code_ids]
    n = len(rows)
    # the query encoder the index was made for (the index job's default backend)
    encoder = load_retriever(model_dir, RepoIndexConfig().backend, threads=1).model
    query_vector = encoder.embed_queries([query])
    scores, positions = index.search(query_vector, n)
    dense = np.empty(n)
    dense[positions[0]] = scores[0]  # every unit's cosine
    lexical = BM25([f"{r['path']} {r['symbol']} {r['code']}" for r in rows]).scores(query)
    lex_top, lex_positions = top_k_of_scores(lexical[None], 100)
    lists = [positions[0][:100], lex_positions[0][lex_top[0] > 0]]
    if signals.enabled:
        lists.append(SymbolTable([r["symbol"] for r in rows]).definitions(query))
    candidates = union(lists)
    fused = blend(dense[candidates], lexical[candidates], 0.5)
    final = apply_signals(
        fused,
        [rows[i]["path"] for i in candidates],
        [rows[i]["symbol"] for i in candidates],
        query,
        signals,
    )
    top = tie_order(final)[:k]
    return [index.code_ids[i] for i in candidates[top]], final[top]


@pytest.mark.parametrize("query", QUERIES)
def test_repo_retrieval_is_the_blend_ranked_by_the_signals(searcher, indexed, tiny_bert_dir, query):
    hits = searcher.search(query, k=8)
    ids, scores = expected(indexed, tiny_bert_dir, query, 8, RankingSignals())
    assert [h.code_id for h in hits] == ids
    np.testing.assert_allclose([h.score for h in hits], scores, rtol=1e-5, atol=1e-6)
    assert all(h.path and h.start_line for h in hits)


def test_the_off_switch_gives_the_blends_order(indexed, tiny_bert_dir):
    off = Searcher.open(indexed, retrieval="repo", signals={"enabled": False})
    on = Searcher.open(indexed, retrieval="repo")
    query = "Circle"
    hits = off.search(query, k=8)
    ids, scores = expected(indexed, tiny_bert_dir, query, 8, RankingSignals.off())
    assert [h.code_id for h in hits] == ids
    assert all(0.0 <= h.score <= 1.0 for h in hits)  # the blend alone
    np.testing.assert_allclose([h.score for h in hits], scores, rtol=1e-5, atol=1e-6)
    assert [h.code_id for h in on.search(query, k=8)] != ids


def test_a_symbol_query_finds_its_definition_first_and_tests_come_later(searcher):
    (top, *rest) = searcher.search("Circle", k=10)
    assert symbol_name(top.symbol) == "Circle"
    # k: every unit of the fixture tree (its files' module units included)
    tests = [h for h in searcher.search("area of a circle", k=200) if "test" in h.path]
    asked = [h for h in searcher.search("tests of the circle area", k=200) if "test" in h.path]
    assert tests and asked  # both test units are candidates of both queries
    assert max(h.score for h in tests) < max(h.score for h in asked)


@pytest.mark.parametrize(
    "filters",
    [Filters(language=["go"]), Filters(exclude=["**/*_test.go", "tests/"]), Filters(path=["*.rb"])],
    ids=lambda f: str(f.to_dict()),
)
def test_repo_retrieval_answers_only_what_filters_allow(searcher, filters):
    for query in QUERIES:
        hits = searcher.search(query, k=5, filters=filters)
        paths = [h.path for h in hits]
        languages = [h.language for h in hits]
        assert hits and filters.mask(paths, languages).all()


def test_the_first_stage_is_reported(searcher):
    info = searcher.info()
    assert info["retrieval"] == "repo" and info["blend_alpha"] == 0.5
    assert info["signals"] == dataclasses.asdict(RankingSignals())
    assert first_stage(dataclasses.replace(searcher.cfg, retrieval="dense")) == {
        "retrieval": "dense"
    }


def test_a_store_without_paths_refuses_repo_retrieval(searcher):
    corpus = CodeStore(rows=searcher.store.rows, path="corpus/codes.parquet")  # no locations
    dense = dataclasses.replace(searcher.cfg, retrieval="dense")
    plain = Searcher(searcher.loaded, searcher.index, corpus, dense, searcher.model_dir)
    assert plain.search("area", k=3)  # dense and hybrid need no paths
    # a corpus's BM25 documents are its code alone, as before the repository signals
    code = BM25([searcher.store.rows[c][0] for c in searcher.index.code_ids])
    np.testing.assert_array_equal(plain.lexical().scores("circle area"), code.scores("circle area"))
    assert plain.search("area", k=3, retrieval="hybrid")
    with pytest.raises(ValueError, match="corpus/codes.parquet has none"):
        plain.search("area", k=3, retrieval="repo")
    with pytest.raises(ValueError, match="retrieval 'repo'"):
        Searcher(searcher.loaded, searcher.index, corpus, searcher.cfg, searcher.model_dir)
