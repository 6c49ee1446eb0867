"""MCP round trip over stdio: what an agent waits for between calling `search_code` and
reading its answer, on a real index.

Per index folder (`--index`, repeatable; written by `r2ps index` / jobs/index.py):
1. in this process, the search core alone (`Searcher.search`, the same queries, top 10):
   the baseline, what the round trip adds to;
2. `r2ps mcp --index DIR` started as an agent starts it (the SDK's `mcp.Client` over
   stdio): seconds to the handshake, to the first answer (it waits for the model to
   load), then `--runs` passes over the queries, one call at a time: round trip p50 / p99,
   the answer's size in characters (text + structured content), and `index_status`.

The two run one after the other, never together, so they do not share the CPUs.

    python benchmarks/mcp_roundtrip.py --index /tmp/r2ps_repo_search/flask \\
        --index /tmp/r2ps_repo_search/laravel-framework [--runs 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

# Plain-words queries of the kind an agent asks of any code base (no repository's names).
QUERIES = [
    "read a json file",
    "register a url route",
    "handle an exception and return an error response",
    "parse command line arguments",
    "load configuration from environment variables",
    "open a database connection",
    "render a template with context",
    "validate user input",
    "send an http request with a timeout",
    "hash a password",
    "cache the result of a function",
    "log a warning message",
    "serialize an object to a string",
    "check whether a user is authenticated",
    "escape html in a string",
    "start a background job from a queue",
    "compare two version strings",
    "read a file line by line",
    "set a cookie on the response",
    "close resources when the request ends",
]
R2PS = Path(sys.executable).with_name("r2ps")


def stats_ms(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {
        "n": len(ms),
        "p50": round(float(np.percentile(ms, 50)), 2),
        "p99": round(float(np.percentile(ms, 99)), 2),
        "mean": round(float(ms.mean()), 2),
        "max": round(float(ms.max()), 2),
    }


def in_process(folder: Path, runs: int) -> dict:
    """The baseline: the search core in this process, the same calls."""
    from r2ps.search.searcher import Searcher

    t0 = time.perf_counter()
    searcher = Searcher.open(folder)
    load_s = time.perf_counter() - t0
    searcher.search(QUERIES[0], 10)  # warm
    times = []
    for _ in range(runs):
        for q in QUERIES:
            t = time.perf_counter()
            searcher.search(q, 10)
            times.append(time.perf_counter() - t)
    return {
        "load_s": round(load_s, 2),
        "units": len(searcher),
        "retrieval": searcher.mode(None),  # the index's own first stage, as the server's
        "search_ms": stats_ms(times),
    }


async def over_stdio(folder: Path, runs: int) -> dict:
    """`r2ps mcp` in a subprocess, through the SDK's client."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    env = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "HF_HOME") if k in os.environ}
    params = StdioServerParameters(
        command=str(R2PS), args=["mcp", "--index", str(folder)], env=env | {"HF_HUB_OFFLINE": "1"}
    )
    t0 = time.perf_counter()
    async with Client(params) as client:
        connect_s = time.perf_counter() - t0
        first = await client.call_tool("search_code", {"query": QUERIES[0]})
        first_s = time.perf_counter() - t0
        if first.is_error:
            raise RuntimeError(f"{folder}: {first.content[0].text}")
        times, sizes, hits = [], [], []
        for _ in range(runs):
            for q in QUERIES:
                t = time.perf_counter()
                got = await client.call_tool("search_code", {"query": q})
                times.append(time.perf_counter() - t)
                structured = got.structured_content
                sizes.append(len(got.content[0].text) + len(json.dumps(structured)))
                hits.append(len(structured["hits"]))
        status_times = []
        for _ in range(runs):
            t = time.perf_counter()
            status = await client.call_tool("index_status", {})
            status_times.append(time.perf_counter() - t)
    return {
        "connect_s": round(connect_s, 2),
        "first_answer_s": round(first_s, 2),
        "round_trip_ms": stats_ms(times),
        "answer_chars": {"p50": int(np.median(sizes)), "max": int(max(sizes))},
        "hits_per_answer": {"min": min(hits), "max": max(hits)},
        "index_status_ms": stats_ms(status_times),
        "status": status.structured_content,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--index", action="append", required=True, help="an index folder")
    p.add_argument("--runs", type=int, default=10, help="passes over the queries")
    p.add_argument("--out", default="benchmarks/results/mcp_roundtrip.json")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = {"cpus": os.cpu_count(), "queries": len(QUERIES), "runs": args.runs, "indexes": {}}
    for folder in map(Path, args.index):
        base = in_process(folder, args.runs)
        mcp = asyncio.run(over_stdio(folder, args.runs))
        overhead = mcp["round_trip_ms"]["p50"] - base["search_ms"]["p50"]
        report["indexes"][folder.name] = {**base, "mcp": mcp, "overhead_p50_ms": round(overhead, 2)}
    print(f"MCP round trip over stdio, top 10, {len(QUERIES)} queries x {args.runs} runs, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'index':<20}{'units':>7}{'connect s':>11}{'first s':>9}{'search p50':>12}"
          f"{'MCP p50':>9}{'MCP p99':>9}{'chars p50':>11}")  # fmt: skip
    for name, r in report["indexes"].items():
        m = r["mcp"]
        print(f"{name:<20}{r['units']:>7}{m['connect_s']:>11}{m['first_answer_s']:>9}"
              f"{r['search_ms']['p50']:>12}{m['round_trip_ms']['p50']:>9}"
              f"{m['round_trip_ms']['p99']:>9}{m['answer_chars']['p50']:>11}")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
