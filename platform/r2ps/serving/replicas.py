"""What the deployments (serve/deployments.py) load and run with, besides Ray Serve:

- `pair_chunks` / `count_pairs`: how the ranker batches by (query, code) pairs;
- `staged_config`: the settings with URI inputs copied to the replica's node (what the
  retriever loads is `r2ps.search.searcher.Searcher`);
- `replica_threads`, `warm_up_*`: threads and warm-up of a replica;
- `CascadeMetrics`: the custom metrics (`ray.serve.metrics`) plus local counts that
  `/healthz` reports, so a test or an operator can read them without Prometheus."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from r2ps.log import get_logger
from r2ps.serving.settings import ServeConfig
from r2ps.storage import staged

log = get_logger(__name__)

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
