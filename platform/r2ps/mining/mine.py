"""PS hard-negative mining (METHOD.md section 4), with the false-negative guard.

For every (query, positive) pair of a training split, the trained retriever ranks the
split's codes; a filter keeps a window of that ranking; the ranker then samples `m`
negatives from the window every epoch (`sample_negatives`). Storing the whole window,
not one draw, is what lets the ranker resample each epoch, reproducibly, from a seed.

Where r2ps does better than the authors' code:
- never a negative: the positive itself, an exact or normalised duplicate of a gold code
  (same `code_match_key`: comments, layout and docstrings ignored), another gold code of
  the same query, or a code of an evaluation pool (`exclude`);
- ranks count eligible codes only, so a window [0, 64) holds 64 real candidates however
  many guarded codes sit at the top of the ranking;
- the paper's full filter: rank window [start, end) (absolute, or a fraction of N),
  score thresholds rho1/rho2 and a relative margin to the positive's score;
- memory does not grow with the number of queries: queries are embedded, searched and
  filtered one shard at a time, each shard written atomically, so a crashed run resumes
  where it stopped and gives the same files.

This module is the job: its settings, the guard's inputs (match keys, evaluation pools,
golds shared by query text), and the ranking of each shard's queries against the index
(`search_windows`, `_Miner`). What it writes, the counts it keeps and how the ranker
reads them back are `mining/negatives.py`'s; the index comes from
`mining/corpus_index.py`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from r2ps.config import Need, needs, to_dict
from r2ps.data.codetext import code_match_key, query_key
from r2ps.data.schema import MINE_SUMMARY, MODEL_CONFIG, TABLE_FILES, conform, split_files
from r2ps.log import get_logger
from r2ps.mining.index import IndexConfig
from r2ps.mining.negatives import (
    NEGATIVES_SCHEMA,
    check_settings,
    count_pair,
    empty_stats,
    merge_stats,
    read_shard_stats,
    summarize,
    write_shard,
)
from r2ps.mining.ps import CandidateFilter, resolve_window
from r2ps.storage import atomic_path, write_text_atomic

log = get_logger(__name__)

QueryEmbedder = Callable[[list[str]], np.ndarray]


@dataclass
class MineConfig:
    """Settings of `jobs/mine.py`; PS defaults follow the paper (window from rank 0, uniform)."""

    model: str = field(default="", metadata={"help": "retriever (HF dir; default: MiniLM)"})
    pairs: str = field(
        default="runs/demo/pipeline/corpus/train",
        metadata={"help": "training split folder to mine (default: what `make demo` built)"},
    )
    out: str = field(default="runs/demo/mined", metadata={"help": "output folder"})
    index_dir: str = field(
        default="", metadata={"help": "reuse embeddings/index from here (default: --out)"}
    )
    window_start: int | float = field(
        default=0, metadata={"help": "first rank kept (0 = top); a float < 1 is a fraction of N"}
    )
    window_end: int | float = field(
        default=64, metadata={"help": "rank window end (exclusive); a float < 1 is a fraction"}
    )
    rho1: float | None = field(default=None, metadata={"help": "drop scores below (None: off)"})
    rho2: float | None = field(default=None, metadata={"help": "drop scores above (None: off)"})
    margin: float | None = field(
        default=None,
        metadata={"help": "drop scores above pos - margin*|pos| (None: off)"},
    )
    m: int = field(default=31, metadata={"help": "negatives per query the ranker draws"})
    inv_tau: float = field(default=0.0, metadata={"help": "1/tau' of the draw (0: uniform)"})
    seed: int = 0
    query_chunk: int = field(default=512, metadata={"help": "queries per index search"})
    shard_queries: int = field(default=4096, metadata={"help": "queries per output shard"})
    exclude: list[str] = field(
        default_factory=list,
        metadata={"help": "evaluation pools whose codes are never negatives"},
    )
    actors: int = field(default=2, metadata={"help": "embedding actors (when embedding)"})
    batch_size: int = field(default=64, metadata={"help": "texts per embedding batch"})
    index: IndexConfig = field(default_factory=IndexConfig)

    def inputs(self) -> list[Need]:
        """Every path mining reads (`config.check_inputs`, before Ray starts): the model,
        the split, and the evaluation pools, read only once the index is built."""
        from r2ps.data.dedupe import pool_needs

        return [
            *needs(self, "model", MODEL_CONFIG, what="a retriever folder"),
            *needs(self, "pairs", *split_files(), what="a split folder", required=True),
            *pool_needs(self, "exclude"),
        ]


# ---------------------------------------------------------------- the job


def match_groups(keys: np.ndarray) -> np.ndarray:
    """Duplicate group per code: codes with one match key (`code_match_key`) share one."""
    _, groups = np.unique(keys, return_inverse=True)
    return groups.astype(np.int64).reshape(-1)


def pool_mask(keys: np.ndarray, pools: list[str]) -> tuple[np.ndarray, dict[str, int]]:
    """Which codes (by match key) are in an evaluation pool, and how many each pool hit."""
    from r2ps.data.dedupe import pool_match_keys

    mask = np.zeros(len(keys), dtype=bool)
    hits: dict[str, int] = {}
    for pool in pools:
        hit = np.isin(keys, np.asarray(sorted(pool_match_keys(pool)), dtype=object))
        hits[str(pool)] = int(hit.sum())
        mask |= hit
    return mask, hits


def _settings(cfg: MineConfig, manifest: dict, pool_hits: dict, n: int) -> dict:
    """Everything that decides the shards' content: a re-run must match it to reuse them."""
    keep = {k: v for k, v in to_dict(cfg).items() if k not in ("out", "index_dir", "actors")}
    keep["pairs"] = str(Path(cfg.pairs).resolve())
    keep["exclude"] = {str(Path(p).resolve()): hits for p, hits in sorted(pool_hits.items())}
    keep["model_fingerprint"] = manifest.get("model_fingerprint")
    keep["corpus_fingerprint"] = manifest.get("corpus_fingerprint")
    keep["candidates"] = n
    keep["guard"] = "query text"  # golds of every id holding the query's text (was: the id)
    return keep


def _query_order(pairs_dir: str) -> tuple[pa.Table, pa.Table]:
    """(queries sorted by id, qrels sorted by query and code); a qrel's query must exist.

    Only these two tables are read whole: the code texts are streamed (`code_keys`).
    """
    tables = {}
    for name in ("queries", "qrels"):
        path = Path(pairs_dir) / f"{name}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path}: not found ({pairs_dir} is not a split folder)")
        try:
            tables[name] = conform(pq.read_table(path), TABLE_FILES[name])
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
    qrels = tables["qrels"].sort_by([("query_id", "ascending"), ("code_id", "ascending")])
    queries = tables["queries"]
    unknown = pc.sum(pc.invert(pc.is_in(qrels["query_id"], queries["query_id"]))).as_py()
    if unknown:
        raise ValueError(
            f"{pairs_dir}/qrels.parquet: {unknown} row(s) name a query_id not in queries.parquet"
        )
    queries = queries.filter(pc.is_in(queries["query_id"], qrels["query_id"]))
    return queries.sort_by([("query_id", "ascending")]), qrels


def code_keys(pairs_dir: str, code_ids: list[str], cache: Path, fingerprint: str) -> np.ndarray:
    """`code_match_key` of every code, in index order, cached beside the output.

    Tokenising every code is the slow part of the guard (about 0.3 ms a code), so the
    keys are kept in `cache` for a re-run over the same corpus (same fingerprint).
    """
    if cache.exists():
        table = pq.read_table(cache)
        if (table.schema.metadata or {}).get(b"corpus_fingerprint") == fingerprint.encode():
            return np.asarray(table["key"].to_pylist(), dtype=object)
    path = Path(pairs_dir) / "codes.parquet"
    codes = pq.read_table(path, columns=["code_id", "code"])
    where = pc.index_in(pa.array(code_ids, pa.string()), value_set=codes["code_id"])
    if where.null_count:
        raise ValueError(f"{path}: {where.null_count} code(s) of the index are not in it")
    texts = codes["code"].take(where)
    del codes
    keys = np.empty(len(code_ids), dtype=object)
    step = 8192
    for lo in range(0, len(code_ids), step):
        keys[lo : lo + step] = [code_match_key(c) for c in texts.slice(lo, step).to_pylist()]
    meta = {b"corpus_fingerprint": fingerprint.encode()}
    table = pa.table({"key": pa.array(keys.tolist(), pa.string())}).replace_schema_metadata(meta)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as tmp:
        pq.write_table(table, tmp)
    return keys


def text_golds(queries: pa.Table, qrels: pa.Table, code_ids: list[str]) -> dict[str, list[int]]:
    """Index positions of the gold codes of each query text held by more than one query id.

    Only those texts: a text with one id has its golds in its own shard already.
    """
    keys = [query_key(t) for t in queries["query"].to_pylist()]
    key_of = dict(zip(queries["query_id"].to_pylist(), keys, strict=True))
    seen: dict[str, int] = {}
    for key in keys:
        seen[key] = seen.get(key, 0) + 1
    position = {cid: i for i, cid in enumerate(code_ids)}
    out: dict[str, list[int]] = {}
    for qid, cid in zip(qrels["query_id"].to_pylist(), qrels["code_id"].to_pylist(), strict=True):
        key = key_of[qid]
        if seen[key] > 1 and cid in position:
            out.setdefault(key, []).append(position[cid])
    return out


def search_windows(
    index, filt: CandidateFilter, q_emb: np.ndarray, golds: list[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """Per query (scores, positions) long enough to hold the whole window, and how many
    queries had to be searched again.

    One search with `first_k` for the chunk; the few queries whose ranking is still
    short (many pool codes near the top) are searched again with 4x the k, until
    complete, the whole corpus is searched, or the index returns nothing more (an
    approximate index can find fewer than k).
    """
    n = len(index.code_ids)
    k = min(n, max(filt.first_k(g) for g in golds))
    s, p = index.search(q_emb, k)
    scores, positions = list(s), list(p)
    need = [j for j in range(len(golds)) if not filt.complete(p[j], golds[j])]
    again = 0
    while need and k < n:
        k = min(n, 4 * k)
        s, p = index.search(q_emb[need], k)
        more = []
        for row, j in enumerate(need):
            grew = (p[row] >= 0).sum() > (positions[j] >= 0).sum()
            scores[j], positions[j] = s[row], p[row]
            if grew and not filt.complete(p[row], golds[j]):
                more.append(j)
        again += len(need)
        need = more
    return scores, positions, again


class _Miner:
    """The state one run shares across shards: index, embeddings, filter, model."""

    def __init__(
        self,
        cfg: MineConfig,
        index,
        code_emb: np.ndarray,
        filt: CandidateFilter,
        embed_queries: QueryEmbedder | None = None,
        shared_golds: dict[str, list[int]] | None = None,
    ):
        self.cfg = cfg
        # golds of query texts held by several query ids, over the whole split: a shard
        # sees only its own ids (`text_golds`)
        self.shared_golds = shared_golds or {}
        self.embed_queries = embed_queries or self._retriever_queries
        self.index = index
        self.code_emb = code_emb
        self.filt = filt
        self.code_ids = pa.array(index.code_ids, pa.string())
        self.position = {cid: i for i, cid in enumerate(index.code_ids)}
        self._model = None
        self.researched = 0  # queries searched again for a longer ranking
        self.seconds = dict.fromkeys(("embed_queries", "search", "filter", "write"), 0.0)

    def _retriever_queries(self, texts: list[str]) -> np.ndarray:
        """Query embeddings from the retriever, loaded once and only when a shard needs it."""
        if self._model is None:
            from r2ps.models.dual import DualEncoder
            from r2ps.models.encoder import model_or_default

            self._model = DualEncoder.from_pretrained(model_or_default(self.cfg.model))
        return self._model.embed_queries(texts, self.cfg.batch_size)

    def shard(self, queries: pa.Table, qrels: pa.Table, number: int) -> tuple[pa.Table, dict]:
        """Mine one shard of queries: embed, search in chunks, filter every pair."""
        cfg = self.cfg
        t0 = time.perf_counter()
        q_emb = self.embed_queries(queries["query"].to_pylist())
        self.seconds["embed_queries"] += time.perf_counter() - t0
        row_of = {qid: i for i, qid in enumerate(queries["query_id"].to_pylist())}
        texts = queries["query"].to_pylist()
        key_of = dict(zip(queries["query_id"].to_pylist(), map(query_key, texts), strict=True))
        # The guard's identity is the query text: every gold code of any query id holding
        # the same text is a gold code of this query, never its negative.
        gold_of: dict[str, list[int]] = {}
        pairs = list(zip(qrels["query_id"].to_pylist(), qrels["code_id"].to_pylist(), strict=True))
        for qid, cid in pairs:
            if cid not in self.position:
                raise ValueError(
                    f"{cfg.pairs}/qrels.parquet: code_id {cid} is not in codes.parquet"
                )
            gold_of.setdefault(key_of[qid], []).append(self.position[cid])
        for key, shared in self.shared_golds.items():
            if key in gold_of:
                gold_of[key] = gold_of[key] + shared
        rng = np.random.default_rng([cfg.seed, number])
        stats = empty_stats()
        out = {"query_id": [], "code_id": [], "flat": [], "ranks": [], "scores": [], "pos": []}
        lengths: list[int] = []
        by_query: dict[str, list[tuple[str, str]]] = {}
        for qid, cid in pairs:
            by_query.setdefault(qid, []).append((qid, cid))
        order = queries["query_id"].to_pylist()
        for lo in range(0, len(order), cfg.query_chunk):
            chunk = order[lo : lo + cfg.query_chunk]
            golds = [np.unique(np.asarray(gold_of[key_of[q]], dtype=np.int64)) for q in chunk]
            t0 = time.perf_counter()
            scores, positions, again = search_windows(
                self.index, self.filt, q_emb[lo : lo + len(chunk)], golds
            )
            self.researched += again
            self.seconds["search"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            for j, qid in enumerate(chunk):
                gold = golds[j]
                for _, cid in by_query[qid]:
                    pos = self.position[cid]
                    pos_score = float(q_emb[row_of[qid]] @ self.code_emb[pos])
                    kept = self.filt.apply(positions[j], scores[j], pos, gold, pos_score)
                    count_pair(stats, kept, cfg.m, cfg.inv_tau, rng)
                    if kept.positions.size == 0:
                        continue
                    out["query_id"].append(qid)
                    out["code_id"].append(cid)
                    out["flat"].append(kept.positions)
                    out["ranks"].append(kept.ranks)
                    out["scores"].append(kept.scores)
                    out["pos"].append(pos_score)
                    lengths.append(kept.positions.size)
            self.seconds["filter"] += time.perf_counter() - t0
        stats["queries"] = len(order)
        return self._table(out, lengths), stats

    def _table(self, out: dict, lengths: list[int]) -> pa.Table:
        offsets = pa.array(
            np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32)
        )
        flat = np.concatenate(out["flat"]) if out["flat"] else np.zeros(0, np.int64)

        def lists(values: pa.Array) -> pa.Array:
            return pa.ListArray.from_arrays(offsets, values)

        ranks = np.concatenate(out["ranks"]) if out["ranks"] else np.zeros(0, np.int32)
        scores = np.concatenate(out["scores"]) if out["scores"] else np.zeros(0, np.float32)
        columns = [
            pa.array(out["query_id"], pa.string()),
            pa.array(out["code_id"], pa.string()),
            lists(self.code_ids.take(pa.array(flat))),
            lists(pa.array(ranks, pa.int32())),
            lists(pa.array(scores, pa.float32())),
            pa.array(out["pos"], pa.float32()),
        ]
        return pa.Table.from_arrays(columns, schema=NEGATIVES_SCHEMA)


def mine(cfg: MineConfig, embed_queries: QueryEmbedder | None = None) -> dict:
    """Mine PS candidate windows for every pair of `cfg.pairs`; returns the summary.

    `embed_queries` replaces the retriever's query encoder (texts -> float32 [n, d] unit
    rows); benchmarks use it to time mining alone on precomputed vectors.
    """
    from r2ps.mining.corpus_index import ensure_index
    from r2ps.mining.embed import EmbedConfig
    from r2ps.mining.index import read_embeddings

    if cfg.m < 1 or cfg.query_chunk < 1 or cfg.shard_queries < 1:
        raise ValueError("m, query_chunk and shard_queries must all be >= 1")
    t_start = time.perf_counter()
    out = Path(cfg.out)
    queries, qrels = _query_order(cfg.pairs)

    t0 = time.perf_counter()
    index_dir = cfg.index_dir or cfg.out
    embed_cfg = EmbedConfig(
        model=cfg.model,
        codes=cfg.pairs,
        out=index_dir,
        actors=cfg.actors,
        batch_size=cfg.batch_size,
        index=cfg.index,
    )
    index = ensure_index(embed_cfg)
    emb_ids, code_emb = read_embeddings(str(Path(index_dir) / "embeddings"))
    if list(emb_ids) != list(index.code_ids):
        raise ValueError(f"{index_dir}: embeddings and index list the codes in different orders")
    seconds = {"embed_index": time.perf_counter() - t0}

    t0 = time.perf_counter()
    fingerprint = index.manifest.get("corpus_fingerprint", "")
    keys = code_keys(cfg.pairs, index.code_ids, out / "match_keys.parquet", fingerprint)
    groups = match_groups(keys)
    pool, pool_hits = pool_mask(keys, cfg.exclude)
    n_candidates = int(len(groups) - pool.sum())
    start, end = resolve_window(cfg.window_start, cfg.window_end, n_candidates)
    filt = CandidateFilter(groups, pool, start, end, cfg.rho1, cfg.rho2, cfg.margin)
    seconds["guard"] = time.perf_counter() - t0

    neg_dir = out / "negatives"
    settings = _settings(cfg, index.manifest, pool_hits, n_candidates)
    check_settings(neg_dir, settings)

    shared = text_golds(queries, qrels, index.code_ids)
    miner = _Miner(cfg, index, code_emb, filt, embed_queries, shared)
    totals: dict = {"removed": {}}
    n_shards = math.ceil(queries.num_rows / cfg.shard_queries)
    reused = 0
    for number in range(n_shards):
        path = neg_dir / f"part-{number:05d}.parquet"
        stats = read_shard_stats(path) if path.exists() else None
        if stats is None:
            shard_q = queries.slice(number * cfg.shard_queries, cfg.shard_queries)
            shard_r = qrels.filter(pc.is_in(qrels["query_id"], shard_q["query_id"]))
            table, stats = miner.shard(shard_q, shard_r, number)
            t0 = time.perf_counter()
            write_shard(path, table, stats)
            miner.seconds["write"] += time.perf_counter() - t0
            log.info("shard %d/%d: %d rows", number + 1, n_shards, table.num_rows)
        else:
            reused += 1
        merge_stats(totals, stats)
    seconds.update(miner.seconds)
    seconds["total"] = time.perf_counter() - t_start

    summary = summarize(settings, index.manifest, totals, (start, end), n_candidates)
    summary["shards"] = {"total": n_shards, "written": n_shards - reused, "reused": reused}
    summary["queries_searched_again"] = miner.researched
    summary["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    write_text_atomic(out / MINE_SUMMARY, json.dumps(summary, indent=1, default=str))
    return summary
