"""The efficiency table (the paper's Table 5) on this machine: what a query costs.

Seconds per query of the retriever (query encoding + exact faiss search), of the cross
encoder over every code of the pool (extrapolated from a timed sample of pairs: a whole
100k pool would take hours per query) and of the cascade at K = `efficiency_k`, for pools
of `pool_sizes` codes. Code embedding is a one-off indexing cost and is reported on its
own. The evaluation job (evaluate.py) calls `efficiency` after the quality table.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from r2ps.evaluation.config import POOL_FILES, EvalConfig
from r2ps.log import get_logger
from r2ps.mining.index import CodeIndex, IndexConfig
from r2ps.models.cross import CrossEncoder
from r2ps.models.dual import DualEncoder
from r2ps.search.cascade import cascade_ids

log = get_logger(__name__)


def extrapolate(seconds: float, measured: int, target: int) -> float:
    """Time of `target` units from `seconds` measured over `measured` units (linear cost)."""
    if measured < 1:
        raise ValueError(f"cannot extrapolate from {measured} measured units")
    return seconds / measured * target


def efficiency_row(
    pool: int,
    de_s: float,
    rr_s: float,
    pair_seconds: float,
    timed_pairs: int,
    embed_seconds: float,
    embedded: int,
    build_s: float,
) -> dict:
    """One row of Table 5 from measured times; what was extrapolated is said so."""
    ce_s = extrapolate(pair_seconds, timed_pairs, pool)
    return {
        "pool": pool,
        "de_s_per_query": de_s,
        "ce_all_s_per_query": ce_s,
        "ce_all_extrapolated": timed_pairs < pool,
        "ce_all_basis": f"{timed_pairs} timed pairs x {pool} codes / {timed_pairs}",
        "rr_s_per_query": rr_s,
        "speedup_rr_vs_ce_all": ce_s / rr_s if rr_s > 0 else math.inf,
        "index_embed_s": extrapolate(embed_seconds, embedded, pool),
        "index_embed_extrapolated": embedded < pool,
        "index_build_s": build_s,
    }


# What a timing pool's folder holds, any one of: a split's codes, or a corpus's splits'.


def pool_codes(source: str, n: int) -> tuple[list[str], list[str]]:
    """Up to `n` (code_id, code) from `source`: a split folder, or a corpus of split folders
    (read in POOL_FILES order)."""
    folder = Path(source)
    if (folder / POOL_FILES[0]).exists():  # a split folder
        files = [folder / POOL_FILES[0]]
    else:  # a corpus: its splits in order, until there are `n` codes
        files = [folder / name for name in POOL_FILES[1:] if (folder / name).exists()]
    if not files:
        raise FileNotFoundError(f"pool_source {source}: holds no {', '.join(POOL_FILES)}")
    tables, have = [], 0
    for path in files:
        if have >= n:
            break
        table = pq.read_table(path, columns=["code_id", "code"])
        tables.append(table.slice(0, n - have))
        have += tables[-1].num_rows
    table = pa.concat_tables(tables)
    return table["code_id"].to_pylist(), table["code"].to_pylist()


def efficiency(
    cfg: EvalConfig, retriever: DualEncoder, ranker: CrossEncoder, queries: Sequence[str]
) -> dict:
    """Table 5: seconds per query of DE, the cross encoder over the pool and the cascade.

    The pool's distinct codes (at most `max_embed_codes`) are embedded once; a larger
    pool repeats those embeddings, which costs an exact (flat) search exactly what
    distinct codes would. Queries are timed one at a time, as a user sends them.
    """
    largest = max(cfg.pool_sizes)
    ids, codes = pool_codes(cfg.pool_source, min(largest, cfg.max_embed_codes))
    queries = list(queries[: cfg.timing_queries])
    if not queries or not codes:
        raise ValueError("efficiency needs at least one query and one code")
    t0 = time.perf_counter()
    emb = retriever.embed_codes(codes, cfg.batch_size)
    embed_s = time.perf_counter() - t0
    # Cross encoder cost per pair, on pairs of real queries and codes.
    n_pairs = cfg.timing_pairs
    pair_q = [queries[i % len(queries)] for i in range(n_pairs)]
    pair_c = [codes[i % len(codes)] for i in range(n_pairs)]
    t0 = time.perf_counter()
    ranker.score_pairs(pair_q, pair_c, cfg.batch_size)
    pair_s = time.perf_counter() - t0
    k = cfg.efficiency_k
    # One untimed pass of each model first: the first call pays for lazy initialisation.
    retriever.embed_queries(queries[:1])
    ranker.score_pairs(queries[:1], codes[:1])
    rows = []
    for pool in sorted(cfg.pool_sizes):
        take = np.arange(pool) % len(ids)
        pool_ids = [ids[i] if i < len(ids) else f"{ids[i % len(ids)]}#{i}" for i in range(pool)]
        pool_texts = [codes[i] for i in take]
        t0 = time.perf_counter()
        manifest = {"model_path": "efficiency pool"}
        index = CodeIndex.build(emb[take], pool_ids, IndexConfig(kind="flat"), manifest)
        build_s = time.perf_counter() - t0
        de_times, rr_times = [], []
        for text in queries:
            t0 = time.perf_counter()
            q = retriever.embed_queries([text], cfg.batch_size)
            scores, pos = index.search(q, min(k, pool))
            t1 = time.perf_counter()
            ce = ranker.score_pairs([text] * pos.shape[1], [pool_texts[p] for p in pos[0]])
            cascade_ids(pos[0], scores[0], ce)
            t2 = time.perf_counter()
            de_times.append(t1 - t0)
            rr_times.append(t2 - t0)
        rows.append(
            efficiency_row(
                pool,
                float(np.mean(de_times)),
                float(np.mean(rr_times)),
                pair_s,
                n_pairs,
                embed_s,
                len(codes),
                build_s,
            )
        )
        log.info("efficiency at %d codes: %s", pool, rows[-1])
    return {
        "k": k,
        "timed_queries": len(queries),
        "timed_pairs": n_pairs,
        "distinct_codes_embedded": len(codes),
        "ce_s_per_pair": pair_s / n_pairs,
        "rows": rows,
        "note": (
            "ce_all is extrapolated: seconds per timed pair x pool size; pools larger than "
            "distinct_codes_embedded repeat embeddings (same flat-search cost)"
        ),
    }
