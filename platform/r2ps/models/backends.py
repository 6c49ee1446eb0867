"""Inference backends of the retriever and the ranker: torch, or ONNX Runtime fp32 / int8 on CPU.

`load_retriever` / `load_ranker` are what serving and the embedding actors call: they
return the torch model (`backend="torch"`; always on a GPU) or an `OrtDualEncoder` /
`OrtCrossEncoder` with the same inference API (`embed_queries`, `embed_codes`, `encode`;
`score_pairs`, `forward`), wrapped in `Loaded` (what /readyz reports). **Add a serving
backend here**: its name in `BACKENDS`, a branch in the `load_*` functions (and, if it runs
a graph of its own, the export in `models/onnx_export.py`).

An ONNX backend runs the export beside the model (`<model>/onnx/`, written by
`models/onnx_export.py`); `read_export` is the one reader of that folder, and refuses
(`StaleExportError`) an export whose manifest's fingerprint no longer matches the folder's
weights: a retrained model never runs an old graph.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from r2ps.log import get_logger
from r2ps.models.encoder import by_length, load_tokenizer, model_fingerprint, read_meta

log = get_logger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")
# The export's layout beside a model (HF's, as optimum and sentence-transformers use it).
ONNX_DIR = "onnx"
FP32_FILE = "model.onnx"
INT8_FILE = "model_qint8.onnx"
ONNX_MANIFEST = "manifest.json"


class StaleExportError(RuntimeError):
    """The ONNX export beside a model was made from other weights (or is incomplete)."""


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def onnx_dir(model_dir: str | Path) -> Path:
    return Path(model_dir) / ONNX_DIR


def read_export(model_dir: str | Path, backend: str) -> tuple[dict, Path]:
    """(manifest, graph file) of the export beside `model_dir` for `backend`, checked.

    Raises FileNotFoundError when there is no export (naming the command that makes one)
    and StaleExportError when the model's weights changed since the export.
    """
    check_backend(backend)
    if backend == "torch":
        raise ValueError("the torch backend has no ONNX export")
    model_dir = Path(model_dir)
    folder = onnx_dir(model_dir)
    path = folder / ONNX_MANIFEST
    make = f"python jobs/export_onnx.py --model {model_dir}"
    if not path.exists():
        raise FileNotFoundError(f"{folder}: no ONNX export of {model_dir}; make one with `{make}`")
    manifest = json.loads(path.read_text())
    have = model_fingerprint(str(model_dir))  # one owner of "which weights are these"
    if manifest.get("model_fingerprint") != have:
        raise StaleExportError(
            f"{path}: exported from weights {manifest.get('model_fingerprint')!r}, but "
            f"{model_dir} now holds {have!r}; re-export with `{make}`"
        )
    name = manifest.get("files", {}).get(backend)
    if not name or not (folder / name).exists():
        raise StaleExportError(f"{folder}: no {backend} graph in the export; run `{make}`")
    return manifest, folder / name


# ------------------------------------------------------------------ running


def session(path: str | Path, threads: int):
    """An ONNX Runtime CPU session with `threads` intra-op threads (0: ORT's default).

    One inter-op thread and sequential execution: an encoder's graph is a chain, and
    the replica's reserved CPUs are all given to the intra-op pool. Idle pool threads
    sleep instead of spinning (ORT's default): replicas share a machine's cores, and a
    spinning thread takes a core another replica reserved.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(0, int(threads))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


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
        self.session = session(path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.tokenizer = load_tokenizer(model_dir)

    def _run(self, *tensors: torch.Tensor) -> torch.Tensor:
        """The graph on (input_ids, attention_mask[, token_type_ids]) [B, L] -> [B, ...].

        The int8 graph quantises activations with one range per call (ONNX Runtime's
        dynamic quantisation), so a row's output would move with the rows and padding
        beside it (cosine 0.985 between MiniLM's vectors of one code in batches of 64 and
        alone): it runs each row alone, on its own tokens (the mask's), so a text's
        vector or score is the same in any batch: an index updated incrementally equals
        a rebuild, a query's answer does not depend on the requests batched with it. On
        2 CPUs, rows alone embed as fast as batches (benchmarks/index_speed.py)."""
        if self.backend != "onnx-int8":
            return self._call(*tensors)
        mask = tensors[1].bool()
        return torch.cat(
            [self._call(*(t[i][mask[i]][None] for t in tensors)) for i in range(len(mask))]
        )

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


@dataclass
class Loaded:
    """A model ready for inference, and how it runs (what /readyz reports)."""

    model: nn.Module
    backend: str
    threads: int

    def info(self) -> dict:
        out = {"backend": self.backend, "threads": self.threads}
        manifest = getattr(self.model, "manifest", None)
        if manifest:
            out["onnx_fused"] = manifest.get("fused")
        return out


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
    """The ranker in `model_dir` on `backend` (see `load_retriever`)."""
    from r2ps.models.cross import CrossEncoder

    check_backend(backend)
    device = torch.device(device or "cpu")
    if backend == "torch" or device.type == "cuda":
        _gpu_keeps_torch(backend, device)
        threads = set_torch_threads(threads)
        model = CrossEncoder.from_pretrained(model_dir).to(device).eval()
        return Loaded(model, "torch", threads)
    set_torch_threads(threads)
    return Loaded(OrtCrossEncoder(model_dir, backend, threads), backend, threads)
