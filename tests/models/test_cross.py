"""The ranker: explicit pair truncation, the MLP head, HF-format checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RERUN_TOL
from torch import nn
from transformers import AutoModel, BertTokenizerLegacy

from r2ps.models.cross import (
    CrossEncoder,
    encode_pairs,
    saved_trained_alpha,
    segment_features,
    tokenize_pairs,
)
from r2ps.models.dual import DualEncoder
from r2ps.models.encoder import default_model_path

LONG_QUERY = " ".join(f"word{i}" for i in range(300))
LONG_CODE = "\n".join(f"x{i} = compute(x{i - 1})" for i in range(1, 400))
QUERIES = ["sort a list", "read a file", LONG_QUERY]
CODES = ["def f(xs):\n    return sorted(xs)", "open(p).read()", LONG_CODE]


def with_random_head(model: CrossEncoder) -> CrossEncoder:
    """A head like a trained one: a fresh head's last layer is zero and scores every pair
    0, which no test of order or batching could tell from the right answer."""
    with torch.no_grad():
        model.head[3].weight.normal_(0, 1.0)
    return model


@pytest.fixture
def cross(tiny_bert_dir) -> CrossEncoder:
    torch.manual_seed(0)
    return with_random_head(CrossEncoder.from_pretrained(tiny_bert_dir))


@pytest.fixture(params=["first_token", "segments"])
def any_pooling(request, tiny_bert_dir) -> CrossEncoder:
    torch.manual_seed(0)
    return with_random_head(CrossEncoder.from_pretrained(tiny_bert_dir, pooling=request.param))


def _query_len(type_ids: list[int]) -> int:
    """Query tokens of a BERT pair: the type-0 segment minus [CLS] and [SEP]."""
    return type_ids.count(0) - 2


def test_short_pairs_match_the_tokenizers_own_pair_encoding(cross):
    tok = cross.tokenizer
    (ids, types), _, _ = encode_pairs(tok, QUERIES, CODES)
    ref = tok(QUERIES[0], CODES[0])
    assert ids == ref["input_ids"] and types == ref["token_type_ids"]
    assert ids[0] == tok.cls_token_id and ids.count(tok.sep_token_id) == 2


def test_long_query_and_code_are_truncated_separately(cross):
    tok = cross.tokenizer
    ids, types = encode_pairs(tok, [LONG_QUERY], [LONG_CODE])[0]
    assert len(ids) == 384
    assert _query_len(types) == 128
    assert ids[-1] == tok.sep_token_id
    # Short query, long code: the code fills everything that is left.
    ids, types = encode_pairs(tok, ["sort a list"], [LONG_CODE], max_len=64)[0]
    assert len(ids) == 64 and _query_len(types) == 3
    # Long query, short code: the query stops at max_query_len, the code stays whole.
    ids, types = encode_pairs(tok, [LONG_QUERY], ["x = 1"], max_query_len=20)[0]
    assert _query_len(types) == 20 and len(ids) == 20 + 3 + 3


def test_python_tokenizer_fallback_matches_the_fast_path(cross):
    slow = BertTokenizerLegacy(vocab_file=str(Path(default_model_path()) / "vocab.txt"))
    for max_len in (384, 50):
        fast = encode_pairs(cross.tokenizer, QUERIES, CODES, 16, max_len)
        assert encode_pairs(slow, QUERIES, CODES, 16, max_len) == fast


def test_encode_pairs_checks_its_inputs(cross):
    assert encode_pairs(cross.tokenizer, [], []) == []
    with pytest.raises(ValueError):
        encode_pairs(cross.tokenizer, ["a"], [])
    with pytest.raises(ValueError):
        encode_pairs(cross.tokenizer, ["a"], ["b"], max_len=4)


def test_head_shape_and_scores(cross):
    head = cross.head
    assert [type(m) for m in head] == [nn.Linear, nn.GELU, nn.LayerNorm, nn.Linear]
    assert head[0].weight.shape == (32, 32) and head[3].weight.shape == (1, 32)
    batch = tokenize_pairs(cross.tokenizer, QUERIES, CODES, max_len=64)
    assert batch["input_ids"].shape == (3, 64)
    scores = cross(**batch)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    scores.sum().backward()
    assert cross.head[0].weight.grad is not None


def test_score_pairs_keeps_input_order(cross):
    cross.train()
    scores = cross.score_pairs(QUERIES, CODES, batch_size=2)
    assert cross.training
    cross.eval()
    with torch.no_grad():
        for i in range(3):
            one = cross(**cross.tokenize([QUERIES[i]], [CODES[i]])).item()
            assert scores[i] == pytest.approx(one, abs=1e-5)


@pytest.mark.parametrize("max_tokens", [0, 64, 1024])
def test_scores_do_not_depend_on_the_cpu_token_budget(cross, monkeypatch, max_tokens):
    """The budget only splits batches (CPU speed); each pair's score stays its own."""
    queries, codes = QUERIES * 3, (CODES * 3)[1:] + CODES[:1]  # mixed lengths
    cross.eval()
    with torch.no_grad():
        want = [
            cross(**cross.tokenize([q], [c])).item() for q, c in zip(queries, codes, strict=True)
        ]
    monkeypatch.setattr("r2ps.models.encoder.CPU_MAX_TOKENS", max_tokens)
    np.testing.assert_allclose(cross.score_pairs(queries, codes), want, atol=1e-5)


@pytest.mark.parametrize("max_tokens", [0, 40, 1024])
@pytest.mark.parametrize("batch_size", [3, 64])
def test_a_permuted_group_gets_the_same_scores_permuted(
    any_pooling, monkeypatch, max_tokens, batch_size
):
    """The listwise loss reads a group's positive from column 0: a label is a position.
    Length slicing (`by_length`, every budget) and batching (`score_pairs`) reorder rows
    inside; row i's score must stay pair i's, so permuting the pairs permutes the scores."""
    monkeypatch.setattr("r2ps.models.encoder.CPU_MAX_TOKENS", max_tokens)
    codes = [CODES[0], LONG_CODE, "x = 1", CODES[1], "def g(a, b):\n    return a + b", CODES[0] * 3]
    queries = [QUERIES[i % 2] for i in range(len(codes))]
    perm = np.random.default_rng(0).permutation(len(codes))
    cross = any_pooling.eval()
    with torch.no_grad():
        want = torch.stack(
            [cross(**cross.tokenize([q], [c]))[0] for q, c in zip(queries, codes, strict=True)]
        )
        assert want.std() > 1e-2  # pairs score differently, so a mix-up would show
        batch = cross.tokenize(queries, codes)
        torch.testing.assert_close(cross(**batch), want, atol=1e-5, rtol=0)
        permuted = cross.tokenize([queries[i] for i in perm], [codes[i] for i in perm])
        torch.testing.assert_close(cross(**permuted), want[perm], atol=1e-5, rtol=0)
    scored = cross.score_pairs([queries[i] for i in perm], [codes[i] for i in perm], batch_size)
    np.testing.assert_allclose(scored, want[perm].numpy(), atol=1e-5)


def test_residual_flag_round_trips_and_sets_the_trained_weight(cross, tmp_path):
    assert cross.trained_alpha == 0.0
    CrossEncoder(cross.encoder, cross.tokenizer, residual=True).save_pretrained(tmp_path)
    loaded = CrossEncoder.from_pretrained(tmp_path)
    assert loaded.residual and loaded.trained_alpha == 0.5
    # read without loading (what serving and the index job use)
    assert saved_trained_alpha(tmp_path) == 0.5
    cross.save_pretrained(tmp_path / "plain")
    assert saved_trained_alpha(tmp_path / "plain") == 0.0
    assert saved_trained_alpha(tmp_path / "not-a-ranker") == 0.0


def test_save_load_round_trip(cross, tmp_path):
    with torch.no_grad():
        cross.head[3].bias.fill_(0.5)  # a head that differs from a fresh one
    before = cross.score_pairs(QUERIES, CODES)
    cross.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "r2ps.json").read_text())["kind"] == "cross"
    assert (tmp_path / "head.safetensors").exists()
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pkl"))

    loaded = CrossEncoder.from_pretrained(tmp_path)
    assert (loaded.max_query_len, loaded.max_len) == (128, 384)
    np.testing.assert_allclose(loaded.score_pairs(QUERIES, CODES), before, **RERUN_TOL)
    assert CrossEncoder.from_pretrained(tmp_path, max_len=256).max_len == 256
    AutoModel.from_pretrained(tmp_path)

    (tmp_path / "head.safetensors").unlink()
    with pytest.raises(FileNotFoundError):
        CrossEncoder.from_pretrained(tmp_path)


def test_starts_from_a_retriever_checkpoint(tiny_bert_dir, tmp_path):
    dual = DualEncoder.from_pretrained(tiny_bert_dir)
    dual.save_pretrained(tmp_path)
    cross = CrossEncoder.from_pretrained(tmp_path)
    torch.testing.assert_close(
        cross.encoder.embeddings.word_embeddings.weight,
        dual.encoder.embeddings.word_embeddings.weight,
    )


def test_keeps_the_first_layers_and_saves_the_shallower_model(tiny_bert_dir, tmp_path):
    full = CrossEncoder.from_pretrained(tiny_bert_dir)
    short = CrossEncoder.from_pretrained(tiny_bert_dir, num_layers=1)
    assert len(short.encoder.encoder.layer) == 1 and short.encoder.config.num_hidden_layers == 1
    torch.testing.assert_close(  # the kept layer is the first one, not a fresh one
        short.encoder.encoder.layer[0].state_dict(), full.encoder.encoder.layer[0].state_dict()
    )
    with torch.no_grad():
        short.head[3].bias.fill_(0.5)
    before = short.score_pairs(QUERIES, CODES)
    short.save_pretrained(tmp_path)
    loaded = CrossEncoder.from_pretrained(tmp_path)  # the saved config records the depth
    assert len(loaded.encoder.encoder.layer) == 1
    np.testing.assert_allclose(loaded.score_pairs(QUERIES, CODES), before, **RERUN_TOL)
    for bad in (3, -1):
        with pytest.raises(ValueError, match="has 2 layers"):
            CrossEncoder.from_pretrained(tiny_bert_dir, num_layers=bad)


def test_loads_in_train_mode_and_scoring_restores_it(cross):
    """The HF encoder arrives in eval mode; training must see dropout (DualEncoder's test)."""
    assert all(m.training for m in cross.modules())
    queries, codes = ["add two numbers"] * 2, ["def add(a, b): return a + b", "x = 1"]
    first = cross.score_pairs(queries, codes)
    assert all(m.training for m in cross.modules())
    np.testing.assert_allclose(first, cross.score_pairs(queries, codes), **RERUN_TOL)


def test_nan_scores_are_refused_naming_the_pairs(cross):
    with torch.no_grad():
        cross.encoder.embeddings.word_embeddings.weight[:] = float("nan")
    with pytest.raises(ValueError, match=r"ranker scores: 2 of 2 rows .* e.g. \['q1', 'q2'\]"):
        cross.score_pairs(["q1", "q2"], ["def f(): pass", "x = 1"])


# ---------------------------------------------------------------- segment pooling


def test_segment_features_are_the_segments_mean_states_multiplied(tiny_bert_dir):
    model = CrossEncoder.from_pretrained(tiny_bert_dir, pooling="segments").eval()
    batch = model.tokenize(QUERIES, CODES)  # padded: the short pairs end in padding
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        states = model.encoder(**batch).last_hidden_state
        got = segment_features(states, batch["attention_mask"], batch["token_type_ids"])
    for i in range(len(QUERIES)):
        n = int(batch["attention_mask"][i].sum())
        types = batch["token_type_ids"][i, :n]
        q = states[i, :n][types == 0].mean(0)  # [CLS] query [SEP]
        c = states[i, :n][types == 1].mean(0)  # code [SEP]
        want = torch.nn.functional.normalize(q, dim=0) * torch.nn.functional.normalize(c, dim=0)
        torch.testing.assert_close(got[i], want * states.shape[-1], atol=1e-5, rtol=1e-5)
        # their mean is the cosine of the two segments' states
        assert got[i].mean().item() == pytest.approx(
            torch.cosine_similarity(q, c, dim=0).item(), abs=1e-5
        )
    with pytest.raises(ValueError, match="token_type_ids"):
        segment_features(states, batch["attention_mask"], None)


def test_segments_pooling_round_trips_and_a_saved_head_keeps_its_pooling(tiny_bert_dir, tmp_path):
    torch.manual_seed(0)
    model = with_random_head(CrossEncoder.from_pretrained(tiny_bert_dir, pooling="segments"))
    before = model.score_pairs(QUERIES, CODES)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "r2ps.json").read_text())["pooling"] == "segments"
    loaded = CrossEncoder.from_pretrained(tmp_path)
    assert loaded.pooling == "segments"
    np.testing.assert_allclose(loaded.score_pairs(QUERIES, CODES), before, **RERUN_TOL)
    with pytest.raises(ValueError, match="pooling='segments'"):
        CrossEncoder.from_pretrained(tmp_path, pooling="first_token")
    with pytest.raises(ValueError, match="pooling must be one of"):
        CrossEncoder.from_pretrained(tiny_bert_dir, pooling="mean")
    # a ranker saved before the option (no "pooling" in its r2ps.json) read the first token
    CrossEncoder.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "r2ps.json").read_text())
    del meta["pooling"]
    (tmp_path / "old" / "r2ps.json").write_text(json.dumps(meta))
    assert CrossEncoder.from_pretrained(tmp_path / "old", pooling="first_token").pooling == (
        "first_token"
    )


def test_a_segments_ranker_starts_from_a_retriever_with_a_fresh_head(tiny_bert_dir, tmp_path):
    """The recipe's start: the retriever's folder (its r2ps.json says pooling "mean", a
    dual encoder's setting) and a fresh head reading the segments."""
    DualEncoder.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path)
    model = CrossEncoder.from_pretrained(tmp_path, pooling="segments", residual=True)
    assert model.pooling == "segments" and model.scores_zero()


def test_segments_pooling_refuses_a_tokenizer_that_does_not_mark_the_code(tiny_bert_dir):
    class OneTypeTokenizer(BertTokenizerLegacy):  # as RoBERTa's pairs: every token type 0
        def create_token_type_ids_from_sequences(self, a, b=None):
            return [0] * len(self.build_inputs_with_special_tokens(a, b))

    tokenizer = OneTypeTokenizer(vocab_file=str(Path(default_model_path()) / "vocab.txt"))
    encoder = AutoModel.from_pretrained(tiny_bert_dir)
    CrossEncoder(encoder, tokenizer)  # the first token needs no segments
    with pytest.raises(ValueError, match="token type 1"):
        CrossEncoder(encoder, tokenizer, pooling="segments")
