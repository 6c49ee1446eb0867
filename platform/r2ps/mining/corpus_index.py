"""The index of a corpus under a model, kept up to date: reused when current, else rebuilt.

`ensure_index` is what mining, serving and `jobs/embed.py` call. It compares the saved
manifests with what the index would be made of now (`embed.corpus_identity`: the model's
and the corpus's fingerprints, the truncation, the backend; then the index kind and its
build settings) and does only the work that changed: it loads `<out>/index/` when that
is current, builds it from `<out>/embeddings/` when only the index settings changed, and
re-embeds (`embed.embed_corpus`) only when the embeddings are stale or missing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from r2ps.log import get_logger
from r2ps.mining.embed import EmbedConfig, corpus_identity, embed_corpus, embeddings_dir
from r2ps.mining.index import (
    CodeIndex,
    StaleIndexError,
    check_manifest,
    read_embeddings,
    read_manifest,
)
from r2ps.models.light import model_fingerprint, model_or_default

log = get_logger(__name__)


def index_dir(cfg: EmbedConfig) -> Path:
    """Where the index and its manifest are saved: `<out>/index`."""
    return Path(cfg.out) / "index"


def saved_code_embedding(cfg: EmbedConfig) -> EmbedConfig:
    """`cfg` with the code truncation and backend that the index saved under `cfg.out`
    was embedded with, when that index is of `cfg.model`; else `cfg` as it is.

    For a searcher of an index someone else built (the repository index job chooses
    both: r2ps.repo.config): the queries need the same model, not the codes' settings,
    so the index is loaded as it was made. An index of another model is still stale, and
    a rebuild then embeds with `cfg`'s own settings, not the old model's."""
    try:
        manifest = read_manifest(index_dir(cfg))
    except (FileNotFoundError, ValueError):  # none yet, or damaged: ensure_index says so
        return cfg
    if manifest.get("model_fingerprint") != model_fingerprint(model_or_default(cfg.model)):
        return cfg
    return dataclasses.replace(
        cfg,
        max_code_len=int(manifest.get("max_code_len", cfg.max_code_len)),
        backend=manifest.get("backend", "torch"),
    )


def ensure_index(cfg: EmbedConfig, build: bool = True) -> CodeIndex:
    """The index of `cfg.codes` under `cfg.model`: loaded when up to date, else rebuilt.

    Up to date means the saved manifest has the same model fingerprint, corpus
    fingerprint (ids in order) and index kind and build settings. Embeddings are reused
    the same way, so changing only the index kind re-indexes without re-embedding.
    `build=False`: a missing or stale index is raised (FileNotFoundError, StaleIndexError
    naming what differs), never rebuilt (`r2ps search`: no Ray, no embedding).
    """
    corpus = corpus_identity(cfg)
    identity = corpus[2]
    expect = {**identity, "kind": cfg.index.kind, "settings": cfg.index.build_settings()}
    try:
        index = CodeIndex.load(index_dir(cfg), expect=expect, cfg=cfg.index)
        log.info("reusing index %s (%d codes)", index_dir(cfg), len(index))
        return index
    except (FileNotFoundError, StaleIndexError) as e:
        if not build:
            raise
        log.info("building the index: %s", e)
    try:
        manifest = read_manifest(embeddings_dir(cfg))
        check_manifest(manifest, identity, embeddings_dir(cfg))
        log.info("reusing embeddings %s", embeddings_dir(cfg))
    except (FileNotFoundError, StaleIndexError) as e:
        log.info("embedding: %s", e)
        manifest = embed_corpus(cfg, corpus)
    # The vectors go through a memory map on disk beside the index: RAM holds the index
    # being built, not also every vector (143 GiB at 100M codes of d = 384).
    vectors = Path(cfg.out) / "vectors.tmp.npy"
    try:
        ids, emb = read_embeddings(str(embeddings_dir(cfg)), into=vectors)
        index = CodeIndex.build(emb, ids, cfg.index, manifest)  # the embedding run's record too
        del emb
    finally:
        vectors.unlink(missing_ok=True)
    index.save(index_dir(cfg))
    return index
