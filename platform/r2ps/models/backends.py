"""Inference backends of the retriever and the ranker: torch, or ONNX Runtime fp32 / int8 on CPU.

`load_retriever` / `load_ranker` are what serving and the embedding actors call: they
return the torch model (`backend="torch"`; always on a GPU) or an `OrtDualEncoder` /
`OrtCrossEncoder` with the same inference API (`embed_queries`, `embed_codes`, `encode`;
`score_pairs`, `forward`), wrapped in `Loaded` (what /readyz reports). **Add a serving
backend here**: its name in `BACKENDS` (r2ps.models.light), a branch in the `load_*` functions (and, if it runs
a graph of its own, the export in `models/onnx_export.py`).

An ONNX backend runs the export beside the model (`<model>/onnx/`, written by
`models/onnx_export.py`); `read_export` is the one reader of that folder, and refuses
(`StaleExportError`) an export whose manifest's fingerprint no longer matches the folder's
weights: a retrained model never runs an old graph. It and the export's layout live in
`r2ps.models.light`, with the torch-free query encoder that `r2ps search` runs
(`r2ps.models.loading`: this module's `load_retriever` where torch is needed).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from r2ps.log import get_logger
from r2ps.models.encoder import by_length, load_tokenizer, read_meta

# the export's layout, reader and session: torch-free, in r2ps.models.light
from r2ps.models.light import (  # noqa: F401 (re-exported)
    BACKENDS,
    FP32_FILE,
    INT8_FILE,
    ONNX_DIR,
    ONNX_MANIFEST,
    Loaded,
    StaleExportError,
    check_backend,
    onnx_dir,
    read_export,
    session,
)

log = get_logger(__name__)


def _setting(cls: type, model_dir: str | Path, name: str) -> int:
    """A length setting as `cls.from_pretrained` reads it: r2ps.json, else the default."""
    meta = read_meta(model_dir) or {}
    return int(meta.get(name, inspect.signature(cls.__init__).parameters[name].default))


class _OrtModule(nn.Module):
    """An ONNX graph behind torch tensors: no parameters, CPU only.

    It is an nn.Module (with no parameters) so the torch models' batching code
    (`embed_texts`, `CrossEncoder.score_pairs`) drives it unchanged.
    """

    def __init__(self, model_dir: str | Path, backend: str, threads: int, kind: str) -> None:
        super().__init__()
        manifest, path = read_export(model_dir, backend)
        if manifest["kind"] != kind:
            raise ValueError(f"{model_dir}: the export is a {manifest['kind']!r} model")
        self.backend = backend
        self.manifest = manifest
        self.threads = threads
        # int8: rows run alone (`_run`), each on one core, spread over `threads` cores
        self._rows = None
        if backend == "onnx-int8":
            self._rows = ThreadPoolExecutor(threads or len(os.sched_getaffinity(0)))
        self.session = session(path, 1 if self._rows else threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.tokenizer = load_tokenizer(model_dir)

    def _run(self, *tensors: torch.Tensor) -> torch.Tensor:
        """The graph on (input_ids, attention_mask[, token_type_ids]) [B, L] -> [B, ...].

        The int8 graph quantises activations with one range per call (ONNX Runtime's
        dynamic quantisation), so a row's output would move with the rows and padding
        beside it (cosine 0.985 between MiniLM's vectors of one code in batches of 64 and
        alone): it runs each row alone, on its own tokens (the mask's), so a text's
        vector or score is the same in any batch: an index updated incrementally equals
        a rebuild, a query's answer does not depend on the requests batched with it.
        Rows go one per core at a time (ONNX Runtime runs concurrent calls of a session
        and releases the GIL): on 2 CPUs about as fast as batches on both cores, and
        faster than rows one after another on both (benchmarks/index_speed.py)."""
        if self._rows is None:
            return self._call(*tensors)
        mask = tensors[1].bool()
        rows = [[t[i][mask[i]][None] for t in tensors] for i in range(len(mask))]
        return torch.cat(list(self._rows.map(lambda row: self._call(*row), rows)))

    def _call(self, *tensors: torch.Tensor) -> torch.Tensor:
        feed = {
            name: t.detach().cpu().numpy().astype(np.int64, copy=False)
            for name, t in zip(self.input_names, tensors, strict=False)
        }
        return torch.from_numpy(self.session.run(None, feed)[0])


class OrtDualEncoder(_OrtModule):
    """The retriever through ONNX Runtime: `DualEncoder`'s inference API, same vectors."""

    def __init__(self, model_dir: str | Path, backend: str = "onnx", threads: int = 0) -> None:
        super().__init__(model_dir, backend, threads, "dual")
        from r2ps.models.dual import DualEncoder

        self.max_query_len = _setting(DualEncoder, model_dir, "max_query_len")
        self.max_code_len = _setting(DualEncoder, model_dir, "max_code_len")
        self.dim = int(self.manifest["dim"])
        self.eval()

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings [B, h] float32, in the same length-sorted slices as torch."""
        return by_length(self._run, input_ids, attention_mask)

    def embed_queries(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        from r2ps.models.dual import embed_texts

        return embed_texts(self, self.tokenizer, texts, self.max_query_len, batch_size)

    def embed_codes(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        from r2ps.models.dual import embed_texts

        return embed_texts(self, self.tokenizer, texts, self.max_code_len, batch_size)


class OrtCrossEncoder(_OrtModule):
    """The ranker through ONNX Runtime: `CrossEncoder`'s inference API (encoder + head)."""

    def __init__(self, model_dir: str | Path, backend: str = "onnx", threads: int = 0) -> None:
        super().__init__(model_dir, backend, threads, "cross")
        from r2ps.models.cross import CrossEncoder, saved_trained_alpha

        self.max_query_len = _setting(CrossEncoder, model_dir, "max_query_len")
        self.max_len = _setting(CrossEncoder, model_dir, "max_len")
        self.trained_alpha = saved_trained_alpha(model_dir)  # as CrossEncoder.trained_alpha
        self.eval()

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """Scores [B] float32, one per (query, code) row, as `CrossEncoder.forward`.
        Raises ValueError without `token_type_ids`: the graph takes them (a segment-pooling
        head finds the code by them; zeros would silently score every pair alike)."""
        if token_type_ids is None:
            raise ValueError("the ranker's graph needs token_type_ids (see tokenize)")
        return by_length(self._run, input_ids, attention_mask, token_type_ids)

    def tokenize(self, queries: Sequence[str], codes: Sequence[str]) -> dict[str, torch.Tensor]:
        from r2ps.models.cross import tokenize_pairs

        return tokenize_pairs(self.tokenizer, queries, codes, self.max_query_len, self.max_len)

    def score_pairs(self, queries, codes, batch_size: int = 64) -> np.ndarray:
        """Scores [len(queries)] float32 in input order (`CrossEncoder.score_pairs`)."""
        from r2ps.models.cross import score_pairs

        return score_pairs(self, queries, codes, batch_size)


# ------------------------------------------------------------------ loading by backend


def set_torch_threads(threads: int) -> int:
    """torch intra-op threads (0: leave as is); the number now in use."""
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _gpu_keeps_torch(backend: str, device: torch.device) -> None:
    if backend != "torch" and device.type == "cuda":
        log.info("backend %s is for CPUs: this replica has a GPU and runs torch", backend)


def load_retriever(model_dir: str | Path, backend: str, threads: int, device=None) -> Loaded:
    """The retriever in `model_dir` on `backend` with `threads` CPU threads.

    GPU replicas keep torch (`device` cuda): ONNX Runtime's CPU graphs are for CPUs.
    """
    from r2ps.models.dual import DualEncoder

    check_backend(backend)
    device = torch.device(device or "cpu")
    if backend == "torch" or device.type == "cuda":
        _gpu_keeps_torch(backend, device)
        threads = set_torch_threads(threads)
        model = DualEncoder.from_pretrained(model_dir).to(device).eval()
        return Loaded(model, "torch", threads)
    set_torch_threads(threads)  # tokenising and pooling glue stays on torch
    return Loaded(OrtDualEncoder(model_dir, backend, threads), backend, threads)


def load_ranker(model_dir: str | Path, backend: str, threads: int, device=None) -> Loaded:
    """The ranker in `model_dir` on `backend` (see `load_retriever`). A folder that holds
    no saved ranker (the bundled MiniLM, any HF encoder: a fresh head) runs on torch
    whatever `backend` says: there is no graph of a fresh head to export."""
    from r2ps.models.cross import CrossEncoder, saved_ranker_meta

    check_backend(backend)
    device = torch.device(device or "cpu")
    if backend != "torch" and saved_ranker_meta(model_dir) is None:
        log.info("%s holds no saved ranker: it runs on torch, not %s", model_dir, backend)
        backend = "torch"
    if backend == "torch" or device.type == "cuda":
        _gpu_keeps_torch(backend, device)
        threads = set_torch_threads(threads)
        model = CrossEncoder.from_pretrained(model_dir).to(device).eval()
        return Loaded(model, "torch", threads)
    set_torch_threads(threads)
    return Loaded(OrtCrossEncoder(model_dir, backend, threads), backend, threads)
