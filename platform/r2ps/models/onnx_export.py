"""Export of the retriever and the ranker to ONNX (fp32, and dynamic int8) for CPU inference.

`export_onnx(model_dir)` writes, once, beside the model in the HF layout that optimum and
sentence-transformers use (the file names are `models/backends.py`'s, which reads them):

    <model>/onnx/model.onnx          the fp32 graph: encoder + r2ps's pooling or head
    <model>/onnx/model_qint8.onnx    the same graph, dynamically quantised to int8
    <model>/onnx/manifest.json       what it was exported from (the weights' fingerprint)

The graph is the model's own forward, not a re-implementation: the dual encoder's
`_encode` (mean pooling, L2 norm) -> embeddings [B, h]; the cross encoder's `_score`
(first-token state or segment features -> MLP head) -> scores [B]. So an ONNX model is a
drop-in replacement for the torch one's `encode` / `forward`, and anything built on top
of those (the cascade's fusion, a score added outside the forward) stays the same.
`ensure_export` reuses an export that is current and makes one otherwise; `export_all`
is `jobs/export_onnx.py`.

Why torch.onnx (the TorchScript exporter) and not optimum: optimum[onnxruntime] pins
transformers < 5 (it would downgrade this venv's 5.x), and sentence-transformers' backend
export goes through optimum too. The exporter here is torch's own, the int8 step is ONNX
Runtime's `quantize_dynamic`, the graph fusion ONNX Runtime's transformer optimizer.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from r2ps.config import Need, needs
from r2ps.data.schema import MODEL_CONFIG
from r2ps.log import get_logger
from r2ps.models.backends import (
    FP32_FILE,
    INT8_FILE,
    ONNX_MANIFEST,
    StaleExportError,
    onnx_dir,
    read_export,
)
from r2ps.models.encoder import model_fingerprint
from r2ps.storage import atomic_path

log = get_logger(__name__)

OPSET = 17


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
    fingerprint = model_fingerprint(str(model_dir))
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


def ensure_export(model_dir: str | Path, backend: str) -> dict:
    """The export of `model_dir` for `backend`: reused when current, else made now."""
    try:
        return read_export(model_dir, backend)[0]
    except (FileNotFoundError, StaleExportError) as e:
        log.info("exporting: %s", e)
    return export_onnx(model_dir)
