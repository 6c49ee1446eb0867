"""The retriever: one encoder shared by queries and code, cosine score (METHOD.md section 1).

Sharing the encoder halves the parameters and puts queries and code in one space, so
the score is a plain inner product of L2-normalised mean-pooled embeddings and the
whole corpus can be indexed once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from r2ps.finite import check_finite
from r2ps.log import get_logger
from r2ps.models.encoder import (
    batches_by_length,
    by_length,
    load_encoder,
    mean_pool,
    module_device,
    pad_batch,
    pad_token_id,
    read_meta,
    save_encoder,
)

log = get_logger(__name__)

KIND = "dual"


class DualEncoder(nn.Module):
    """Shared HF encoder -> mean pooling over non-padding tokens -> L2 normalisation.

    `temperature` is the InfoNCE temperature the model was (or is to be) trained
    with; it is stored with the checkpoint so evaluation and training agree.
    """

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer=None,
        temperature: float = 0.05,
        max_query_len: int = 128,
        max_code_len: int = 256,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.temperature = float(temperature)
        self.max_query_len = int(max_query_len)
        self.max_code_len = int(max_code_len)
        # HF's from_pretrained returns the encoder in eval mode (dropout off) inside this
        # module, which nn.Module starts in train mode; make the two agree, so that training
        # means dropout on and inference paths call .eval() as usual.
        self.train()

    @property
    def dim(self) -> int:
        return int(self.encoder.config.hidden_size)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings [B, h] (float32), so inner product = cosine.

        On a CPU the batch runs as length-sorted slices (`by_length`): 2x a training step.
        """
        return by_length(self._encode, input_ids, attention_mask)

    def _encode(self, input_ids, attention_mask) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return F.normalize(mean_pool(out.last_hidden_state, attention_mask), dim=-1)

    def forward(
        self, query_batch: Mapping[str, torch.Tensor], code_batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(query embeddings, code embeddings) from two tokenised batches."""
        q = self.encode(query_batch["input_ids"], query_batch["attention_mask"])
        c = self.encode(code_batch["input_ids"], code_batch["attention_mask"])
        return q, c

    def embed_queries(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        return embed_texts(self, self._need_tokenizer(), texts, self.max_query_len, batch_size)

    def embed_codes(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        return embed_texts(self, self._need_tokenizer(), texts, self.max_code_len, batch_size)

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("this DualEncoder has no tokenizer; pass one to the constructor")
        return self.tokenizer

    def config_dict(self) -> dict:
        return {
            "kind": KIND,
            "pooling": "mean",
            "normalize": True,
            "temperature": self.temperature,
            "max_query_len": self.max_query_len,
            "max_code_len": self.max_code_len,
        }

    def save_pretrained(self, directory: str | Path) -> None:
        """HF encoder (safetensors) + tokenizer + `r2ps.json`; `AutoModel` can load the dir."""
        save_encoder(directory, self.encoder, self._need_tokenizer(), self.config_dict())

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides) -> DualEncoder:
        """Load a saved DualEncoder, or start one from a plain HF model dir with defaults.

        `overrides` (temperature, max_query_len, max_code_len) win over the saved values.
        """
        meta = read_meta(directory) or {}
        kind = meta.get("kind", KIND)
        if kind != KIND:
            raise ValueError(f"{directory} holds a {kind!r} model, not a {KIND!r} one")
        encoder, tokenizer = load_encoder(directory)
        settings = {
            k: meta[k] for k in ("temperature", "max_query_len", "max_code_len") if k in meta
        }
        settings.update(overrides)
        return cls(encoder, tokenizer, **settings)


def tokenize(tokenizer, texts: Sequence[str], max_len: int) -> dict[str, torch.Tensor]:
    """Padded, truncated `input_ids` / `attention_mask` tensors for one batch of texts."""
    enc = tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt"
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@torch.no_grad()
def embed_texts(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    max_len: int,
    batch_size: int = 128,
) -> np.ndarray:
    """Embeddings [len(texts), h] float32 in input order; eval mode, no gradients.

    `model` is a DualEncoder or anything with its `encode` and `dim` (the ONNX Runtime
    retriever, `r2ps.models.backends.OrtDualEncoder`, runs through this same loop).
    Texts are tokenised once, then batched by length (little padding) and the
    results are written back to their input positions. The model's train/eval
    mode is restored afterwards, so this can run in the middle of training. Raises
    ValueError naming the texts whose embedding holds NaN or inf (a diverged or
    overflowing model), so no stage downstream indexes or ranks them.
    """
    if len(texts) == 0:  # HF tokenizers fail on an empty batch
        return np.zeros((0, model.dim), dtype=np.float32)
    ids = tokenizer(list(texts), truncation=True, max_length=max_len)["input_ids"]
    out = np.zeros((len(ids), model.dim), dtype=np.float32)
    device = module_device(model)
    was_training = model.training
    model.eval()
    try:
        for idx in batches_by_length([len(s) for s in ids], batch_size):
            batch = pad_batch([ids[i] for i in idx], pad_token_id(tokenizer))
            emb = model.encode(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            out[idx] = emb.float().cpu().numpy()
    finally:
        model.train(was_training)
    check_finite(out, "embeddings", texts)
    return out
