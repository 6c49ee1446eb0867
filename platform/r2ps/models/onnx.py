"""ONNX Runtime backends for the retriever and the ranker on CPU: fp32 and dynamic int8.

`export_onnx(model_dir)` writes, once, beside the model in the HF layout that optimum and
sentence-transformers use:

    <model>/onnx/model.onnx          the fp32 graph: encoder + r2ps's pooling or head
    <model>/onnx/model_qint8.onnx    the same graph, dynamically quantised to int8
    <model>/onnx/manifest.json       what it was exported from (the weights' fingerprint)

The graph is the model's own forward, not a re-implementation: the dual encoder's
`_encode` (mean pooling, L2 norm) -> embeddings [B, h]; the cross encoder's `_score`
(first-token state or segment features -> MLP head) -> scores [B]. So an ONNX model is a
drop-in replacement for the torch one's `encode` / `forward`, and anything built on top
of those (the cascade's fusion, a score added outside the forward) stays the same.

`load_retriever` / `load_ranker` are what serving and the embedding actors call: they
return the torch model (`backend="torch"`) or an `OrtDualEncoder` / `OrtCrossEncoder`
with the same inference API (`embed_queries`, `embed_codes`, `encode`; `score_pairs`,
`forward`). An export is refused (`StaleExportError`) when the model folder's weights
no longer match the manifest's fingerprint: a retrained model never runs an old graph.

Why torch.onnx (the TorchScript exporter) and not optimum: optimum[onnxruntime] pins
transformers < 5 (it would downgrade this venv's 5.x), and sentence-transformers' backend
export goes through optimum too. The exporter here is torch's own, the int8 step is ONNX
Runtime's `quantize_dynamic`, the graph fusion ONNX Runtime's transformer optimizer.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from r2ps.config import Need, needs
from r2ps.data.schema import MODEL_CONFIG
from r2ps.log import get_logger
from r2ps.models.encoder import by_length, load_tokenizer, read_meta
from r2ps.storage import atomic_path

log = get_logger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")
ONNX_DIR = "onnx"
FP32_FILE = "model.onnx"
INT8_FILE = "model_qint8.onnx"
ONNX_MANIFEST = "manifest.json"
OPSET = 17
FILES = {"onnx": FP32_FILE, "onnx-int8": INT8_FILE}


class StaleExportError(RuntimeError):
    """The ONNX export beside a model was made from other weights (or is incomplete)."""


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def onnx_dir(model_dir: str | Path) -> Path:
    return Path(model_dir) / ONNX_DIR


# ------------------------------------------------------------------ export


@dataclass
class ExportConfig:
    """Settings of `jobs/export_onnx.py`."""

    models: list[str] = field(
        default_factory=list,
        metadata={"help": "model dirs (retrievers and/or saved rankers) to export"},
    )
    int8: bool = field(default=True, metadata={"help": "also write the dynamic int8 graph"})
    optimize: bool = field(default=True, metadata={"help": "ORT's offline BERT graph fusion"})
    force: bool = field(default=False, metadata={"help": "export even when up to date"})

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models: give at least one model dir")

    def inputs(self) -> list[Need]:
        """Every model folder, checked before the first is exported (`config.check_inputs`)."""
        return needs(self, "models", MODEL_CONFIG, what="a model folder")


def export_all(cfg: ExportConfig) -> dict[str, dict]:
    """Export each model of `cfg` (or reuse its current export); manifests by model dir."""
    out = {}
    for model in cfg.models:
        wanted = "onnx-int8" if cfg.int8 else "onnx"
        try:
            if cfg.force:
                raise StaleExportError("forced")
            out[model] = read_export(model, wanted)[0]
            log.info("%s: ONNX export up to date", model)
        except (FileNotFoundError, StaleExportError) as e:
            log.info("%s: exporting (%s)", model, e)
            out[model] = export_onnx(model, int8=cfg.int8, optimize=cfg.optimize)
    return out


class _DualGraph(nn.Module):
    """What the retriever's ONNX graph computes: `DualEncoder._encode` -> [B, h]."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model._encode(input_ids, attention_mask)


class _CrossGraph(nn.Module):
    """What the ranker's ONNX graph computes: `CrossEncoder._score` (encoder + head) -> [B]."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model._score(input_ids, attention_mask, token_type_ids)


def _kind(model_dir: Path) -> str:
    """'cross' for a saved ranker, else 'dual' (a retriever or a plain HF encoder)."""
    from r2ps.models.cross import HEAD_FILE, saved_ranker_meta

    if saved_ranker_meta(model_dir) is not None:
        if not (model_dir / HEAD_FILE).exists():
            raise FileNotFoundError(f"{model_dir} is a saved ranker but has no {HEAD_FILE}")
        return "cross"
    return "dual"


def _fingerprint(model_dir: Path) -> str:
    from r2ps.models.encoder import model_fingerprint  # one owner of "which weights are these"

    return model_fingerprint(str(model_dir))


def export_onnx(model_dir: str | Path, int8: bool = True, optimize: bool = True) -> dict:
    """Export the model in `model_dir` to `<model_dir>/onnx/` and return the manifest.

    The kind (retriever or ranker) comes from the folder's `r2ps.json`; a plain HF
    encoder exports as a retriever. A ranker must be a saved one (with its head): a
    fresh random head would be exported otherwise, and torch and ONNX would disagree.
    `optimize` runs ONNX Runtime's BERT fusion (attention, GELU, LayerNorm) offline;
    `int8` also writes the dynamically quantised graph (weights int8 per channel,
    activations quantised at run time). Files are written to a temporary folder and
    moved in last, with the manifest, so a cut-short export never looks complete.
    """
    from r2ps.models.cross import CrossEncoder
    from r2ps.models.dual import DualEncoder

    model_dir = Path(model_dir).resolve()
    kind = _kind(model_dir)
    fingerprint = _fingerprint(model_dir)
    start = time.perf_counter()
    if kind == "cross":
        model = CrossEncoder.from_pretrained(model_dir).eval()
        graph, names = _CrossGraph(model).eval(), ["input_ids", "attention_mask", "token_type_ids"]
        output, hidden = "scores", None
    else:
        model = DualEncoder.from_pretrained(model_dir).eval()
        graph, names = _DualGraph(model).eval(), ["input_ids", "attention_mask"]
        output, hidden = "embeddings", model.dim
    # eager attention traces to plain MatMul/Softmax, the pattern ORT's fusion knows
    if hasattr(model.encoder, "set_attn_implementation"):
        model.encoder.set_attn_implementation("eager")
    example = _example_inputs(len(names))
    target = onnx_dir(model_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:  # a half-written export is never loaded
        tmp.mkdir(parents=True)
        raw = tmp / "raw.onnx"
        dynamic = {name: {0: "batch", 1: "sequence"} for name in names}
        dynamic[output] = {0: "batch"}
        with torch.no_grad():
            torch.onnx.export(
                graph,
                example,
                str(raw),
                dynamo=False,  # the dynamo exporter needs onnxscript; this one is built in
                input_names=names,
                output_names=[output],
                dynamic_axes=dynamic,
                opset_version=OPSET,
            )
        fp32 = tmp / FP32_FILE
        fused = _fuse(raw, fp32, model.encoder.config) if optimize else False
        if not fused:
            raw.replace(fp32)
        files = {"onnx": FP32_FILE}
        if int8:
            import onnx
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # Signed int8 weights, per output channel. On AVX2 without VNNI, ORT's u8s8
            # kernel can saturate (its docs); reduce_range keeps weights to 7 bits there.
            quantize_dynamic(
                str(fp32),
                str(tmp / INT8_FILE),
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=True,
                # the fused graph's com.microsoft ops have no ONNX shape inference
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
            files["onnx-int8"] = INT8_FILE
        raw.unlink(missing_ok=True)
        manifest = {
            "kind": kind,
            "model_fingerprint": fingerprint,
            "inputs": names,
            "output": output,
            "dim": hidden,
            "files": files,
            "fused": bool(fused),
            "opset": OPSET,
            "torch": torch.__version__,
            "onnxruntime": _ort_version(),
            "int8": {"weights": "QInt8 per channel, reduce_range", "activations": "dynamic u8"}
            if int8
            else None,
            "seconds": round(time.perf_counter() - start, 1),
        }
        (tmp / ONNX_MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    log.info("exported %s (%s) to %s in %.1f s", model_dir, kind, target, manifest["seconds"])
    return manifest


def _example_inputs(n: int) -> tuple[torch.Tensor, ...]:
    """Two rows, the second padded: the traced graph then holds the masking path."""
    ids = torch.full((2, 16), 1000, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    types = torch.zeros_like(ids)
    types[:, 6:9] = 1
    return (ids, mask, types)[:n]


def _fuse(raw: Path, out: Path, config) -> bool:
    """ORT's offline BERT fusion of `raw` into `out`; False (and a warning) if it fails."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        opt = optimize_model(
            str(raw),
            model_type="bert",
            num_heads=int(config.num_attention_heads),
            hidden_size=int(config.hidden_size),
            opt_level=1,
        )
        opt.save_model_to_file(str(out))
        return True
    except Exception as e:  # the unfused graph is correct, only slower
        log.warning("ONNX Runtime fusion failed (%r): keeping the unfused graph", e)
        return False


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


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
    have = _fingerprint(model_dir)
    if manifest.get("model_fingerprint") != have:
        raise StaleExportError(
            f"{path}: exported from weights {manifest.get('model_fingerprint')!r}, but "
            f"{model_dir} now holds {have!r}; re-export with `{make}`"
        )
    name = manifest.get("files", {}).get(backend)
    if not name or not (folder / name).exists():
        raise StaleExportError(f"{folder}: no {backend} graph in the export; run `{make}`")
    return manifest, folder / name


def ensure_export(model_dir: str | Path, backend: str) -> dict:
    """The export of `model_dir` for `backend`: reused when current, else made now."""
    try:
        return read_export(model_dir, backend)[0]
    except (FileNotFoundError, StaleExportError) as e:
        log.info("exporting: %s", e)
    return export_onnx(model_dir)


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
