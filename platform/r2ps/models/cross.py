"""The ranker: a cross encoder reading query and code as one sequence (METHOD.md section 2).

Attention across the pair makes it far more accurate than the retriever but costs a
full forward pass per (query, code) pair, so it only rescores the retriever's top K.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn

from r2ps.data.schema import HEAD_FILE
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

KIND = "cross"


def make_head(hidden: int, init_std: float = 0.02) -> nn.Sequential:
    """`Linear(h,h) -> GELU -> LayerNorm -> Linear(h,1)` on the first token's state.

    The first layer is initialised like an HF head (normal(0, initializer_range)); the
    last starts at zero, so a fresh ranker scores every pair 0 and the listwise loss
    starts at log(group size). With an HF-style last layer the LayerNorm'd features give
    scores of std ~0.4, i.e. logits of std ~8 under `scale=20`: the first steps then
    chase large, random losses and the encoder collapsed to one score for every pair
    (loss stuck at log(8), gradients lost in saturated tanh) in a real run.
    """
    head = nn.Sequential(
        nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden), nn.Linear(hidden, 1)
    )
    nn.init.normal_(head[0].weight, std=init_std)
    nn.init.zeros_(head[0].bias)
    nn.init.zeros_(head[3].weight)
    nn.init.zeros_(head[3].bias)
    return head


# What the head reads (`CrossEncoder.pooling`): the first token's state (BERT's [CLS], as
# the paper's ranker) or the two segments' mean states multiplied (`segment_features`).
POOLINGS = ("first_token", "segments")


def segment_features(
    states: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None
) -> torch.Tensor:
    """`h * (q_hat * c_hat)` [B, h]: the element-wise product of the query segment's and the
    code segment's mean token states (type 0 and type 1 of `[CLS] q [SEP] c [SEP]`, each
    mean L2-normalised), times the width h.

    Their sum over h / h is the cosine of the two segments' states, which is how a dual
    encoder trained with mean pooling (MiniLM, the retriever) scores a pair: a ranker
    started from the retriever reads features that already carry its relevance signal,
    contextualised by attention across the pair, where the first token's state of a
    mean-pooling model carries none until trained. The factor h keeps the entries O(1)
    for the head's first layer.

    states [B, T, h]; attention_mask, token_type_ids [B, T]. Raises ValueError without
    token type ids (a pair's segments are found by them).
    """
    if token_type_ids is None:
        raise ValueError("pooling='segments' needs token_type_ids marking the code segment")
    code = attention_mask * (token_type_ids != 0)
    q = F.normalize(mean_pool(states, attention_mask - code), dim=-1)  # float32 sums
    c = F.normalize(mean_pool(states, code), dim=-1)
    return (q * c * states.shape[-1]).to(states.dtype)


_PAIR_PROCESSORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _pair_processor(tokenizer) -> Tokenizer:
    """A private copy of a fast tokenizer's Rust backend, with truncation and padding off.

    `post_process` applies whatever truncation the shared backend was last left with by
    an HF call (here: the code's max_length), which would cut the assembled pair again.
    A copy made once per tokenizer avoids mutating shared state (thread-safe).
    """
    backend = _PAIR_PROCESSORS.get(tokenizer)
    if backend is None:
        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        backend.no_truncation()
        backend.no_padding()
        _PAIR_PROCESSORS[tokenizer] = backend
    return backend


def encode_pairs(
    tokenizer,
    queries: Sequence[str],
    codes: Sequence[str],
    max_query_len: int = 128,
    max_len: int = 384,
) -> list[tuple[list[int], list[int]]]:
    """(input_ids, token_type_ids) of `[CLS] query [SEP] code [SEP]` for each pair.

    The query is cut to `max_query_len` tokens first, then the code fills what is left
    of `max_len` after the special tokens, so a long query never pushes out all of
    the code and a long code never pushes out the query. The special tokens come
    from the tokenizer's own template (BERT's [CLS]/[SEP], RoBERTa's <s>/</s></s>).
    """
    if len(queries) != len(codes):
        raise ValueError(f"{len(queries)} queries but {len(codes)} codes")
    if not queries:
        return []
    budget = max_len - tokenizer.num_special_tokens_to_add(pair=True)
    if budget < 2:
        raise ValueError(f"max_len={max_len} leaves no room for query and code tokens")
    q_len = min(max_query_len, budget - 1)
    q_enc = tokenizer(list(queries), add_special_tokens=False, truncation=True, max_length=q_len)
    c_enc = tokenizer(list(codes), add_special_tokens=False, truncation=True, max_length=budget)
    if q_enc.encodings is not None:  # fast (Rust) tokenizer: use its post-processor
        backend = _pair_processor(tokenizer)
        out = []
        for q, c in zip(q_enc.encodings, c_enc.encodings, strict=True):
            c.truncate(budget - len(q.ids))
            pair = backend.post_process(q, c, add_special_tokens=True)
            out.append((list(pair.ids), list(pair.type_ids)))
        return out
    out = []
    for q, c in zip(q_enc["input_ids"], c_enc["input_ids"], strict=True):
        c = c[: budget - len(q)]
        ids = tokenizer.build_inputs_with_special_tokens(q, c)
        out.append((ids, tokenizer.create_token_type_ids_from_sequences(q, c)))
    return out


def tokenize_pairs(
    tokenizer,
    queries: Sequence[str],
    codes: Sequence[str],
    max_query_len: int = 128,
    max_len: int = 384,
) -> dict[str, torch.Tensor]:
    """Padded `input_ids` / `attention_mask` / `token_type_ids` for a batch of pairs."""
    pairs = encode_pairs(tokenizer, queries, codes, max_query_len, max_len)
    return pad_batch([p[0] for p in pairs], pad_token_id(tokenizer), type_ids=[p[1] for p in pairs])


class CrossEncoder(nn.Module):
    """Any HF encoder + an MLP head on the first token's state (or on `segment_features`,
    `pooling="segments"`): one relevance score per pair."""

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer=None,
        max_query_len: int = 128,
        max_len: int = 384,
        residual: bool = False,
        pooling: str = "first_token",
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_query_len = int(max_query_len)
        self.max_len = int(max_len)
        # trained as a correction on the retriever's score (losses.listwise_ce's prior)
        self.residual = bool(residual)
        config = encoder.config
        self.head = make_head(config.hidden_size, getattr(config, "initializer_range", 0.02))
        # RoBERTa-like models have one token type: passing type ids 1 would index out of range.
        self._use_token_types = getattr(config, "type_vocab_size", 0) > 1
        if pooling == "segments" and tokenizer is not None:
            _check_marks_code(tokenizer)
        self.train()  # the HF encoder arrives in eval mode: see DualEncoder.__init__

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores [B] (float32), one per (query, code) row.

        On a CPU the batch runs as length-sorted slices (`by_length`): 1.6-2.4x at
        inference, ~5x a training step of 64 pairs.
        """
        return by_length(self._score, input_ids, attention_mask, token_type_ids)

    def _score(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        kwargs = {}
        if token_type_ids is not None and self._use_token_types:
            kwargs["token_type_ids"] = token_type_ids
        states = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, **kwargs
        ).last_hidden_state
        if self.pooling == "segments":
            features = segment_features(states, attention_mask, token_type_ids)
        else:
            features = states[:, 0]
        return self.head(features).squeeze(-1).float()

    def scores_zero(self) -> bool:
        """Whether every pair scores exactly 0 whatever the encoder computes: the head's last
        layer is all zeros, as `make_head` initialises it (a fresh ranker). Quality code may
        skip the forward pass then (`retrieval.ranker_scores`); timing and serving may not."""
        last = self.head[-1]
        return last.weight.numel() > 0 and not last.weight.any() and not last.bias.any()

    @property
    def trained_alpha(self) -> float:
        """The fusion weight (cascade.fuse) this ranker was trained for (`trained_alpha`)."""
        return trained_alpha(self.residual)

    def tokenize(self, queries: Sequence[str], codes: Sequence[str]) -> dict[str, torch.Tensor]:
        return tokenize_pairs(
            self._need_tokenizer(), queries, codes, self.max_query_len, self.max_len
        )

    def score_pairs(
        self, queries: Sequence[str], codes: Sequence[str], batch_size: int = 64
    ) -> np.ndarray:
        """Scores [len(queries)] float32 in input order; eval mode, batched by length."""
        return score_pairs(self, queries, codes, batch_size)

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("this CrossEncoder has no tokenizer; pass one to the constructor")
        return self.tokenizer

    def config_dict(self) -> dict:
        return {
            "kind": KIND,
            "head": "linear-gelu-layernorm-linear",
            "pooling": self.pooling,
            "max_query_len": self.max_query_len,
            "max_len": self.max_len,
            "residual": self.residual,
        }

    def save_pretrained(self, directory: str | Path) -> None:
        """HF encoder + tokenizer + `r2ps.json` + `head.safetensors`; no pickles."""
        directory = save_encoder(
            directory, self.encoder, self._need_tokenizer(), self.config_dict()
        )
        head = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        save_file(head, str(directory / HEAD_FILE))

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, num_layers: int = 0, **overrides
    ) -> CrossEncoder:
        """Load a saved ranker; from any other HF dir (or a retriever) start a fresh head.

        Starting from a retriever checkpoint is allowed on purpose: the ranker may be
        initialised from the fine-tuned dual encoder. `num_layers` > 0 keeps only the
        encoder's first layers (`load_encoder`; a saved model records its own depth in
        its config). `overrides` (max_query_len, max_len, residual, pooling) win over the
        saved values; a saved head keeps its pooling (ValueError for another one).
        """
        directory = Path(directory)
        meta = read_meta(directory) or {}
        encoder, tokenizer = load_encoder(directory, num_layers=num_layers)
        settings = {}
        if meta.get("kind") == KIND:
            settings = {k: meta[k] for k in ("max_query_len", "max_len", "residual") if k in meta}
            settings["pooling"] = meta.get("pooling", "first_token")  # saved before the option
            if overrides.get("pooling", settings["pooling"]) != settings["pooling"]:
                raise ValueError(
                    f"{directory}: its head reads pooling={settings['pooling']!r}, "
                    f"not {overrides['pooling']!r}; start a new ranker from a retriever"
                )
        settings.update(overrides)
        model = cls(encoder, tokenizer, **settings)
        head_path = directory / HEAD_FILE
        if meta.get("kind") == KIND:
            if not head_path.exists():
                raise FileNotFoundError(f"{directory} is a saved ranker but has no {HEAD_FILE}")
            model.head.load_state_dict(load_file(str(head_path)))
        else:
            log.info("no ranker head in %s: starting from a fresh head", directory)
        return model


def _check_marks_code(tokenizer) -> None:
    """Segment pooling finds the code by its token type: the tokenizer's pair template
    must give the code type 1 (BERT's does; RoBERTa's gives every token type 0)."""
    ((_, types),) = encode_pairs(tokenizer, ["q"], ["c"], max_len=16)
    if 1 not in types:
        raise ValueError(
            f"pooling='segments' needs a tokenizer whose pairs mark the code with token type "
            f"1; {type(tokenizer).__name__} gives {types}: use pooling='first_token'"
        )


def trained_alpha(residual: bool) -> float:
    """The fusion weight (cascade.fuse) a ranker was trained for.

    A residual ranker learned `DE + tanh(CE)`, which orders the K candidates exactly as
    `0.5 * DE + 0.5 * tanh(CE)`: 0.5. A plain ranker learned `tanh(CE)` alone: 0.
    """
    return 0.5 if residual else 0.0


def saved_ranker_meta(directory: str | Path) -> dict | None:
    """The r2ps.json of the ranker saved in `directory`; None when the folder holds no saved
    ranker (a retriever, a plain HF encoder: a ranker started there gets a fresh head)."""
    meta = read_meta(Path(directory))
    return meta if meta is not None and meta.get("kind") == KIND else None


def saved_trained_alpha(directory: str | Path) -> float:
    """`trained_alpha` of the ranker saved in `directory`, read without loading it; 0 for a
    folder that holds no saved ranker (a fresh head is a plain one)."""
    meta = saved_ranker_meta(directory) or {}
    return trained_alpha(bool(meta.get("residual")))


@torch.no_grad()
def score_pairs(
    model: nn.Module, queries: Sequence[str], codes: Sequence[str], batch_size: int = 64
) -> np.ndarray:
    """Scores [len(queries)] float32 of `model(input_ids, attention_mask, token_type_ids)`,
    in input order; pairs tokenised once, batched by length, in eval mode (restored after).

    `model` is a CrossEncoder or anything with its inference attributes (`tokenizer`,
    `max_query_len`, `max_len`, forward -> [B]): the ONNX Runtime ranker
    (`r2ps.models.backends.OrtCrossEncoder`) runs through this same loop.
    Raises ValueError naming the pairs whose score is NaN or inf.
    """
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError(f"this {type(model).__name__} has no tokenizer; pass one to it")
    pairs = encode_pairs(tokenizer, queries, codes, model.max_query_len, model.max_len)
    out = np.zeros(len(pairs), dtype=np.float32)
    device = module_device(model)
    was_training = model.training
    model.eval()
    try:
        for idx in batches_by_length([len(p[0]) for p in pairs], batch_size):
            batch = pad_batch(
                [pairs[i][0] for i in idx],
                pad_token_id(tokenizer),
                type_ids=[pairs[i][1] for i in idx],
            )
            out[idx] = model(**{k: v.to(device) for k, v in batch.items()}).cpu().numpy()
    finally:
        model.train(was_training)
    check_finite(out, "ranker scores", queries)
    return out
