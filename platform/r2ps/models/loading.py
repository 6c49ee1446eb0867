"""Loading an encoder for inference: the one place that picks the implementation.

- `load_query_encoder`: the retriever for queries (and the index job's codes): ONNX
  Runtime without torch (`r2ps.models.light.OrtRetriever`) for an ONNX backend on a CPU
  when the model folder holds tokenizer.json, else `r2ps.models.backends.load_retriever`
  (torch; or its ONNX modules: a model without tokenizer.json).
- `load_ranker`: `r2ps.models.backends.load_ranker`, once the export exists.

Both make a missing or stale export first (`ensure_exported`): a serve.yaml of the index
job's int8 default may name a model that was never exported, and a Serve replica that
fails to load is restarted forever. torch is imported only when it is needed: backend
torch, a GPU, or an export to make.
"""

from __future__ import annotations

from pathlib import Path

from r2ps.log import get_logger
from r2ps.models.light import (
    TOKENIZER_FILE,
    Loaded,
    OrtRetriever,
    StaleExportError,
    check_backend,
    read_export,
)

log = get_logger(__name__)


def ensure_exported(model_dir: str | Path, backend: str) -> None:
    """Make the export of `model_dir` for `backend` when it has none or a stale one
    (`r2ps.models.onnx_export.ensure_export`); a current one is only read."""
    try:
        read_export(model_dir, backend)
        return
    except (FileNotFoundError, StaleExportError) as e:
        log.info("%s has no current %s export (%s): making it now, once", model_dir, backend,
                 type(e).__name__)  # fmt: skip
    from r2ps.models.onnx_export import ensure_export

    ensure_export(model_dir, backend)


def _on_cpu(device) -> bool:
    return device is None or getattr(device, "type", str(device)) == "cpu"


def load_query_encoder(model_dir: str | Path, backend: str, threads: int, device=None) -> Loaded:
    """The retriever in `model_dir` on `backend` with `threads` CPU threads (0: all):
    `.model.embed_queries(texts)` / `.embed_codes(texts)` -> float32 [n, dim] unit rows.
    GPU replicas run torch whatever `backend` says."""
    check_backend(backend)
    if backend != "torch" and _on_cpu(device):
        ensure_exported(model_dir, backend)
        if Path(model_dir, TOKENIZER_FILE).is_file():
            return Loaded(OrtRetriever(model_dir, backend, threads), backend, threads)
    from r2ps.models.backends import load_retriever

    return load_retriever(model_dir, backend, threads, device)


def load_ranker(model_dir: str | Path, backend: str, threads: int, device=None) -> Loaded:
    """The ranker in `model_dir` on `backend` (`r2ps.models.backends.load_ranker`: a folder
    holding no saved ranker runs on torch), its export made first where it needs one."""
    from r2ps.models.backends import load_ranker as load
    from r2ps.models.cross import saved_ranker_meta

    if backend != "torch" and _on_cpu(device) and saved_ranker_meta(model_dir) is not None:
        ensure_exported(model_dir, backend)
    return load(model_dir, backend, threads, device)
