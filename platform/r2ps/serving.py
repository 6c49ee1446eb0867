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
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from r2ps.config import ConfigError, from_dict, load_config
from r2ps.data.schema import codes_file
from r2ps.index import IndexConfig
from r2ps.log import get_logger
from r2ps.models.onnx import BACKENDS
from r2ps.storage import is_uri, staged

log = get_logger(__name__)

CONFIG_ENV = "R2PS_SERVE_CONFIG"
SERVE_FILE = "serve.yaml"  # what the main job and the index job write beside their outputs
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
RETRIEVAL_MODES = ("dense", "hybrid")
BODY_BYTES_PER_CHAR = 12  # a character outside the BMP, JSON-escaped: a surrogate pair
BODY_OVERHEAD = 256  # braces, keys, top_k and rerank_k
# A query is blank when `str.strip()` leaves nothing. The OpenAPI document states the same
# rule as a pattern: one character outside Python's whitespace, written out as \uXXXX
# escapes, which ECMA-262, Python `re` and JSON Schema validators all read alike (their
# own `\s` classes differ from Python's: \x1c-\x1f, \x85, \ufeff).
_SPACES = [c for c in range(0x110000) if chr(c).isspace()]
NOT_BLANK = "[^" + "".join(f"\\u{c:04x}" for c in _SPACES) + "]"


@dataclass
class ServeConfig:
    """Settings of the cascade endpoint; defaults point at the outputs of `make demo`
    (runs/demo/pipeline: what its serve.yaml names, the served choice aside)."""

    retriever: str = field(
        default="runs/demo/pipeline/retriever",
        metadata={"help": "dual encoder dir; the bundled MiniLM when absent"},
    )
    ranker: str = field(
        default="runs/demo/pipeline/ranker_ps",
        metadata={"help": "cross encoder dir; the bundled MiniLM (fresh head) when absent"},
    )
    codes: str = field(
        default="runs/demo/pipeline/sample",
        metadata={"help": "code store: a split folder with codes.parquet, or a .parquet file"},
    )
    embed_out: str = field(
        default="runs/demo/pipeline/mined",
        metadata={"help": "the embed job's output dir: <embed_out>/index is served"},
    )
    index: IndexConfig = field(default_factory=IndexConfig)
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
        default=32768,
        metadata={"help": "body size limit; must fit the longest query JSON-escaped"},
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
    backend: str = field(
        default="torch",
        metadata={
            "help": "CPU inference of the retriever's query encoder and the ranker: torch | "
            "onnx | onnx-int8 (the export beside each model: jobs/export_onnx.py); GPU "
            "replicas always run torch"
        },
    )
    threads: int = field(
        default=0,
        metadata={"help": "CPU threads per replica (torch or ONNX Runtime); 0: its reserved CPUs"},
    )
    retrieval: str = field(
        default="dense",
        metadata={
            "help": "first stage when a request names none: dense | hybrid (BM25 + dense, RRF)"
        },
    )
    hybrid_depth: int = field(
        default=100, metadata={"help": "hybrid: candidates from each list before fusion"}
    )
    rrf_k: int = field(default=60, metadata={"help": "hybrid: RRF's k (r2ps.hybrid)"})

    def __post_init__(self) -> None:
        checks = {
            "max_query_chars": self.max_query_chars >= 1,
            # a request the OpenAPI document allows must fit: every character of a
            # longest query may arrive escaped (a surrogate pair, 12 bytes)
            "max_body_bytes": self.max_body_bytes
            >= BODY_BYTES_PER_CHAR * self.max_query_chars + BODY_OVERHEAD,
            "ranker_timeout_s": self.ranker_timeout_s > 0,
            "request_timeout_s": self.request_timeout_s > 0,
            "retriever_batch_size": self.retriever_batch_size >= 1,
            "ranker_pair_budget": self.ranker_pair_budget >= 1,
            "ranker_min_replicas": 0 <= self.ranker_min_replicas <= self.ranker_max_replicas,
            "ranker_max_replicas": self.ranker_max_replicas >= 1,
            "alpha": self.alpha is None or 0.0 <= self.alpha <= 1.0,
            "retrieval": self.retrieval in RETRIEVAL_MODES,
            "hybrid_depth": self.hybrid_depth >= 1,
            "rrf_k": self.rrf_k >= 0,
            "backend": self.backend in BACKENDS,
            "threads": self.threads >= 0,
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


# --- the HTTP API ---


class SearchRequest(BaseModel):
    """Body of POST /search. Unknown fields and wrong types are rejected, not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)

    query: str = Field(
        description="natural-language query: not blank (some character other than "
        "whitespace); at most the server's max_query_chars characters (see maxLength)",
        examples=["read a json file"],
        # stated for clients; enforced by `_not_blank` and `parse_search_request`
        json_schema_extra={"minLength": 1, "pattern": NOT_BLANK},
    )
    top_k: int = Field(default=10, ge=1, le=MAX_TOP_K, description="codes to return")
    rerank_k: int | None = Field(
        default=None,
        ge=0,
        le=MAX_RERANK_K,
        description="retriever candidates the ranker rescores (0: retriever only; "
        "default: the server's rerank_k, chosen on validation data)",
    )
    retrieval: Literal["dense", "hybrid"] | None = Field(
        default=None,
        description="first stage: dense, or hybrid (BM25 + dense by reciprocal rank "
        "fusion; scores are then RRF scores); null: the server's setting",
    )

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query is empty or only whitespace")
        return value

    @field_validator("top_k", "rerank_k", mode="before")
    @classmethod
    def _integral_number(cls, value: Any) -> Any:
        # JSON Schema's "integer" includes 5.0; strict mode would refuse it
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value


def search_request_schema(max_query_chars: int) -> dict:
    """SearchRequest's JSON schema with this server's query length limit (`maxLength`)."""
    schema = SearchRequest.model_json_schema()
    schema["properties"]["query"]["maxLength"] = max_query_chars
    return schema


def search_body_openapi(max_query_chars: int) -> dict:
    """The `openapi_extra` of POST /search: its body is read by hand, so it is stated here."""
    schema = search_request_schema(max_query_chars)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


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
    # Where the code is, when the code store knows (an index of a source tree,
    # jobs/index.py); null for a corpus split.
    path: str | None = Field(default=None, description="file, relative to the indexed folder")
    start_line: int | None = Field(default=None, description="1-based first line of `code`")
    end_line: int | None = Field(default=None, description="1-based last line of `code`")
    symbol: str | None = Field(default=None, description="qualified name, e.g. Circle.area")


class SearchResponse(BaseModel):
    query: str
    results: list[Hit]
    reranked: bool = Field(description="false: the ranker was skipped, timed out or down")
    reranked_count: int
    degraded_reason: str | None = None
    timings_ms: dict[str, float] = Field(description="retrieve, rerank, total")
    retrieval: str | None = Field(default=None, description="the first stage used")


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
    """Validate a JSON body into a SearchRequest, or RequestError(422) naming the field.

    The error never echoes the input: an error message must not fail on the bytes it
    reports (invalid UTF-8, a number JSON cannot write back such as 1e400).
    """
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        msg = f"body is not valid UTF-8 (byte 0x{body[e.start]:02x} at offset {e.start})"
        raise RequestError(422, [{"loc": ["body"], "msg": msg, "type": "json_invalid"}]) from None
    try:
        req = SearchRequest.model_validate_json(body)
    except ValidationError as e:
        raise RequestError(422, _validation_detail(e)) from None
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


def _validation_detail(e: ValidationError) -> list[dict]:
    """pydantic's errors as JSON-safe dicts: loc, msg, type (and ctx), without the input."""
    try:
        return json.loads(e.json(include_url=False, include_input=False))
    except ValueError:  # a ctx or loc that JSON cannot hold: keep the plain facts
        return [
            {"loc": [str(p) for p in err["loc"]], "msg": str(err["msg"]), "type": err["type"]}
            for err in e.errors(include_url=False, include_input=False, include_context=False)
        ]


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


# Columns of a source-tree index's codes.parquet (jobs/index.py) that hits carry along.
LOCATION_FIELDS = ("path", "start_line", "end_line", "symbol")


@dataclass
class CodeStore:
    """Code text and metadata by code id: what the retriever returns besides scores."""

    rows: dict[str, tuple[str, str, str]]  # code_id -> (code, language, source)
    path: str
    # code_id -> {path, start_line, end_line, symbol}, when the store has those columns
    locations: dict[str, dict] = field(default_factory=dict)

    def get(self, code_id: str) -> tuple[str, str, str]:
        try:
            return self.rows[code_id]
        except KeyError:
            raise KeyError(f"code id {code_id!r} is in the index but not in {self.path}") from None

    def location(self, code_id: str) -> dict:
        """Where the code is (LOCATION_FIELDS), or {} for a store without locations."""
        return self.locations.get(code_id, {})


def load_code_store(codes: str) -> CodeStore:
    """Read codes.parquet (code_id, code, language, source, and LOCATION_FIELDS when
    present) into memory."""
    names = ["code_id", "code", "language", "source"]
    path = codes_file(codes, columns=tuple(names))
    schema_names = pq.read_schema(path).names
    located = all(n in schema_names for n in LOCATION_FIELDS)
    table = pq.read_table(path, columns=names + (list(LOCATION_FIELDS) if located else []))
    table = table.to_pydict()
    rows = {
        cid: (code, lang, src)
        for cid, code, lang, src in zip(
            table["code_id"], table["code"], table["language"], table["source"], strict=True
        )
    }
    locations = {}
    if located:
        for i, cid in enumerate(table["code_id"]):
            locations[cid] = {name: table[name][i] for name in LOCATION_FIELDS}
    return CodeStore(rows=rows, path=str(path), locations=locations)


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


# --- replicas: threads and warm-up ---


def replica_threads(threads: int, reserved_cpus: float) -> int:
    """CPU threads of a replica: `threads` when set, else its reserved CPUs (at least 1).

    More threads than the CPUs Ray reserved for the replica would compete for the cores
    it gave the other replicas (the ranker's second replica, the retriever); it is also
    what Ray itself sets (OMP_NUM_THREADS) for an actor's CPUs.
    """
    return threads if threads > 0 else max(1, int(reserved_cpus))


def warm_up_retriever(model) -> float:
    """Embed one query at the longest configured length and one short one; milliseconds.

    The first call of a fresh model (torch's kernels, ONNX Runtime's arena) costs several
    times a normal one; done before the replica reports ready, no user pays it.
    """
    start = time.perf_counter()
    model.embed_queries([" ".join(["token"] * model.max_query_len), "read a file"])
    return (time.perf_counter() - start) * 1e3


def warm_up_ranker(model, pair_budget: int) -> float:
    """Score pairs at the configured pair length (one CPU slice of them) and one short pair;
    milliseconds. See `warm_up_retriever`."""
    from r2ps.models.encoder import CPU_MAX_TOKENS

    long = " ".join(["token"] * model.max_len)
    n = max(1, min(pair_budget, CPU_MAX_TOKENS // model.max_len))
    start = time.perf_counter()
    model.score_pairs([long] * n + ["read a file"], [long] * n + ["open(p).read()"], pair_budget)
    return (time.perf_counter() - start) * 1e3


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
        self.retried = metrics.Counter(
            "r2ps_replica_retries",
            description="calls asked again because the replica running them died",
            tag_keys=("callee",),  # "deployment" is Serve's own tag: this ingress
        )
        self.counts: dict[str, Any] = {
            "requests": 0,
            "candidates_reranked": 0,
            "degraded": 0,
            "degraded_by_reason": {},
            "retried_by_deployment": {},  # calls whose replica died, asked again
            "in_flight": {},  # calls awaiting each deployment now
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

    def retry(self, deployment: str) -> None:
        self.retried.inc(tags={"callee": deployment})
        by = self.counts["retried_by_deployment"]
        by[deployment] = by.get(deployment, 0) + 1

    @contextlib.contextmanager
    def calling(self, deployment: str):
        """Counts a call to `deployment` in `in_flight` while the block runs."""
        in_flight = self.counts["in_flight"]
        in_flight[deployment] = in_flight.get(deployment, 0) + 1
        try:
            yield
        finally:
            in_flight[deployment] -= 1
