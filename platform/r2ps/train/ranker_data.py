"""The ranker's training data: mined rows joined with their texts, and the groups of
(query, code) pairs each training query becomes (METHOD.md sections 2 and 4).

Where a group's negatives come from is one setting, `negatives_source`:

- `ps`: the window of candidates the mining job stored for the query (ranking-based
  hard negatives), resampled every epoch with a seed made of (seed, epoch, query), so a
  run is reproducible and resuming mid-epoch redraws exactly what the lost attempt drew;
  `ps_random` of them drawn uniformly from the whole pool instead;
- `in_batch`: the paper's "RR" baseline, the other codes of the batch (B queries x B
  codes), minus codes of the query's own duplicate group (a duplicate is a false
  negative, as in the retriever's loss).

Both go through `build_groups`, which returns (queries, codes, group size); the loss
does not know which source made the groups. The task that trains on them: train/ranker.py.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from r2ps.data.codetext import query_key
from r2ps.data.schema import MINE_SUMMARY, RetrievalSet
from r2ps.log import get_logger
from r2ps.mining.negatives import named_split, read_negatives
from r2ps.mining.ps import sample_negatives
from r2ps.train.config import RankerConfig
from r2ps.train.retriever import seeded_sample, training_pairs

log = get_logger(__name__)

SOURCES = ("ps", "in_batch")
# The mining output columns the ranker reads (cand_ranks and pos_score are not needed).
NEGATIVE_COLUMNS = ("query_id", "code_id", "cand_ids", "cand_scores")
PS_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("query", pa.string()),
        ("code", pa.string()),
        ("cand_ids", pa.list_(pa.string())),
        ("cand_scores", pa.list_(pa.float32())),
        ("gold_ids", pa.list_(pa.string())),  # never drawn as a random negative
    ]
)


def check_config(cfg: RankerConfig) -> None:
    """Fail before any Ray work on ranker settings that cannot run."""
    if cfg.negatives_source not in SOURCES:
        raise ValueError(f"negatives_source must be one of {SOURCES}, got {cfg.negatives_source!r}")
    if cfg.negatives_source == "ps" and not cfg.negatives:
        raise ValueError("negatives_source=ps needs --negatives <mining output folder>")
    if cfg.num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {cfg.num_negatives}")
    if cfg.rerank_k < 1:
        raise ValueError(f"rerank_k must be >= 1, got {cfg.rerank_k}")
    if cfg.negatives_source == "in_batch" and cfg.batch_size < 2:
        raise ValueError("negatives_source=in_batch needs batch_size >= 2 (no other codes)")
    if not 0 <= cfg.ps_random <= cfg.num_negatives:
        raise ValueError(f"ps_random must be in [0, num_negatives], got {cfg.ps_random}")


# --- the rows -----------------------------------------------------------------------


def pairs_folder(negatives: str | Path) -> Path:
    """The split folder the mined ids refer to (`named_split`), checked to hold codes."""
    folder = named_split(negatives)
    if not (folder / "codes.parquet").exists():
        raise FileNotFoundError(
            f"{Path(negatives) / MINE_SUMMARY}: field 'pairs' names {str(folder)!r}, which "
            "holds no codes.parquet"
        )
    return folder


def ps_rows(cfg: RankerConfig) -> tuple[pa.Table, dict]:
    """Mined rows joined with their texts; and a report of what could not be used.

    Candidates that are a gold code of the query's text (the positive included; any
    query id holding the same text counts, `codetext.query_key`) are removed
    (the miner should already have done so; a false negative must never reach the loss).
    Rows left with no candidate cannot make a group: they are counted and named in the
    report, never silently dropped.
    """
    folder = pairs_folder(cfg.negatives)
    rset = RetrievalSet.read(folder)
    neg = read_negatives(cfg.negatives, NEGATIVE_COLUMNS)
    query_text = dict(
        zip(rset.queries["query_id"].to_pylist(), rset.queries["query"].to_pylist(), strict=True)
    )
    code_ids = set(rset.codes["code_id"].to_pylist())
    code_text = dict(
        zip(rset.codes["code_id"].to_pylist(), rset.codes["code"].to_pylist(), strict=True)
    )
    gold: dict[str, set[str]] = {}  # by query text: one text under two ids is one query
    for q, c in zip(
        rset.qrels["query_id"].to_pylist(), rset.qrels["code_id"].to_pylist(), strict=True
    ):
        gold.setdefault(query_key(query_text[q]), set()).add(c)

    where = Path(cfg.negatives) / "negatives"
    rows: dict[str, list] = {name: [] for name in PS_SCHEMA.names}
    empty: list[str] = []
    removed = 0
    for qid, cid, cands, scores in zip(
        neg["query_id"].to_pylist(),
        neg["code_id"].to_pylist(),
        neg["cand_ids"].to_pylist(),
        neg["cand_scores"].to_pylist(),
        strict=True,
    ):
        if qid not in query_text:
            raise ValueError(f"{where}: query_id {qid!r} is not in {folder}/queries.parquet")
        if cid not in code_text:
            raise ValueError(f"{where}: code_id {cid!r} is not in {folder}/codes.parquet")
        cands, scores = cands or [], scores or []
        if len(cands) != len(scores):
            raise ValueError(
                f"{where}: query_id {qid!r}: {len(cands)} cand_ids but {len(scores)} cand_scores"
            )
        golds = gold.get(query_key(query_text[qid]), set()) | {cid}
        keep = [i for i, c in enumerate(cands) if c not in golds]
        removed += len(cands) - len(keep)
        unknown = [cands[i] for i in keep if cands[i] not in code_ids]
        if unknown:
            raise ValueError(f"{where}: cand_ids {unknown[:3]} are not in {folder}/codes.parquet")
        if not keep:
            empty.append(qid)
            continue
        rows["query_id"].append(qid)
        rows["query"].append(query_text[qid])
        rows["code"].append(code_text[cid])
        rows["cand_ids"].append([cands[i] for i in keep])
        rows["cand_scores"].append([scores[i] for i in keep])
        rows["gold_ids"].append(sorted(golds))
    table = pa.table(rows, schema=PS_SCHEMA)
    report = {
        "source": "ps",
        "negatives": str(cfg.negatives),
        "pairs": str(folder),
        "rows_read": neg.num_rows,
        "rows_used": table.num_rows,
        "empty_windows": len(empty),
        "empty_window_queries": empty[:20],
        "gold_candidates_removed": removed,
    }
    if empty:
        log.warning(
            "%d of %d mined rows have an empty candidate window and make no group "
            "(first query ids: %s)",
            len(empty),
            neg.num_rows,
            ", ".join(empty[:5]),
        )
    if removed:
        log.warning("removed %d candidates that are gold codes of their query", removed)
    return seeded_sample(table, cfg), report


def ranker_rows(cfg: RankerConfig) -> tuple[pa.Table, dict]:
    """The training rows of `cfg.negatives_source`, and the data report."""
    check_config(cfg)
    if cfg.negatives_source == "ps":
        return ps_rows(cfg)
    table = training_pairs(cfg)  # (query, code, group): the retriever's rows, same seed
    return table, {"source": "in_batch", "rows_used": table.num_rows}


@functools.lru_cache(maxsize=2)
def code_texts(negatives: str) -> dict[str, str]:
    """code_id -> code of the mined split, loaded once per worker process."""
    codes = pq.read_table(pairs_folder(negatives) / "codes.parquet", columns=["code_id", "code"])
    return dict(zip(codes["code_id"].to_pylist(), codes["code"].to_pylist(), strict=True))


# --- the groups ---------------------------------------------------------------------


def query_seed(seed: int, epoch: int, query_id: str) -> np.random.Generator:
    """A generator seeded by (seed, epoch, query): independent of batch order and worker."""
    digest = hashlib.blake2b(str(query_id).encode(), digest_size=8).digest()
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, int.from_bytes(digest, "little")])


def ps_groups(
    batch: dict[str, Any],
    texts: dict[str, str],
    m: int,
    inv_tau: float,
    seed: int,
    epoch: int,
    n_random: int = 0,
) -> tuple[list[str], list[str], int]:
    """Groups [positive, m negatives] for each row: m - n_random drawn from the row's mined
    window, n_random uniformly from the whole mined pool (`texts`) minus the row's gold
    codes (easy negatives mixed with the hard ones)."""
    if not 0 <= n_random <= m:
        raise ValueError(f"n_random must be in [0, {m}], got {n_random}")
    pool = list(texts) if n_random else []
    queries: list[str] = []
    codes: list[str] = []
    for qid, query, positive, cands, scores, golds in zip(
        batch["query_id"],
        batch["query"],
        batch["code"],
        batch["cand_ids"],
        batch["cand_scores"],
        batch["gold_ids"],
        strict=True,
    ):
        rng = query_seed(seed, epoch, str(qid))
        picks = (
            [
                str(cands[int(p)])
                for p in sample_negatives(
                    np.asarray(scores, dtype=np.float32), m - n_random, inv_tau, rng
                )
            ]
            if m > n_random
            else []
        )
        picks += random_codes(pool, n_random, {str(g) for g in golds} | set(picks), rng)
        queries.extend([str(query)] * (1 + m))
        codes.append(str(positive))
        codes.extend(texts[c] for c in picks)
    return queries, codes, 1 + m


def random_codes(
    pool: Sequence[str], n: int, exclude: set[str], rng: np.random.Generator
) -> list[str]:
    """`n` distinct code ids drawn uniformly from `pool`, none in `exclude` (with
    replacement only when the pool has fewer than `n` eligible codes)."""
    if n == 0:
        return []
    eligible = [c for c in pool if c not in exclude] if len(pool) < 4 * (n + len(exclude)) else None
    if eligible is not None:
        if not eligible:
            raise ValueError("no code of the pool is eligible as a random negative")
        return [eligible[int(i)] for i in rng.choice(len(eligible), n, replace=len(eligible) < n)]
    out: list[str] = []
    while len(out) < n:  # rejection: the pool is much larger than what is excluded
        c = pool[int(rng.integers(len(pool)))]
        if c not in exclude and c not in out:
            out.append(c)
    return out


def in_batch_groups(batch: dict[str, Any]) -> tuple[list[str], list[str], int]:
    """Groups [positive, the other B-1 codes of the batch] for each of the B rows.

    Codes of the row's own duplicate group (same code, or another gold code of the same
    query) are not negatives; their places are filled by repeating the row's real
    negatives in batch order, so every group keeps size B.
    """
    batch_codes = [str(c) for c in batch["code"]]
    groups = np.asarray(batch["group"])
    size = len(batch_codes)
    queries: list[str] = []
    codes: list[str] = []
    for i, query in enumerate(batch["query"]):
        negatives = [batch_codes[j] for j in range(size) if groups[j] != groups[i]]
        if not negatives:
            raise ValueError(
                f"in_batch: all {size} codes of the batch are duplicates of row {i}'s "
                "positive; raise batch_size"
            )
        queries.extend([str(query)] * size)
        codes.append(batch_codes[i])
        codes.extend(negatives[k % len(negatives)] for k in range(size - 1))
    return queries, codes, size


def build_groups(
    batch: dict[str, Any], cfg: RankerConfig, epoch: int
) -> tuple[list[str], list[str], int]:
    """(queries, codes, group size): row-major groups, each starting with its positive."""
    if cfg.negatives_source == "in_batch":
        return in_batch_groups(batch)
    if cfg.negatives_source == "ps":
        texts = code_texts(str(cfg.negatives))
        return ps_groups(
            batch, texts, cfg.num_negatives, cfg.ps_inv_tau, cfg.seed, epoch, cfg.ps_random
        )
    raise ValueError(f"negatives_source must be one of {SOURCES}, got {cfg.negatives_source!r}")
