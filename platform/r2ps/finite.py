"""The one check that vectors and scores are finite, used wherever they enter a stage.

A NaN or inf row (an fp16/bf16 overflow, a broken checkpoint, a corrupt shard) is
never an answer: faiss silently never returns a NaN vector it indexed, and every
comparison with NaN is False, so a NaN query embedding would look like a perfect
retriever to a rank count. The boundaries where vectors are made or enter a stage
(embedding output, index build and search, retrieval for evaluation, ranker scores)
call `check_finite` and refuse such input, naming its rows; the metrics rank a
non-finite score last (`r2ps.evaluation.metrics`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

SHOWN = 10  # rows named in a message; the count says how many there are


def nonfinite_rows(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Positions (int64) of the rows of `x` ([N] or [N, ...]) that hold NaN or +-inf.

    torch is not imported here: a tensor exists only where torch already is (the search
    command checks numpy vectors and never loads it)."""
    th = sys.modules.get("torch")
    if th is not None and isinstance(x, th.Tensor):
        if not x.is_floating_point() or bool(th.isfinite(x).all()):
            return np.zeros(0, dtype=np.int64)
        ok = th.isfinite(x.detach()).reshape(len(x), -1).all(dim=1).cpu().numpy()
    else:
        a = np.asarray(x)
        if a.dtype.kind not in "fc" or np.isfinite(a).all():
            return np.zeros(0, dtype=np.int64)
        ok = np.isfinite(a).reshape(len(a), -1).all(axis=1)
    return np.flatnonzero(~ok)


def describe_rows(
    rows: Sequence[int], total: int, what: str, names: Sequence[object] | None = None
) -> str:
    """`what: 2 of 20 rows hold NaN or inf values (rows 3, 7); e.g. ['c3', 'c7']`."""
    shown = ", ".join(str(r) for r in rows[:SHOWN]) + (", ..." if len(rows) > SHOWN else "")
    msg = f"{what}: {len(rows)} of {total} rows hold NaN or inf values (rows {shown})"
    if names is not None:
        msg += f"; e.g. {[names[r] for r in rows[:3]]!r}"
    return msg


def check_finite(
    x: np.ndarray | torch.Tensor,
    what: str,
    names: Sequence[object] | None = None,
    first_row: int = 0,
    total: int | None = None,
) -> None:
    """Raise ValueError naming the rows of `x` ([N] or [N, ...]) that hold NaN or +-inf.

    `names`: one label per row (e.g. code ids, query texts) added to the message.
    `first_row`, `total`: where `x` sits in a larger matrix of `total` rows checked a
    chunk at a time (rows and names are reported at their positions there).
    """
    rows = nonfinite_rows(x)
    if rows.size:
        total = len(x) if total is None else total
        raise ValueError(describe_rows((rows + first_row).tolist(), total, what, names))
