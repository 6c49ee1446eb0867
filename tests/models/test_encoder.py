"""Encoder loading, mean pooling and the batching helpers the models share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertModel, DistilBertConfig, DistilBertModel

from r2ps.models.encoder import (
    CPU_MAX_TOKENS,
    batches_by_length,
    by_length,
    cpu_token_budget,
    default_model_path,
    load_encoder,
    mean_pool,
    pad_batch,
    read_meta,
    write_meta,
)


def test_default_model_path_is_a_local_hf_dir():
    path = Path(default_model_path())
    assert (path / "config.json").exists()
    assert (path / "tokenizer.json").exists() or (path / "vocab.txt").exists()


def test_load_encoder_drops_the_pooler(tiny_bert_dir):
    model, tokenizer = load_encoder(tiny_bert_dir)
    assert isinstance(model, BertModel)
    assert model.pooler is None
    assert next(model.parameters()).dtype == torch.float32
    assert len(tokenizer) == model.config.vocab_size


def test_load_encoder_accepts_models_without_a_pooler(tmp_path, tiny_bert_dir):
    """DistilBERT rejects `add_pooling_layer`: it must not be passed."""
    config = DistilBertConfig(vocab_size=100, dim=16, n_layers=1, n_heads=2, hidden_dim=32)
    DistilBertModel(config).save_pretrained(tmp_path)
    _, tokenizer = load_encoder(tiny_bert_dir)
    tokenizer.save_pretrained(tmp_path)
    model, _ = load_encoder(tmp_path)
    assert isinstance(model, DistilBertModel)


def test_mean_pool_ignores_padding():
    torch.manual_seed(0)
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    pooled = mean_pool(hidden, mask)
    torch.testing.assert_close(pooled[0], hidden[0, :2].mean(0))
    torch.testing.assert_close(pooled[1], hidden[1].mean(0))
    # Changing the padded positions changes nothing.
    hidden2 = hidden.clone()
    hidden2[0, 2:] = 100.0
    torch.testing.assert_close(mean_pool(hidden2, mask), pooled)


def test_mean_pool_is_float32_for_half_inputs():
    hidden = torch.ones(1, 3, 2, dtype=torch.bfloat16)
    assert mean_pool(hidden, torch.ones(1, 3)).dtype == torch.float32


def test_batches_by_length_cover_every_index_longest_first():
    lengths = [3, 9, 1, 7, 5]
    batches = batches_by_length(lengths, 2)
    assert sorted(np.concatenate(batches).tolist()) == list(range(5))
    assert [lengths[i] for i in batches[0]] == [9, 7]
    assert [len(b) for b in batches] == [2, 2, 1]
    with pytest.raises(ValueError):
        batches_by_length(lengths, 0)


def test_a_token_budget_splits_batches_by_padded_size():
    lengths = [100, 300, 40, 200, 50, 500]
    batches = batches_by_length(lengths, batch_size=64, max_tokens=400)
    # rows x the batch's longest <= 400, except a lone row longer than the budget
    assert [[lengths[i] for i in b] for b in batches] == [[500], [300], [200, 100], [50, 40]]
    assert [len(b) for b in batches_by_length(lengths, 3, max_tokens=10_000)] == [3, 3]
    assert len(batches_by_length(lengths, 64)) == 1  # no budget: batch_size alone
    assert [len(b) for b in batches_by_length([0, 0, 0], 2, max_tokens=1)] == [1, 1, 1]
    with pytest.raises(ValueError, match="max_tokens"):
        batches_by_length(lengths, 2, max_tokens=-1)


def test_cpu_token_budget_is_for_cpus_only():
    assert cpu_token_budget(torch.device("cpu")) == CPU_MAX_TOKENS > 0
    assert cpu_token_budget(torch.device("cuda")) == 0


def test_by_length_gives_the_one_call_result_and_gradients(monkeypatch):
    """Slices by length, each cut to its longest row, back in input order; gradients too."""
    torch.manual_seed(0)
    weight = torch.randn(50, 4, requires_grad=True)
    calls = []

    def fn(ids, mask, types):  # a per-row function that sees only its row's tokens
        calls.append(tuple(ids.shape))
        emb = weight[ids] * mask.unsqueeze(-1) + (0 if types is None else types.unsqueeze(-1))
        return emb.sum(1)

    rows = [[1, 2, 3, 4, 5, 6], [7], [8, 9, 10], [11, 12], [13, 14, 15, 16]]
    batch = pad_batch(rows, pad_id=0, type_ids=[[1] * len(r) for r in rows])
    args = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    monkeypatch.setattr("r2ps.models.encoder.CPU_MAX_TOKENS", 0)
    whole = fn(*args)
    (grad_whole,) = torch.autograd.grad(whole.square().sum(), weight)
    monkeypatch.setattr("r2ps.models.encoder.CPU_MAX_TOKENS", 8)
    calls.clear()
    sliced = by_length(fn, *args)
    (grad_sliced,) = torch.autograd.grad(sliced.square().sum(), weight)
    torch.testing.assert_close(sliced, whole)
    torch.testing.assert_close(grad_sliced, grad_whole)
    assert calls == [(1, 6), (2, 4), (2, 2)]  # rows x longest <= 8, except a lone long row
    left = [t.flip(1) for t in args]  # left padding: not sliced, one call
    calls.clear()
    torch.testing.assert_close(by_length(fn, *left), fn(*left))
    assert calls == [(5, 6), (5, 6)]


def test_pad_batch():
    out = pad_batch([[5, 6, 7], [8]], pad_id=0, type_ids=[[0, 0, 1], [0]])
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0]]


def test_meta_round_trip(tmp_path):
    assert read_meta(tmp_path) is None
    write_meta(tmp_path, {"kind": "dual", "temperature": 0.05})
    assert read_meta(tmp_path) == {"kind": "dual", "temperature": 0.05}


def test_interpolate_encoders_is_wise_ft(tiny_bert_dir, tmp_path):
    """(1 - w) * start + w * trained, tensor by tensor: w = 1 is the trained model, 0 the start."""
    from r2ps.models.encoder import interpolate_encoders, load_encoder

    trained, tok = load_encoder(tiny_bert_dir)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    trained.save_pretrained(tmp_path / "trained")
    tok.save_pretrained(tmp_path / "trained")
    start = load_encoder(tiny_bert_dir)[0].state_dict()
    for w in (0.0, 0.25, 1.0):
        interpolate_encoders(tiny_bert_dir, tmp_path / "trained", w, tmp_path / f"w{w}")
        mixed = load_encoder(tmp_path / f"w{w}")[0].state_dict()
        for k, v in start.items():
            if v.is_floating_point():
                torch.testing.assert_close(mixed[k], v + w)
    with pytest.raises(ValueError, match="weight"):
        interpolate_encoders(tiny_bert_dir, tmp_path / "trained", 1.5, tmp_path / "bad")


def test_a_model_setting_becomes_one_path(tmp_path, monkeypatch):
    """Empty: the bundled MiniLM; relative: absolute (Ray workers have another working
    directory); a URI: as it is."""
    from r2ps.models.encoder import default_model_path, model_or_default

    monkeypatch.chdir(tmp_path)
    assert model_or_default("") == model_or_default(None) == default_model_path()
    assert model_or_default("runs/retriever") == str(tmp_path / "runs" / "retriever")
    assert model_or_default("s3://bucket/retriever") == "s3://bucket/retriever"


def test_only_a_load_report_of_the_dropped_pooler_is_kept_out_of_the_log(tiny_bert_dir, tmp_path):
    """transformers reports the pooler load_encoder drops on every load (in every Ray actor);
    that report is filtered, a report of a weight really missing is not."""
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        load_encoder(tiny_bert_dir)
        assert not [r for r in records if "LOAD REPORT" in r.getMessage()]

        broken = tmp_path / "broken"
        model = BertModel.from_pretrained(tiny_bert_dir, add_pooling_layer=False)
        weights = {
            k: v for k, v in model.state_dict().items() if k != "embeddings.LayerNorm.weight"
        }
        model.save_pretrained(broken, state_dict=weights)
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
            if (tiny_bert_dir / name).exists():
                (broken / name).write_bytes((tiny_bert_dir / name).read_bytes())
        records.clear()
        load_encoder(broken)
        reports = [r.getMessage() for r in records if "LOAD REPORT" in r.getMessage()]
        assert reports and "embeddings.LayerNorm.weight" in reports[0]
    finally:
        logger.removeHandler(handler)
