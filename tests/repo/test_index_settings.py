"""The index job's encoder settings (issue 31): the backend (torch, ONNX Runtime fp32 or
int8) and the code length. The vectors are what that encoder gives; the job records both,
re-embeds when either changes, and the search core loads the index as it was made."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from r2ps.mining.index import CodeIndex
from r2ps.models.backends import load_retriever
from r2ps.models.dual import embed_texts
from r2ps.repo.config import RepoIndexConfig
from r2ps.repo.indexer import index_repo
from r2ps.repo.units import CODES
from r2ps.search.searcher import SERVE_FILE


def _cfg(src, out, model, **kw) -> RepoIndexConfig:
    return RepoIndexConfig(source=str(src), out=str(out), model=str(model), **kw)


def _index_vectors(out) -> tuple[list[str], np.ndarray]:
    index = CodeIndex.load(out / "index")
    return index.code_ids, index._cpu.reconstruct_n(0, len(index))


@pytest.fixture
def model(tiny_bert_dir, tmp_path):
    """A copy of the tiny BERT: the ONNX export is written beside the model."""
    copy = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, copy)
    return copy


def test_int8_short_codes_are_the_int8_encoders_and_reembedded_on_change(
    source_repo, model, tmp_path
):
    out = tmp_path / "out"
    first = index_repo(_cfg(source_repo, out, model, backend="onnx-int8", max_code_len=16))
    assert (model / "onnx" / "manifest.json").exists()  # exported at the first run
    codes = first["run"]["codes"]
    assert (codes["backend"], codes["max_code_len"], codes["in_process"]) == ("onnx-int8", 16, True)
    units = pq.read_table(out / CODES)
    ids, got = _index_vectors(out)
    assert ids == units["code_id"].to_pylist()
    int8 = load_retriever(model, "onnx-int8", threads=1).model
    want = embed_texts(int8, int8.tokenizer, units["code"].to_pylist(), 16)
    np.testing.assert_allclose(got, want, atol=1e-6)  # int8 rows run alone: any batch
    manifest = json.loads((out / "index" / "manifest.json").read_text())
    assert (manifest["backend"], manifest["max_code_len"]) == ("onnx-int8", 16)
    assert set(first["seconds"]) == {"walk", "extract", "embed", "index", "write", "total"}

    # the same settings again: nothing embedded; another backend or length: every code
    again = index_repo(_cfg(source_repo, out, model, backend="onnx-int8", max_code_len=16))
    assert again["run"]["codes"]["embedded"] == 0
    unique = first["run"]["codes"]["unique"]
    torch_run = index_repo(_cfg(source_repo, out, model, backend="torch", max_code_len=16))
    assert torch_run["run"]["codes"]["embedded"] == unique
    _, torch_vectors = _index_vectors(out)
    assert np.abs(torch_vectors - got).max() > 1e-3  # int8 vectors are not torch's
    longer = index_repo(_cfg(source_repo, out, model, backend="torch", max_code_len=64))
    assert longer["run"]["codes"]["embedded"] == unique


def test_the_search_core_loads_an_index_as_it_was_embedded(source_repo, model, tmp_path):
    """Serve's loader (which rebuilds what is stale) and `r2ps search`'s (which refuses
    it) both take an int8, 16-token index as it is: the codes' settings are the index's."""
    from r2ps.search.searcher import Searcher
    from r2ps.serving.settings import ServeConfig

    out = tmp_path / "out"
    index_repo(_cfg(source_repo, out, model, backend="onnx-int8", max_code_len=16))
    ids, vectors = _index_vectors(out)
    serve_cfg = ServeConfig.from_mapping(yaml.safe_load((out / SERVE_FILE).read_text()))
    served = Searcher.from_config(serve_cfg, build_index=True)
    assert not (out / "embeddings").exists()  # nothing re-embedded
    assert served.index.code_ids == ids
    opened = Searcher.open(out)
    query = pq.read_table(out / CODES)["code"][0].as_py()
    assert opened.search(query, k=3)[0].code_id == served.search(query, k=3)[0].code_id
    np.testing.assert_allclose(opened.index._cpu.reconstruct_n(0, len(ids)), vectors)
    # queries are encoded on the codes' own backend (serve.yaml names it)
    assert served.loaded.backend == opened.loaded.backend == "onnx-int8"


def test_bad_encoder_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="backend: expected one of torch, onnx, onnx-int8"):
        RepoIndexConfig(backend="int4")
    with pytest.raises(ValueError, match="max_code_len: must be >= 0"):
        RepoIndexConfig(max_code_len=-1)
    with pytest.raises(ValueError, match="threads: must be >= 0"):
        RepoIndexConfig(threads=-2)


@pytest.mark.ray
def test_the_actor_pool_embeds_as_the_process_does(ray_local, source_repo, model, tmp_path):
    """int8 and a short code length over Ray's actor pool (local_below=0) give the
    vectors the in-process path gives."""
    settings = {"backend": "onnx-int8", "max_code_len": 16}
    ray_run = index_repo(_cfg(source_repo, tmp_path / "ray", model, local_below=0, **settings))
    assert ray_run["run"]["codes"]["in_process"] is False
    index_repo(_cfg(source_repo, tmp_path / "here", model, **settings))
    ids_r, vec_r = _index_vectors(tmp_path / "ray")
    ids_h, vec_h = _index_vectors(tmp_path / "here")
    assert ids_r == ids_h
    np.testing.assert_allclose(vec_r, vec_h, atol=1e-6)


def test_a_trained_ranker_is_exported_for_the_backend_serve_yaml_names(
    source_repo, model, tiny_bert_dir, tmp_path
):
    """With `--ranker` and the int8 default, the index job makes the ranker's export, so
    the Serve app's ranker loads on the backend serve.yaml names rather than failing."""
    import torch

    from r2ps.models.backends import load_ranker
    from r2ps.models.cross import CrossEncoder

    ranker = tmp_path / "ranker"
    torch.manual_seed(1)
    CrossEncoder.from_pretrained(tiny_bert_dir).save_pretrained(ranker)
    out = tmp_path / "out"
    index_repo(_cfg(source_repo, out, model, ranker=str(ranker), max_code_len=16))
    served = yaml.safe_load((out / SERVE_FILE).read_text())
    assert served["backend"] == "onnx-int8" and served["ranker"] == str(ranker.resolve())
    assert load_ranker(served["ranker"], served["backend"], threads=1).backend == "onnx-int8"
