"""What the Serve app (serve/app.py) needs besides Ray Serve itself.

- `ServeConfig`: the endpoint's settings, from a YAML file named by `R2PS_SERVE_CONFIG`
  and from `R2PS_<SETTING>` environment variables, because `serve run serve.app:cascade`
  and `serve deploy` take no job command line;
- the request and response models of `POST /search` (pydantic, so FastAPI validates
  input and writes the OpenAPI document from the same classes);
- `read_search_request`: body size limit + validation, every bad input a 4xx;
- `pair_chunks` / `count_pairs`: how the ranker batches by (query, code) pairs;
- `load_code_store`, `resolve_model`, `load_index`: what the deployments load;
- `CascadeMetrics`: the custom metrics (`ray.serve.metrics`) plus local counts that
  `/healthz` reports, so a test or an operator can read them without Prometheus.

Nothing here imports Ray Serve at module level: the pure pieces are unit-testable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from r2ps.config import ConfigError, from_dict, load_config
from r2ps.index import IndexConfig
from r2ps.log import get_logger
from r2ps.storage import staged

log = get_logger(__name__)

CONFIG_ENV = "R2PS_SERVE_CONFIG"
ENV_PREFIX = "R2PS_"
# R2PS_* variables that belong to other parts of r2ps, not to ServeConfig.
_OTHER_ENV = {CONFIG_ENV, "R2PS_LOG_LEVEL", "R2PS_COSQA", "R2PS_STORAGE"}

MAX_TOP_K = 100
MAX_RERANK_K = 100


@dataclass
class ServeConfig:
    """Settings of the cascade endpoint; defaults point at the outputs of `make demo`."""

    retriever: str = field(
        default="runs/demo/retriever",
        metadata={"help": "dual encoder dir; the bundled MiniLM when absent"},
    )
    ranker: str = field(
        default="runs/demo/ranker",
        metadata={"help": "cross encoder dir; the bundled MiniLM (fresh head) when absent"},
    )
    codes: str = field(
        default="runs/demo/corpus/test",
        metadata={"help": "code store: a split folder with codes.parquet, or a .parquet file"},
    )
    embed_out: str = field(
        default="runs/demo",
        metadata={"help": "the embed job's output dir: <embed_out>/index is served"},
    )
    index: IndexConfig = field(default_factory=IndexConfig)
    alpha: float = field(default=0.0, metadata={"help": "fusion weight (cascade.fuse)"})
    rerank_k: int = field(
        default=10,
        metadata={"help": "candidates the ranker rescores when a request names none (0: none)"},
    )
    served_reason: str = field(
        default="", metadata={"help": "why these settings (the pipeline's choice on valid)"}
    )
    max_query_chars: int = 2000
    max_body_bytes: int = 16384
    ranker_timeout_s: float = field(
        default=10.0, metadata={"help": "past this the answer is the retriever's alone"}
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
    torch_threads: int = field(
        default=0, metadata={"help": "torch threads per replica; 0: as Ray sets them"}
    )

    def __post_init__(self) -> None:
        checks = {
            "max_query_chars": self.max_query_chars >= 1,
            "max_body_bytes": self.max_body_bytes >= 64,
            "ranker_timeout_s": self.ranker_timeout_s > 0,
            "retriever_batch_size": self.retriever_batch_size >= 1,
            "ranker_pair_budget": self.ranker_pair_budget >= 1,
            "ranker_min_replicas": 0 <= self.ranker_min_replicas <= self.ranker_max_replicas,
            "ranker_max_replicas": self.ranker_max_replicas >= 1,
            "alpha": 0.0 <= self.alpha <= 1.0,
            "rerank_k": 0 <= self.rerank_k <= MAX_RERANK_K,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"ServeConfig: invalid value for {', '.join(bad)}: {self}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeConfig:
        """Defaults < the YAML file named by R2PS_SERVE_CONFIG < R2PS_<SETTING> variables.

        A nested setting takes a double underscore: `R2PS_INDEX__KIND=hnsw`.
        """
        environ = os.environ if environ is None else environ
        return load_config(cls, environ.get(CONFIG_ENV) or None, env_overrides(cls, environ))

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> ServeConfig:
        return from_dict(cls, data)


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


# --- the HTTP API ---


class SearchRequest(BaseModel):
    """Body of POST /search. Unknown fields and wrong types are rejected, not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)

    query: str = Field(description="natural-language query", examples=["read a json file"])
    top_k: int = Field(default=10, ge=1, le=MAX_TOP_K, description="codes to return")
    rerank_k: int | None = Field(
        default=None,
        ge=0,
        le=MAX_RERANK_K,
        description="retriever candidates the ranker rescores (0: retriever only; "
        "default: the server's rerank_k, chosen on validation data)",
    )

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query is empty or only whitespace")
        return value


class Hit(BaseModel):
    rank: int = Field(description="1-based position in the answer")
    code_id: str
    code: str
    language: str
    source: str
    score: float = Field(description="the score the answer is ordered by")
    retriever_score: float
    retriever_rank: int = Field(description="1-based position in the retriever's list")
    ranker_score: float | None = Field(description="raw cross-encoder score; null if not reranked")


class SearchResponse(BaseModel):
    query: str
    results: list[Hit]
    reranked: bool = Field(description="false: the ranker was skipped, timed out or down")
    reranked_count: int
    degraded_reason: str | None = None
    timings_ms: dict[str, float] = Field(description="retrieve, rerank, total")


class RequestError(Exception):
    """A bad request: `status` (4xx) and a message that says what was wrong."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail


async def read_limited_body(chunks, limit: int, content_length: str | None) -> bytes:
    """The request body, or RequestError(413) as soon as it passes `limit` bytes.

    Content-Length is checked first; the stream is counted too, since a chunked body
    has no length header.
    """
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise RequestError(400, f"bad Content-Length header {content_length!r}") from None
        if declared > limit:
            raise RequestError(413, f"body of {declared} bytes is over the {limit}-byte limit")
    body = bytearray()
    async for chunk in chunks:
        body.extend(chunk)
        if len(body) > limit:
            raise RequestError(413, f"body is over the {limit}-byte limit")
    return bytes(body)


def parse_search_request(body: bytes, max_query_chars: int) -> SearchRequest:
    """Validate a JSON body into a SearchRequest, or RequestError(422) naming the field."""
    try:
        req = SearchRequest.model_validate_json(body)
    except ValidationError as e:
        raise RequestError(422, json.loads(e.json(include_url=False))) from None
    if len(req.query) > max_query_chars:
        raise RequestError(
            422,
            [
                {
                    "loc": ["body", "query"],
                    "msg": f"query has {len(req.query)} characters, at most "
                    f"{max_query_chars} are allowed",
                    "type": "string_too_long",
                }
            ],
        )
    return req


# --- batching the ranker by pairs ---


def pair_chunks(n_pairs: int, budget: int) -> list[slice]:
    """Consecutive slices of at most `budget` pairs covering `n_pairs`.

    One request may hold more pairs than a batch may (rerank_k = 100, budget 64): it is
    cut into chunks that each fit, and the chunks batch with other requests' pairs.
    """
    if budget < 1:
        raise ValueError(f"pair budget must be >= 1, got {budget}")
    if n_pairs < 0:
        raise ValueError(f"n_pairs must be >= 0, got {n_pairs}")
    return [slice(i, min(i + budget, n_pairs)) for i in range(0, n_pairs, budget)]


def count_pairs(items: Sequence[tuple[str, Sequence[str]]]) -> int:
    """Batch size of ranker work items (query, codes): the number of pairs, not of items.

    Passed to `@serve.batch(batch_size_fn=...)` so a batch is cut at the pair budget.
    """
    return sum(len(codes) for _, codes in items)


# --- what the deployments load ---


# ServeConfig fields that may be storage URIs: each replica stages what it reads.
URI_FIELDS = ("retriever", "ranker", "codes", "embed_out")


def staged_config(cfg: ServeConfig, stack: contextlib.ExitStack) -> ServeConfig:
    """`cfg` with each URI in `URI_FIELDS` replaced by a local copy on this replica's node,
    held until `stack` closes (the replica's life): models, the code store and a saved
    index can then live in a bucket (the pipeline's `--out s3://...`). An index that has
    to be built is built into that copy and not uploaded (run jobs/embed.py for that).
    """
    return stack.enter_context(staged(cfg, inputs=URI_FIELDS))


def resolve_model(path: str, role: str) -> tuple[str, bool]:
    """(model dir, trained?): `path` when it holds a model, else the bundled MiniLM.

    Serving must start from a fresh checkout, so a missing trained model is not fatal;
    it is logged loudly because the answers are then those of an untrained model.
    """
    if path and Path(path, "config.json").exists():
        return path, True
    from r2ps.models.encoder import default_model_path

    fallback = default_model_path()
    log.warning(
        "no trained %s at %r: serving the bundled MiniLM %s (untrained%s)",
        role,
        path,
        fallback,
        ", fresh random ranker head" if role == "ranker" else "",
    )
    return fallback, False


def codes_file(codes: str) -> Path:
    """The codes.parquet a `codes` setting names (a split folder or the file itself)."""
    path = Path(codes)
    if path.is_dir():
        path = path / "codes.parquet"
    if not path.exists():
        raise FileNotFoundError(f"code store {codes!r}: {path} does not exist")
    return path


@dataclass
class CodeStore:
    """Code text and metadata by code id: what the retriever returns besides scores."""

    rows: dict[str, tuple[str, str, str]]  # code_id -> (code, language, source)
    path: str

    def get(self, code_id: str) -> tuple[str, str, str]:
        try:
            return self.rows[code_id]
        except KeyError:
            raise KeyError(f"code id {code_id!r} is in the index but not in {self.path}") from None


def load_code_store(codes: str) -> CodeStore:
    """Read codes.parquet (code_id, code, language, source) into memory."""
    path = codes_file(codes)
    names = ["code_id", "code", "language", "source"]
    schema_names = pq.read_schema(path).names
    missing = [n for n in names if n not in schema_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; has {schema_names}")
    table = pq.read_table(path, columns=names).to_pydict()
    rows = {
        cid: (code, lang, src)
        for cid, code, lang, src in zip(
            table["code_id"], table["code"], table["language"], table["source"], strict=True
        )
    }
    return CodeStore(rows=rows, path=str(path))


def load_index(cfg: ServeConfig, model_dir: str):
    """The faiss index of `cfg.codes` under `model_dir`: loaded if fresh, else (re)built.

    `ensure_index` compares the saved manifest with the model and corpus fingerprints,
    so a retrained model or a changed corpus never serves a stale index.
    """
    from r2ps.embed import EmbedConfig, ensure_index

    if not Path(cfg.embed_out, "index", "manifest.json").exists():
        log.warning(
            "no index under %s: embedding %s inside the replica. Ray Data needs free CPUs "
            "beside the Serve replicas; on a small machine build it first with "
            "`python jobs/embed.py --model %s --codes %s --out %s`",
            cfg.embed_out,
            cfg.codes,
            model_dir,
            cfg.codes,
            cfg.embed_out,
        )
    embed_cfg = EmbedConfig(
        model=model_dir, codes=cfg.codes, out=cfg.embed_out, index=dataclasses.replace(cfg.index)
    )
    return ensure_index(embed_cfg)


# --- metrics ---


class CascadeMetrics:
    """Custom Serve metrics (shown on the Ray dashboard beside Serve's own) + local counts.

    Must be created inside a replica: Ray metrics need a running Ray worker.
    """

    STAGES = ("retrieve", "rerank", "total")
    BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000]

    def __init__(self) -> None:
        from ray.serve import metrics

        self.latency = metrics.Histogram(
            "r2ps_stage_latency_ms",
            description="latency of a cascade stage in milliseconds",
            boundaries=self.BOUNDARIES_MS,
            tag_keys=("stage",),
        )
        self.reranked = metrics.Counter(
            "r2ps_candidates_reranked", description="(query, code) pairs the ranker scored"
        )
        self.degraded = metrics.Counter(
            "r2ps_degraded_answers",
            description="answers served without the ranker (timeout or ranker down)",
            tag_keys=("reason",),
        )
        self.requests = metrics.Counter("r2ps_search_requests", description="POST /search served")
        self.counts: dict[str, Any] = {
            "requests": 0,
            "candidates_reranked": 0,
            "degraded": 0,
            "degraded_by_reason": {},
        }

    def observe(self, timings_ms: Mapping[str, float], reranked: int) -> None:
        for stage, ms in timings_ms.items():
            self.latency.observe(ms, tags={"stage": stage})
        self.requests.inc()
        self.counts["requests"] += 1
        if reranked:
            self.reranked.inc(reranked)
            self.counts["candidates_reranked"] += reranked

    def degrade(self, reason: str) -> None:
        self.degraded.inc(tags={"reason": reason})
        self.counts["degraded"] += 1
        by = self.counts["degraded_by_reason"]
        by[reason] = by.get(reason, 0) + 1
