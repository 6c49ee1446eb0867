"""The retriever: unit-norm embeddings, order-preserving batch embedding, HF-format checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import RERUN_TOL
from transformers import AutoModel

from r2ps.models.cross import CrossEncoder
from r2ps.models.dual import DualEncoder, embed_texts, tokenize
from r2ps.models.encoder import default_model_path

TEXTS = [
    "sort a list in place",
    "def add(a, b):\n    return a + b",
    "read a json file and return the parsed dictionary of settings",
    "x",
]


@pytest.fixture
def dual(tiny_bert_dir) -> DualEncoder:
    return DualEncoder.from_pretrained(tiny_bert_dir)


def test_plain_hf_dir_loads_with_defaults(dual):
    assert dual.temperature == 0.05
    assert (dual.max_query_len, dual.max_code_len) == (128, 256)
    assert dual.dim == 32


def test_embeddings_are_unit_norm(dual):
    q, c = dual(tokenize(dual.tokenizer, TEXTS[:2], 16), tokenize(dual.tokenizer, TEXTS[2:], 16))
    assert q.shape == (2, 32) and c.shape == (2, 32)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(c.norm(dim=-1), torch.ones(2))


def test_embed_texts_keeps_input_order_and_ignores_batching(dual):
    dual.train()
    batched = embed_texts(dual, dual.tokenizer, TEXTS, max_len=32, batch_size=3)
    assert dual.training, "embed_texts must restore the training mode"
    assert batched.dtype == np.float32 and batched.shape == (4, 32)
    dual.eval()
    with torch.no_grad():
        for i, text in enumerate(TEXTS):
            one = dual.encode(**tokenize(dual.tokenizer, [text], 32)).numpy()[0]
            np.testing.assert_allclose(batched[i], one, atol=1e-5)
    assert embed_texts(dual, dual.tokenizer, [], 32).shape == (0, 32)


def test_save_load_round_trip(dual, tmp_path):
    dual = DualEncoder(dual.encoder, dual.tokenizer, temperature=0.025, max_code_len=200)
    before = dual.embed_codes(TEXTS)
    dual.save_pretrained(tmp_path)

    meta = json.loads((tmp_path / "r2ps.json").read_text())
    assert meta == {
        "kind": "dual",
        "pooling": "mean",
        "normalize": True,
        "temperature": 0.025,
        "max_query_len": 128,
        "max_code_len": 200,
    }
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pkl"))

    loaded = DualEncoder.from_pretrained(tmp_path)
    assert (loaded.temperature, loaded.max_code_len) == (0.025, 200)
    np.testing.assert_allclose(loaded.embed_codes(TEXTS), before, **RERUN_TOL)
    assert DualEncoder.from_pretrained(tmp_path, temperature=0.1).temperature == 0.1

    plain = AutoModel.from_pretrained(tmp_path)
    sd = loaded.encoder.state_dict()
    for name, value in plain.state_dict().items():
        if name in sd:
            torch.testing.assert_close(value, sd[name])


def test_refuses_a_ranker_checkpoint(tiny_bert_dir, tmp_path):
    CrossEncoder.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="cross"):
        DualEncoder.from_pretrained(tmp_path)


def test_rejects_bad_temperature(dual):
    with pytest.raises(ValueError):
        DualEncoder(dual.encoder, dual.tokenizer, temperature=0.0)


@pytest.mark.slow
def test_minilm_embeds_a_query_closer_to_its_code(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = DualEncoder.from_pretrained(default_model_path())
    q = model.embed_queries(["read a json file into a dictionary"])
    c = model.embed_codes(
        [
            "def load_json(path):\n    with open(path) as f:\n        return json.load(f)",
            "def draw_circle(canvas, x, y, r):\n    canvas.create_oval(x - r, y - r, x + r, y + r)",
        ]
    )
    scores = q @ c.T
    assert scores[0, 0] > scores[0, 1]


def test_loads_in_train_mode_and_embedding_restores_it(dual):
    """HF's from_pretrained leaves the encoder in eval mode; the whole model must agree with
    nn.Module's default (train), or a training loop runs without dropout until the first
    validation and a resumed run without it at all."""
    assert all(m.training for m in dual.modules())
    first = dual.embed_codes(TEXTS)
    assert all(m.training for m in dual.modules())
    # eval mode inside: no dropout
    np.testing.assert_allclose(first, dual.embed_codes(TEXTS), **RERUN_TOL)


def test_a_model_that_outputs_nan_is_refused_naming_the_texts(dual):
    # A diverged or overflowing checkpoint: its NaN vectors must not reach an index.
    with torch.no_grad():
        dual.encoder.embeddings.word_embeddings.weight[:] = float("nan")
    with pytest.raises(ValueError, match=r"embeddings: 4 of 4 rows .* e.g. \['sort a list"):
        embed_texts(dual, dual.tokenizer, TEXTS, 16)
    with pytest.raises(ValueError, match="NaN or inf"):
        dual.embed_queries(TEXTS[:1])
