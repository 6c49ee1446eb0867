"""A whole evaluation pool ranked: what validation during training and the evaluation job share.

`eval_queries` turns a `RetrievalSet` into query texts and gold positions (one text, one
query); `retrieve` ranks the whole pool with the dual encoder (each training rank embeds a
slice, gathered with `unslice`); `cascade_ranks` / `cascade_metrics_at` score the cascade
that reranks the top K with given ranker scores (`r2ps.search.cascade`, METHOD.md sections 3, 5).
Ties (scores equal within float noise) keep pool order everywhere (the rule of
`r2ps.evaluation.metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch.distributed as dist

from r2ps.data.codetext import query_key
from r2ps.data.schema import RetrievalSet
from r2ps.evaluation.metrics import rank_of_gold_topk, retrieval_metrics
from r2ps.finite import check_finite
from r2ps.models.dual import DualEncoder, embed_texts
from r2ps.ranking import top_k_of_scores
from r2ps.search.cascade import cascade_ids

MRR_CUTOFF = 1000  # docs/METHOD.md section 5: a rank past 1000 counts 0


def eval_queries(rset: RetrievalSet, max_queries: int) -> tuple[list[str], list[set[int]]]:
    """Query texts and, for each, the pool positions of its gold codes.

    One text is one query: the golds of every query id holding it (`codetext.query_key`)
    are that text's golds, so the same text is never scored against its own answers.
    With `max_queries`, a fixed subset (the texts of the lowest query ids): the same
    queries at every evaluation, so scores of different steps compare. The pool is
    always whole.
    """
    queries = rset.queries.sort_by("query_id")
    position = {cid: i for i, cid in enumerate(rset.codes["code_id"].to_pylist())}
    key_of = {q: query_key(t) for q, t in zip(*_columns(queries, "query_id", "query"), strict=True)}
    gold: dict[str, set[int]] = {}
    for qid, cid in zip(*_columns(rset.qrels, "query_id", "code_id"), strict=True):
        if qid in key_of:
            gold.setdefault(key_of[qid], set()).add(position[cid])
    texts: dict[str, str] = {}  # key -> the text of its lowest query id
    for qid, text in zip(*_columns(queries, "query_id", "query"), strict=True):
        if key_of[qid] in gold:
            texts.setdefault(key_of[qid], text)
    chosen = list(texts.items())[: max_queries or None]
    return [t for _, t in chosen], [gold[k] for k, _ in chosen]


def _columns(table: pa.Table, *names: str) -> list[list]:
    return [table[n].to_pylist() for n in names]


@dataclass
class Retrieved:
    """The retriever's ranking of a pool for a fixed set of queries (top `depth`)."""

    queries: list[str]
    gold: list[set[int]]  # pool positions of each query's gold codes
    ids: np.ndarray  # [Q, depth] int64 pool positions, best first
    scores: np.ndarray  # [Q, depth] float32 retriever scores

    def metrics(self) -> dict[str, float]:
        return retrieval_metrics(rank_of_gold_topk(self.ids, self.gold), mrr_cutoff=MRR_CUTOFF)


def rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def unslice(part: np.ndarray, n: int, world: int) -> np.ndarray:
    """Reassemble rows split as `rows[rank::world]` across ranks."""
    if world == 1:
        return part
    parts: list[np.ndarray] = [None] * world  # type: ignore[list-item]
    dist.all_gather_object(parts, part)
    out = np.empty((n, part.shape[1]), dtype=np.float32)
    for r, p in enumerate(parts):
        out[r::world] = p
    return out


def top_candidates(q_emb: np.ndarray, c_emb: np.ndarray, depth: int, chunk: int = 256):
    """Exact top-`depth` (positions int64 [Q, min(depth, N)], scores float32, same shape)
    by inner product, best first, a chunk of queries at a time.

    Ties (scores equal within float noise) keep pool order: `r2ps.evaluation.metrics`' rule, through
    `ranking.top_k_of_scores`. Raises ValueError naming the rows of either matrix that
    hold NaN or inf.
    """
    check_finite(q_emb, "query embeddings")
    check_finite(c_emb, "code embeddings")
    depth = min(depth, c_emb.shape[0])
    ids = np.empty((q_emb.shape[0], depth), dtype=np.int64)
    scores = np.empty((q_emb.shape[0], depth), dtype=np.float32)
    for start in range(0, q_emb.shape[0], chunk):
        s, p = top_k_of_scores(q_emb[start : start + chunk] @ c_emb.T, depth)
        ids[start : start + chunk], scores[start : start + chunk] = p, s
    return ids, scores


def retrieve(
    retriever: DualEncoder, rset: RetrievalSet, max_queries: int, batch_size: int
) -> Retrieved:
    """Rank the whole pool with the retriever; each rank embeds a slice of it."""
    texts, gold = eval_queries(rset, max_queries)
    codes = rset.codes["code"].to_pylist()
    rank, world = rank_world()
    tok = retriever.tokenizer
    q_part = embed_texts(retriever, tok, texts[rank::world], retriever.max_query_len, batch_size)
    c_part = embed_texts(retriever, tok, codes[rank::world], retriever.max_code_len, batch_size)
    q_emb, c_emb = unslice(q_part, len(texts), world), unslice(c_part, len(codes), world)
    ids, scores = top_candidates(q_emb, c_emb, MRR_CUTOFF)
    return Retrieved(texts, gold, ids, scores)


def cascade_ranks(retrieved: Retrieved, ce: np.ndarray, k: int, alpha: float) -> list[np.ndarray]:
    """Gold ranks (per query) of the cascade reranking the top k (the first k columns of
    `ce`); k = 0 is the retriever alone."""
    if k == 0:
        return rank_of_gold_topk(retrieved.ids, retrieved.gold)
    lists = [
        cascade_ids(retrieved.ids[i], retrieved.scores[i], ce[i, :k], alpha)
        for i in range(len(retrieved.queries))
    ]
    return rank_of_gold_topk(lists, retrieved.gold)


def ranker_scores(
    model, retrieved: Retrieved, codes: Sequence[str], k: int, batch_size: int, rows=None
) -> np.ndarray:
    """Ranker scores [len(rows), k] of the `rows` queries' (default: all) top k retrieved
    codes, in retriever order. `model` has `score_pairs` (CrossEncoder, the ONNX ranker).

    A CrossEncoder whose head is fresh (`scores_zero`: a residual ranker at step 0, which
    is the retriever) scores every pair 0: returned without a forward pass, so validating
    or evaluating it costs nothing. Only for quality: timing must run the model.
    """
    k = min(k, retrieved.ids.shape[1])
    rows = range(len(retrieved.queries)) if rows is None else rows
    if getattr(model, "scores_zero", lambda: False)():
        return np.zeros((len(rows), k), np.float32)
    pair_q = [retrieved.queries[i] for i in rows for _ in range(k)]
    pair_c = [codes[p] for i in rows for p in retrieved.ids[i, :k]]
    return model.score_pairs(pair_q, pair_c, batch_size).reshape(len(rows), k)


def cascade_metrics_at(
    retrieved: Retrieved, ce: np.ndarray, k: int, alpha: float
) -> dict[str, float]:
    """Metrics of the cascade reranking the top k (the first k columns of `ce`)."""
    return retrieval_metrics(cascade_ranks(retrieved, ce, k, alpha), mrr_cutoff=MRR_CUTOFF)
