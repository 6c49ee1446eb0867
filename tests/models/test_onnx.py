"""ONNX Runtime backends: the export matches torch, is tied to its weights, loads by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from r2ps.models.backends import (
    INT8_FILE,
    ONNX_MANIFEST,
    OrtCrossEncoder,
    OrtDualEncoder,
    StaleExportError,
    check_backend,
    load_ranker,
    load_retriever,
    onnx_dir,
    read_export,
)
from r2ps.models.cross import CrossEncoder
from r2ps.models.dual import DualEncoder
from r2ps.models.onnx_export import ensure_export, export_onnx

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

LONG_CODE = "\n".join(f"x{i} = compute(x{i - 1})" for i in range(1, 400))
QUERIES = ["sort a list", "read a file", "parse json " * 80, "open a socket"]
CODES = ["def f(xs):\n    return sorted(xs)", "open(p).read()", LONG_CODE, "import socket"]


@pytest.fixture(scope="module")
def ranker_dir(tiny_bert_dir, tmp_path_factory):
    """A saved ranker whose head is not the fresh one (its last layer starts at zero)."""
    torch.manual_seed(1)
    model = CrossEncoder.from_pretrained(tiny_bert_dir)
    with torch.no_grad():
        for p in model.head.parameters():
            p.normal_(0, 0.5)
        model.head[3].weight.mul_(40)  # a random BERT's first-token states differ little
    out = tmp_path_factory.mktemp("ranker")
    model.save_pretrained(out)
    export_onnx(out)
    return out


@pytest.fixture(scope="module")
def retriever_dir(tiny_bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("retriever")
    DualEncoder.from_pretrained(tiny_bert_dir, max_code_len=300).save_pretrained(out)
    export_onnx(out)
    return out


def test_ranker_fp32_scores_match_torch(ranker_dir):
    ref = CrossEncoder.from_pretrained(ranker_dir).score_pairs(QUERIES, CODES)
    ort = OrtCrossEncoder(ranker_dir, "onnx", threads=1)
    got = ort.score_pairs(QUERIES, CODES)
    assert ref.std() > 0.05  # a head that tells pairs apart, so the check means something
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    # the same API as CrossEncoder: forward on a padded batch gives [B] scores
    batch = ort.tokenize(QUERIES[:2], CODES[:2])
    assert ort(**batch).shape == (2,)
    assert ort.max_len == 384 and ort.max_query_len == 128


def test_a_segments_ranker_exports_its_pooling(tiny_bert_dir, tmp_path):
    """The graph is `_score` itself: segment pooling (token types -> masks) goes with it."""
    torch.manual_seed(1)
    model = CrossEncoder.from_pretrained(tiny_bert_dir, pooling="segments")
    with torch.no_grad():
        model.head[3].weight.normal_(0, 1.0)
    model.save_pretrained(tmp_path)
    export_onnx(tmp_path, int8=False)
    ref = CrossEncoder.from_pretrained(tmp_path).score_pairs(QUERIES, CODES)
    got = OrtCrossEncoder(tmp_path, "onnx", threads=1).score_pairs(QUERIES, CODES)
    assert ref.std() > 0.05
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_ranker_int8_graph_is_quantised_and_close(ranker_dir):
    """Quality of int8 is measured by benchmarks/backend_quality.py on trained models; a
    random tiny BERT only shows the graph is int8 and its scores are the same scale."""
    graph = onnx.load(str(onnx_dir(ranker_dir) / INT8_FILE))
    ops = {node.op_type for node in graph.graph.node}
    assert ops & {"DynamicQuantizeMatMul", "MatMulInteger", "QAttention"}, ops
    ref = CrossEncoder.from_pretrained(ranker_dir).score_pairs(QUERIES, CODES)
    got = OrtCrossEncoder(ranker_dir, "onnx-int8", threads=1).score_pairs(QUERIES, CODES)
    np.testing.assert_allclose(got, ref, rtol=0.05)


def test_retriever_fp32_embeddings_match_torch(retriever_dir):
    torch_model = DualEncoder.from_pretrained(retriever_dir).eval()
    ort = OrtDualEncoder(retriever_dir, "onnx", threads=1)
    assert ort.max_code_len == 300 and ort.dim == torch_model.dim
    np.testing.assert_allclose(
        ort.embed_codes(CODES), torch_model.embed_codes(CODES), atol=1e-5, rtol=1e-4
    )
    np.testing.assert_allclose(
        ort.embed_queries(QUERIES), torch_model.embed_queries(QUERIES), atol=1e-5, rtol=1e-4
    )
    int8 = OrtDualEncoder(retriever_dir, "onnx-int8", threads=1).embed_codes(CODES)
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    assert np.einsum("ij,ij->i", int8, torch_model.embed_codes(CODES)).min() > 0.95


def test_int8_outputs_do_not_depend_on_the_batch(retriever_dir, ranker_dir):
    """int8 activations are quantised per call: each row runs alone, so a text embeds
    (a pair scores) the same alone, in any batch, in any order, and with any padding."""
    int8 = OrtDualEncoder(retriever_dir, "onnx-int8", threads=1)
    together = int8.embed_codes(CODES, batch_size=4)
    alone = np.concatenate([int8.embed_codes([c]) for c in CODES])
    reversed_ = int8.embed_codes(CODES[::-1], batch_size=3)[::-1]
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_array_equal(reversed_, alone)
    ranker = OrtCrossEncoder(ranker_dir, "onnx-int8", threads=1)
    scores = ranker.score_pairs(QUERIES, CODES, batch_size=4)
    pairs = zip(QUERIES, CODES, strict=True)
    single = np.concatenate([ranker.score_pairs([q], [c]) for q, c in pairs])
    np.testing.assert_array_equal(scores, single)


def test_a_folder_without_a_saved_ranker_runs_on_torch(tiny_bert_dir):
    """A plain encoder as ranker (the Serve app's untrained fallback) has a fresh head and
    no export of its own: an ONNX backend loads it on torch rather than failing."""
    loaded = load_ranker(tiny_bert_dir, "onnx-int8", threads=1)
    assert loaded.backend == "torch" and isinstance(loaded.model, CrossEncoder)


def test_manifest_ties_the_export_to_the_weights(ranker_dir):
    manifest = json.loads((onnx_dir(ranker_dir) / ONNX_MANIFEST).read_text())
    assert manifest["kind"] == "cross" and manifest["output"] == "scores"
    assert manifest["files"]["onnx-int8"] == INT8_FILE
    assert read_export(ranker_dir, "onnx")[0] == manifest


def test_a_stale_export_is_refused_and_ensure_export_remakes_it(tiny_bert_dir, tmp_path):
    model = DualEncoder.from_pretrained(tiny_bert_dir)
    model.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="jobs/export_onnx.py"):
        OrtDualEncoder(tmp_path)
    export_onnx(tmp_path, int8=False)
    with pytest.raises(StaleExportError, match="no onnx-int8 graph"):
        read_export(tmp_path, "onnx-int8")
    with torch.no_grad():  # "retrain": new weights in the same folder
        next(model.parameters()).add_(0.01)
    model.save_pretrained(tmp_path)
    with pytest.raises(StaleExportError, match="re-export"):
        OrtDualEncoder(tmp_path, "onnx")
    manifest = ensure_export(tmp_path, "onnx")
    assert read_export(tmp_path, "onnx")[0] == manifest


def test_a_retriever_export_is_not_a_ranker(retriever_dir):
    with pytest.raises(ValueError, match="'dual'"):
        OrtCrossEncoder(retriever_dir, "onnx")


def test_load_by_backend(ranker_dir, retriever_dir):
    loaded = load_ranker(ranker_dir, "torch", threads=1)
    assert isinstance(loaded.model, CrossEncoder) and loaded.info()["threads"] == 1
    loaded = load_ranker(ranker_dir, "onnx-int8", threads=1)
    assert isinstance(loaded.model, OrtCrossEncoder)
    assert loaded.info() == {"backend": "onnx-int8", "threads": 1, "onnx_fused": True}
    assert isinstance(load_retriever(retriever_dir, "onnx", 1).model, OrtDualEncoder)
    with pytest.raises(ValueError, match="torch, onnx, onnx-int8"):
        check_backend("tensorrt")


def test_a_loader_makes_a_missing_export(tiny_bert_dir, tmp_path):
    """A saved ranker or retriever with no export, named on an ONNX backend (a serve.yaml
    of the int8 default), is exported at its first load rather than failing the replica."""
    ranker = tmp_path / "ranker"
    CrossEncoder.from_pretrained(tiny_bert_dir).save_pretrained(ranker)
    from r2ps.models import loading

    with pytest.raises(FileNotFoundError, match="no ONNX export"):
        load_ranker(ranker, "onnx-int8", threads=1)  # the constructor alone: no export
    loaded = loading.load_ranker(ranker, "onnx-int8", threads=1)
    assert loaded.backend == "onnx-int8" and read_export(ranker, "onnx-int8")
    retriever = tmp_path / "retriever"
    DualEncoder.from_pretrained(tiny_bert_dir).save_pretrained(retriever)
    assert loading.load_query_encoder(retriever, "onnx", threads=1).backend == "onnx"
