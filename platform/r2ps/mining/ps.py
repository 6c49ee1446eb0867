"""PS negatives (METHOD.md section 4): which candidates of a retriever's ranking may be a
query's hard negatives, and how the ranker draws its `m` of them each epoch.

- `CandidateFilter`: the false-negative guard (never the positive, another gold code of
  the query, a duplicate of one, or an evaluation-pool code; guarded codes take no rank)
  and the paper's filter over the eligible ranking: the rank window [start, end)
  (`resolve_window`: absolute, or a fraction of N), score thresholds rho1/rho2 and a
  relative margin to the positive's score;
- `sample_negatives`: `m` of a window's candidates, p proportional to exp(score / tau').

The mining job (mining/mine.py) applies the filter to every (query, positive) of a split and
stores the windows; the ranker's training data (train/ranker_data.py) samples from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Why a candidate of the ranking was not kept, in the order the filter asks.
GUARDS = ("positive", "gold", "duplicate", "pool")
FILTERS = ("window_start", "rho2", "margin", "rho1")


# ---------------------------------------------------------------- sampling


def sample_negatives(
    scores: np.ndarray, m: int, inv_tau: float, rng: np.random.Generator
) -> np.ndarray:
    """Positions of `m` candidates, drawn without replacement with p ∝ exp(inv_tau * score).

    Uses the Gumbel-top-k trick (top m of `inv_tau*s + Gumbel noise`), which is exactly
    successive sampling without replacement and cannot fail when exp() underflows for a
    large `inv_tau`. With fewer than `m` candidates every one is returned first and the
    rest is drawn again with replacement, so a group always has exactly `m` negatives.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"sample_negatives: scores must be 1-D, got shape {s.shape}")
    if s.size == 0:
        raise ValueError("sample_negatives: no candidates to draw from")
    if m < 1:
        raise ValueError(f"sample_negatives: m must be >= 1, got {m}")
    if not math.isfinite(inv_tau) or not np.isfinite(s).all():
        raise ValueError("sample_negatives: inv_tau and every score must be finite")
    logits = inv_tau * s
    if s.size >= m:
        keys = logits + rng.gumbel(size=s.size)
        return np.argsort(-keys, kind="stable")[:m].astype(np.int64)
    p = np.exp(logits - logits.max())
    extra = rng.choice(s.size, size=m - s.size, replace=True, p=p / p.sum())
    return np.concatenate([np.arange(s.size), extra]).astype(np.int64)


# ---------------------------------------------------------------- the filter


def resolve_window(start: int | float, end: int | float, n: int) -> tuple[int, int]:
    """Absolute ranks [start, end) over `n` candidate codes; floats < 1 are fractions of n.

    A fractional start rounds down (the authors' ⌊λN⌋), a fractional end rounds up, so a
    small fraction still keeps at least one rank.
    """

    def one(value: int | float, name: str, rounding) -> int:
        if isinstance(value, float):
            if not 0.0 <= value < 1.0:
                raise ValueError(
                    f"{name}={value}: a float is a fraction of the N={n} candidate codes "
                    "and must be in [0, 1); give an integer for an absolute rank"
                )
            return int(rounding(value * n))
        if value < 0:
            raise ValueError(f"{name}={value}: ranks start at 0")
        return int(value)

    lo = one(start, "window_start", math.floor)
    hi = min(one(end, "window_end", math.ceil), n)
    if hi <= lo:
        raise ValueError(
            f"empty rank window [{lo}, {hi}) over N={n} candidate codes "
            f"(window_start={start}, window_end={end})"
        )
    return lo, hi


@dataclass
class Kept:
    """What the filter keeps of one ranking: index positions, eligible ranks, scores."""

    positions: np.ndarray  # int64
    ranks: np.ndarray  # int32, 0 = the best eligible code
    scores: np.ndarray  # float32
    removed: dict[str, int]


@dataclass
class CandidateFilter:
    """The false-negative guard and the paper's filter, applied to one ranking at a time.

    `groups[i]` is the duplicate group of index position i (codes with one
    `code_match_key` share a group); `pool[i]` marks evaluation-pool codes. Guarded codes
    (GUARDS) take no rank; the window, then rho2, the margin and rho1 (FILTERS) apply to
    the eligible ranking. Each removed candidate is counted once, under the first reason.
    """

    groups: np.ndarray
    pool: np.ndarray
    start: int
    end: int
    rho1: float | None = None
    rho2: float | None = None
    margin: float | None = None

    def __post_init__(self) -> None:
        self.groups = np.asarray(self.groups, dtype=np.int64)
        self.pool = np.asarray(self.pool, dtype=bool)
        if self.groups.shape != self.pool.shape:
            raise ValueError(f"groups {self.groups.shape} and pool {self.pool.shape} differ")
        if self.rho1 is not None and self.rho2 is not None and self.rho1 >= self.rho2:
            raise ValueError(f"rho1={self.rho1} must be below rho2={self.rho2}")
        self._group_sizes = np.bincount(self.groups, minlength=1)
        self._pool_count = int(self.pool.sum())

    def first_k(self, gold: np.ndarray) -> int:
        """How many results to ask the index for first: the window plus what the guard
        removes for sure (the gold codes and their duplicates) plus room for pool codes.

        Pool codes can be many (a whole evaluation set); counting all of them would
        inflate every search, so a ranking still short of the window is searched again
        with a larger k instead (`complete`).
        """
        gold_and_dups = int(self._group_sizes[np.unique(self.groups[gold])].sum())
        return self.end + gold_and_dups + min(self._pool_count, self.end)

    def guard(self, p: np.ndarray, positive: int, gold: np.ndarray) -> dict[str, np.ndarray]:
        """Masks over found positions `p` of the codes that can never be negatives."""
        is_pos = p == positive
        is_gold = np.isin(p, gold) & ~is_pos
        is_dup = np.isin(self.groups[p], self.groups[gold]) & ~is_pos & ~is_gold
        is_pool = self.pool[p] & ~(is_pos | is_gold | is_dup)
        return {"positive": is_pos, "gold": is_gold, "duplicate": is_dup, "pool": is_pool}

    def complete(self, positions: np.ndarray, gold: np.ndarray) -> bool:
        """Whether a ranking holds the whole window once guarded codes are taken out."""
        p = positions[positions >= 0]
        guarded = np.logical_or.reduce(list(self.guard(p, int(gold[0]), gold).values()))
        return int(p.size - guarded.sum()) >= self.end

    def apply(
        self,
        positions: np.ndarray,
        scores: np.ndarray,
        positive: int,
        gold: np.ndarray,
        pos_score: float,
    ) -> Kept:
        """Filter one ranking (positions best first, -1 = no result) of one (query, positive)."""
        p = np.asarray(positions, dtype=np.int64)
        s = np.asarray(scores, dtype=np.float32)
        found = p >= 0
        p, s = p[found], s[found]
        gold = np.union1d(np.asarray(gold, dtype=np.int64), [positive])
        masks = self.guard(p, positive, gold)
        removed = {reason: int(mask.sum()) for reason, mask in masks.items()}
        eligible = ~np.logical_or.reduce(list(masks.values()))
        p, s = p[eligible], s[eligible]
        ranks = np.arange(p.size, dtype=np.int32)
        keep = ranks < self.end
        removed["window_start"] = int((keep & (ranks < self.start)).sum())
        keep &= ranks >= self.start
        drops = {"rho2": None, "margin": None, "rho1": None}
        if self.rho2 is not None:
            drops["rho2"] = s > self.rho2
        if self.margin is not None:
            drops["margin"] = s > pos_score - self.margin * abs(pos_score)
        if self.rho1 is not None:
            drops["rho1"] = s < self.rho1
        for name, drop in drops.items():
            removed[name] = 0 if drop is None else int((keep & drop).sum())
            if drop is not None:
                keep &= ~drop
        return Kept(p[keep], ranks[keep], s[keep], removed)
