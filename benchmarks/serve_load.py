"""Load on the Serve cascade endpoint: QPS and latency percentiles per mode, plus a fault test.

N client threads POST /search on loopback for a fixed time, for each mode:
- `retriever`: rerank_k = 0 (dual encoder + faiss only);
- `cascade`: rerank_k = 10 (the paper's K);
- `ce_all`: rerank_k = the whole pool (the cross encoder over every code).
Then the fault test: cascade load again, and partway through the Ranker replica's
process is killed (SIGKILL); it counts failed requests (target 0), degraded answers
(`"reranked": false`, allowed) and the time until answers are reranked again.

The script starts its own local Ray and app (from ServeConfig: the `make demo` models,
or the bundled MiniLM when they are absent) over a small pool of codes, building the
pool's index in the driver first so no embedding runs inside a replica.

    python benchmarks/serve_load.py [--pool 100] [--clients 4] [--seconds 20]

Backend comparison (`backends` with more than one): the same app, models, pool and
queries deployed once per backend (torch, onnx, onnx-int8; ONNX exports made first when
missing), the cascade (K = 10) measured at each of `client_counts`, in `rounds` rounds
whose backend order alternates, so drift in the machine's load hits every backend alike.
Each round redeploys the app; latencies are pooled over the rounds. An entry may carry
serve settings of its own after `+` (`onnx-int8+ranker_pair_budget=5`), so a setting is
compared on the same run too. The first entry is the baseline of the ratio columns.

    python benchmarks/serve_load.py "backends=[torch,onnx,onnx-int8]" "client_counts=[1,8]" \
        serve.retriever=runs/demo/pipeline/retriever serve.ranker=runs/demo/pipeline/ranker_ps \
        --corpus runs/demo/pipeline/corpus/test --out benchmarks/results/serve_backends.json
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import requests

from r2ps.config import from_dict, parse_config
from r2ps.data.schema import codes_file
from r2ps.log import get_logger, setup_logging
from r2ps.mining.corpus_index import ensure_index
from r2ps.mining.embed import EmbedConfig
from r2ps.serving.settings import ServeConfig, resolve_model

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
log = get_logger("serve_load")


@dataclass
class LoadConfig:
    corpus: str = field(default="runs/demo/pipeline/corpus/test", metadata={"help": "split folder"})
    pool: int = field(default=100, metadata={"help": "codes served (<= 100: ce_all mode)"})
    clients: int = 4
    seconds: float = 20.0
    fault_seconds: float = 45.0
    kill_after_s: float = 8.0
    work: str = field(default="runs/bench_serve", metadata={"help": "pool + index folder"})
    out: str = "benchmarks/results/serve_load.json"
    backends: list[str] = field(
        default_factory=lambda: ["torch"],
        metadata={
            "help": "more than one: compare them (cascade K=10 only, no fault test); an "
            "entry may add serve settings: onnx-int8+ranker_pair_budget=5"
        },
    )
    client_counts: list[int] = field(
        default_factory=lambda: [1, 8], metadata={"help": "backend comparison: clients"}
    )
    rounds: int = field(default=2, metadata={"help": "backend comparison: rounds"})
    serve: ServeConfig = field(default_factory=ServeConfig)


def make_pool(cfg: LoadConfig) -> tuple[str, list[str]]:
    """The first `pool` codes of the split, and queries whose gold code is among them."""
    split = Path(cfg.corpus)
    codes = pq.read_table(codes_file(str(split))).slice(0, cfg.pool)
    pool_dir = Path(cfg.work) / "codes"
    pool_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(codes, pool_dir / "codes.parquet")
    ids = set(codes.column("code_id").to_pylist())
    qrels = pq.read_table(split / "qrels.parquet").to_pydict()
    wanted = {q for q, c in zip(qrels["query_id"], qrels["code_id"], strict=True) if c in ids}
    queries = pq.read_table(split / "queries.parquet").to_pydict()
    texts = [t for q, t in zip(queries["query_id"], queries["query"], strict=True) if q in wanted]
    return str(pool_dir), texts or ["read a file"]


def run_load(url: str, body_for, clients: int, seconds: float) -> list[dict]:
    """`clients` threads posting for `seconds`; one record per request."""
    records: list[dict] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(i: int) -> None:
        session = requests.Session()
        n = 0
        while time.perf_counter() < stop:
            start = time.perf_counter()
            rec = {"start": start, "status": 0, "reranked": None, "degraded": False}
            try:
                r = session.post(f"{url}/search", json=body_for(i, n), timeout=120)
                rec["status"] = r.status_code
                if r.ok:
                    answer = r.json()
                    rec["reranked"] = answer["reranked"]
                    rec["degraded"] = answer["degraded_reason"] is not None
            except requests.RequestException as e:
                rec["error"] = type(e).__name__
            rec["end"] = time.perf_counter()
            with lock:
                records.append(rec)
            n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records


def summarise(records: list[dict], seconds: float) -> dict:
    lat = np.array([(r["end"] - r["start"]) * 1e3 for r in records if r["status"] == 200])
    pct = np.percentile(lat, [50, 95, 99]).round(1).tolist() if len(lat) else [None] * 3
    return {
        "requests": len(records),
        "ok": int(len(lat)),
        "errors": sum(r["status"] != 200 for r in records),
        "degraded": sum(r["degraded"] for r in records),
        "qps": round(len(lat) / seconds, 2),
        "p50_ms": pct[0],
        "p95_ms": pct[1],
        "p99_ms": pct[2],
    }


def fault_test(url: str, body_for, cfg: LoadConfig) -> dict:
    """Cascade load; SIGKILL the Ranker replica after `kill_after_s`; time the recovery."""
    from ray import serve

    handle = serve.get_deployment_handle("Ranker", app_name="r2ps")
    pid = handle.stats.remote().result(timeout_s=60)["pid"]
    killed = {}

    def killer() -> None:
        time.sleep(cfg.kill_after_s)
        status = serve.status().applications["r2ps"].deployments["Ranker"]
        killed["replicas"] = sum(status.replica_states.values())
        killed["at"] = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        log.info("killed ranker replica pid %d", pid)

    threading.Thread(target=killer, daemon=True).start()
    records = run_load(url, body_for, cfg.clients, cfg.fault_seconds)
    out = summarise(records, cfg.fault_seconds)
    after = sorted((r for r in records if r["start"] >= killed["at"]), key=lambda r: r["start"])
    back = next((r for r in after if r["reranked"]), None)
    out["killed_pid"] = pid
    out["recovery_s"] = round(back["end"] - killed["at"], 2) if back else None
    out["degraded_after_kill"] = sum(r["degraded"] for r in after)
    out["ranker_replicas_at_kill"] = killed["replicas"]
    return out


def pooled(records: list[list[dict]], seconds: float) -> dict:
    """`summarise` over several runs of `seconds` each, records pooled."""
    out = summarise([r for run in records for r in run], seconds * len(records))
    out["qps_by_round"] = [summarise(run, seconds)["qps"] for run in records]
    return out


def variant(spec: str, scfg: ServeConfig) -> ServeConfig:
    """The settings of one compared row: `backend`, or `backend+key=value+...`."""
    backend, *pairs = spec.split("+")
    if any("=" not in p for p in pairs):
        raise ValueError(f"backends entry {spec!r}: settings after '+' are key=value")
    overrides = dict(p.split("=", 1) for p in pairs)
    return from_dict(ServeConfig, {**asdict(scfg), "backend": backend, **overrides})


def compare_backends(cfg: LoadConfig, scfg: ServeConfig, queries: list[str], port: int) -> dict:
    """Cascade K=10 per backend and client count; rounds alternate the backend order."""
    from ray import serve

    from r2ps.models.onnx_export import ensure_export
    from serve.deployments import build_app

    settings = {spec: variant(spec, scfg) for spec in cfg.backends}
    for s in settings.values():  # exports first, not timed (an entry may name other models)
        if s.backend != "torch":
            ensure_export(resolve_model(s.retriever, "retriever")[0], s.backend)
            ensure_export(resolve_model(s.ranker, "ranker")[0], s.backend)
    url = f"http://127.0.0.1:{port}"

    def body(i, n):
        return {"query": queries[(i * 7919 + n) % len(queries)], "top_k": 10, "rerank_k": 10}

    runs: dict[str, dict[int, list]] = {b: {c: [] for c in cfg.client_counts} for b in cfg.backends}
    info: dict[str, list] = {b: [] for b in cfg.backends}
    for rnd in range(cfg.rounds):
        order = cfg.backends if rnd % 2 == 0 else list(reversed(cfg.backends))
        for backend in order:
            t0 = time.perf_counter()
            app = build_app(settings[backend])
            serve.run(app, name="r2ps", route_prefix="/")
            ready = requests.get(f"{url}/readyz", timeout=60).json()
            info[backend].append({"startup_s": round(time.perf_counter() - t0, 1), **ready})
            # the first request after start (warm-up is done by the replicas themselves)
            start = time.perf_counter()
            requests.post(f"{url}/search", json=body(0, 0), timeout=120).raise_for_status()
            info[backend][-1]["first_request_ms"] = round((time.perf_counter() - start) * 1e3)
            for clients in cfg.client_counts:
                records = run_load(url, body, clients, cfg.seconds)
                runs[backend][clients].append(records)
                log.info("round %d %s %d clients: %s", rnd + 1, backend, clients,
                         summarise(records, cfg.seconds))  # fmt: skip
            serve.delete("r2ps")
    results = {
        b: {str(c): pooled(runs[b][c], cfg.seconds) for c in cfg.client_counts}
        for b in cfg.backends
    }
    base = results[cfg.backends[0]]
    for b in cfg.backends:
        for c in map(str, cfg.client_counts):
            r = results[b][c]
            r["qps_vs_first"] = round(r["qps"] / base[c]["qps"], 2) if base[c]["qps"] else None
            r["p99_vs_first"] = (
                round(r["p99_ms"] / base[c]["p99_ms"], 2) if base[c]["p99_ms"] else None
            )
    return {"results": results, "replicas": info}


def print_comparison(cfg: LoadConfig, report: dict) -> None:
    print(f"\ncascade K=10, pool {cfg.pool} codes, {cfg.seconds:.0f} s x {cfg.rounds} rounds per "
          f"row, {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f})")  # fmt: skip
    print(f"{'backend':<34} {'clients':>7} {'QPS':>6} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
          f"{'QPS x':>6} {'p99 x':>6} {'errors':>6}")  # fmt: skip
    for backend, by_clients in report["results"].items():
        for clients, r in by_clients.items():
            print(f"{backend:<34} {clients:>7} {r['qps']:>6} {r['p50_ms']:>7} {r['p95_ms']:>7} "
                  f"{r['p99_ms']:>7} {r['qps_vs_first']:>6} {r['p99_vs_first']:>6} "
                  f"{r['errors']:>6}")  # fmt: skip


def main() -> None:
    setup_logging()
    cfg = parse_config(LoadConfig, description=__doc__)
    if cfg.pool > 100:
        raise SystemExit("--pool must be <= 100: ce_all reranks the whole pool (rerank_k <= 100)")
    import ray
    from ray import serve

    from serve.deployments import build_app

    pool_dir, queries = make_pool(cfg)
    model, _ = resolve_model(cfg.serve.retriever, "retriever")
    scfg = ServeConfig(
        **{
            **asdict(cfg.serve),
            "retriever": model,
            "codes": pool_dir,
            "embed_out": cfg.work,
            "index": cfg.serve.index,
        }
    )
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ensure_index(EmbedConfig(model=model, codes=pool_dir, out=cfg.work, index=scfg.index))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    if len(cfg.backends) > 1:
        report = compare_backends(cfg, scfg, queries, port)
        serve.shutdown()
        ray.shutdown()
        print_comparison(cfg, report)
        out = Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"settings": asdict(cfg), "cpus": os.cpu_count(),
                                   "load_avg_1m_at_end": round(os.getloadavg()[0], 1),
                                   **report}, indent=1) + "\n")  # fmt: skip
        print(f"wrote {out}")
        return
    scfg = variant(cfg.backends[0], scfg)
    t0 = time.perf_counter()
    serve.run(build_app(scfg), name="r2ps", route_prefix="/")
    startup = time.perf_counter() - t0
    url = f"http://127.0.0.1:{port}"
    modes = {"retriever": 0, "cascade": 10, "ce_all": cfg.pool}
    results = {}
    for mode, k in modes.items():

        def body(i, n, k=k):
            return {"query": queries[(i * 7919 + n) % len(queries)], "top_k": 10, "rerank_k": k}

        run_load(url, body, 1, 2.0)  # warm-up: first batches load kernels and caches
        results[mode] = {
            "rerank_k": k,
            **summarise(run_load(url, body, cfg.clients, cfg.seconds), cfg.seconds),
        }
        log.info("%s: %s", mode, results[mode])

    def cascade_body(i, n):
        return {"query": queries[(i * 7919 + n) % len(queries)], "top_k": 10, "rerank_k": 10}

    fault = fault_test(url, cascade_body, cfg)
    serve.shutdown()
    ray.shutdown()

    print(f"\npool {cfg.pool} codes, {cfg.clients} clients x {cfg.seconds:.0f} s per mode, "
          f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}: other work "
          f"shares the machine); app start {startup:.1f} s")  # fmt: skip
    print(
        f"{'mode':<10} {'K':>4} {'QPS':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6} {'degraded':>8}"
    )
    for mode, r in results.items():
        print(f"{mode:<10} {r['rerank_k']:>4} {r['qps']:>7} {r['p50_ms']:>8} {r['p95_ms']:>8} "
              f"{r['p99_ms']:>8} {r['errors']:>6} {r['degraded']:>8}")  # fmt: skip
    print(f"fault: ranker pid {fault['killed_pid']} killed at {cfg.kill_after_s:.0f} s of "
          f"{cfg.fault_seconds:.0f} s; {fault['requests']} requests, {fault['errors']} failed, "
          f"{fault['degraded_after_kill']} degraded after the kill "
          f"({fault['ranker_replicas_at_kill']} ranker replica(s) before it), reranked again after "
          f"{fault['recovery_s']} s")  # fmt: skip
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "settings": asdict(cfg),
        "cpus": os.cpu_count(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 1),
        "startup_s": round(startup, 1),
        "modes": results,
        "fault": fault,
    }
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
