"""Ranker training: the cross encoder's task for the shared loop, and its validation.

The shared loop (loop.py) calls this `RankerTask` as it calls the retriever's. Each
training query becomes a *group* (train/ranker_data.py: its positive code first, then
PS or in-batch negatives), all scored as (query, code) pairs by the cross encoder and
trained with the listwise softmax cross-entropy of METHOD.md section 2. With `residual`
the loss adds the retriever's score of each pair (`pair_scores`) to the ranker's, so the
ranker learns a correction of the retriever and step 0 is the retriever.

Validation is the cascade itself: the retriever (`cfg.retriever`) ranks the whole valid
pool once per run (cached; it does not change while the ranker trains), the ranker
rescores its top K, and MRR is reported for the cascade at the ranker's trained weight
(`valid_mrr`), fused with the retriever at the weight best on these queries
(`valid_fused_mrr`, which picks the best checkpoint) and for the retriever alone
(`valid_de_mrr`) on the same queries, so the log shows whether the ranker helps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from torch import nn

from r2ps.evaluation.retrieval import (
    Retrieved,
    cascade_metrics_at,
    rank_world,
    ranker_scores,
    retrieve,
    top_candidates,  # noqa: F401  (moved to r2ps.evaluation.retrieval; still importable from here)
    unslice,
)
from r2ps.log import get_logger
from r2ps.models.cross import CrossEncoder, tokenize_pairs
from r2ps.models.dual import DualEncoder, embed_texts
from r2ps.models.encoder import load_tokenizer, model_or_default
from r2ps.search.cascade import choose_alpha
from r2ps.train.config import RankerConfig
from r2ps.train.loop import Task
from r2ps.train.losses import listwise_ce
from r2ps.train.ranker_data import build_groups, pairs_folder, ranker_rows
from r2ps.train.retriever import _load_cosqa, _load_split, as_blocks

log = get_logger(__name__)


def model_path(cfg: RankerConfig) -> str:
    """Where the ranker's encoder starts: `model`, the retriever, or the bundled MiniLM."""
    return model_or_default(cfg.retriever if cfg.start_from_retriever else cfg.model)


def pair_scores(retriever: DualEncoder, queries: Sequence[str], codes: Sequence[str]) -> np.ndarray:
    """The retriever's score (cosine) of each (query, code) pair, [len(queries)] float32.

    Each distinct text is embedded once (a group repeats its query, a batch its codes),
    with the retriever's own truncation, as the index and `retrieve` embed them.
    """
    q_text, c_text = sorted(set(queries)), sorted(set(codes))
    tok = retriever.tokenizer
    q = embed_texts(retriever, tok, q_text, retriever.max_query_len)
    c = embed_texts(retriever, tok, c_text, retriever.max_code_len)
    qi = {t: i for i, t in enumerate(q_text)}
    ci = {t: i for i, t in enumerate(c_text)}
    rows = np.fromiter((qi[t] for t in queries), np.int64, len(queries))
    cols = np.fromiter((ci[t] for t in codes), np.int64, len(codes))
    return np.einsum("ij,ij->i", q[rows], c[cols]).astype(np.float32)


# --- validation: the cascade --------------------------------------------------------


def cascade_metrics(
    model: CrossEncoder, retrieved: Retrieved, codes: Sequence[str], k: int, batch_size: int
) -> dict[str, float]:
    """The ranker rescoring the retriever's top k: cascade, retriever-only and fused metrics.

    Each rank scores a slice of the queries; scores are gathered so every rank returns
    the same metrics.
    """
    k = min(k, retrieved.ids.shape[1])
    rank, world = rank_world()
    mine = range(rank, len(retrieved.queries), world)
    part = ranker_scores(model, retrieved, codes, k, batch_size, rows=mine)
    ce = unslice(part, len(retrieved.queries), world)

    out = cascade_metrics_at(retrieved, ce, k, model.trained_alpha)
    out.update({f"de_{name}": v for name, v in retrieved.metrics().items() if name != "n_queries"})
    alpha, _ = choose_alpha(lambda a: cascade_metrics_at(retrieved, ce, k, a)["mrr"])
    out["fused_alpha"] = alpha
    out["fused_mrr"] = cascade_metrics_at(retrieved, ce, k, alpha)["mrr"]
    return out


# --- the task -----------------------------------------------------------------------


@dataclass
class RankerTask(Task):
    """What the shared training loop needs to train the cross encoder."""

    epoch: int = 0
    data_report: dict = field(default_factory=dict)
    # The fresh head scores every pair 0, so the step-0 cascade keeps the retriever's
    # order and scores exactly the retriever's MRR: not a ranker of its own, so never the
    # exported best; except for a residual ranker, whose step 0 IS the retriever as the
    # cascade will score it (set by build_model, which runs on the worker first).
    start_is_candidate: bool = False
    # The checkpoint is chosen as the cascade will be served: fused with the retriever at
    # the weight that is best on the same valid queries (evaluate.py chooses K and weight
    # on valid the same way). At its trained weight alone a ranker that learned a useful
    # but over-confident correction loses to step 0 and is never seen (the full run's
    # step-120 PS ranker: 60.8 unfused, 62.2 fused, step 0 61.3). Whether a cascade is
    # served at all is decided later, by evaluate's interval rule.
    selects_on: str = "valid_fused_mrr"
    rows: str = "groups"  # a training row is a query with its positive and negatives
    # Retriever rankings per evaluation set, computed once per worker process.
    retrieved: dict[str, Retrieved] = field(default_factory=dict, init=False, repr=False)
    _tokenizer: Any = field(default=None, init=False, repr=False)
    _retriever: Any = field(default=None, init=False, repr=False)  # residual: scores pairs

    def data_summary(self) -> dict:
        return self.data_report

    def dataset(self, cfg: RankerConfig) -> tuple[ray.data.Dataset, int]:
        """The training rows as a Ray Dataset (driver side); the report is kept for the summary."""
        rows, self.data_report = ranker_rows(cfg)
        if rows.num_rows == 0:
            raise ValueError(f"no usable training rows: {self.data_report}")
        return ray.data.from_arrow(as_blocks(rows, cfg.num_workers)), rows.num_rows

    def worker_inputs(self, cfg: RankerConfig) -> list[str]:
        """The mined split the PS negatives' code ids refer to (read by `code_texts`)."""
        return [str(pairs_folder(cfg.negatives))] if cfg.negatives_source == "ps" else []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def build_model(self, cfg: RankerConfig) -> CrossEncoder:
        self.start_is_candidate = cfg.residual
        return CrossEncoder.from_pretrained(
            model_path(cfg),
            max_query_len=cfg.max_query_len,
            max_len=cfg.max_pair_len,
            residual=cfg.residual,
            num_layers=cfg.num_layers,
            pooling=cfg.pooling,
        )

    def prepare(self, batch: dict[str, Any], cfg: RankerConfig) -> dict[str, Any]:
        """The step's CPU part: groups and their padded token tensors (the loop runs this
        a batch ahead in a background thread). Its own tokenizer: validation tokenises
        with the model's meanwhile, and an HF tokenizer's settings are shared state."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(model_path(cfg))
        queries, codes, size = build_groups(batch, cfg, self.epoch)
        inputs = tokenize_pairs(
            self._tokenizer, queries, codes, cfg.max_query_len, cfg.max_pair_len
        )
        out = {"inputs": inputs, "size": size}
        if cfg.residual:
            if self._retriever is None:
                self._retriever = DualEncoder.from_pretrained(
                    model_or_default(cfg.retriever)
                ).eval()
            out["prior"] = torch.from_numpy(pair_scores(self._retriever, queries, codes))
        return out

    def loss(self, engine: Any, prepared: dict[str, Any], cfg: RankerConfig) -> torch.Tensor:
        inputs = {k: v.to(engine.device) for k, v in prepared["inputs"].items()}
        size = prepared["size"]
        scores = engine(**inputs).view(-1, size)
        prior = prepared.get("prior")
        prior = None if prior is None else prior.to(engine.device).view(-1, size)
        return listwise_ce(scores, cfg.ranker_scale, prior)

    def evaluate(self, model: CrossEncoder, cfg: RankerConfig) -> dict[str, float]:
        sets = {"valid": (_load_split(str(Path(cfg.corpus) / "valid")), cfg.max_eval_queries)}
        if cfg.eval_cosqa:
            sets["cosqa"] = (_load_cosqa(cfg.eval_cosqa), cfg.max_eval_queries)
        missing = [name for name in sets if name not in self.retrieved]
        if missing:  # the first evaluation of this worker process
            retriever = DualEncoder.from_pretrained(model_or_default(cfg.retriever))
            for name in missing:
                rset, max_queries = sets[name]
                self.retrieved[name] = retrieve(retriever, rset, max_queries, cfg.eval_batch_size)
            del retriever
        out = {}
        for name, (rset, _) in sets.items():
            codes = rset.codes["code"].to_pylist()
            metrics = cascade_metrics(
                model, self.retrieved[name], codes, cfg.rerank_k, cfg.eval_batch_size
            )
            out.update({f"{name}_{k}": v for k, v in metrics.items()})
        return out

    def export(self, model: CrossEncoder, directory: Path) -> None:
        model.save_pretrained(directory)

    def param_groups(self, model: nn.Module, cfg: RankerConfig) -> list[dict]:
        """The encoder at `lr`, and with `head_lr` the freshly initialised head at its own.

        The head starts at zero (models/cross.py); at the encoder's 2e-5 Adam moves each of
        its weights ~2e-5 per step, so in the few hundred steps a CPU run affords its scores
        stay near 0 and nothing is learned. A fresh head is usually given a larger rate.
        """
        named = list(model.named_parameters())
        head = [p for n, p in named if n.startswith("head.")]
        if not cfg.head_lr or not head:
            return [{"params": [p for _, p in named]}]
        body = [p for n, p in named if not n.startswith("head.")]
        return [{"params": body}, {"params": head, "lr": cfg.head_lr}]
