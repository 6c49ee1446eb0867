"""Losses: InfoNCE (hand-computed, duplicates, hard negatives), its cross-worker form, listwise CE."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from r2ps.train.losses import gather_with_grad, gathered_info_nce, info_nce, listwise_ce


def test_info_nce_hand_computed():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # logits / 0.5: row 0 = [2.0, 1.2] (positive 0), row 1 = [0.0, 1.6] (positive 1)
    expected = (
        -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.2)))
        - math.log(math.exp(1.6) / (1.0 + math.exp(1.6)))
    ) / 2
    assert info_nce(q, c, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_positive_offset():
    torch.manual_seed(0)
    q, c = torch.randn(2, 4), torch.randn(5, 4)
    ref = F.cross_entropy(q @ c.T / 0.1, torch.tensor([2, 3]))
    torch.testing.assert_close(info_nce(q, c, 0.1, positive_offset=2), ref)
    with pytest.raises(ValueError):
        info_nce(q, c, 0.1, positive_offset=4)


def test_duplicates_of_the_positive_are_masked():
    torch.manual_seed(0)
    q, c = torch.randn(3, 4), torch.randn(3, 4)
    logits = q @ c.T / 0.1
    # Codes 0 and 1 are the same code: neither is a negative for the other's query.
    ref = torch.stack(
        [
            -F.log_softmax(logits[0, [0, 2]], 0)[0],
            -F.log_softmax(logits[1, [1, 2]], 0)[0],
            -F.log_softmax(logits[2], 0)[2],
        ]
    ).mean()
    torch.testing.assert_close(info_nce(q, c, 0.1, code_keys=[7, 7, 3]), ref)
    torch.testing.assert_close(info_nce(q, c, 0.1, code_keys=torch.tensor([7, 7, 3])), ref)
    torch.testing.assert_close(info_nce(q, c, 0.1, code_keys=["a", "a", "b"]), ref)
    with pytest.raises(ValueError):
        info_nce(q, c, 0.1, code_keys=[1, 2])


def test_extra_hard_negatives_are_candidates_of_every_query():
    torch.manual_seed(0)
    q, c, extra = torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 3, 4)
    flat = extra.reshape(6, 4)
    ref = F.cross_entropy(q @ torch.cat([c, flat]).T / 0.05, torch.arange(2))
    torch.testing.assert_close(info_nce(q, c, 0.05, extra_codes=extra), ref)
    torch.testing.assert_close(info_nce(q, c, 0.05, extra_codes=flat), ref)
    # A hard negative that is a duplicate of query 0's positive is masked for query 0 only.
    keys = [10, 11, 10, 20, 21, 22, 23, 24]
    logits = q @ torch.cat([c, flat]).T / 0.05
    ref = torch.stack(
        [
            -F.log_softmax(logits[0, [0, 1, 3, 4, 5, 6, 7]], 0)[0],
            -F.log_softmax(logits[1], 0)[1],
        ]
    ).mean()
    torch.testing.assert_close(info_nce(q, c, 0.05, extra_codes=extra, code_keys=keys), ref)


def test_listwise_ce_is_cross_entropy_on_scaled_tanh():
    torch.manual_seed(0)
    scores = torch.randn(4, 1 + 3) * 3
    ref = F.cross_entropy(20.0 * torch.tanh(scores), torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(listwise_ce(scores, 20.0), ref)
    with pytest.raises(ValueError):
        listwise_ce(scores[:, :1], 20.0)


def test_not_distributed_falls_back_to_local():
    torch.manual_seed(0)
    q, c = torch.randn(3, 4), torch.randn(3, 4)
    assert gather_with_grad(c) is c
    torch.testing.assert_close(gathered_info_nce(q, c, 0.05), info_nce(q, c, 0.05))


# --- two real processes on gloo ---

WORLD = 2
D = 8
TEMP = 0.05


def _make_data(sizes: list[int], m: int) -> dict:
    """Per-rank slices of one global batch; code keys repeat across ranks on purpose."""
    g = torch.Generator().manual_seed(0)
    n = sum(sizes)
    return {
        "sizes": sizes,
        "q": F.normalize(torch.randn(n, D, generator=g), dim=-1),
        "c": F.normalize(torch.randn(n, D, generator=g), dim=-1),
        "extra": F.normalize(torch.randn(n, m, D, generator=g), dim=-1),
        "c_keys": torch.tensor([i % 4 for i in range(n)]),  # rows 0 and 4 are "the same code"
        # One hard negative (row 0's second) is a duplicate of code 2: masked for query 2.
        "e_keys": torch.arange(100, 100 + n * m).index_fill(0, torch.tensor([1]), 2).view(n, m),
    }


def _local(data: dict, rank: int, name: str) -> torch.Tensor:
    start = sum(data["sizes"][:rank])
    return data[name][start : start + data["sizes"][rank]]


def _run_rank(data: dict, rank: int, reduction: str, use_extra: bool) -> dict:
    q = _local(data, rank, "q").clone().requires_grad_()
    c = _local(data, rank, "c").clone().requires_grad_()
    extra = _local(data, rank, "extra").clone().requires_grad_() if use_extra else None
    keys = _local(data, rank, "c_keys")
    if use_extra:
        keys = torch.cat([keys, _local(data, rank, "e_keys").reshape(-1)])
    loss = gathered_info_nce(q, c, TEMP, extra_codes=extra, code_keys=keys, reduction=reduction)
    loss.backward()
    out = {"loss": loss.detach(), "q": q.grad, "c": c.grad}
    if use_extra:
        out["extra"] = extra.grad
    return out


SCENARIOS = {
    "equal_mean_extra": ([3, 3], "mean", True),
    "unequal_sum": ([3, 2], "sum", False),
}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    try:
        for name, (sizes, reduction, use_extra) in SCENARIOS.items():
            data = _make_data(sizes, m=2)
            torch.save(_run_rank(data, rank, reduction, use_extra), f"{out_dir}/{name}_{rank}.pt")
    finally:
        dist.destroy_process_group()


def _single_process(data: dict, reduction: str, use_extra: bool) -> dict:
    q = data["q"].clone().requires_grad_()
    c = data["c"].clone().requires_grad_()
    extra = data["extra"].clone().requires_grad_() if use_extra else None
    keys = data["c_keys"]
    if use_extra:  # all ranks' codes first, then all ranks' hard negatives
        keys = torch.cat([keys, data["e_keys"].reshape(-1)])
    loss = info_nce(q, c, TEMP, extra_codes=extra, code_keys=keys, reduction="none")
    total = loss.mean() if reduction == "mean" else loss.sum()
    total.backward()
    out = {"per_row": loss.detach(), "q": q.grad, "c": c.grad}
    if use_extra:
        out["extra"] = extra.grad
    return out


def test_gathered_loss_equals_single_process_loss_on_the_concatenated_batch(tmp_path: Path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    for name, (sizes, reduction, use_extra) in SCENARIOS.items():
        data = _make_data(sizes, m=2)
        ref = _single_process(data, reduction, use_extra)
        # DDP averages gradients over ranks: with a per-rank mean, local grads are W x global.
        grad_scale = WORLD if reduction == "mean" else 1
        for rank in range(WORLD):
            got = torch.load(tmp_path / f"{name}_{rank}.pt")
            rows = _local({**ref, "sizes": sizes}, rank, "per_row")
            expected = rows.mean() if reduction == "mean" else rows.sum()
            torch.testing.assert_close(got["loss"], expected, msg=name)
            for part in ("q", "c", "extra") if use_extra else ("q", "c"):
                torch.testing.assert_close(
                    got[part],
                    grad_scale * _local({**ref, "sizes": sizes}, rank, part),
                    msg=f"{name}: gradient of {part} on rank {rank}",
                )


def test_listwise_ce_with_a_prior_is_the_residual_on_the_retriever():
    """With the retriever's scores as prior, a zero ranker IS the retriever: the loss is
    the retriever's in-group softmax cross-entropy; a ranker adds tanh(score) to it."""
    torch.manual_seed(0)
    prior = torch.rand(3, 4) * 2 - 1
    zero = torch.zeros(3, 4)
    labels = torch.zeros(3, dtype=torch.long)
    torch.testing.assert_close(listwise_ce(zero, 20.0, prior), F.cross_entropy(20 * prior, labels))
    scores = torch.randn(3, 4)
    ref = F.cross_entropy(20 * (prior + torch.tanh(scores)), labels)
    torch.testing.assert_close(listwise_ce(scores, 20.0, prior), ref)
    with pytest.raises(ValueError, match="prior"):
        listwise_ce(scores, 20.0, prior[:, :2])
