"""The torch-free query encoder (r2ps.models.light): the same token ids and the same
vectors as the ONNX Runtime modules of r2ps.models.backends, without importing torch."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from r2ps.models.backends import OrtDualEncoder, load_retriever
from r2ps.models.dual import DualEncoder
from r2ps.models.encoder import load_tokenizer
from r2ps.models.light import (
    DEFAULT_MAX_CODE_LEN,
    DEFAULT_MAX_QUERY_LEN,
    OrtRetriever,
    model_fingerprint,
)
from r2ps.models.loading import load_query_encoder
from r2ps.models.onnx_export import export_onnx

pytest.importorskip("onnxruntime")

LONG = "\n".join(f"x{i} = compute(x{i - 1})" for i in range(1, 400))
TEXTS = [
    "sort a list",
    "",
    "   ",
    "parse json " * 80,  # past max_query_len: truncated
    "größe 数据 ÉCOLE naïve café Straße ﬁle 🙂",
    "readJSONFile(path) -> HTTPServer_v2",
    "open a\tsocket\nand\u00a0send\u200bbytes",
    LONG,
    "def f(xs):\n    return sorted(xs)",
]
# enough rows of enough tokens that fp32's batches are cut by the CPU token budget
MANY = [f"query {i} " + "word " * (i % 37) for i in range(150)]


@pytest.fixture(scope="module")
def retriever_dir(tiny_bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("light_retriever")
    model = DualEncoder.from_pretrained(tiny_bert_dir, max_query_len=48, max_code_len=300)
    model.save_pretrained(out)
    export_onnx(out)
    return out


def test_token_ids_are_transformers_own(retriever_dir):
    light = OrtRetriever(retriever_dir, "onnx", threads=1)
    hf = load_tokenizer(retriever_dir)
    for max_len in (48, 300, 7):
        want = hf(TEXTS + MANY, truncation=True, max_length=max_len)["input_ids"]
        got = [e.ids for e in light._tokenizer(max_len).encode_batch(TEXTS + MANY)]
        assert got == want, max_len
    assert light.pad_id == hf.pad_token_id


@pytest.mark.parametrize("backend", ["onnx-int8", "onnx"])
def test_vectors_are_the_backends_own(retriever_dir, backend):
    """Bit for bit: the same ids through the same graph in a session with the same
    options, int8 rows alone, fp32 rows in the same length-sorted, budget-cut batches."""
    ref = OrtDualEncoder(retriever_dir, backend, threads=1)
    light = OrtRetriever(retriever_dir, backend, threads=1)
    assert (light.max_query_len, light.max_code_len, light.dim) == (48, 300, ref.dim)
    for texts in (TEXTS, MANY, TEXTS[:1]):
        np.testing.assert_array_equal(light.embed_queries(texts), ref.embed_queries(texts))
    np.testing.assert_array_equal(light.embed_codes(TEXTS), ref.embed_codes(TEXTS))
    small = MANY[:40]
    np.testing.assert_array_equal(
        light.embed_queries(small, batch_size=16), ref.embed_queries(small, batch_size=16)
    )
    assert light.embed_queries([]).shape == (0, ref.dim)


def test_int8_rows_on_several_threads_are_the_rows_alone(retriever_dir):
    two = OrtRetriever(retriever_dir, "onnx-int8", threads=2).embed_queries(TEXTS)
    alone = np.concatenate(
        [OrtRetriever(retriever_dir, "onnx-int8", threads=1).embed_queries([t]) for t in TEXTS]
    )
    np.testing.assert_array_equal(two, alone)


def test_defaults_are_the_dual_encoders(tiny_bert_dir, tmp_path):
    """A model folder whose r2ps.json names no lengths gets DualEncoder's defaults."""
    params = inspect.signature(DualEncoder.__init__).parameters
    assert params["max_query_len"].default == DEFAULT_MAX_QUERY_LEN
    assert params["max_code_len"].default == DEFAULT_MAX_CODE_LEN
    DualEncoder.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "r2ps.json").read_text())
    for name in ("max_query_len", "max_code_len"):
        meta.pop(name)
    (tmp_path / "r2ps.json").write_text(json.dumps(meta))
    export_onnx(tmp_path, int8=False)
    light = OrtRetriever(tmp_path, "onnx")
    ref = OrtDualEncoder(tmp_path, "onnx")
    assert (light.max_query_len, light.max_code_len) == (ref.max_query_len, ref.max_code_len)


def test_load_query_encoder_keeps_torch_where_it_is_asked_for(retriever_dir):
    loaded = load_query_encoder(retriever_dir, "onnx-int8", threads=1)
    assert isinstance(loaded.model, OrtRetriever)
    assert loaded.info() == {"backend": "onnx-int8", "threads": 1, "onnx_fused": True}
    assert (
        load_query_encoder(retriever_dir, "onnx", 1).info()
        == load_retriever(retriever_dir, "onnx", 1).info()
    )
    assert isinstance(load_query_encoder(retriever_dir, "torch", 1).model, DualEncoder)


def test_the_fingerprint_follows_a_rewrite(retriever_dir, tmp_path):
    """Memoised per process, yet a model saved again is hashed again."""
    first = model_fingerprint(str(retriever_dir))
    assert model_fingerprint(str(retriever_dir)) == first
    (tmp_path / "model.safetensors").write_bytes(b"a" * 64)
    (tmp_path / "config.json").write_text("{}")
    before = model_fingerprint(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"b" * 64)  # same size, same instant
    assert model_fingerprint(str(tmp_path)) != before
    old = 1_000_000_000  # written long ago: now memoised, until it changes again
    for name in ("model.safetensors", "config.json"):
        os.utime(tmp_path / name, (old, old))
    aged = model_fingerprint(str(tmp_path))
    assert model_fingerprint(str(tmp_path)) == aged
    (tmp_path / "model.safetensors").write_bytes(b"c" * 64)
    assert model_fingerprint(str(tmp_path)) not in (aged, before)


def test_it_runs_without_torch_or_transformers(retriever_dir):
    code = (
        "import sys\n"
        "from r2ps.models.loading import load_query_encoder\n"
        f"model = load_query_encoder({str(retriever_dir)!r}, 'onnx-int8', 1).model\n"
        "print(model.embed_queries(['read a file']).shape)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'ray') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[:2] == [f"(1, {OrtDualEncoder(retriever_dir).dim})", "[]"]
