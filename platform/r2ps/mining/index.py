"""The faiss index over code embeddings, saved beside a manifest that says what it indexes.

Scores are inner products of unit vectors (cosine, as the retriever is trained).
`flat` is exact and the default; `ivf` (inverted lists, trained on the embeddings) and
`hnsw` (a graph) trade a little recall for speed on large corpora; `ivfpq` (OPQ-rotated,
product-quantised codes in inverted lists: `pq_m` bytes a code instead of 4 x d) trades
more recall for memory: at 100M codes of d = 384, ~5-7 GiB instead of 143 GiB
(docs/SCALING.md; what it loses: benchmarks/index_kinds.py). Where CUDA and a
faiss build with GPU support are both present, the index is copied to every GPU
(sharded), otherwise the CPU index serves: same results either way.

The manifest (model fingerprint, corpus fingerprint, dimension, count, kind) travels
with the index, so a caller who passes what it expects (`CodeIndex.load(dir, expect)`)
gets a `StaleIndexError` instead of silently searching embeddings of another model or
another corpus: positions into `code_ids` would then point at the wrong code.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from r2ps.finite import check_finite
from r2ps.log import get_logger
from r2ps.ranking import top_k_tied

log = get_logger(__name__)

KINDS = ("flat", "ivf", "ivfpq", "hnsw")
INDEX_FILE = "index.faiss"
IDS_FILE = "code_ids.parquet"
MANIFEST = "manifest.json"
ADD_CHUNK = 65_536  # rows handed to faiss at a time (from a memory map: all that is in RAM)
PQ_BITS = 8  # bits per PQ sub-quantizer code: 256 centroids each, faiss's usual choice
GPU_MAX_K = 2048  # faiss GPU search returns at most this many neighbours per query


class StaleIndexError(RuntimeError):
    """A saved index (or embedding set) was made for another model or corpus."""


# ------------------------------------------------------------------ fingerprints


def corpus_fingerprint(code_ids: Sequence[str]) -> str:
    """Hash of the code ids in order: the index answers positions, so order matters."""
    h = hashlib.sha256()
    for cid in code_ids:
        h.update(str(cid).encode() + b"\n")
    return h.hexdigest()[:32]


# ------------------------------------------------------------------ settings


@dataclass
class IndexConfig:
    """Which faiss index to build and how to search it."""

    kind: str = field(
        default="flat", metadata={"help": "flat (exact inner product) | ivf | ivfpq | hnsw"}
    )
    nlist: int = field(default=0, metadata={"help": "IVF lists; 0: about 4*sqrt(N)"})
    nprobe: int = field(default=16, metadata={"help": "IVF lists visited per query"})
    pq_m: int = field(
        default=0, metadata={"help": "ivfpq: bytes per code (sub-quantizers); 0: d/8"}
    )
    hnsw_m: int = field(default=32, metadata={"help": "HNSW neighbours per node"})
    ef_search: int = field(default=128, metadata={"help": "HNSW search breadth"})
    use_gpu: bool | None = field(
        default=None, metadata={"help": "None: GPU faiss when CUDA and faiss GPU exist"}
    )

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"index.kind: expected one of {KINDS}, got {self.kind!r}")
        for name in ("nprobe", "hnsw_m", "ef_search"):
            if getattr(self, name) < 1:
                raise ValueError(f"index.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("nlist", "pq_m"):
            if getattr(self, name) < 0:
                raise ValueError(f"index.{name}: must be >= 0, got {getattr(self, name)}")

    def build_settings(self) -> dict:
        """The settings that shape the built index (search-time ones can change freely)."""
        if self.kind == "ivf":
            return {"kind": "ivf", "nlist": self.nlist}
        if self.kind == "ivfpq":
            return {"kind": "ivfpq", "nlist": self.nlist, "pq_m": self.pq_m}
        if self.kind == "hnsw":
            return {"kind": "hnsw", "hnsw_m": self.hnsw_m}
        return {"kind": "flat"}


def gpu_available() -> bool:
    """CUDA visible to torch and a faiss build with GPU support, probed at run time
    (faiss first: a CPU build, the usual one, answers without importing torch)."""
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _resolve_gpu(use_gpu: bool | None) -> bool:
    if use_gpu is None:
        return gpu_available()
    if use_gpu and not gpu_available():
        raise RuntimeError(
            "index.use_gpu=true but no GPU faiss here (needs CUDA and the faiss-gpu build); "
            "use index.use_gpu=null to pick automatically"
        )
    return use_gpu


# ------------------------------------------------------------------ the index


def _check_matrix(x: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{what}: expected a 2-d array [n, d], got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{what}: dimension {x.shape[1]} differs from the index's {dim}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_rows_finite(x: np.ndarray, what: str, names: Sequence[str]) -> None:
    """`check_finite` a chunk at a time: `x` may be a memory map larger than RAM.

    faiss would index a NaN row without a word and never return it.
    """
    for start in range(0, len(x), ADD_CHUNK):
        check_finite(x[start : start + ADD_CHUNK], what, names, first_row=start, total=len(x))


def _new_index(embeddings: np.ndarray, cfg: IndexConfig) -> tuple[faiss.Index, dict]:
    """An empty-or-trained CPU index for `cfg`, and what was actually used (e.g. nlist)."""
    n, d = embeddings.shape
    if cfg.kind == "flat":
        return faiss.IndexFlatIP(d), {}
    if cfg.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        return index, {}
    nlist = cfg.nlist or max(1, int(round(4 * math.sqrt(n))))
    nlist = min(nlist, n)  # k-means needs at least one point per list
    if cfg.kind == "ivf":
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        used = {"nlist_used": nlist}
    else:
        m = cfg.pq_m or max(1, d // 8)
        if d % m:
            raise ValueError(f"index.pq_m: {m} does not divide the embedding dimension {d}")
        if n < 2**PQ_BITS:
            raise ValueError(
                f"index.kind=ivfpq: {n} codes cannot train {2**PQ_BITS} PQ centroids; "
                "use flat for a corpus this small"
            )
        # OPQ: a learned rotation first, so each of the m sub-vectors carries a fair share
        # of the variance; on MiniLM vectors it kept 78% of the true top 10 against 71%
        # without it, m = 48, nprobe 64 (benchmarks/index_kinds.py)
        spec = f"OPQ{m},IVF{nlist},PQ{m}x{PQ_BITS}"
        index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
        used = {"nlist_used": nlist, "pq_m_used": m, "faiss": spec}
    index.train(_training_sample(embeddings, nlist))
    return index, used


def _training_sample(embeddings: np.ndarray, nlist: int, seed: int = 0) -> np.ndarray:
    """The rows k-means trains on: all, or a seeded sample of what faiss would use anyway.

    faiss caps k-means at 256 points per centroid (and PQ at 256 per sub-quantizer
    centroid), subsampling the rest; sampling here instead means a memory-mapped matrix is
    read for those rows only, not copied into RAM whole.
    """
    n = len(embeddings)
    size = min(n, max(256 * nlist, 256 * 2**PQ_BITS))
    if size == n:
        return np.ascontiguousarray(embeddings)
    rows = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    return np.ascontiguousarray(embeddings[rows])


def _set_search_params(index: faiss.Index, cfg: IndexConfig) -> None:
    if cfg.kind in ("ivf", "ivfpq"):
        faiss.extract_index_ivf(index).nprobe = cfg.nprobe
    elif cfg.kind == "hnsw":
        index.hnsw.efSearch = cfg.ef_search


class CodeIndex:
    """A faiss index whose row i is `code_ids[i]`, with the manifest it was built for."""

    def __init__(
        self, index: faiss.Index, code_ids: list[str], manifest: dict, cfg: IndexConfig
    ) -> None:
        if index.ntotal != len(code_ids):
            raise ValueError(f"index holds {index.ntotal} vectors but {len(code_ids)} code ids")
        self.code_ids = list(code_ids)
        self.manifest = manifest
        self.cfg = cfg
        self._cpu = index  # what gets saved
        _set_search_params(self._cpu, cfg)
        self._gpu = self._to_gpu(index) if _resolve_gpu(cfg.use_gpu) else None
        self.device = "gpu" if self._gpu is not None else "cpu"

    def _to_gpu(self, index: faiss.Index) -> faiss.Index | None:
        if self.cfg.kind == "hnsw":  # faiss has no GPU HNSW: the CPU graph serves
            log.info("HNSW has no faiss GPU form; searching on the CPU")
            return None
        options = faiss.GpuMultipleClonerOptions()
        options.shard = True  # each GPU holds a slice of the corpus, not a copy
        # fp16 PQ lookup tables: fp32 ones for d/8 sub-quantizers can exceed a GPU block's
        # shared memory (faiss's documented remedy; not yet run on a GPU here)
        options.useFloat16 = self.cfg.kind == "ivfpq"
        gpu = faiss.index_cpu_to_all_gpus(index, co=options)
        if self.cfg.kind in ("ivf", "ivfpq"):
            faiss.GpuParameterSpace().set_index_parameter(gpu, "nprobe", self.cfg.nprobe)
        return gpu

    @property
    def dim(self) -> int:
        return int(self._cpu.d)

    def __len__(self) -> int:
        return len(self.code_ids)

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        code_ids: list[str],
        cfg: IndexConfig,
        manifest: dict,
    ) -> CodeIndex:
        """Index `embeddings` (float32 [N, d], unit rows); `manifest` says what they came from.

        `embeddings` may be a memory map (`read_embeddings(..., into=)`): training reads a
        sample of its rows and adding goes `ADD_CHUNK` rows at a time, so RAM holds the
        index, not another copy of the vectors. The manifest is completed with `dim`,
        `count`, `kind`, the build settings and the corpus fingerprint of `code_ids` (a
        caller's own value must agree).
        """
        emb = _check_matrix(embeddings, "embeddings")
        if emb.shape[0] != len(code_ids):
            raise ValueError(f"{emb.shape[0]} embeddings but {len(code_ids)} code ids")
        if emb.shape[0] == 0:
            raise ValueError("cannot index an empty corpus (0 embeddings)")
        _check_rows_finite(emb, "embeddings", code_ids)
        fp = corpus_fingerprint(code_ids)
        if manifest.get("corpus_fingerprint", fp) != fp:
            raise ValueError("manifest corpus_fingerprint does not match the code ids given")
        index, used = _new_index(emb, cfg)
        for start in range(0, len(emb), ADD_CHUNK):
            index.add(np.ascontiguousarray(emb[start : start + ADD_CHUNK]))
        full = {
            **manifest,
            "corpus_fingerprint": fp,
            "dim": int(emb.shape[1]),
            "count": int(emb.shape[0]),
            "kind": cfg.kind,
            "settings": cfg.build_settings(),
            **used,
        }
        log.info("built %s index: %d x %d", cfg.kind, emb.shape[0], emb.shape[1])
        return cls(index, code_ids, full, cfg)

    def search(
        self, queries: np.ndarray, k: int, chunk: int = 4096
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores float32 [Q, k], positions int64 [Q, k]) per query row, best first.

        Queries go through in chunks of `chunk` rows, so faiss's working memory does not
        grow with Q. A position of -1 (score -inf) means fewer than k codes were found.
        Scores equal within float noise are listed in position order, the one tie rule of
        `r2ps.evaluation.metrics` (`top_k_tied`: faiss asks for one more than k, and again for more
        where a tie group crosses the cut, as faiss keeps the higher of two near-equal
        scores, not the lower position). Raises ValueError naming the query rows that hold
        NaN or inf.
        """
        q = _check_matrix(queries, "queries", self.dim)
        check_finite(q, "queries")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")

        def best(rows: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
            index = self._gpu if self._gpu is not None and m <= GPU_MAX_K else self._cpu
            scores = np.empty((len(rows), m), dtype=np.float32)
            pos = np.empty((len(rows), m), dtype=np.int64)
            for start in range(0, len(rows), chunk):
                part = rows[start : start + chunk]
                scores[start : start + chunk], pos[start : start + chunk] = index.search(q[part], m)
            return scores, pos

        return top_k_tied(best, len(q), len(self.code_ids), k)

    def vectors(self, positions: np.ndarray | Sequence[int]) -> np.ndarray:
        """float32 [m, d]: the vectors at `positions` (int [m], each in 0..N-1) as the index
        holds them: the embeddings themselves for flat and hnsw, their compressed form for
        ivfpq (what its search scores). For scoring codes another first stage found (BM25)
        on the dense scale. IndexError naming a position out of range."""
        p = np.asarray(positions, dtype=np.int64).reshape(-1)
        bad = p[(p < 0) | (p >= len(self.code_ids))]
        if bad.size:
            raise IndexError(f"positions {bad[:10].tolist()} not in an index of {len(self)} codes")
        if self.cfg.kind in ("ivf", "ivfpq"):  # inverted lists find a vector by id via a map
            faiss.extract_index_ivf(self._cpu).make_direct_map()  # no-op once made
        if not p.size:
            return np.empty((0, self.dim), dtype=np.float32)
        return self._cpu.reconstruct_batch(p)

    def save(self, directory: str | Path) -> None:
        """`index.faiss` + `code_ids.parquet`, then `manifest.json` last (a crash mid-save
        leaves no manifest, so the half-written index is never loaded)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MANIFEST).unlink(missing_ok=True)
        faiss.write_index(self._cpu, str(directory / INDEX_FILE))
        pq.write_table(
            pa.table({"code_id": pa.array(self.code_ids, pa.string())}), directory / IDS_FILE
        )
        (directory / MANIFEST).write_text(
            json.dumps(self.manifest, indent=1, sort_keys=True) + "\n"
        )

    @classmethod
    def load(
        cls,
        directory: str | Path,
        expect: dict | None = None,
        cfg: IndexConfig | None = None,
    ) -> CodeIndex:
        """Load a saved index; `StaleIndexError` naming the key when `expect` disagrees.

        `cfg` gives search-time settings (nprobe, ef_search, use_gpu); its kind must
        match the saved one.
        """
        directory = Path(directory)
        manifest = read_manifest(directory)
        if expect:
            check_manifest(manifest, expect, directory)
        if not (directory / INDEX_FILE).exists() or not (directory / IDS_FILE).exists():
            raise FileNotFoundError(f"{directory}: manifest without {INDEX_FILE} / {IDS_FILE}")
        cfg = cfg or IndexConfig(kind=manifest.get("kind", "flat"))
        if cfg.kind != manifest.get("kind"):
            raise StaleIndexError(
                f"{directory}: key 'kind' differs: saved {manifest.get('kind')!r}, "
                f"expected {cfg.kind!r}"
            )
        index = faiss.read_index(str(directory / INDEX_FILE))
        # one file: ParquetFile, without pyarrow.dataset's import (r2ps.search.store)
        code_ids = pq.ParquetFile(directory / IDS_FILE).read().column("code_id").to_pylist()
        if corpus_fingerprint(code_ids) != manifest.get("corpus_fingerprint"):
            raise StaleIndexError(f"{directory}: {IDS_FILE} does not match the manifest")
        return cls(index, code_ids, manifest, cfg)


def read_manifest(directory: str | Path) -> dict:
    """`<directory>/manifest.json`, or FileNotFoundError naming it."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: no manifest (never built, or a write was cut short)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    return manifest


# What a manifest written before r2ps recorded a key meant: vectors saved before the
# inference backend was recorded were computed by torch.
LEGACY_DEFAULTS = {"backend": "torch"}


def check_manifest(manifest: dict, expect: dict, where: str | Path) -> None:
    """Raise StaleIndexError naming the first key of `expect` whose saved value differs."""
    for key, want in expect.items():
        have = manifest.get(key, LEGACY_DEFAULTS.get(key, "<missing>"))
        if have != want:
            raise StaleIndexError(
                f"{where}: key {key!r} differs: saved {have!r}, expected {want!r}"
            )


# ------------------------------------------------------------------ embedding shards


def embedding_layout(directory: str | Path) -> tuple[list[str], int]:
    """(code ids in corpus order, dimension) of the shards in `directory`, checked: every
    position 0..N-1 exactly once, an `embedding` column of one fixed size. Reads the
    small columns only, so a driver can check a run of any size."""
    _, _, ids, dim = _shards(Path(directory))
    return ids, dim


def read_embeddings(directory: str, into: str | Path | None = None) -> tuple[list[str], np.ndarray]:
    """(code ids, float32 [N, d]) from `<directory>/part-*.parquet`, in corpus order.

    Ray Data writes shards in whatever order its blocks finish; each row carries its
    corpus position `pos`, so every shard's rows are put in their places, a shard at a
    time. `into`: a `.npy` file to hold the matrix as a memory map (for corpora larger
    than RAM; the caller removes it), else it is an array in memory.
    """
    parts, positions, ids, dim = _shards(Path(directory))
    shape = (len(ids), dim)
    if into is None:
        emb = np.empty(shape, dtype=np.float32)
    else:
        emb = np.lib.format.open_memmap(into, mode="w+", dtype=np.float32, shape=shape)
    for part, pos in zip(parts, positions, strict=True):
        col = pq.read_table(part, columns=["embedding"])["embedding"].combine_chunks()
        emb[pos] = col.flatten().to_numpy().reshape(-1, dim)
    return ids, emb


def _shards(directory: Path) -> tuple[list[Path], list[np.ndarray], list[str], int]:
    """The shard files, each one's positions, the ordered code ids and the dimension."""
    parts = sorted(directory.glob("part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"{directory}: no embedding shards (part-*.parquet)")
    dims = set()
    tables = []
    for part in parts:
        schema = pq.read_schema(part)
        missing = [c for c in ("pos", "code_id", "embedding") if c not in schema.names]
        if missing:
            raise ValueError(f"{part}: shard lacks column(s) {missing}; has {schema.names}")
        kind = schema.field("embedding").type
        if not pa.types.is_fixed_size_list(kind):
            raise ValueError(f"{part}: column 'embedding' is {kind}, not a fixed-size list")
        dims.add(kind.list_size)
        tables.append(pq.read_table(part, columns=["pos", "code_id"]))
    if len(dims) != 1:
        raise ValueError(f"{directory}: shards differ in embedding dimension: {sorted(dims)}")
    table = pa.concat_tables(tables)
    order = pc.sort_indices(table["pos"])
    if not np.array_equal(pc.take(table["pos"], order).to_numpy(), np.arange(len(table))):
        raise ValueError(f"{directory}: shards hold positions that are missing or repeated")
    ids = pc.take(table["code_id"], order).to_pylist()
    return parts, [t["pos"].to_numpy() for t in tables], ids, dims.pop()
