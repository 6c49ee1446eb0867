"""The endpoint's settings (`ServeConfig`): from a YAML file named by `R2PS_SERVE_CONFIG`
and from `R2PS_<SETTING>` environment variables, because `serve run serve.app:cascade`
and `serve deploy` take no job command line; `latest_serve_file` finds the newest
serve.yaml under runs/ when none is named.

Nothing here imports Ray Serve: the pure pieces are unit-testable."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r2ps.config import ConfigError, from_dict, load_config
from r2ps.data.schema import codes_file
from r2ps.log import get_logger
from r2ps.search.filters import SPACE_ESCAPES
from r2ps.search.searcher import SERVE_FILE, SearchConfig
from r2ps.storage import is_uri

log = get_logger(__name__)

CONFIG_ENV = "R2PS_SERVE_CONFIG"
RUNS_DIR = "runs"  # where `serve run` looks for the newest SERVE_FILE when none is named
BUILD_HINT = (
    "build something to serve with `make demo` (the main job), or `python jobs/index.py "
    "--source <your repository> --out runs/index`, or name a serve.yaml with "
    f"{CONFIG_ENV}=<path>"
)
ENV_PREFIX = "R2PS_"
# R2PS_* variables that belong to other parts of r2ps, not to ServeConfig.
_OTHER_ENV = {CONFIG_ENV, "R2PS_LOG_LEVEL", "R2PS_COSQA", "R2PS_STORAGE"}

MAX_TOP_K = 100
MAX_RERANK_K = 100
MAX_GLOBS = 8  # globs in a request's `path`, and in its `exclude`
MAX_GLOB_CHARS = 128
BODY_BYTES_PER_CHAR = 12  # a character outside the BMP, JSON-escaped: a surrogate pair
# braces, keys, numbers, `retrieval`, every language once, the quotes and commas of globs
BODY_OVERHEAD = 512
# A query is blank when `str.strip()` leaves nothing. The OpenAPI document states the same
# rule as a pattern: one character outside Python's whitespace (r2ps.search.filters'
# SPACE_ESCAPES, which every regex dialect of a client reads alike).
NOT_BLANK = "[^" + SPACE_ESCAPES + "]"


def longest_body_bytes(max_query_chars: int) -> int:
    """Bytes of the longest compact JSON body the OpenAPI document allows: the query and
    every glob at their longest, each character escaped as a surrogate pair."""
    chars = max_query_chars + 2 * MAX_GLOBS * MAX_GLOB_CHARS
    return BODY_BYTES_PER_CHAR * chars + BODY_OVERHEAD


@dataclass
class ServeConfig(SearchConfig):
    """Settings of the cascade endpoint: the search core's (`SearchConfig`: the retriever,
    the code store, the index, backend, threads, first stage) and the serving ones below.
    Defaults point at the outputs of `make demo` (runs/demo/pipeline: what its serve.yaml
    names, the served choice aside)."""

    ranker: str = field(
        default="runs/demo/pipeline/ranker_ps",
        metadata={"help": "cross encoder dir; the bundled MiniLM (fresh head) when absent"},
    )
    alpha: float | None = field(
        default=None,
        metadata={
            "help": "fusion weight (cascade.fuse); default: the weight the ranker was trained "
            "for (0.5 for a residual ranker, 0 for a plain one: CrossEncoder.trained_alpha)"
        },
    )
    rerank_k: int = field(
        default=10,
        metadata={"help": "candidates the ranker rescores when a request names none (0: none)"},
    )
    served_reason: str = field(
        default="", metadata={"help": "why these settings (the pipeline's choice on valid)"}
    )
    max_query_chars: int = 2000
    max_body_bytes: int = field(
        default=65536,
        metadata={"help": "body size limit; must fit the longest request JSON-escaped"},
    )
    ranker_timeout_s: float = field(
        default=10.0, metadata={"help": "past this the answer is the retriever's alone"}
    )
    request_timeout_s: float = field(
        default=30.0,
        metadata={
            "help": "a request's deadline: the retriever's answer (asked again once if its "
            "replica dies) must come within it, else a 503; the ranker gets what is left, at "
            "most ranker_timeout_s"
        },
    )
    retriever_batch_size: int = 32
    retriever_batch_wait_s: float = 0.005
    retriever_cpus: float = 0.5
    ranker_pair_budget: int = field(
        default=64, metadata={"help": "most (query, code) pairs scored in one ranker batch"}
    )
    ranker_batch_wait_s: float = 0.01
    ranker_cpus: float = 0.5
    ranker_gpus: float = field(
        default=-1.0, metadata={"help": "GPUs per ranker replica; -1: 1 when CUDA, else 0"}
    )
    ranker_min_replicas: int = 1
    ranker_max_replicas: int = 2
    ranker_target_ongoing: float = 2.0
    ranker_max_ongoing: int = 16
    ingress_cpus: float = 0.1

    def __post_init__(self) -> None:
        checks = {
            **self.search_checks(),
            "max_query_chars": self.max_query_chars >= 1,
            # a request the OpenAPI document allows must fit: every character of a
            # longest query and of every glob may arrive escaped (a surrogate pair)
            "max_body_bytes": self.max_body_bytes >= longest_body_bytes(self.max_query_chars),
            "ranker_timeout_s": self.ranker_timeout_s > 0,
            "request_timeout_s": self.request_timeout_s > 0,
            "retriever_batch_size": self.retriever_batch_size >= 1,
            "ranker_pair_budget": self.ranker_pair_budget >= 1,
            "ranker_min_replicas": 0 <= self.ranker_min_replicas <= self.ranker_max_replicas,
            "ranker_max_replicas": self.ranker_max_replicas >= 1,
            "alpha": self.alpha is None or 0.0 <= self.alpha <= 1.0,
            "rerank_k": 0 <= self.rerank_k <= MAX_RERANK_K,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"ServeConfig: invalid value for {', '.join(bad)}: {self}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeConfig:
        """Defaults < the YAML file named by R2PS_SERVE_CONFIG < R2PS_<SETTING> variables.

        With no R2PS_SERVE_CONFIG, the newest `runs/**/serve.yaml` under the working
        directory is read (what `make demo` or the index job built last), and logged.
        A nested setting takes a double underscore: `R2PS_INDEX__KIND=hnsw`.
        """
        environ = os.environ if environ is None else environ
        path = environ.get(CONFIG_ENV) or None
        if path is None:
            found = latest_serve_file()
            if found is not None:
                log.info("serving %s (the newest %s under %s/)", found, SERVE_FILE, RUNS_DIR)
                path = str(found)
        return load_config(cls, path, env_overrides(cls, environ))

    def check_inputs(self) -> None:
        """Raise ConfigError naming the command that builds something to serve when the code
        store is missing locally (URIs are checked by the replica that stages them)."""
        if is_uri(self.codes):
            return
        try:
            codes_file(self.codes)
        except FileNotFoundError as e:
            raise ConfigError(f"nothing to serve: {e}; {BUILD_HINT}") from None

    def without_untrained_ranker(self) -> ServeConfig:
        """These settings, with the default `rerank_k` 0 when the ranker named is not one
        r2ps trained (a local path that is missing, the bundled MiniLM, or a folder that is
        not a saved cross encoder: `resolve_model`), and `served_reason` saying so.

        Such a ranker has no relevance signal (a fresh head scores every pair 0) and costs
        20-35x the retriever's latency on CPU (0.8-1.4 s against ~40 ms per query for a
        repository index), so by default answers are the retriever's alone; a request may
        still name a `rerank_k`. URIs are staged by the replicas and are not checked here
        (the pipeline writes them, for rankers it trained).
        """
        if self.rerank_k == 0 or is_uri(self.ranker):
            return self
        path, trained = resolve_model(self.ranker, "ranker")
        if trained:
            return self
        reason = (
            f"retriever alone: no trained ranker at {self.ranker!r}; a request that names a "
            f"rerank_k is reranked by {path}, untrained"
        )
        log.warning("rerank_k %d -> 0: %s", self.rerank_k, reason)
        return dataclasses.replace(self, rerank_k=0, served_reason=reason)

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> ServeConfig:
        return from_dict(cls, data)


def latest_serve_file(root: str | Path = RUNS_DIR) -> Path | None:
    """The most recently written `<root>/**/serve.yaml`, or None."""
    found = [p for p in Path(root).glob(f"**/{SERVE_FILE}") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def env_overrides(cls: type, environ: Mapping[str, str]) -> list[str]:
    """`key=value` overrides from R2PS_* variables; an unknown one is logged, not fatal."""
    top = {f.name: f for f in dataclasses.fields(cls)}
    out = []
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in _OTHER_ENV:
            continue
        key = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        if key.split(".")[0] in top:
            out.append(f"{key}={value}")
        else:
            log.warning("ignoring %s: ServeConfig has no setting %r", name, key)
    return out


def resolve_model(path: str, role: str) -> tuple[str, bool]:
    """(model dir, trained?): `path` when it holds a model, else the bundled MiniLM.

    Trained means r2ps trained it: not the bundled MiniLM itself (which `jobs/index.py`
    names when given no --model), and for the ranker a saved cross encoder (any other
    HF folder gets a fresh random head). Serving must start from a fresh checkout, so a
    missing trained model is not fatal; it is logged loudly because the answers are then
    those of an untrained model.
    """
    from r2ps.models.cross import saved_ranker_meta
    from r2ps.models.encoder import default_model_path

    fallback = default_model_path()
    if path and Path(path, "config.json").exists():
        bundled = Path(path).resolve() == Path(fallback).resolve()
        saved_ranker = saved_ranker_meta(path) is not None
        return path, not bundled and (role != "ranker" or saved_ranker)
    log.warning(
        "no trained %s at %r: serving the bundled MiniLM %s (untrained%s)",
        role,
        path,
        fallback,
        ", fresh random ranker head" if role == "ranker" else "",
    )
    return fallback, False
