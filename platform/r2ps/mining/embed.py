"""Embed a code corpus with the retriever on a Ray Data actor pool, then index it.

The stream, one stage per Ray Data operator:
1. read tasks: `codes.parquet` row groups, cut into blocks of `block_rows`, each row
   tagged with its corpus position `pos` (Ray Data does not keep order across blocks);
2. on GPUs, tokenise tasks: code text -> truncated token ids, so the GPU actors only run
   the model (tokenising is CPU work that would otherwise idle the GPU). On CPUs the
   actors tokenise their own blocks: the same cores would do it anyway, and as separate
   tasks it competed with the model's threads and sent every block through the object
   store once more (`benchmarks/embed_throughput.py`, docs/SCALING.md);
3. `CodeEmbedder` actors: the retriever, loaded once per actor (torch, or ONNX Runtime
   fp32 / int8 on CPUs: `backend`), embeds each block in length-grouped batches (little
   padding computed), autocast to bf16/fp16 on GPU only;
4. the driver writes each embedded block as `<out>/embeddings/part-*.parquet` (pos,
   code_id, embedding) as it arrives, then `manifest.json`, written last, so a cut-short
   run never looks finished.

Nothing but the driver needs a path on its disk: read tasks open a staged codes file from
its URI when their node has no copy, the tokenizer travels by value, each actor stages its
own copy of the model (r2ps.storage), and the vectors come back to the driver, whose disk
holds the job's output anyway (a URI output is uploaded from there). Written by Ray Data
tasks instead (`write_parquet`), the shards of a multi-node run would land on whichever
node ran each task.

`embed_corpus` is the whole run; `mining/corpus_index.py` calls it when an index of the
corpus must be built and its saved embeddings are stale or missing.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from r2ps.config import Need, needs
from r2ps.data.errors import check_utf8
from r2ps.data.schema import MODEL_CONFIG, codes_file
from r2ps.finite import check_finite
from r2ps.log import Progress, get_logger
from r2ps.mining.index import MANIFEST, IndexConfig, corpus_fingerprint, embedding_layout

# torch-free: `r2ps search` reads an index's identity (`corpus_identity`) without torch;
# the embedding itself imports the models where it runs
from r2ps.models.light import (
    batches_by_length,
    check_backend,
    model_fingerprint,
    model_or_default,
    read_meta,
)
from r2ps.storage import atomic_path, input_file, on_this_node

log = get_logger(__name__)

DEFAULT_MAX_CODE_LEN = 256  # DualEncoder's default when a model dir has no r2ps.json
TOKENIZED_CODES_SCHEMA = pa.schema(
    [("pos", pa.int64()), ("code_id", pa.string()), ("input_ids", pa.list_(pa.int32()))]
)


@dataclass
class EmbedConfig:
    """Settings of `jobs/embed.py`."""

    model: str = field(default="", metadata={"help": "retriever dir ('' = bundled MiniLM)"})
    codes: str = field(
        default="", metadata={"help": "split folder holding codes.parquet, or a .parquet file"}
    )
    out: str = field(default="runs/embed", metadata={"help": "output folder"})
    actors: int = field(
        default=0, metadata={"help": "embedding actors; 0: one per GPU, else 1 per 2 CPUs"}
    )
    batch_size: int = field(default=64, metadata={"help": "codes per forward pass"})
    block_rows: int = field(
        default=1024, metadata={"help": "rows per block and per actor call (length grouping)"}
    )
    threads: int = field(default=0, metadata={"help": "torch threads per actor; 0: CPUs/actors"})
    max_code_len: int = field(default=0, metadata={"help": "code tokens; 0: the model's own"})
    backend: str = field(
        default="torch",
        metadata={
            "help": "CPU actors: torch | onnx | onnx-int8 (the export beside the model, made "
            "here when missing); GPU actors always run torch"
        },
    )
    tokenize: str = field(
        default="auto",
        metadata={"help": "where codes are tokenised: auto (actors on CPU, tasks on GPU) | "
                  "actor | task"},
    )  # fmt: skip
    index: IndexConfig = field(default_factory=IndexConfig)

    def __post_init__(self) -> None:
        for name in ("batch_size", "block_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("actors", "threads", "max_code_len"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        check_backend(self.backend)
        if self.tokenize not in ("auto", "actor", "task"):
            raise ValueError(f"tokenize: expected auto, actor or task, got {self.tokenize!r}")

    def inputs(self) -> list[Need]:
        """The model and the codes (`config.check_inputs`, before Ray starts)."""
        what = "a split folder or a codes .parquet file"
        codes = () if self.codes.endswith(".parquet") else ("codes.parquet",)
        return [
            *needs(self, "model", MODEL_CONFIG, what="a retriever folder"),
            *needs(self, "codes", *codes, what=what, required=True),
        ]


# ------------------------------------------------------------------ inputs


def read_code_ids(path: Path) -> list[str]:
    """The code ids in file order (one column: cheap even for millions of codes).

    Raises ValueError for nulls or duplicates, BadRecord (row, field) for an id whose
    bytes are not UTF-8."""
    col = pq.ParquetFile(path).read(columns=["code_id"]).column("code_id")  # no dataset import
    check_utf8(col, path, "code_id")
    if col.null_count:
        raise ValueError(f"{path}: field 'code_id' has {col.null_count} nulls")
    ids = col.to_pylist()
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: field 'code_id' has {len(ids) - len(set(ids))} duplicates")
    return ids


def check_code_text(path: Path) -> None:
    """Raise BadRecord naming the first code (row, 1-based) whose bytes are not UTF-8.

    Parquet does not check its strings, and a bad one would otherwise stop the job as a
    UnicodeDecodeError inside a tokenizer, hidden in Ray Data's wrapper of a task's error.
    One row group at a time; a pass over the text is small beside embedding it.
    """
    pf = pq.ParquetFile(path)
    first = 1
    for group in range(pf.metadata.num_row_groups):
        column = pf.read_row_group(group, columns=["code"])["code"]
        check_utf8(column, path, "code", first_row=first)
        first += len(column)


def max_code_len(cfg: EmbedConfig, model: str) -> int:
    """Truncation length: the config's, else the one the retriever was saved with."""
    meta = read_meta(model) or {}
    return cfg.max_code_len or int(meta.get("max_code_len", DEFAULT_MAX_CODE_LEN))


# ------------------------------------------------------------------ Ray Data stages


def _read_row_groups(batch: dict, path: str) -> pa.Table:
    """Read task: Parquet row groups -> (pos, code_id, code), `pos` = row in the file."""
    pf = pq.ParquetFile(input_file(path))
    tables = []
    for group, offset in zip(batch["row_group"], batch["offset"], strict=True):
        t = pf.read_row_group(int(group), columns=["code_id", "code"])
        pos = pa.array(np.arange(int(offset), int(offset) + t.num_rows, dtype=np.int64))
        tables.append(pa.table({"pos": pos, "code_id": t["code_id"], "code": t["code"]}))
    return pa.concat_tables(tables)


def tokenize_codes(batch: pa.Table, tokenizer, max_len: int) -> pa.Table:
    """Tokenise task: code text -> truncated token ids, exactly as `embed_texts` does.

    The tokenizer comes by value (loaded once on the driver), so a task on any node can
    run without the model's folder.
    """
    texts = batch["code"].to_pylist()
    ids = tokenizer(texts, truncation=True, max_length=max_len)["input_ids"] if texts else []
    return pa.table(
        {"pos": batch["pos"], "code_id": batch["code_id"], "input_ids": ids},
        schema=TOKENIZED_CODES_SCHEMA,
    )


class CodeEmbedder:
    """Actor: holds one retriever and turns blocks of codes (or of their token ids) into
    unit embeddings.

    Loading the model once per actor (not once per block) is why this is a callable
    class in an actor pool rather than a task.
    """

    def __init__(
        self, model: str, batch_size: int, threads: int, backend: str = "torch", max_len: int = 0
    ) -> None:
        import torch

        from r2ps.models.backends import load_retriever
        from r2ps.models.encoder import pad_token_id

        # the model folder on this actor's node, for the actor's life (r2ps.storage)
        self._inputs = contextlib.ExitStack()
        self._inputs.enter_context(on_this_node(model))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_retriever(model, backend, threads, self.device).model
        self.max_len = max_len or self.model.max_code_len
        self.batch_size = batch_size
        self.pad_id = pad_token_id(self.model.tokenizer)
        if self.device.type == "cuda":
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            self.dtype = None  # full precision on CPU: results match the single-process path

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from r2ps.models.encoder import pad_batch

        if "input_ids" not in batch.column_names:  # codes come as text: tokenise here
            batch = tokenize_codes(batch, self.model.tokenizer, self.max_len)
        seqs = batch["input_ids"].to_pylist()
        out = np.zeros((len(seqs), self.model.dim), dtype=np.float32)
        autocast = torch.autocast(
            self.device.type, dtype=self.dtype, enabled=self.dtype is not None
        )
        with torch.inference_mode(), autocast:
            for idx in batches_by_length([len(s) for s in seqs], self.batch_size):
                padded = pad_batch([seqs[i] for i in idx], self.pad_id)
                emb = self.model.encode(
                    padded["input_ids"].to(self.device), padded["attention_mask"].to(self.device)
                )
                out[idx] = emb.float().cpu().numpy()
        check_finite(out, "embeddings", batch["code_id"].to_pylist())
        return pa.table(
            {
                "pos": batch["pos"],
                "code_id": batch["code_id"],
                "embedding": pa.FixedSizeListArray.from_arrays(
                    pa.array(out.reshape(-1), pa.float32()), self.model.dim
                ),
            }
        )


@dataclass
class PoolPlan:
    """How the actor pool is sized on this cluster (probed, never configured in code)."""

    actors: int
    num_cpus: float  # per actor
    num_gpus: float  # per actor
    threads: int  # torch threads per actor
    task_cpus: float = field(init=False)  # per read / tokenise task

    def __post_init__(self) -> None:
        # Half an actor's CPU share: tokenising is lighter than the model, and unequal
        # resources keep Ray Data from fusing the tokenise tasks into the actors (it
        # fuses a task stage into the next actor stage when their resources are equal),
        # which would put tokenisation back on the model's critical path.
        self.task_cpus = round(self.num_cpus / 2, 3)


def plan_pool(cfg: EmbedConfig) -> PoolPlan:
    """One actor per GPU where the cluster has GPUs; on CPUs, a pool that leaves room
    for the read and tokenise tasks (whole-CPU actors would starve them and hang)."""
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 1)), int(resources.get("GPU", 0))
    if gpus:
        actors = cfg.actors or gpus
        return PoolPlan(actors, 1.0, 1.0, cfg.threads or 2)
    actors = cfg.actors or max(1, int(cpus) // 2)
    per_actor = max(0.25, min(1.0, round((cpus - 1) / actors, 2)))
    threads = cfg.threads or max(1, int(cpus) // actors)
    return PoolPlan(actors, per_actor, 0.0, threads)


def _row_groups(path: Path) -> tuple[list[dict], int]:
    meta = pq.ParquetFile(path).metadata
    offsets = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
    groups = [{"row_group": i, "offset": int(offsets[i])} for i in range(meta.num_row_groups)]
    return groups, int(offsets[-1])


def tokenize_in_tasks(cfg: EmbedConfig, plan: PoolPlan) -> bool:
    """Tokenise in tasks of their own (GPU pools by default) or in the actors (CPU pools)."""
    if cfg.tokenize == "auto":
        return plan.num_gpus > 0
    return cfg.tokenize == "task"


def block_count(n_rows: int, block_rows: int, actors: int) -> int:
    """Blocks of at most about `block_rows` rows, a multiple of `actors` in number.

    The pool hands out whole blocks: 5 blocks on 2 actors leave one actor idle for the
    last block's time (a fifth of the job); 6 smaller blocks keep both busy to the end.
    """
    per_round = max(1, actors)
    rounds = max(1, -(-n_rows // (block_rows * per_round)))
    return min(max(1, n_rows), rounds * per_round)


def embedding_dataset(cfg: EmbedConfig, codes: Path, model: str, plan: PoolPlan):
    """The lazy Ray Dataset of (pos, code_id, embedding) for every code of `codes`.

    A Parquet row group is read as one block (a typical `codes.parquet` is a single
    row group), so the rows are repartitioned into blocks of about `block_rows`:
    blocks, not rows, are what the actor pool shares out.
    """
    import ray

    from r2ps.models.encoder import load_tokenizer

    groups, n_rows = _row_groups(codes)
    if n_rows == 0:
        raise ValueError(f"{codes}: no codes to embed")
    ds = ray.data.from_items(groups, override_num_blocks=max(1, len(groups)))
    ds = ds.map_batches(
        _read_row_groups,
        fn_kwargs={"path": str(codes)},
        batch_size=1,
        batch_format="numpy",
        num_cpus=plan.task_cpus,
    )
    ds = ds.repartition(block_count(n_rows, cfg.block_rows, plan.actors))
    max_len = max_code_len(cfg, model)
    if tokenize_in_tasks(cfg, plan):
        ds = ds.map_batches(
            tokenize_codes,
            fn_kwargs={"tokenizer": load_tokenizer(model), "max_len": max_len},
            batch_size=None,  # one block in, one block out
            batch_format="pyarrow",
            num_cpus=plan.task_cpus,
        )
    return ds.map_batches(
        CodeEmbedder,
        fn_constructor_kwargs={
            "model": model,
            "batch_size": cfg.batch_size,
            "threads": plan.threads,
            "backend": cfg.backend,
            "max_len": max_len,
        },
        compute=ray.data.ActorPoolStrategy(size=plan.actors),
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
        batch_size=None,  # one block per call: blocks are already cut (block_count)
        batch_format="pyarrow",
    )


# ------------------------------------------------------------------ the run


def embeddings_dir(cfg: EmbedConfig) -> Path:
    """Where the run writes its shards and manifest: `<out>/embeddings`."""
    return Path(cfg.out) / "embeddings"


CorpusIdentity = tuple[str, Path, dict]  # (model dir, codes file, manifest keys)


def corpus_identity(cfg: EmbedConfig) -> CorpusIdentity:
    """(model dir, codes file, the manifest keys that say which vectors of which corpus).

    Reads every code id and hashes the model's weights: a caller that needs it twice
    passes it on (`embed_corpus`'s `corpus`)."""
    model = model_or_default(cfg.model)
    codes = codes_file(cfg.codes)
    ids = read_code_ids(codes)
    return (
        model,
        codes,
        {
            "model_fingerprint": model_fingerprint(model),
            "corpus_fingerprint": corpus_fingerprint(ids),
            "count": len(ids),
            "max_code_len": max_code_len(cfg, model),  # truncation changes the vectors too
            "backend": cfg.backend,  # int8 vectors are not the fp32 ones
        },
    )


def embed_corpus(cfg: EmbedConfig, corpus: CorpusIdentity | None = None) -> dict:
    """Embed every code of `cfg.codes` into `<out>/embeddings/`; returns the manifest.

    `corpus`: `corpus_identity(cfg)`, when the caller has read it already.
    """
    import ray

    from r2ps.models.onnx_export import ensure_export

    model, codes, identity = corpus or corpus_identity(cfg)
    check_code_text(codes)  # before any work starts
    plan = plan_pool(cfg)
    if cfg.backend != "torch":
        if plan.num_gpus:
            raise ValueError(
                f"backend={cfg.backend!r} is for CPU actors; this cluster has GPUs, whose "
                "actors run torch (bf16/fp16): set backend=torch"
            )
        ensure_export(model, cfg.backend)  # once, on the driver, before the actors load it
    final = embeddings_dir(cfg)
    log.info(
        "embedding %d codes of %s: %d actor(s) x %d thread(s), %.2f CPU, %.0f GPU each",
        identity["count"], codes, plan.actors, plan.threads, plan.num_cpus, plan.num_gpus,
    )  # fmt: skip
    with atomic_path(final) as tmp:
        start = time.perf_counter()
        ds = embedding_dataset(cfg, codes, model, plan)
        tmp.mkdir(parents=True)
        progress = Progress(log, "embedding", identity["count"], "codes")
        blocks = ds.iter_batches(batch_size=None, batch_format="pyarrow")  # a block at a time
        for i, block in enumerate(blocks):
            pq.write_table(block, tmp / f"part-{i:06d}.parquet")
            progress.update(block.num_rows)
        seconds = time.perf_counter() - start
        ids, dim = embedding_layout(tmp)  # every position arrived exactly once (no vectors read)
        if len(ids) != identity["count"]:
            raise RuntimeError(f"{tmp}: {len(ids)} embeddings for {identity['count']} codes")
        manifest = {
            **identity,
            "model_path": model,
            "codes": str(codes),
            "dim": dim,
            "shards": len(list(tmp.glob("part-*.parquet"))),
            "actors": plan.actors,
            "threads_per_actor": plan.threads,
            "embed_device": "gpu" if plan.num_gpus else "cpu",
            "tokenize": "tasks" if tokenize_in_tasks(cfg, plan) else "actors",
            "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
            "seconds": round(seconds, 3),
            "codes_per_s": round(len(ids) / seconds, 1) if seconds else None,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    log.info("embedded %d codes in %.1f s (%.0f codes/s) -> %s", len(ids), seconds,
             manifest["codes_per_s"] or 0, final)  # fmt: skip
    return manifest
