"""Training losses: InfoNCE for the retriever, listwise softmax CE for the ranker.

METHOD.md sections 1-2. The retriever's loss improves on the paper in three ways:
negatives gathered from every training worker (`gathered_info_nce`), optional extra
hard negatives, and masking of duplicate codes, which would otherwise be scored as
negatives although they are exactly as relevant as the positive.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

Keys = Sequence | torch.Tensor


def _flatten_candidates(extra: torch.Tensor) -> torch.Tensor:
    """[E, d] stays as is; per-query negatives [B, m, d] become [B*m, d] shared candidates.

    Sharing every query's hard negatives with the whole batch gives each query more
    (and harder) negatives at no extra encoder cost.
    """
    if extra.dim() == 3:
        return extra.reshape(-1, extra.shape[-1])
    if extra.dim() != 2:
        raise ValueError(f"extra_codes must be [E, d] or [B, m, d], got {tuple(extra.shape)}")
    return extra


def _key_tensor(code_keys: Keys, n: int, device: torch.device) -> torch.Tensor:
    """Candidate keys as int64; any hashables (e.g. code strings) are mapped to dense ids."""
    if isinstance(code_keys, torch.Tensor):
        keys = code_keys.to(device=device, dtype=torch.long)
    else:
        ids: dict = {}
        keys = torch.tensor([ids.setdefault(k, len(ids)) for k in code_keys], device=device)
    if keys.shape != (n,):
        raise ValueError(f"code_keys must have one key per candidate ({n}), got {keys.shape}")
    return keys


def mask_duplicates(logits: torch.Tensor, labels: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Set to -inf the logits of candidates sharing the positive's key, except the positive.

    A duplicate of the positive is a false negative: pushing it away would teach the
    model to separate two identical codes.
    """
    same = keys.unsqueeze(0) == keys[labels].unsqueeze(1)
    same[torch.arange(labels.shape[0], device=logits.device), labels] = False
    return logits.masked_fill(same, float("-inf"))


def info_nce(
    q: torch.Tensor,
    c: torch.Tensor,
    temperature: float,
    extra_codes: torch.Tensor | None = None,
    code_keys: Keys | None = None,
    positive_offset: int = 0,
    reduction: str = "mean",
) -> torch.Tensor:
    """In-batch InfoNCE: `-log softmax(q · cands / temperature)[positive]`.

    q: [B, d] queries; c: [N, d] codes, the positive of query i being code
    `i + positive_offset` (the offset places a worker's queries inside gathered codes).
    extra_codes: [E, d] or [B, m, d] hard negatives appended after `c` as candidates
    of every query. code_keys: one key per candidate (N, then E or B*m, in that
    order); candidates whose key equals the positive's are masked out as duplicates.
    Logits are computed in float32 so bf16 embeddings do not lose the small score gaps
    a temperature of 0.05 amplifies.
    """
    n_q, n_c = q.shape[0], c.shape[0]
    if positive_offset < 0 or positive_offset + n_q > n_c:
        raise ValueError(
            f"positives {positive_offset}..{positive_offset + n_q} outside {n_c} codes"
        )
    cands = c if extra_codes is None else torch.cat([c, _flatten_candidates(extra_codes)])
    logits = q.float() @ cands.float().T / temperature
    labels = torch.arange(n_q, device=q.device) + positive_offset
    if code_keys is not None:
        logits = mask_duplicates(logits, labels, _key_tensor(code_keys, cands.shape[0], q.device))
    return F.cross_entropy(logits, labels, reduction=reduction)


# --- across workers ---


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_sizes(n: int, device: torch.device) -> list[int]:
    """Every rank's row count (each rank may hold a different number of rows)."""
    local = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, local)
    return [int(s.item()) for s in sizes]


class _GatherRows(torch.autograd.Function):
    """All-gather rows (padded to the largest rank) with a gradient path back to each rank.

    Backward all-reduces (sums) the gradient of the gathered tensor and keeps the local
    rows: every rank's loss uses every rank's codes, so each local code receives the
    gradient of all ranks' losses. Only all_gather and all_reduce are used, so it runs
    on gloo (CPU tests) as well as NCCL.
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
        padded = t.new_zeros((max(sizes), *t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        ctx.sizes, ctx.rank = sizes, rank
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def _gather(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(rows of all ranks in rank order, offset of this rank's rows)."""
    sizes = _all_sizes(t.shape[0], t.device)
    rank = dist.get_rank()
    return _GatherRows.apply(t, sizes, rank), sum(sizes[:rank])


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate `t` [n_r, ...] of all ranks along dim 0, keeping gradients to `t`.

    Returns `t` unchanged outside torch.distributed (or with one worker). Ranks may hold
    different row counts. Every rank must call it, and later call backward, together.
    """
    return _gather(t)[0] if _is_distributed() else t


def gathered_info_nce(
    q_local: torch.Tensor,
    c_local: torch.Tensor,
    temperature: float,
    extra_codes: torch.Tensor | None = None,
    code_keys: Keys | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """InfoNCE of this rank's queries against the codes (and hard negatives) of ALL ranks.

    Every worker's batch is a negative for every other, so W workers of batch B train
    with W*B - 1 in-batch negatives instead of B - 1, at the cost of one all-gather of
    embeddings (not of encoder passes). The loss is the mean over local queries; with
    equal local batches, the gradient averaging of DDP/DeepSpeed then gives exactly the
    gradient of the single-process loss on the concatenated batch (the backward of the
    gather sums, onto each local code, the gradients of every rank's loss).

    code_keys: one key per LOCAL candidate (c_local rows, then extra rows) that means
    the same on every rank: ints or an int tensor (code ids, stable hashes); Python's
    `hash()` of a string differs between processes and must not be used. All ranks must
    agree on whether extra_codes and code_keys are given. Outside torch.distributed this
    is `info_nce`.
    """
    if not _is_distributed():
        return info_nce(q_local, c_local, temperature, extra_codes, code_keys, 0, reduction)
    if q_local.shape[0] > c_local.shape[0]:
        raise ValueError(f"{q_local.shape[0]} queries but only {c_local.shape[0]} codes")
    c_all, offset = _gather(c_local)
    extra_all = None
    if extra_codes is not None:
        extra_all = _gather(_flatten_candidates(extra_codes))[0]
    keys_all = None
    if code_keys is not None:
        keys = _int_keys(code_keys, c_local.device)
        n_c = c_local.shape[0]
        keys_all = _gather(keys[:n_c])[0]
        if extra_codes is not None:
            keys_all = torch.cat([keys_all, _gather(keys[n_c:])[0]])
    return info_nce(q_local, c_all, temperature, extra_all, keys_all, offset, reduction)


def _int_keys(code_keys: Keys, device: torch.device) -> torch.Tensor:
    """Keys that can travel between ranks: an int64 tensor, never per-process hashes."""
    if isinstance(code_keys, torch.Tensor):
        return code_keys.to(device=device, dtype=torch.long)
    if not all(isinstance(k, int) for k in code_keys):
        raise TypeError("code_keys for gathered_info_nce must be ints (the same on every rank)")
    return torch.tensor(list(code_keys), dtype=torch.long, device=device)


# --- ranker ---


def listwise_ce(
    scores: torch.Tensor,
    scale: float,
    prior: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Softmax cross-entropy over each group [positive, m negatives] of ranker scores.

    scores: [B, 1+m], column 0 the positive. Scores go through `scale * tanh(.)` first
    (METHOD.md section 2): bounded logits keep one very confident pair from dominating
    the loss, and `scale` sets how peaked the softmax can get.

    prior: [B, 1+m] retriever scores (cosines) of the same pairs, or None. With a prior
    the ranker is trained as a residual on the retriever, on what the cascade scores
    (the authors' CoSQA form, DE + CE; METHOD.md section 3): logits are
    `scale * (prior + tanh(scores))`. A zero-initialised head (models/cross.py) then
    starts at the retriever's own in-group softmax, and training learns corrections.
    """
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be [B, 1+m] with m >= 1, got {tuple(scores.shape)}")
    logits = torch.tanh(scores.float())
    if prior is not None:
        if prior.shape != scores.shape:
            raise ValueError(f"prior {tuple(prior.shape)} must match scores {tuple(scores.shape)}")
        logits = logits + prior.to(logits)
    labels = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return F.cross_entropy(scale * logits, labels, reduction=reduction)
