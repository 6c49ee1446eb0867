"""What every check of `gpu_check.py` needs: CUDA timing, memory, the device, texts.

`cuda_timed` drains the GPU before and after (kernels run asynchronously), `free_gpu` and
`peak_gpu_mib` give each check its own peak memory, `device_info` is the report's record
of the machine, `load_pairs` the real (query, code) texts the checks run on, and
`single_process_dist_env` the environment `deepspeed.initialize` reads for a world of one
(also used by `train_throughput.py`).
"""

from __future__ import annotations

import gc
import os
import platform
import socket
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import torch

from r2ps.data.corpus_config import CorpusConfig
from r2ps.data.schema import RetrievalSet
from r2ps.data.sources import discover_sources, extract_files
from r2ps.mining.index import gpu_available

DEVICE = "cuda"
DEFAULT_CORPUS = "runs/demo/corpus/train"  # `make demo`'s split; optional


def cuda_timed(fn: Callable[[], object]) -> float:
    """Seconds of `fn()`, with the GPU drained before and after (kernels run async)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def free_gpu() -> None:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def peak_gpu_mib() -> float:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def device_info() -> dict:
    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": torch.cuda.get_device_name(0),
        "gpus": torch.cuda.device_count(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "bf16_supported": torch.cuda.is_bf16_supported(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "faiss": getattr(faiss, "__version__", "?"),
        "faiss_gpu": gpu_available(),
        "python": platform.python_version(),
    }


def load_pairs(corpus: str, n: int) -> tuple[list[str], list[str], dict]:
    """`n` (query, code) pairs of real code, seeded-shuffled; cycled when fewer exist."""
    split = Path(corpus) if corpus else None
    if split is not None and corpus != DEFAULT_CORPUS and not split.exists():
        raise FileNotFoundError(f"--corpus {corpus}: no such split folder")
    if split is not None and (split / "qrels.parquet").exists():
        pairs = RetrievalSet.read(split).pairs()
        source = f"corpus split {split}"
    else:
        files = discover_sources(CorpusConfig(site_packages=False))
        tables, rows = [], 0
        for i in range(0, len(files), 200):  # stop once there are enough pairs
            tables.append(extract_files(files[i : i + 200], CorpusConfig().extract)[0])
            rows += tables[-1].num_rows
            if rows >= n:
                break
        pairs = pa.concat_tables(tables)
        source = "functions of this Python's standard library (no --corpus split found)"
    if pairs.num_rows == 0:
        raise RuntimeError(f"no (query, code) pairs found in {source}")
    order = np.random.default_rng(0).permutation(pairs.num_rows)
    order = np.resize(order, n)  # repeats the shuffled order when n > rows
    queries = pairs["query"].take(pa.array(order)).to_pylist()
    codes = pairs["code"].take(pa.array(order)).to_pylist()
    return queries, codes, {"source": source, "distinct_pairs": pairs.num_rows, "used": n}


def single_process_dist_env() -> None:
    """What `deepspeed.initialize` reads to set up a world of one (Ray Train sets it there)."""
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for key, value in {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
    }.items():
        os.environ.setdefault(key, value)
