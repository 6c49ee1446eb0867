"""The repository index's settings (`RepoIndexConfig`, `jobs/index.py`) and the checks of
its paths (`check_paths`) made before anything is read or written. Read by the
extraction (`r2ps.repo.units`), the vectors (`r2ps.repo.vectors`) and the job
(`r2ps.repo.indexer`), so none of them imports the job for its settings."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from r2ps.config import ConfigError, Need, check_inputs, needs
from r2ps.data.schema import HEAD_FILE, MODEL_CONFIG
from r2ps.mining.index import IndexConfig
from r2ps.models.light import check_backend
from r2ps.repo.files import FileRules, is_utf8, shown

# What only an index folder holds (r2ps.repo.indexer: the state, the version pointer, the
# summary, the run record): `--out` must be new, empty, or have one of these.
INDEX_MARKERS = ("files.parquet", "version.json", "index_summary.json", "index_run.json")
CLUSTER_LOCAL_BELOW = 256  # files (codes) a run on a named cluster still keeps here


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
    local_below: int | None = field(
        default=None,
        metadata={
            "help": "fewer files (codes) than this are parsed (embedded) here, no Ray; "
            f"unset: all of them, unless the run names a Ray cluster (then {CLUSTER_LOCAL_BELOW})"
        },
    )
    actors: int = field(
        default=0, metadata={"help": "embedding actors (0: r2ps.mining.embed's plan)"}
    )
    batch_size: int = 64
    block_rows: int = 512
    threads: int = field(
        default=0,
        metadata={
            "help": "CPU threads of the encoder, in this process or per actor (0: torch's "
            "or ONNX Runtime's default here, r2ps.mining.embed's plan in actors)"
        },
    )
    backend: str = field(
        default="onnx-int8",
        metadata={
            "help": "the code encoder on CPUs: torch | onnx | onnx-int8 (the export beside "
            "the model, made at the first run); GPU actors run torch"
        },
    )
    max_code_len: int = field(
        default=128, metadata={"help": "code tokens embedded (0: the model's own; MiniLM 256)"}
    )
    ray_address: str = field(
        default="",
        metadata={
            "help": "the Ray a large run fans out on: '' = ray.init()'s rule (RAY_ADDRESS, "
            "else a cluster running on this machine, else a new local one); 'local' = a new "
            "one for this run, whatever runs (the `r2ps index` command's default); an address"
        },
    )
    rules: FileRules = field(default_factory=FileRules)
    index: IndexConfig = field(default_factory=IndexConfig)

    def __post_init__(self) -> None:
        for name in ("files_per_task", "batch_size", "block_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("threads", "max_code_len", "actors", "workers", "local_below"):
            if (getattr(self, name) or 0) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        check_backend(self.backend)

    def local_limit(self) -> int:
        """Files (codes) below which a step runs in this process rather than on Ray:
        `local_below`, else CLUSTER_LOCAL_BELOW when the run names a cluster (an address,
        or RAY_ADDRESS for the default ''), else no limit: on one machine Ray's fan-out
        only adds its start and copies (benchmarks/index_speed.py; docs/INDEXING.md)."""
        if self.local_below is not None:
            return max(1, self.local_below)
        named = self.ray_address not in ("", "local") or (
            self.ray_address == "" and bool(os.environ.get("RAY_ADDRESS"))
        )
        return CLUSTER_LOCAL_BELOW if named else sys.maxsize

    def inputs(self) -> list[Need]:
        """The models given (`config.check_inputs`): read only after the walk and the
        extraction, so checked first (`check_paths`). `source` has its own checks there."""
        return [
            *needs(self, "model", MODEL_CONFIG, what="a retriever folder"),
            *needs(self, "ranker", MODEL_CONFIG, HEAD_FILE, what="a trained ranker folder"),
        ]


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
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: {cfg.out!r} exists and is not a folder")
    # a run replaces what it writes there: never in a folder of someone's own files
    if out.is_dir() and not any((out / name).exists() for name in INDEX_MARKERS):
        other = next(out.iterdir(), None)
        if other is not None:
            raise ConfigError(
                f"out: {cfg.out!r} holds files that are not an r2ps index (e.g. "
                f"{other.name!r}): give a new or empty folder, or one an earlier run wrote"
            )
    check_inputs(cfg)
