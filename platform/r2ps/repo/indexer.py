"""Index a source tree for search, incrementally: `jobs/index.py --source DIR --out OUT`.

Stages (each reads what the last one wrote):
1. walk (`r2ps.repo.files`): the files to parse, and every file or folder skipped with
   its reason;
2. extract: files that are new or whose size or modification time changed since the
   last run are read and parsed (`r2ps.data.extract`, fanned out over Ray Data tasks
   when there are many); unchanged files keep the units the last run found; deleted
   files drop out. Output: `codes.parquet`, one row per function, method and class,
   in (path, line) order, and `files.parquet`, one row per file parsed or skipped in
   the tasks (what the next run compares against);
3. embed: only codes whose content id (hash of the code text) has no vector yet under
   this retriever are embedded (Ray Data actor pool, or in this process when few);
   `vectors/` keeps every current content id's vector, those of removed code dropped;
4. index: the faiss index over every unit, in `codes.parquet` order, with the manifest
   `r2ps.mining.embed.ensure_index` expects, so the Serve app loads it as it is; then
   `serve.yaml` (`R2PS_SERVE_CONFIG=<out>/serve.yaml serve run serve.app:cascade`) and
   `index_summary.json` (counts, every skipped file named by reason, timings).

Because units are kept per file and vectors per content id, an incremental run gives
the same `codes.parquet` and index as a full rebuild of the same tree (tests/repo).
Changing the extraction settings, the extractor or the retriever invalidates what they
shaped: the state records their fingerprints.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from r2ps.config import ConfigError, Need, check_inputs, needs
from r2ps.data import codetext
from r2ps.data.corpus import map_files
from r2ps.data.extract import extract_units
from r2ps.data.grammars import grammar_for
from r2ps.data.schema import MODEL_CONFIG
from r2ps.log import get_logger
from r2ps.mining.index import CodeIndex, IndexConfig, corpus_fingerprint
from r2ps.models.cross import HEAD_FILE, saved_trained_alpha
from r2ps.models.encoder import model_fingerprint
from r2ps.repo.files import (
    OTHER_LANGUAGE,
    UNREADABLE,
    FileRules,
    NotRead,
    Skipped,
    check_content,
    is_utf8,
    read_regular,
    shown,
    walk_sources,
)
from r2ps.storage import atomic_path

log = get_logger(__name__)

# bump when extraction changes what a file gives (2: a lone carriage return ends a line,
# "generated" markers only where a line says so, UTF-16 files with a BOM are read)
EXTRACTOR_VERSION = "2"
CODES = "codes.parquet"
FILES = "files.parquet"
VECTORS_DIR = "vectors"
VECTORS = "vectors.parquet"
SUMMARY = "index_summary.json"
SKIPPED = "skipped.jsonl"
SERVE_YAML = "serve.yaml"

UNIT_FIELDS = [
    ("code_id", pa.string()),  # unit id: location + content (what the index's rows are)
    ("code", pa.string()),
    ("language", pa.string()),
    ("source", pa.string()),  # the path again: the code store's generic "where from"
    ("path", pa.string()),
    ("start_line", pa.int64()),
    ("end_line", pa.int64()),
    ("def_line", pa.int64()),
    ("symbol", pa.string()),
    ("kind", pa.string()),
    ("doc", pa.string()),
    ("content_id", pa.string()),  # hash of the code text: what vectors are kept by
]
UNIT_SCHEMA = pa.schema(UNIT_FIELDS)
FILE_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("language", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("status", pa.string()),  # indexed | skipped
        ("reason", pa.string()),  # why skipped (r2ps.repo.files reasons, unreadable)
        ("error_lines", pa.list_(pa.int64())),  # syntax errors tree-sitter recovered from
        ("undecodable_line", pa.int64()),
        ("n_units", pa.int64()),
    ]
)
# What an extraction task returns: each file's row with its units nested in it.
TASK_SCHEMA = FILE_SCHEMA.append(pa.field("units", pa.list_(pa.struct(UNIT_FIELDS))))


@dataclass
class RepoIndexConfig:
    """Settings of `jobs/index.py`."""

    source: str = field(default="", metadata={"help": "the source tree to index"})
    out: str = field(default="runs/repo", metadata={"help": "output folder (kept between runs)"})
    model: str = field(default="", metadata={"help": "retriever dir ('' = bundled MiniLM)"})
    ranker: str = field(
        default="",
        metadata={"help": "trained ranker dir for serve.yaml ('' = retriever order only)"},
    )
    full: bool = field(default=False, metadata={"help": "ignore the last run: rebuild all"})
    workers: int = field(default=0, metadata={"help": "extraction tasks (0: all CPUs)"})
    files_per_task: int = 64
    local_below: int = field(
        default=256,
        metadata={"help": "fewer files (codes) than this are parsed (embedded) here, no Ray"},
    )
    actors: int = field(
        default=0, metadata={"help": "embedding actors (0: r2ps.mining.embed's plan)"}
    )
    batch_size: int = 64
    block_rows: int = 512
    threads: int = 0
    rules: FileRules = field(default_factory=FileRules)
    index: IndexConfig = field(default_factory=IndexConfig)

    def __post_init__(self) -> None:
        for name in ("files_per_task", "batch_size", "block_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")

    def inputs(self) -> list[Need]:
        """The models given (`config.check_inputs`): read only after the walk and the
        extraction, so checked first (`check_paths`). `source` has its own checks there."""
        return [
            *needs(self, "model", MODEL_CONFIG, what="a retriever folder"),
            *needs(self, "ranker", MODEL_CONFIG, HEAD_FILE, what="a trained ranker folder"),
        ]


# ------------------------------------------------------------------ 2. extraction


def unit_id(row: dict) -> str:
    """A unit's id: where it is and what it holds (two copies of a function are two hits)."""
    key = "\0".join(
        str(row[k]) for k in ("path", "symbol", "kind", "start_line", "end_line", "content_id")
    )
    return codetext.content_hash(key, "u")


def read_file(f: dict, rules: FileRules) -> dict:
    """One file's row of `TASK_SCHEMA`: its units, or why it was skipped. Never raises
    for a bad file (binary, generated, minified, unreadable, undecodable, syntax errors),
    nor for one that changed since the walk (gone, grown past the limit, now a link or
    a pipe)."""
    row = {
        "path": f["path"],
        "language": None,
        "size": f["size"],
        "mtime_ns": f["mtime_ns"],
        "status": "skipped",
        "reason": None,
        "error_lines": [],
        "undecodable_line": None,
        "n_units": 0,
        "units": [],
    }
    grammar = grammar_for(f["path"])
    row["language"] = grammar.name if grammar else None
    try:
        data = read_regular(f["abspath"], rules.max_file_bytes)
    except NotRead as e:
        row["reason"] = e.reason
        return row
    reason = check_content(data, rules)
    if reason:
        row["reason"] = reason
        return row
    found = extract_units(data, f["path"], grammar)
    units = []
    for u in found.rows():
        u["content_id"] = codetext.content_hash(u["code"], "c")
        u["source"] = u["path"]
        u["code_id"] = unit_id(u)
        units.append(u)
    row.update(
        status="indexed",
        language=found.language,
        error_lines=found.error_lines,
        undecodable_line=found.undecodable_line,
        n_units=len(units),
        units=units,
    )
    return row


def _read_batch(batch: pa.Table, rules: FileRules) -> pa.Table:
    """Ray Data task: a batch of files -> their TASK_SCHEMA rows."""
    return pa.Table.from_pylist([read_file(f, rules) for f in batch.to_pylist()], TASK_SCHEMA)


def read_files(files: list[dict], cfg: RepoIndexConfig) -> tuple[pa.Table, pa.Table]:
    """(file rows, their units) of `files`, over Ray Data tasks when there are
    `local_below` files or more."""
    if len(files) < max(1, cfg.local_below):
        table = pa.Table.from_pylist([read_file(f, cfg.rules) for f in files], TASK_SCHEMA)
        return _split_units(table)
    _ray()
    found = map_files(files, _read_batch, {"rules": cfg.rules}, cfg.files_per_task, cfg.workers)
    tables = [t.cast(TASK_SCHEMA) for t in found]
    return _split_units(pa.concat_tables(tables) if tables else TASK_SCHEMA.empty_table())


def _split_units(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """TASK_SCHEMA rows -> (FILE_SCHEMA rows, UNIT_SCHEMA rows), in Arrow."""
    units = pc.list_flatten(table["units"])
    unit_table = pa.Table.from_struct_array(units) if len(units) else UNIT_SCHEMA.empty_table()
    return table.select(FILE_SCHEMA.names), unit_table.cast(UNIT_SCHEMA)


def _ray():
    import ray

    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True)  # joins a running cluster when there is one
    return ray


# ------------------------------------------------------------------ state


def state_fingerprint(cfg: RepoIndexConfig) -> str:
    """What shapes the units a file gives: the extractor, the file rules, the source root."""
    payload = json.dumps(
        {
            "extractor": EXTRACTOR_VERSION,
            "rules": asdict(cfg.rules),
            "source": str(Path(cfg.source).resolve()),
        },
        sort_keys=True,
    )
    return codetext.content_hash(payload, "s")


def load_state(out: Path, fingerprint: str) -> tuple[pa.Table, pa.Table] | None:
    """The last run's (file rows, units), or None when there is no usable state (a first
    run, a run cut short, one made with other extraction settings, or files that cannot
    be read as its tables: named in a warning)."""
    path = out / FILES
    if not path.exists() or not (out / CODES).exists():
        return None
    try:
        meta = pq.read_schema(path).metadata or {}
        if meta.get(b"r2ps_state", b"").decode() != fingerprint:
            log.info("%s was made with other extraction settings: re-reading every file", path)
            return None
        files = pq.read_table(path).cast(FILE_SCHEMA)
        return files, pq.read_table(out / CODES).cast(UNIT_SCHEMA)
    except (OSError, ValueError, pa.ArrowException) as e:  # damaged by hand or by a disk
        log.warning("%s: the last run's state is not usable (%s): re-reading every file", out, e)
        return None


def _write_atomic(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


# ------------------------------------------------------------------ 3. embedding


def _embed_new(
    texts: list[str], ids: list[str], model: str, cfg: RepoIndexConfig, work: Path
) -> np.ndarray:
    """float32 [len(texts), d] unit vectors of `texts` with the retriever at `model`."""
    from r2ps.mining.embed import EmbedConfig, embedding_dataset, plan_pool

    if len(texts) < max(1, cfg.local_below):
        import torch

        from r2ps.models.dual import DualEncoder

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        encoder = DualEncoder.from_pretrained(model).eval()
        return encoder.embed_codes(texts, cfg.batch_size)
    _ray()
    pending = work / "pending.parquet"
    pq.write_table(pa.table({"code_id": ids, "code": texts}), pending)
    ecfg = EmbedConfig(
        model=model,
        codes=str(pending),
        actors=cfg.actors,
        batch_size=cfg.batch_size,
        block_rows=cfg.block_rows,
        threads=cfg.threads,
    )
    out = None
    for block in embedding_dataset(ecfg, pending, model, plan_pool(ecfg)).iter_batches(
        batch_size=None, batch_format="pyarrow"
    ):
        emb = block["embedding"].combine_chunks()
        dim = emb.type.list_size
        if out is None:
            out = np.zeros((len(texts), dim), dtype=np.float32)
        out[block["pos"].to_numpy()] = emb.flatten().to_numpy().reshape(-1, dim)
    pending.unlink()
    return out


def _vector_identity(model: str) -> dict:
    from r2ps.mining.embed import EmbedConfig, max_code_len

    return {
        "model_fingerprint": model_fingerprint(model),
        "max_code_len": max_code_len(EmbedConfig(model=model), model),
    }


def update_vectors(
    units: pa.Table, model: str, cfg: RepoIndexConfig, out: Path
) -> tuple[np.ndarray, dict]:
    """float32 [len(units), d]: each unit's vector, by content id; embeds only content
    ids that have no stored vector under this retriever, and stores exactly the current
    content ids' vectors (those of code that left the tree are dropped)."""
    vdir = out / VECTORS_DIR
    vdir.mkdir(parents=True, exist_ok=True)
    identity = _vector_identity(model)
    stored_ids: list[str] = []
    stored = np.zeros((0, 0), dtype=np.float32)
    manifest_path = vdir / "manifest.json"
    if not cfg.full and manifest_path.exists() and (vdir / VECTORS).exists():
        try:
            saved = json.loads(manifest_path.read_text())
            if all(saved.get(k) == v for k, v in identity.items()):
                table = pq.read_table(vdir / VECTORS)
                emb = table["embedding"].combine_chunks()
                stored = emb.flatten().to_numpy().reshape(-1, emb.type.list_size)
                stored_ids = table["content_id"].to_pylist()
            else:
                log.info("vectors in %s are from another retriever: re-embedding", vdir)
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
    _write_atomic(table, vdir / VECTORS)
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
    }
    return vectors, stats


# ------------------------------------------------------------------ 4. index and outputs


def build_index(
    units: pa.Table, emb: np.ndarray, model: str, cfg: RepoIndexConfig, out: Path
) -> CodeIndex:
    """The faiss index over every unit (`emb` [len(units), d]), with the manifest
    `ensure_index` checks."""
    from r2ps.mining.embed import EmbedConfig, max_code_len

    ids = units["code_id"].to_pylist()
    manifest = {
        "model_fingerprint": model_fingerprint(model),
        "corpus_fingerprint": corpus_fingerprint(ids),
        "count": len(ids),
        "max_code_len": max_code_len(EmbedConfig(model=model), model),
        "model_path": model,
        "codes": str((out / CODES).resolve()),
        "source": str(Path(cfg.source).resolve()),
    }
    index = CodeIndex.build(emb, ids, cfg.index, manifest)
    index.save(out / "index")
    return index


def write_serve_yaml(cfg: RepoIndexConfig, model: str, out: Path) -> Path:
    """The ServeConfig that serves this index (`R2PS_SERVE_CONFIG=<it> serve run ...`)."""
    trained_ranker = bool(cfg.ranker)
    settings = {
        "retriever": model,
        "ranker": str(Path(cfg.ranker).resolve()) if trained_ranker else "",
        "codes": str((out / CODES).resolve()),
        "embed_out": str(out.resolve()),
        "index": {
            "kind": cfg.index.kind,
            "nprobe": cfg.index.nprobe,
            "ef_search": cfg.index.ef_search,
        },
        # The weight a trained ranker was trained for (0.5 residual, 0 plain); without one
        # its scores are noise: alpha 1 keeps the retriever's order.
        "alpha": saved_trained_alpha(cfg.ranker) if trained_ranker else 1.0,
    }
    if not trained_ranker:  # no reranking by default: an untrained ranker only costs time
        settings["rerank_k"] = 0
        settings["served_reason"] = "retriever alone: jobs/index.py was given no --ranker"
    head = (
        f"# Written by jobs/index.py for {Path(cfg.source).resolve()}. Serve it with\n"
        f"#   R2PS_SERVE_CONFIG={(out / SERVE_YAML).resolve()} serve run serve.app:cascade\n"
        "# then open http://127.0.0.1:8000/ (the search page) or POST /search.\n"
    )
    if not trained_ranker:
        head += (
            "# No --ranker given: answers are the retriever's (rerank_k 0); a request that\n"
            "# names a rerank_k is reranked by an untrained ranker, alpha 1.0 keeps its order.\n"
        )
    path = out / SERVE_YAML
    path.write_text(head + yaml.safe_dump(settings, sort_keys=False))
    return path


def _skip_record(s: Skipped) -> dict:
    if s.line is not None:  # a line of an ignore file
        return {"path": s.path, "line": s.line, "text": s.text, "reason": s.reason}
    return {"path": s.path, "reason": s.reason, "size": s.size}


def summarise(walk_skipped: list[Skipped], files: pa.Table, units: pa.Table, extra: dict) -> dict:
    """index_summary.json: every count, every skipped file named (other languages: by
    extension here, by name in skipped.jsonl), every .gitignore line not applied named
    with its file and line."""
    lines = [s for s in walk_skipped if s.line is not None]
    lines_by_reason: dict[str, list[dict]] = {}
    for s in lines:
        lines_by_reason.setdefault(s.reason, []).append(
            {"file": s.path, "line": s.line, "text": s.text}
        )
    skipped = [_skip_record(s) for s in walk_skipped if s.line is None]
    for row in files.filter(pc.equal(files["status"], "skipped")).to_pylist():
        skipped.append({"path": row["path"], "reason": row["reason"], "size": row["size"]})
    by_reason: dict[str, list[str]] = {}
    for s in skipped:
        key = s["reason"].split(":", 1)[0] if s["reason"].startswith(UNREADABLE) else s["reason"]
        by_reason.setdefault(key, []).append(s["path"])
    other = by_reason.pop(OTHER_LANGUAGE, [])
    indexed = files.filter(pc.equal(files["status"], "indexed"))
    errors = {r["path"]: r["error_lines"] for r in indexed.to_pylist() if r["error_lines"]}
    undecodable = {
        r["path"]: r["undecodable_line"]
        for r in indexed.select(["path", "undecodable_line"]).to_pylist()
        if r["undecodable_line"] is not None
    }
    docs = pc.sum(pc.invert(pc.is_null(units["doc"]))).as_py() or 0
    return {
        **extra,
        "files": {
            "indexed": indexed.num_rows,
            "skipped": {k: len(v) for k, v in sorted(by_reason.items())}
            | {OTHER_LANGUAGE: len(other)},
            "with_syntax_errors": len(errors),
            "with_undecodable_bytes": len(undecodable),
        },
        "ignore_lines_skipped": {k: len(v) for k, v in sorted(lines_by_reason.items())},
        "units": {
            "total": units.num_rows,
            "documented": docs,
            "by_language": dict(Counter(units["language"].to_pylist()).most_common()),
            "by_kind": dict(Counter(units["kind"].to_pylist()).most_common()),
        },
        "skipped_files": {k: sorted(v) for k, v in sorted(by_reason.items())},
        "skipped_ignore_lines": dict(sorted(lines_by_reason.items())),
        "other_languages_by_extension": dict(
            Counter(Path(p).suffix or "(none)" for p in other).most_common()
        ),
        "syntax_errors": errors,
        "undecodable_bytes": undecodable,
    }, skipped + [_skip_record(s) for s in lines]


class NothingToIndex(ValueError):
    """The source tree holds no function, method or class of a supported language."""


def check_paths(cfg: RepoIndexConfig) -> None:
    """Raise ConfigError naming `--source`, `--out`, `--model` or `--ranker` before anything
    is written or read."""
    if not cfg.source:
        raise ConfigError("source: no folder given (--source DIR)")
    if not Path(cfg.source).is_dir():
        raise ConfigError(f"source: {cfg.source!r} is not a folder")
    if not os.access(cfg.source, os.R_OK | os.X_OK):
        raise ConfigError(f"source: {cfg.source!r} cannot be listed (permissions)")
    for name, path in (("source", cfg.source), ("out", cfg.out)):
        # every path is stored and shown as text: these folders' names must be too
        if not is_utf8(str(Path(path).resolve())):
            raise ConfigError(f"{name}: {shown(path)!r}: the path is not UTF-8")
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise ConfigError(f"out: {cfg.out!r} exists and is not a folder")
    check_inputs(cfg)


def index_repo(cfg: RepoIndexConfig) -> dict:
    """Run every stage; returns the summary (also `<out>/index_summary.json`).

    Raises ConfigError for a bad `--source`, `--out`, `--model` or `--ranker` (before
    anything is written: `check_paths`), and NothingToIndex for a tree without code to
    index (before the index is written; `--out` exists by then)."""
    from r2ps.models.encoder import model_or_default

    check_paths(cfg)
    t0 = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model = model_or_default(cfg.model)
    # 1. walk (not into the output folder, when it lies inside the source)
    keep, walk_skipped = walk_sources(cfg.source, cfg.rules, exclude=out)
    t_walk = time.perf_counter()
    # 2. extract what changed
    fingerprint = state_fingerprint(cfg)
    previous = None if cfg.full else load_state(out, fingerprint)
    old_files = (
        {
            r["path"]: r
            for r in previous[0].select(["path", "size", "mtime_ns", "reason"]).to_pylist()
        }
        if previous
        else {}
    )
    reused, to_read = [], []
    for f in keep:
        old = old_files.get(f.path)
        # a file that could not be read is read again: permissions change the ctime only
        retry = old is not None and (old["reason"] or "").startswith(UNREADABLE)
        if old and not retry and old["size"] == f.size and old["mtime_ns"] == f.mtime_ns:
            reused.append(f.path)
        else:
            to_read.append(asdict(f))
    deleted = sorted(set(old_files) - {f.path for f in keep})
    log.info("%d files: %d to read, %d unchanged, %d deleted since the last run",
             len(keep), len(to_read), len(reused), len(deleted))  # fmt: skip
    fresh_files, fresh_units = read_files(to_read, cfg)
    files, units = fresh_files, fresh_units
    if previous and reused:
        same = pa.array(reused, pa.string())
        files = pa.concat_tables([previous[0].filter(pc.is_in(previous[0]["path"], same)), files])
        units = pa.concat_tables([previous[1].filter(pc.is_in(previous[1]["path"], same)), units])
    files = files.sort_by([("path", "ascending")])
    units = units.sort_by(
        [
            ("path", "ascending"),
            ("start_line", "ascending"),
            ("end_line", "descending"),
            ("symbol", "ascending"),
            ("kind", "ascending"),
        ]
    )
    t_extract = time.perf_counter()
    if units.num_rows == 0:
        raise NothingToIndex(f"{cfg.source}: no function, method or class found to index")
    _write_atomic(units, out / CODES)
    # 3. embed what is new
    vectors, vec_stats = update_vectors(units, model, cfg, out)
    t_embed = time.perf_counter()
    # 4. index and outputs
    index = build_index(units, vectors, model, cfg, out)
    serve_yaml = write_serve_yaml(cfg, model, out)
    # files.parquet last: it is what the next run trusts
    state = files.replace_schema_metadata({"r2ps_state": fingerprint})
    _write_atomic(state, out / FILES)
    t_end = time.perf_counter()
    summary, skipped = summarise(
        walk_skipped,
        files,
        units,
        {
            "source": str(Path(cfg.source).resolve()),
            "out": str(out.resolve()),
            "model": model,
            "serve_yaml": str(serve_yaml.resolve()),
            "index": {"kind": index.manifest["kind"], "count": len(index), "dim": index.dim},
            "run": {
                "incremental": previous is not None,
                "files_read": len(to_read),
                "files_unchanged": len(reused),
                "files_deleted": len(deleted),
                "deleted": deleted,
                "units_extracted": fresh_units.num_rows,
                "codes": vec_stats,
            },
            "seconds": {
                "walk": round(t_walk - t0, 3),
                "extract": round(t_extract - t_walk, 3),
                "embed": round(t_embed - t_extract, 3),
                "index_and_write": round(t_end - t_embed, 3),
                "total": round(t_end - t0, 3),
            },
            "rates": {
                "files_per_s": round(len(to_read) / (t_extract - t_walk), 1) if to_read else None,
                "units_per_s": (
                    round(fresh_units.num_rows / (t_extract - t_walk), 1) if to_read else None
                ),
                "codes_per_s": vec_stats["codes_per_s"],
            },
        },
    )
    with open(out / SKIPPED, "w") as f:
        for s in skipped:
            f.write(json.dumps(s) + "\n")
    (out / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def format_summary(summary: dict) -> str:
    """The few lines a person reads after a run."""
    run, files, units, sec = summary["run"], summary["files"], summary["units"], summary["seconds"]
    skipped = ", ".join(f"{k} {v}" for k, v in files["skipped"].items() if v) or "none"
    bad_lines = ", ".join(f"{k} {v}" for k, v in summary["ignore_lines_skipped"].items())
    langs = ", ".join(f"{k} {v}" for k, v in units["by_language"].items())
    return "\n".join(
        [
            f"indexed {summary['source']} -> {summary['out']}"
            f" ({'incremental' if run['incremental'] else 'full'} run, {sec['total']:.1f} s)",
            f"files: {files['indexed']} indexed ({run['files_read']} read, "
            f"{run['files_unchanged']} unchanged, {run['files_deleted']} deleted); skipped: {skipped}",
            f"syntax errors recovered in {files['with_syntax_errors']} file(s); undecodable bytes "
            f"in {files['with_undecodable_bytes']} (named in {SUMMARY})",
            f".gitignore lines not applied: {bad_lines or 'none'} (named in {SUMMARY})",
            f"units: {units['total']} ({langs}); {units['documented']} documented",
            f"codes: {run['codes']['embedded']} embedded, {run['codes']['reused']} reused",
            f"serve: R2PS_SERVE_CONFIG={summary['serve_yaml']} serve run serve.app:cascade",
        ]
    )
