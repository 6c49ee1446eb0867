"""What a trained ranker has learned: its scores against simple features, on VALID data.

    python benchmarks/ranker_probe.py --ranker runs/x/ranker_ps --retriever runs/x/retriever \
        --valid runs/x/corpus/valid --negatives runs/x/mined --out benchmarks/results/probe.json

For every valid query the retriever's top K are scored by the ranker (as the cascade
does), and the ranker's scores are correlated, per query (Spearman over the K candidates,
then averaged over queries), with:
- the retriever's score (a ranker that learned relevance agrees with it more than not);
- query/code token overlap (share of the query's identifier-split tokens in the code);
- code length (tokens of the code).
It also reports where the ranker puts the retriever's top 1 and the gold code.

With `--negatives` (a mining output) it describes the ranker's training groups the same
way: the positive against the negatives the PS sampler draws (same seed as training),
so a feature that separates them in training shows beside what the ranker learned.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from r2ps.data.schema import RetrievalSet
from r2ps.evaluation.metrics import rank_of_gold_topk, retrieval_metrics
from r2ps.evaluation.retrieval import ranker_scores, retrieve
from r2ps.mining.negatives import read_negatives
from r2ps.mining.ps import sample_negatives
from r2ps.models.cross import CrossEncoder
from r2ps.models.dual import DualEncoder
from r2ps.search.bm25 import tokenize as words
from r2ps.train.ranker_data import pairs_folder, query_seed


def overlap(query: str, code: str) -> float:
    q = set(words(query))
    return len(q & set(words(code))) / max(1, len(q))


def n_tokens(tokenizer, texts: list[str]) -> np.ndarray:
    return np.array([len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]])


def mean_spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of the Spearman correlation of a[i] and b[i] (rows without spread skipped)."""
    rhos = []
    for x, y in zip(a, b, strict=True):
        if np.ptp(x) > 0 and np.ptp(y) > 0:
            rhos.append(spearmanr(x, y).statistic)
    return float(np.mean(rhos)) if rhos else float("nan")


def probe_valid(ranker: CrossEncoder, retriever: DualEncoder, valid: str, k: int, n: int) -> dict:
    rset = RetrievalSet.read(valid)
    got = retrieve(retriever, rset, n, 64)
    codes = rset.codes["code"].to_pylist()
    ce = ranker_scores(ranker, got, codes, k, 64)
    de = got.scores[:, :k]
    ov = np.array(
        [[overlap(q, codes[p]) for p in got.ids[i, :k]] for i, q in enumerate(got.queries)]
    )
    lengths = n_tokens(ranker.tokenizer, codes)
    ln = lengths[got.ids[:, :k]]
    order = np.argsort(-ce, axis=1, kind="stable")
    top1_rank = np.argmax(order == 0, axis=1) + 1  # where the ranker puts the retriever's #1
    lists = [got.ids[i, :k][order[i]] for i in range(len(got.queries))]
    ranker_only = retrieval_metrics(rank_of_gold_topk(lists, got.gold))
    gold_in_k = [i for i in range(len(got.queries)) if got.gold[i] & set(got.ids[i, :k].tolist())]
    gold_ce_rank = []
    for i in gold_in_k:
        pos = [j for j, p in enumerate(got.ids[i, :k]) if p in got.gold[i]][0]
        gold_ce_rank.append(int(np.argmax(order[i] == pos)) + 1)
    return {
        "queries": len(got.queries),
        "k": k,
        "spearman_ce_vs_retriever_score": mean_spearman(ce, de),
        "spearman_ce_vs_token_overlap": mean_spearman(ce, ov),
        "spearman_ce_vs_code_length": mean_spearman(ce, ln),
        "spearman_retriever_vs_code_length": mean_spearman(de, ln),
        "ranker_rank_of_retriever_top1_mean": float(top1_rank.mean()),
        "gold_in_top_k": len(gold_in_k),
        "gold_retriever_rank_mean": float(
            np.mean(
                [
                    min(j + 1 for j, p in enumerate(got.ids[i, :k]) if p in got.gold[i])
                    for i in gold_in_k
                ]
            )
        ),
        "gold_ranker_rank_mean": float(np.mean(gold_ce_rank)),
        "retriever_mrr": got.metrics()["mrr"],
        "ranker_order_mrr": ranker_only["mrr"],
        "ranker_order_recall@1": ranker_only["recall@1"],
        "ce_score_std_within_query": float(ce.std(axis=1).mean()),
    }


def probe_groups(negatives: str, tokenizer, m: int, n: int, seed: int = 0) -> dict:
    """Positive vs the m negatives PS draws for the first n mined queries (epoch 0)."""
    rset = RetrievalSet.read(pairs_folder(negatives))
    text = dict(zip(rset.codes["code_id"].to_pylist(), rset.codes["code"].to_pylist(), strict=True))
    qtext = dict(
        zip(rset.queries["query_id"].to_pylist(), rset.queries["query"].to_pylist(), strict=True)
    )
    neg = read_negatives(negatives, ("query_id", "code_id", "cand_ids", "cand_scores", "pos_score"))
    rows = neg.slice(0, n).to_pylist()
    pos_de, neg_de, pos_ov, neg_ov, pos_len, neg_len, above = [], [], [], [], [], [], []
    for r in rows:
        if not r["cand_ids"]:
            continue
        picks = sample_negatives(
            np.asarray(r["cand_scores"]), m, 0.0, query_seed(seed, 0, r["query_id"])
        )
        q = qtext[r["query_id"]]
        negs = [r["cand_ids"][int(p)] for p in picks]
        pos_de.append(r["pos_score"])
        neg_de.append(np.mean([r["cand_scores"][int(p)] for p in picks]))
        above.append(np.mean([r["cand_scores"][int(p)] > r["pos_score"] for p in picks]))
        pos_ov.append(overlap(q, text[r["code_id"]]))
        neg_ov.append(np.mean([overlap(q, text[c]) for c in negs]))
        pos_len.append(n_tokens(tokenizer, [text[r["code_id"]]])[0])
        neg_len.append(n_tokens(tokenizer, [text[c] for c in negs]).mean())
    return {
        "groups": len(pos_de),
        "m": m,
        "retriever_score_positive_mean": float(np.mean(pos_de)),
        "retriever_score_negative_mean": float(np.mean(neg_de)),
        "share_of_negatives_scored_above_positive": float(np.mean(above)),
        "overlap_positive_mean": float(np.mean(pos_ov)),
        "overlap_negative_mean": float(np.mean(neg_ov)),
        "code_tokens_positive_mean": float(np.mean(pos_len)),
        "code_tokens_negative_mean": float(np.mean(neg_len)),
        "code_tokens_positive_median": float(np.median(pos_len)),
        "code_tokens_negative_median": float(np.median(neg_len)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ranker", required=True)
    p.add_argument("--retriever", required=True)
    p.add_argument("--valid", required=True)
    p.add_argument("--negatives", default="")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--queries", type=int, default=0, help="valid queries (0: all)")
    p.add_argument("--m", type=int, default=3, help="negatives per training group")
    p.add_argument("--out", default="")
    args = p.parse_args()
    import torch

    torch.set_num_threads(2)
    ranker = CrossEncoder.from_pretrained(args.ranker).eval()
    retriever = DualEncoder.from_pretrained(args.retriever).eval()
    out = {
        "ranker": args.ranker,
        "valid": probe_valid(ranker, retriever, args.valid, args.k, args.queries),
    }
    if args.negatives:
        out["training_groups"] = probe_groups(args.negatives, ranker.tokenizer, args.m, 2000)
    meta = Path(args.ranker, "train_summary.json")
    if meta.exists():
        out["train_config"] = {
            k: v
            for k, v in json.loads(meta.read_text())["config"].items()
            if k in ("negatives_source", "max_steps", "batch_size", "num_negatives", "max_pair_len")
        }
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
