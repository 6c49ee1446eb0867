"""The Retriever deployment's own class, run in this process (no Ray, no Serve) on an
index jobs/index.py wrote: locations on every hit, dense and hybrid first stages.
tests/repo/test_search_page.py checks the same through the served app."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml
from conftest import serve_deployments

from r2ps.mining.index import CodeIndex
from r2ps.models.dual import DualEncoder
from r2ps.repo.indexer import CODES, RepoIndexConfig, index_repo
from r2ps.search.bm25 import BM25
from r2ps.search.fusion import rrf
from r2ps.serving.settings import ServeConfig

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `serve.app` lives at the repository root
    sys.path.insert(0, str(REPO))


def test_retriever_dense_and_hybrid_with_locations(source_repo, tiny_bert_dir, tmp_path):
    out = tmp_path / "index"
    index_repo(RepoIndexConfig(source=str(source_repo), out=str(out), model=str(tiny_bert_dir)))
    settings = yaml.safe_load((out / "serve.yaml").read_text())
    Retriever = serve_deployments().Retriever
    retriever = Retriever.func_or_class(ServeConfig.from_mapping(settings))  # the plain class
    codes = {c["code_id"]: c for c in pq.read_table(out / CODES).to_pylist()}
    target = next(c for c in codes.values() if c["symbol"] == "Geo.Circle.area")

    dense, hybrid = retriever._search([(target["code"], 4, "dense"), ("circle area", 6, "hybrid")])
    assert dense["retrieval"] == "dense" and dense["code_ids"][0] == target["code_id"]
    assert dense["locations"][0] == {
        k: target[k] for k in ("path", "start_line", "end_line", "symbol")
    }
    for cid, loc in zip(hybrid["code_ids"], hybrid["locations"], strict=True):
        assert loc["path"] == codes[cid]["path"] and loc["symbol"] == codes[cid]["symbol"]

    index = CodeIndex.load(out / "index")
    n = len(index)
    model = DualEncoder.from_pretrained(tiny_bert_dir)
    _, dense_ids = index.search(model.embed_queries(["circle area"]), n)
    lexical, scores = BM25([codes[i]["code"] for i in index.code_ids]).top_k("circle area", n)
    ids, fused = rrf([dense_ids[0], lexical[scores > 0]], k=60, top=6)
    assert hybrid["retrieval"] == "hybrid"
    assert hybrid["code_ids"] == [index.code_ids[i] for i in ids]
    np.testing.assert_allclose(hybrid["scores"], fused)
