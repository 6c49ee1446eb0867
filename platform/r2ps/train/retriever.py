"""Retriever training: the data, loss, evaluation and export the shared loop calls.

Data: the corpus's train pairs, tokenised in the Ray Data stream (so tokenisation
overlaps training), each pair carrying a *group key*: pairs that share a code or a
query text get the same key, and the loss never scores a pair's code as a negative for
another pair of its group (METHOD.md: a duplicate is a false negative).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch
import torch.distributed as dist

from r2ps.data.codetext import query_key
from r2ps.data.schema import RetrievalSet
from r2ps.evaluation.metrics import evaluate_dense
from r2ps.evaluation.retrieval import eval_queries, unslice
from r2ps.log import get_logger
from r2ps.models.dual import DualEncoder, embed_texts
from r2ps.models.encoder import (
    interpolate_encoders,
    load_tokenizer,
    model_or_default,
    pad_batch,
    pad_token_id,
)
from r2ps.train.config import RetrieverConfig, TrainConfig
from r2ps.train.loop import DATA_CPUS, Task
from r2ps.train.losses import gathered_info_nce
from r2ps.train.wise_ft import choose_weight

log = get_logger(__name__)

TOKENIZED_PAIRS_SCHEMA = pa.schema(
    [("q_ids", pa.list_(pa.int32())), ("c_ids", pa.list_(pa.int32())), ("group", pa.int64())]
)


def group_keys(queries: list[str], code_ids: list[str]) -> np.ndarray:
    """Connected components of the pair graph (pairs linked by a shared query or code).

    `queries` are query texts (compared by `codetext.query_key`), not ids: one text
    under two ids (two records of one docstring) is one query whose codes are both gold.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    keys = [query_key(q) for q in queries]
    for q, c in zip(keys, code_ids, strict=True):
        parent[find("q" + q)] = find("c" + c)
    roots: dict[str, int] = {}
    return np.array([roots.setdefault(find("q" + q), len(roots)) for q in keys], np.int64)


_VERB = re.compile(r"^(returns?|gets?|computes?|calculates?|creates?)\s+((the|a|an)\s+)?")


def web_register(query: str) -> str:
    """A docstring summary rewritten toward the register of web queries (CoSQA's kind).

    Deterministic per query (seeded by its text): drop backticks, asterisks and the final
    period; lower-case; for two thirds of the queries drop a leading "Return(s)/Get(s)/
    Compute(s)/Calculate(s)/Create(s)" and its article; then 40% get a "python " prefix,
    20% a " python" suffix, 20% the form "how to ... in python", 20% nothing
    (../shared/docs/EXPERIMENTS.md).
    """
    digest = hashlib.blake2b(query.encode(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    text = re.sub(r"[`*]", "", query).strip().rstrip(".").strip().lower()
    if rng.random() < 2 / 3:
        text = _VERB.sub("", text, count=1) or text
    form = rng.random()
    if form < 0.4:
        return f"python {text}"
    if form < 0.6:
        return f"{text} python"
    if form < 0.8:
        return f"how to {text} in python"
    return text


def training_pairs(cfg: TrainConfig, web_queries: bool = False) -> pa.Table:
    """The train split of `cfg.corpus` as (query, code, group) rows, `seeded_sample`d; with
    `web_queries`, each query rewritten by `web_register` (groups are computed before, from
    the original texts, so duplicates stay masked)."""
    pairs = RetrievalSet.read(Path(cfg.corpus) / "train").pairs()
    groups = group_keys(pairs["query"].to_pylist(), pairs["code_id"].to_pylist())
    queries = pairs["query"]
    if web_queries:
        queries = pa.array([web_register(q) for q in queries.to_pylist()], pa.string())
    table = pa.table({"query": queries, "code": pairs["code"], "group": groups})
    return seeded_sample(table, cfg)


def seeded_sample(table: pa.Table, cfg: TrainConfig) -> pa.Table:
    """The rows in a `cfg.seed` order, the first `cfg.max_train_pairs` of them (0: all)."""
    order = np.random.default_rng(cfg.seed).permutation(table.num_rows)
    if cfg.max_train_pairs:
        order = order[: cfg.max_train_pairs]
    return table.take(pa.array(order))


def as_blocks(table: pa.Table, num_workers: int, rows_per_block: int = 2048) -> list[pa.Table]:
    """Slices of `table`, so the stream has several blocks to spread over workers.

    One Arrow table is one block; `repartition` would split it with shuffle tasks that
    reserve a whole CPU each, which a CPU cluster busy with training workers never has
    free (the run then waits forever for its first batch). Slicing is free.
    """
    n = max(num_workers * 4, table.num_rows // rows_per_block, 1)
    size = -(-table.num_rows // n)
    return [table.slice(i, size) for i in range(0, table.num_rows, size)] or [table]


def tokenize_pairs(batch: pa.Table, tokenizer, max_query_len: int, max_code_len: int) -> pa.Table:
    """Ray Data UDF: text pairs -> truncated token id lists (padding happens per batch).

    The tokenizer comes by value (`load_tokenizer` on the driver), so the tokenising tasks
    run on any node without the model's folder.
    """
    q = tokenizer(batch["query"].to_pylist(), truncation=True, max_length=max_query_len)[
        "input_ids"
    ]
    c = tokenizer(batch["code"].to_pylist(), truncation=True, max_length=max_code_len)["input_ids"]
    return pa.table(
        {"q_ids": q, "c_ids": c, "group": batch["group"]}, schema=TOKENIZED_PAIRS_SCHEMA
    )


def model_path(cfg: RetrieverConfig) -> str:
    """Where the retriever starts: `cfg.model`, or the bundled MiniLM."""
    return model_or_default(cfg.model)


@dataclass
class RetrieverTask(Task):
    """What the shared training loop needs to train the dual encoder."""

    def dataset(self, cfg: RetrieverConfig) -> tuple[ray.data.Dataset, int]:
        """The train pairs as a Ray Dataset, tokenised in the stream; and its row count."""
        pairs = training_pairs(cfg, cfg.web_queries)
        ds = ray.data.from_arrow(as_blocks(pairs, cfg.num_workers))
        ds = ds.map_batches(
            tokenize_pairs,
            fn_kwargs={
                "tokenizer": load_tokenizer(model_path(cfg)),
                "max_query_len": cfg.max_query_len,
                "max_code_len": cfg.max_code_len,
            },
            batch_size=512,
            batch_format="pyarrow",
            num_cpus=DATA_CPUS / 2,  # two tokenising tasks fit in what the workers leave free
        )
        return ds, pairs.num_rows

    def build_model(self, cfg: RetrieverConfig) -> DualEncoder:
        return DualEncoder.from_pretrained(
            model_path(cfg),
            temperature=cfg.temperature,
            max_query_len=cfg.max_query_len,
            max_code_len=cfg.max_code_len,
        )

    def loss(self, engine: Any, batch: dict[str, np.ndarray], cfg: RetrieverConfig) -> torch.Tensor:
        pad = pad_token_id(engine.module.tokenizer)
        device = engine.device
        q = {k: v.to(device) for k, v in pad_batch(list(batch["q_ids"]), pad).items()}
        c = {k: v.to(device) for k, v in pad_batch(list(batch["c_ids"]), pad).items()}
        q_emb, c_emb = engine(q, c)
        groups = torch.tensor(batch["group"], dtype=torch.long, device=device)
        return gathered_info_nce(q_emb, c_emb, cfg.temperature, code_keys=groups)

    def evaluate(self, model: DualEncoder, cfg: RetrieverConfig) -> dict[str, float]:
        out = {}
        valid = _load_split(str(Path(cfg.corpus) / "valid"))
        for k, v in evaluate_retriever(
            model, valid, cfg.max_eval_queries, cfg.eval_batch_size
        ).items():
            out[f"valid_{k}"] = v
        if cfg.eval_cosqa:
            cosqa = _load_cosqa(cfg.eval_cosqa)
            for k, v in evaluate_retriever(model, cosqa, 0, cfg.eval_batch_size).items():
                out[f"cosqa_{k}"] = v
        return out

    def export(self, model: DualEncoder, directory: Path) -> None:
        model.save_pretrained(directory)

    def after_export(self, cfg: RetrieverConfig, directory: Path) -> dict:
        """WiSE-FT: the exported encoder moved back toward the start by `wise_ft`, or by
        the weight chosen on valid among `wise_ft_choose` (train/wise_ft.py)."""
        out: dict = {}
        weight = cfg.wise_ft
        if cfg.wise_ft_choose:
            torch.set_num_threads(cfg.threads_per_worker)
            valid = _load_split(str(Path(cfg.corpus) / "valid"))
            out["wise_ft"] = choose_weight(
                model_path(cfg),
                directory,
                cfg.wise_ft_choose,
                valid,
                cfg.max_eval_queries,
                cfg.eval_batch_size,
            )
            weight = out["wise_ft"]["chosen"]
        if weight != 1.0:
            interpolate_encoders(model_path(cfg), directory, weight, directory)
        return out

    def report(self, cfg: RetrieverConfig, directory: Path) -> dict:
        """With `final_test`: the start and the exported model compared on the test split."""
        return {"final_test": compare_on_test(cfg, str(directory))} if cfg.final_test else {}


@functools.lru_cache(maxsize=2)
def _load_split(directory: str) -> RetrievalSet:
    return RetrievalSet.read(directory)


@functools.lru_cache(maxsize=2)
def _load_cosqa(directory: str) -> RetrievalSet:
    from r2ps.data.cosqa import read_cosqa

    return read_cosqa(directory)


def evaluate_retriever(
    model: DualEncoder, rset: RetrievalSet, max_queries: int = 0, batch_size: int = 64
) -> dict[str, float]:
    """MRR / Recall@1,5,10 / NDCG@10 over the whole pool of `rset`.

    Inside a multi-worker run each rank embeds a slice of the pool and the slices are
    gathered, so evaluation uses every worker instead of leaving all but one idle.
    """
    texts, gold = eval_queries(rset, max_queries)
    codes = rset.codes["code"].to_pylist()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    tok = model.tokenizer
    q_part = embed_texts(model, tok, texts[rank::world], model.max_query_len, batch_size)
    c_part = embed_texts(model, tok, codes[rank::world], model.max_code_len, batch_size)
    q_emb, c_emb = unslice(q_part, len(texts), world), unslice(c_part, len(codes), world)
    return evaluate_dense(q_emb, c_emb, gold)


def compare_on_test(cfg: RetrieverConfig, trained: str) -> dict:
    """The starting model against the trained one on the corpus test split (and CoSQA).

    Run once after training, on held-out packages no checkpoint was chosen on.
    """
    from r2ps.data.cosqa import read_cosqa

    sets = {"test": RetrievalSet.read(Path(cfg.corpus) / "test")}
    if cfg.eval_cosqa:
        sets["cosqa"] = read_cosqa(cfg.eval_cosqa)
    torch.set_num_threads(cfg.threads_per_worker)
    out: dict[str, dict] = {}
    for name, path in (("start", model_path(cfg)), ("trained", trained)):
        model = DualEncoder.from_pretrained(
            path, max_query_len=cfg.max_query_len, max_code_len=cfg.max_code_len
        )
        for split, rset in sets.items():
            out[f"{name}/{split}"] = evaluate_retriever(model, rset, 0, cfg.eval_batch_size)
            log.info("%s on %s: %s", name, split, out[f"{name}/{split}"])
    return out
