"""The deployments of the r2ps search endpoint: Retriever, Ranker and the Cascade ingress,
and `build_app`, which binds them with a `ServeConfig`.

serve/app.py binds the app `serve run serve.app:cascade` serves; import `build_app` from
here to compose or benchmark the endpoint with settings of your own (importing this
module reads no settings and checks nothing). Serve replicas import this module to
unpickle their class.

The retriever runs the search core (`r2ps.search.searcher.Searcher`: the dual encoder, a
faiss index, the code store, filters) on queries batched across requests; the
ranker (a cross encoder, autoscaled) rescores the top `rerank_k`; the ordering is
`r2ps.search.cascade`'s, the same one evaluation measures. A call whose replica dies is asked
again once (`Cascade._ask`), within the request's deadline: a replica's death costs latency,
not the answer. When the ranker is still slow or down the answer is the retriever's alone,
marked `"reranked": false`, and counted. The ingress serves MCP at /mcp too (r2ps.serving.mcp).
"""

import asyncio
import contextlib
import os
import time
from collections import deque

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from r2ps.log import get_logger, setup_logging
from r2ps.models.loading import load_ranker
from r2ps.repo.indexer import run_under_way
from r2ps.resources import cluster_has_gpus
from r2ps.search.cascade import cascade_ids, fuse
from r2ps.search.filters import Filters
from r2ps.search.live import LiveSearcher
from r2ps.search.searcher import Query, Searcher, first_stage
from r2ps.serving.api import (
    Hit,
    RequestError,
    SearchRequest,
    SearchResponse,
    parse_search_request,
    read_limited_body,
    search_body_openapi,
)
from r2ps.serving.mcp import ServedIndex, build_server, mount_http
from r2ps.serving.replicas import (
    CascadeMetrics,
    count_pairs,
    pair_chunks,
    replica_threads,
    staged_config,
    warm_up_ranker,
    warm_up_retriever,
)
from r2ps.serving.settings import ServeConfig, resolve_model
from r2ps.serving.web import search_page

log = get_logger("r2ps.serve")


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


async def _wait(response):
    """A DeploymentResponse as a coroutine, for asyncio.wait_for.

    Defined before the deployments: Serve serialises an ingress class when it is
    decorated, so a helper defined below it would be missing in the replica.
    """
    return await response


def _replica_inputs(cfg: ServeConfig) -> tuple[contextlib.ExitStack, ServeConfig]:
    """Logging, and the settings with URI inputs staged on this node: the stack keeps them
    there while the replica lives."""
    setup_logging()
    stack = contextlib.ExitStack()
    return stack, staged_config(cfg, stack)


class _ModelReplica:
    """What both model replicas (Retriever, Ranker) report about how they compute; each
    sets `loaded` (models/onnx.py), `cpus` and `warmup_ms` in its constructor."""

    def runtime(self) -> dict:
        """Backend, CPU threads, reserved CPUs, warm-up time (ms), the replica's process id."""
        return {
            **self.loaded.info(),
            "reserved_cpus": self.cpus,
            "warmup_ms": self.warmup_ms,
            "pid": os.getpid(),
        }


@serve.deployment
class Retriever(_ModelReplica):
    """The search core (`Searcher`) on this replica; queries batched across requests."""

    def __init__(self, cfg: ServeConfig) -> None:
        self._staged, cfg = _replica_inputs(cfg)
        self.cpus = cfg.retriever_cpus
        self.model_dir, self.trained = resolve_model(cfg.retriever, "retriever")
        threads = replica_threads(cfg.threads, cfg.retriever_cpus)
        # follows the index folder's versions: a new one is loaded before the next batch
        self.searcher = LiveSearcher(
            Searcher.from_config(cfg, model_dir=self.model_dir, threads=threads, device=_device())
        )
        self.loaded = self.searcher.loaded
        self.warmup_ms = warm_up_retriever(self.searcher.model)  # before Serve counts it ready
        self._search_batch.set_max_batch_size(cfg.retriever_batch_size)
        self._search_batch.set_batch_wait_timeout_s(cfg.retriever_batch_wait_s)
        if cfg.retrieval != "dense":  # BM25 (and the symbol table) now, not at the first query
            start = time.perf_counter()
            self.searcher.lexical()
            self.searcher.symbols()
            log.info("BM25 over %d codes built in %.1f s", len(self.searcher),
                     time.perf_counter() - start)  # fmt: skip
        log.info(
            "retriever ready: %s (trained: %s), %d codes, index %s, %s",
            self.model_dir,
            self.trained,
            len(self.searcher),
            self.searcher.index.manifest.get("kind"),
            self.runtime(),
        )

    async def retrieve(
        self, query: str, k: int, retrieval: str | None = None, filters: Filters | None = None
    ) -> dict:
        """{"hits": the top `k` SearchHits that pass `filters` (fewer when fewer pass),
        "retrieval": the first stage used}; scores are cosines, RRF scores for hybrid, the
        signals' scores for repo. {"error": why} when this index cannot serve `retrieval`
        (repo on a corpus without paths): the request's fault, kept out of the batch."""
        try:
            self.searcher.mode(retrieval)
        except ValueError as e:
            return {"error": str(e)}
        return await self._search_batch(Query(query, k, retrieval, filters))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _search_batch(self, queries: list[Query]) -> list[dict]:
        # Off the event loop, so readiness probes answer while a batch encodes.
        found = await asyncio.to_thread(self.searcher.search_many, queries)
        return [
            {"hits": hits, "retrieval": self.searcher.mode(q.retrieval)}
            for q, hits in zip(queries, found, strict=True)
        ]

    def ready(self) -> dict:
        return {
            "model": self.model_dir,
            "trained": self.trained,
            "codes": len(self.searcher),
            **first_stage(self.searcher.cfg),  # the default first stage and its signals
            **self.runtime(),
            # the index version served, its age, and whether an index run is under way
            "index": {
                **self.searcher.status(),
                "indexing": run_under_way(self.searcher.folder) is not None,
            },
        }


@serve.deployment
class Ranker(_ModelReplica):
    """Cross encoder; requests are batched by their number of (query, code) pairs."""

    def __init__(self, cfg: ServeConfig) -> None:
        self._staged, cfg = _replica_inputs(cfg)
        self.model_dir, self.trained = resolve_model(cfg.ranker, "ranker")
        self.cpus = cfg.ranker_cpus
        threads = replica_threads(cfg.threads, cfg.ranker_cpus)
        self.loaded = load_ranker(self.model_dir, cfg.backend, threads, _device())
        self.model = self.loaded.model
        self.budget = cfg.ranker_pair_budget
        self.warmup_ms = warm_up_ranker(self.model, self.budget)  # before Serve counts it ready
        self._score_batch.set_max_batch_size(self.budget)
        self._score_batch.set_batch_wait_timeout_s(cfg.ranker_batch_wait_s)
        self.batches: deque[list[int]] = deque(maxlen=256)  # pairs per item, per batch
        log.info("ranker ready: %s (trained: %s), %s", self.model_dir, self.trained, self.runtime())

    async def score(self, query: str, codes: list[str]) -> list[float]:
        """Raw cross-encoder scores of (query, code) for each code, in order."""
        chunks = pair_chunks(len(codes), self.budget)
        parts = await asyncio.gather(*(self._score_batch((query, codes[c])) for c in chunks))
        return [s for part in parts for s in part]

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.01, batch_size_fn=count_pairs)
    async def _score_batch(self, items: list[tuple[str, list[str]]]) -> list[list[float]]:
        self.batches.append([len(codes) for _, codes in items])
        queries = [q for q, codes in items for _ in codes]
        codes = [c for _, cs in items for c in cs]
        scores = await asyncio.to_thread(self.model.score_pairs, queries, codes, self.budget)
        out, start = [], 0
        for _, cs in items:
            out.append(scores[start : start + len(cs)].tolist())
            start += len(cs)
        return out

    def stats(self) -> dict:
        """Recent batch compositions and the replica's pid (the fault benchmark kills it)."""
        return {"batches": list(self.batches), "pid": os.getpid(), "budget": self.budget}

    def ready(self) -> dict:
        return {
            "model": self.model_dir,
            "trained": self.trained,
            "trained_alpha": self.trained_alpha(),
            **self.runtime(),
        }

    def trained_alpha(self) -> float:
        """The fusion weight this ranker was trained for (CrossEncoder.trained_alpha)."""
        return float(self.model.trained_alpha)


api = FastAPI(
    title="r2ps code search",
    description="Natural-language code search: dual-encoder retrieval, cross-encoder reranking.",
    version="0.1.0",
)

_SEARCH_BODY = search_body_openapi(ServeConfig().max_query_chars)


@serve.deployment
@serve.ingress(api)
class Cascade:
    """HTTP ingress: validate, retrieve, rerank the top K (or degrade), answer."""

    def __init__(
        self, retriever: DeploymentHandle, ranker: DeploymentHandle, cfg: ServeConfig
    ) -> None:
        setup_logging()
        self.retriever = retriever
        self.ranker = ranker
        self.cfg = cfg
        self.metrics = CascadeMetrics()
        self._trained_alpha: float | None = None  # asked of a ranker replica when needed
        # the document states this replica's own query length limit
        _SEARCH_BODY.update(search_body_openapi(cfg.max_query_chars))
        api.openapi_schema = None

    def __serve_build_asgi_app__(self):
        """This replica's app, which Serve asks for after the constructor: the routes below
        and the MCP server at /mcp (r2ps.serving.mcp), whose search_code answers as POST
        /search does."""
        ready = lambda: self._ask(self.retriever, "ready", deadline=time.perf_counter() + 5)  # noqa: E731
        server = build_server(
            ServedIndex(self.answer, self.cfg, ready), max_query_chars=self.cfg.max_query_chars
        )
        return mount_http(self.app, server)

    @api.post(
        "/search",
        response_model=SearchResponse,
        openapi_extra=_SEARCH_BODY,
        responses={413: {"description": "body too large"}, 422: {"description": "bad input"}},
    )
    async def search(self, request: Request):
        # The body is read by hand so its size is capped before it is parsed.
        try:
            body = await read_limited_body(
                request.stream(), self.cfg.max_body_bytes, request.headers.get("content-length")
            )
            req = parse_search_request(body, self.cfg.max_query_chars)
        except RequestError as e:
            return JSONResponse({"detail": e.detail}, status_code=e.status)
        return await self.answer(req)

    async def answer(self, req: SearchRequest) -> SearchResponse | JSONResponse:
        t0 = time.perf_counter()
        deadline = t0 + self.cfg.request_timeout_s
        rerank_k = self.cfg.rerank_k if req.rerank_k is None else req.rerank_k
        depth = max(req.top_k, rerank_k)
        try:
            found = await self._ask(
                self.retriever, "retrieve", req.query, depth, req.retrieval, req.filters(),
                deadline=deadline,
            )  # fmt: skip
        except Exception as e:  # the retriever is the one stage the answer cannot do without
            log.error("retriever failed: %r", e)
            return JSONResponse({"detail": "retriever unavailable"}, status_code=503)
        if "error" in found:  # a first stage this index cannot serve
            return JSONResponse({"detail": found["error"]}, status_code=422)
        t1 = time.perf_counter()
        found_hits = found["hits"]
        de = np.asarray([h.score for h in found_hits], dtype=np.float32)
        k = min(rerank_k, len(de))
        ce, alpha, reason = None, 0.0, None
        if k:
            codes = [h.code for h in found_hits[:k]]
            ce, alpha, reason = await self._rerank(req.query, codes, deadline)
        t2 = time.perf_counter()
        if reason is not None:
            self.metrics.degrade(reason)
        reranked = ce is not None
        ce_arr = np.asarray(ce if reranked else [], dtype=np.float32)
        order = cascade_ids(np.arange(len(de)), de, ce_arr, alpha)[: req.top_k]
        fused = fuse(de[: len(ce_arr)], ce_arr, alpha)
        hits = [
            Hit(
                **{
                    **found_hits[p].to_dict(),  # the unit and where it is
                    "rank": rank,
                    "score": float(fused[p] if p < len(ce_arr) else de[p]),
                    "retriever_score": float(de[p]),
                    "retriever_rank": int(p) + 1,
                    "ranker_score": float(ce_arr[p]) if p < len(ce_arr) else None,
                }
            )
            for rank, p in enumerate(order.tolist(), start=1)
        ]
        timings = {
            "retrieve": (t1 - t0) * 1e3,
            "rerank": (t2 - t1) * 1e3,
            "total": (time.perf_counter() - t0) * 1e3,
        }
        self.metrics.observe(timings, len(ce_arr))
        return SearchResponse(
            query=req.query,
            results=hits,
            reranked=reranked,
            reranked_count=len(ce_arr),
            degraded_reason=reason,
            timings_ms=timings,
            retrieval=found.get("retrieval"),
        )

    async def _ask(self, handle: DeploymentHandle, method: str, *args, deadline: float):
        """`handle.<method>.remote(*args)`'s result, asked once more if the replica running
        it dies: a replica's death costs the request latency, not its answer.

        `deadline`: `time.perf_counter()` seconds by which the answer must have come, both
        tries together. Serve re-routes a request by itself only until a replica accepts it;
        one already running on a replica that dies raises RayActorError (ActorDiedError, or
        ActorUnavailableError while Ray cannot yet tell). The second try goes through the
        same handle, whose router has dropped the dead replica: it runs on a live replica or
        waits for the one Serve starts in its place. Raises asyncio.TimeoutError past the
        deadline (the call in flight is cancelled), RayActorError when the second replica
        dies too, and whatever the method raises.
        """
        name = handle.deployment_name
        for attempt in (1, 2):
            response = getattr(handle, method).remote(*args)
            try:
                with self.metrics.calling(name):
                    left = deadline - time.perf_counter()
                    return await asyncio.wait_for(_wait(response), left)
            except asyncio.TimeoutError:
                response.cancel()
                raise
            except RayActorError as e:
                if attempt == 2 or time.perf_counter() >= deadline:
                    raise
                self.metrics.retry(name)
                log.warning("%s.%s: its replica died (%r): asked again", name, method, e)

    async def _alpha(self, deadline: float) -> float:
        """The fusion weight: the `alpha` setting, or when unset the weight the served ranker
        was trained for (0.5 residual, 0 plain), asked of a ranker replica once."""
        if self.cfg.alpha is not None:
            return self.cfg.alpha
        if self._trained_alpha is None:
            asked = await self._ask(self.ranker, "trained_alpha", deadline=deadline)
            self._trained_alpha = float(asked)
        return self._trained_alpha

    async def _rerank(
        self, query: str, codes: list[str], deadline: float
    ) -> tuple[list[float] | None, float, str | None]:
        """(ranker scores, fusion weight, None), or (None, 0.0, why) when the ranker gave no
        answer by `deadline` or `ranker_timeout_s` from now, whichever comes first
        ("timeout"), or failed ("error")."""
        start = time.perf_counter()
        deadline = min(deadline, start + self.cfg.ranker_timeout_s)
        try:
            scores = await self._ask(self.ranker, "score", query, codes, deadline=deadline)
            alpha = await self._alpha(deadline)
        except asyncio.TimeoutError:
            waited = time.perf_counter() - start
            log.warning("ranker gave no answer in %.1f s: retriever-only answer", waited)
            return None, 0.0, "timeout"
        except Exception as e:
            log.warning("ranker failed: %r: retriever-only answer", e)
            return None, 0.0, "error"
        if len(scores) != len(codes):
            log.error("ranker returned %d scores for %d codes", len(scores), len(codes))
            return None, 0.0, "error"
        return scores, alpha, None

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        """The search page (r2ps/serving/web/search.html): a query box over POST /search."""
        return HTMLResponse(search_page())

    @api.get("/healthz")
    async def healthz(self) -> dict:
        """Liveness, plus the counters (requests, pairs reranked, degraded answers, calls
        asked again because their replica died, calls in flight to each deployment)."""
        return {"status": "ok", **self.metrics.counts}

    @api.get("/readyz")
    async def readyz(self):
        """Ready when the retriever answers; the ranker's state is reported beside it, and
        each one's backend, CPU threads, reserved CPUs and warm-up time, and the cascade's
        settings: `rerank_k` 0 means answers are the retriever's alone; `alpha` is the
        setting or, unset, the weight the ranker was trained for (`alpha_from` says which).
        `index`: the index version the retriever serves (`version`, `age_seconds` since it
        was published, `latest_version` on disk: a replica loads it before its next batch)
        and whether an index run is under way (`indexing`)."""
        state: dict = {}
        for name, handle in (("retriever", self.retriever), ("ranker", self.ranker)):
            try:
                state[name] = await asyncio.wait_for(_wait(handle.ready.remote()), 5.0)
            except Exception as e:
                state[name] = {"error": type(e).__name__}
        alpha, alpha_from = self.cfg.alpha, "setting"
        if alpha is None:
            alpha, alpha_from = state["ranker"].get("trained_alpha"), "the ranker's training"
        state["cascade"] = {
            "rerank_k": self.cfg.rerank_k,
            "alpha": alpha,
            "alpha_from": alpha_from,
            "reranking": self.cfg.rerank_k > 0,
            "reason": self.cfg.served_reason,
        }
        state["index"] = state["retriever"].get("index")
        ok = "error" not in state["retriever"]
        return JSONResponse({"ready": ok, **state}, status_code=200 if ok else 503)


# Serve's controller notices a dead replica at its next health check (every 10 s by default)
# and only then starts another; a call asked again (`Cascade._ask`) waits for it within the
# request's deadline, so the model replicas are checked every 2 s.
MODEL_HEALTH_CHECK_PERIOD_S = 2.0


def build_app(cfg: ServeConfig, ranker: serve.Deployment | None = None):
    """The bound application: deployment options (replicas, CPUs, GPUs) from `cfg`.

    `ranker` replaces the Ranker deployment (e.g. a different model class); by default
    the cross encoder above, autoscaled between the configured replica counts.
    """
    gpus = cfg.ranker_gpus if cfg.ranker_gpus >= 0 else float(cluster_has_gpus())
    retriever = Retriever.options(
        ray_actor_options={"num_cpus": cfg.retriever_cpus, "num_gpus": 0},
        max_ongoing_requests=max(8, cfg.retriever_batch_size * 2),
        health_check_period_s=MODEL_HEALTH_CHECK_PERIOD_S,
    )
    if ranker is None:
        ranker = Ranker.options(
            ray_actor_options={"num_cpus": cfg.ranker_cpus, "num_gpus": gpus},
            max_ongoing_requests=cfg.ranker_max_ongoing,
            health_check_period_s=MODEL_HEALTH_CHECK_PERIOD_S,
            autoscaling_config={
                "min_replicas": cfg.ranker_min_replicas,
                "initial_replicas": max(1, cfg.ranker_min_replicas),
                "max_replicas": cfg.ranker_max_replicas,
                "target_ongoing_requests": cfg.ranker_target_ongoing,
            },
        )
    ingress = Cascade.options(ray_actor_options={"num_cpus": cfg.ingress_cpus})
    return ingress.bind(retriever.bind(cfg), ranker.bind(cfg), cfg)
