"""Vectors by content id and the faiss index over every unit: stages 3-4 of the
repository index.

`update_vectors` keeps one float32 vector per content id (a hash of the code text) in
`vectors/` under the encoder that made it (the retriever's fingerprint, the code length
and the backend in the manifest): only content ids with no stored vector are embedded (a
Ray Data actor pool of `r2ps.mining.embed`, or in this process when few), and exactly the
current ones are kept. `build_index` builds the faiss index over every unit, in
`codes.parquet` order, with the manifest `r2ps.mining.corpus_index.ensure_index` expects
(the code length and backend it records are the index's own: `saved_code_embedding`), so
the Serve app loads it as it is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from r2ps.config import ConfigError
from r2ps.log import get_logger
from r2ps.mining.index import LEGACY_DEFAULTS, CodeIndex, corpus_fingerprint
from r2ps.models.light import model_fingerprint
from r2ps.repo.config import RepoIndexConfig
from r2ps.repo.units import CODES, join_ray, write_atomic

log = get_logger(__name__)

VECTORS_DIR = "vectors"
VECTORS = "vectors.parquet"


def code_len(cfg: RepoIndexConfig, model: str) -> int:
    """Code tokens embedded: `cfg.max_code_len`, else the retriever's own."""
    from r2ps.mining.embed import EmbedConfig, max_code_len

    return max_code_len(EmbedConfig(model=model, max_code_len=cfg.max_code_len), model)


def embeds_here(cfg: RepoIndexConfig, n_codes: int) -> bool:
    """Whether `n_codes` new codes are embedded in this process (else on Ray actors)."""
    return n_codes < cfg.local_limit()


def _embed_new(
    texts: list[str], ids: list[str], model: str, cfg: RepoIndexConfig, work: Path
) -> np.ndarray:
    """float32 [len(texts), d] unit vectors of `texts` with the retriever at `model`, on
    `cfg.backend`, cut to `code_len` tokens, in batches of similar length."""
    from r2ps.models.loading import ensure_exported, load_query_encoder

    if cfg.backend != "torch":
        ensure_exported(model, cfg.backend)  # once per model, before any encoder loads it
    if embeds_here(cfg, len(texts)):
        # ONNX on this CPU: onnxruntime and tokenizers alone, no torch import (seconds of
        # a small repository's `r2ps index`); torch: the DualEncoder
        encoder = load_query_encoder(model, cfg.backend, cfg.threads).model
        if hasattr(encoder, "embed"):
            return encoder.embed(texts, code_len(cfg, model), cfg.batch_size)
        from r2ps.models.dual import embed_texts

        return embed_texts(encoder, encoder.tokenizer, texts, code_len(cfg, model), cfg.batch_size)
    from r2ps.mining.embed import EmbedConfig, embedding_dataset, plan_pool

    join_ray(cfg.ray_address)
    pending = work / "pending.parquet"
    pq.write_table(pa.table({"code_id": ids, "code": texts}), pending)
    ecfg = EmbedConfig(
        model=model,
        codes=str(pending),
        actors=cfg.actors,
        batch_size=cfg.batch_size,
        block_rows=cfg.block_rows,
        threads=cfg.threads,
        max_code_len=cfg.max_code_len,
        backend=cfg.backend,
    )
    plan = plan_pool(ecfg)
    if plan.num_gpus and cfg.backend != "torch":  # GPU actors run torch: other vectors
        raise ConfigError(
            f"backend: {cfg.backend!r} is for CPUs; this Ray cluster has GPUs, whose "
            "embedding actors run torch: set backend=torch"
        )
    out = None
    for block in embedding_dataset(ecfg, pending, model, plan).iter_batches(
        batch_size=None, batch_format="pyarrow"
    ):
        emb = block["embedding"].combine_chunks()
        dim = emb.type.list_size
        if out is None:
            out = np.zeros((len(texts), dim), dtype=np.float32)
        out[block["pos"].to_numpy()] = emb.flatten().to_numpy().reshape(-1, dim)
    pending.unlink()
    return out


def _vector_identity(model: str, cfg: RepoIndexConfig) -> dict:
    """What makes a stored vector this run's: the retriever, the truncation, the backend
    (int8 vectors are not the fp32 ones)."""
    return {
        "model_fingerprint": model_fingerprint(model),
        "max_code_len": code_len(cfg, model),
        "backend": cfg.backend,
    }


def update_vectors(
    units: pa.Table, model: str, cfg: RepoIndexConfig, out: Path
) -> tuple[np.ndarray, dict]:
    """float32 [len(units), d]: each unit's vector, by content id; embeds only content
    ids that have no stored vector under this retriever, and stores exactly the current
    content ids' vectors (those of code that left the tree are dropped)."""
    vdir = out / VECTORS_DIR
    vdir.mkdir(parents=True, exist_ok=True)
    identity = _vector_identity(model, cfg)
    stored_ids: list[str] = []
    stored = np.zeros((0, 0), dtype=np.float32)
    manifest_path = vdir / "manifest.json"
    if not cfg.full and manifest_path.exists() and (vdir / VECTORS).exists():
        try:
            saved = json.loads(manifest_path.read_text())
            if all(saved.get(k, LEGACY_DEFAULTS.get(k)) == v for k, v in identity.items()):
                table = pq.read_table(vdir / VECTORS)
                emb = table["embedding"].combine_chunks()
                stored = emb.flatten().to_numpy().reshape(-1, emb.type.list_size)
                stored_ids = table["content_id"].to_pylist()
            else:
                log.info("vectors in %s are from another encoder (retriever, code length or "
                         "backend): re-embedding", vdir)  # fmt: skip
        except (OSError, ValueError, AttributeError, KeyError, pa.ArrowException) as e:
            # damaged by hand or by a disk (AttributeError: a manifest that is not an object)
            log.warning("%s: stored vectors are not usable (%r): re-embedding", vdir, e)
            stored_ids, stored = [], np.zeros((0, 0), dtype=np.float32)
    row_of = {cid: i for i, cid in enumerate(stored_ids)}
    unit_contents = units["content_id"].to_pylist()
    wanted = sorted(set(unit_contents))
    new_ids = [cid for cid in wanted if cid not in row_of]
    start = time.perf_counter()
    if new_ids:
        log.info("embedding %d new codes (%d reused)", len(new_ids), len(wanted) - len(new_ids))
        first = {}
        for cid, code in zip(unit_contents, units["code"].to_pylist(), strict=True):
            first.setdefault(cid, code)
        vecs = _embed_new([first[c] for c in new_ids], new_ids, model, cfg, vdir)
        if not len(stored):
            stored = np.zeros((0, vecs.shape[1]), dtype=np.float32)
        for cid in new_ids:
            row_of[cid] = len(row_of)
        stored = np.concatenate([stored, vecs.astype(np.float32)])
    seconds = time.perf_counter() - start
    keep_rows = np.array([row_of[c] for c in wanted], dtype=np.int64)
    kept = stored[keep_rows]
    manifest_path.unlink(missing_ok=True)
    table = pa.table(
        {
            "content_id": pa.array(wanted, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(kept.reshape(-1), pa.float32()), kept.shape[1]
            ),
        }
    )
    write_atomic(table, vdir / VECTORS)
    manifest_path.write_text(
        json.dumps({**identity, "dim": int(kept.shape[1]), "count": len(wanted)}) + "\n"
    )
    position = {cid: i for i, cid in enumerate(wanted)}
    vectors = kept[np.array([position[c] for c in unit_contents], dtype=np.int64)]
    stats = {
        "unique": len(wanted),
        "embedded": len(new_ids),
        "reused": len(wanted) - len(new_ids),
        "embed_seconds": round(seconds, 3),
        "codes_per_s": round(len(new_ids) / seconds, 1) if new_ids and seconds else None,
        "backend": cfg.backend,
        "max_code_len": identity["max_code_len"],
        "in_process": embeds_here(cfg, len(new_ids)) if new_ids else None,
    }
    return vectors, stats


def build_index(
    units: pa.Table, emb: np.ndarray, model: str, cfg: RepoIndexConfig, out: Path
) -> CodeIndex:
    """The faiss index over every unit (`emb` [len(units), d]), with the manifest
    `ensure_index` checks."""
    ids = units["code_id"].to_pylist()
    manifest = {
        "model_fingerprint": model_fingerprint(model),
        "corpus_fingerprint": corpus_fingerprint(ids),
        "count": len(ids),
        "max_code_len": code_len(cfg, model),
        "backend": cfg.backend,
        "model_path": model,
        "codes": str((out / CODES).resolve()),
        "source": str(Path(cfg.source).resolve()),
    }
    index = CodeIndex.build(emb, ids, cfg.index, manifest)
    index.save(out / "index")
    return index
