"""Loading a pre-trained HF encoder and pooling its token states.

Everything here is architecture-agnostic: BERT, RoBERTa, UniXcoder and MiniLM all load
through `AutoModel`, and the retriever and the ranker build on what `load_encoder`
returns.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from r2ps.log import get_logger

# torch-free, defined in r2ps.models.light (the search command loads no torch)
from r2ps.models.light import (  # noqa: F401 (re-exported)
    CPU_MAX_TOKENS,
    R2PS_JSON,
    batches_by_length,
    default_model_path,
    model_fingerprint,
    model_or_default,
    read_meta,
)

log = get_logger(__name__)


def _accepts_add_pooling_layer(config) -> bool:
    """Whether the AutoModel class for `config` takes `add_pooling_layer` (BERT, RoBERTa...).

    Asking the class itself keeps DistilBERT, Electra and others, which have no pooler
    and reject the keyword, loadable.
    """
    try:
        cls = MODEL_MAPPING[type(config)]
    except KeyError:
        return config.model_type in {"bert", "roberta"}
    return "add_pooling_layer" in inspect.signature(cls.__init__).parameters


class _PoolerOnlyReport(logging.Filter):
    """Drops transformers' load report when all it lists is the pooler we chose not to
    load (`pooler.*` UNEXPECTED): printed once per model load, in every Ray actor, it
    buried job logs. A report that lists anything else (a missing or mismatched weight)
    still reaches the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        rows = [line.split("|") for line in message.splitlines() if line.count("|") >= 2]
        keys = [(cells[0].strip(), cells[1].strip()) for cells in rows[1:]]  # after header
        return not keys or not all(
            key.startswith("pooler.") and status == "UNEXPECTED" for key, status in keys
        )


_POOLER_FILTER = _PoolerOnlyReport()


def load_encoder(
    path: str | Path, dtype: torch.dtype = torch.float32, num_layers: int = 0
) -> tuple[PreTrainedModel, AutoTokenizer]:
    """Load an HF encoder and its tokenizer from a local directory.

    `num_layers` > 0 keeps only the first `num_layers` transformer layers (the config's
    `num_hidden_layers`, which HF reads the weights by; the rest are not loaded): the
    "top-layer dropping" of Sajjad et al., "On the Effect of Dropping Layers of Pre-trained
    Transformer Models" (Computer Speech & Language 2023), a shallower model that costs
    proportionally less per token. Raises ValueError when the encoder has fewer layers.

    The pooler is dropped where the architecture has one: r2ps pools token states
    itself, and an unused pooler only costs memory and leaves parameters without
    gradients (which DDP reports as an error). Weights load as `dtype` (float32 by
    default) because transformers 5 would otherwise keep a checkpoint's own dtype,
    and training wants float32 master weights.
    """
    path = str(path)
    config = AutoConfig.from_pretrained(path)
    if num_layers:
        have = getattr(config, "num_hidden_layers", None)
        if have is None or not 0 < num_layers <= have:
            raise ValueError(
                f"num_layers={num_layers}: the encoder in {path} has {have} layers "
                "(keep between 1 and all of them)"
            )
        config.num_hidden_layers = num_layers
    kwargs = {"add_pooling_layer": False} if _accepts_add_pooling_layer(config) else {}
    logging.getLogger("transformers.modeling_utils").addFilter(_POOLER_FILTER)  # idempotent
    model = AutoModel.from_pretrained(path, config=config, dtype=dtype, **kwargs)
    tokenizer = load_tokenizer(path)
    log.debug("loaded encoder %s (%s) from %s", type(model).__name__, config.model_type, path)
    return model, tokenizer


def interpolate_encoders(start: str | Path, trained: str | Path, weight: float, out: str | Path):
    """WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022, eq. 1):
    the encoder at `(1 - weight) * start + weight * trained`, tensor by tensor, saved to
    `out` with `trained`'s tokenizer (an HF model folder; other files of `trained`, such as
    r2ps.json, are the caller's). weight 1 is the trained encoder, 0 the start.

    Fine-tuning on one register of queries (docstring summaries) loses part of the start
    model's zero-shot strength on others (web queries); the mix keeps much of both.
    Both folders must hold the same architecture (same tensor names and shapes).
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"interpolation weight must be in [0, 1], got {weight}")
    model, tokenizer = load_encoder(trained)
    base, _ = load_encoder(start)
    ours, theirs = model.state_dict(), base.state_dict()
    if ours.keys() != theirs.keys() or any(ours[k].shape != theirs[k].shape for k in ours):
        raise ValueError(f"{start} and {trained} are not the same architecture")
    mixed = {
        k: torch.lerp(theirs[k], v, weight) if v.is_floating_point() else v for k, v in ours.items()
    }
    model.load_state_dict(mixed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def load_tokenizer(path: str | Path):
    """The tokenizer of a model folder. Ray stages ship it by value (it pickles), so the
    tasks that tokenise need not see the folder."""
    return AutoTokenizer.from_pretrained(str(path))


def mean_pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over non-padding positions, in float32.

    Padding must not dilute the mean, or the same text would embed differently
    depending on the longest text of its batch. Summing in float32 keeps bf16/fp16
    runs from losing precision over a few hundred tokens.
    """
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    summed = (last_hidden.to(torch.float32) * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1e-9)


# --- checkpoint metadata and batching, shared by the retriever and the ranker ---


def save_encoder(directory: str | Path, encoder, tokenizer, meta: dict) -> Path:
    """An HF folder `AutoModel` can load (safetensors, tokenizer) plus `r2ps.json` (`meta`):
    the checkpoint format of both models. Returns the folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    write_meta(directory, meta)
    return directory


def write_meta(directory: str | Path, meta: dict) -> None:
    """Write `r2ps.json`: the few settings HF's config has no place for (JSON, no pickles)."""
    Path(directory, R2PS_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def cpu_token_budget(device: torch.device) -> int:
    """Padded tokens per encoder call on `device`: 1024 on a CPU, no limit on a GPU.

    Measured with MiniLM on 2 cores, each against one call padded to its longest row in the
    same process: a ranker request of 10 (query, code) pairs (191-214 tokens on average, up
    to 384) 113 -> 62 ms a pair at 1 thread (60 -> 37 at 2); 60 pairs 76 -> 32 ms;
    embedding codes already grouped by length in batches of 64, 29.5 -> 41.6 codes/s
    (`benchmarks/token_budget.py`); a training step's forward and backward, 32 codes of
    <= 256 tokens 4.6 -> 9.3-10.0 codes/s, 64 ranker pairs 1.6 -> 7.6-7.9 pairs/s. Short
    length-sorted calls compute no padding and keep each call's activations in cache. On a
    GPU, large calls are what throughput wants (the README's GPU figures were measured so).
    """
    return 0 if device.type == "cuda" else CPU_MAX_TOKENS


def by_length(
    fn: Callable[..., torch.Tensor],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """`fn(input_ids, attention_mask[, token_type_ids])` -> [B, ...] per row, computed on
    length-sorted slices of the batch cut to their longest row, at most
    `cpu_token_budget` padded tokens each, and put back in input order.

    Rows are independent in an encoder, so the result is the one big call's (up to float
    rounding); autograd flows through the slices, so training uses it too. A batch within
    the budget, or not right-padded, goes through in one call.
    """
    budget = cpu_token_budget(input_ids.device)
    rows, width = input_ids.shape
    extra = () if token_type_ids is None else (token_type_ids,)
    # budget first: on a GPU there is none, and the padding check would sync every call
    if not budget or rows * width <= budget or not _right_padded(attention_mask):
        return fn(input_ids, attention_mask, *extra)
    lengths = attention_mask.sum(1).tolist()
    parts, order = [], []
    for idx in batches_by_length(lengths, rows, budget):
        keep = torch.as_tensor(idx, device=input_ids.device)
        w = max(1, int(lengths[idx[0]]))  # a batch's first row is its longest
        parts.append(
            fn(input_ids[keep, :w], attention_mask[keep, :w], *(t[keep, :w] for t in extra))
        )
        order.append(keep)
    out = torch.cat(parts)
    return torch.empty_like(out).index_copy(0, torch.cat(order), out)


def _right_padded(attention_mask: torch.Tensor) -> bool:
    """Every row's tokens come first, its padding after (what `pad_batch` makes)."""
    return bool((attention_mask[:, :-1] >= attention_mask[:, 1:]).all())


def pad_batch(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    type_ids: Sequence[Sequence[int]] | None = None,
) -> dict[str, torch.Tensor]:
    """Right-pad token id lists into `input_ids` / `attention_mask` (/ `token_type_ids`)."""
    width = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.from_numpy(np.asarray(seq, dtype=np.int64))
        mask[row, : len(seq)] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    if type_ids is not None:
        types = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(type_ids):
            types[row, : len(seq)] = torch.from_numpy(np.asarray(seq, dtype=np.int64))
        out["token_type_ids"] = types
    return out


def module_device(model: torch.nn.Module) -> torch.device:
    """The device of a module's parameters; CPU for one without any (an ONNX Runtime model)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id; 0 when it has none (the attention mask hides it anyway)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
