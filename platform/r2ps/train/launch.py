"""Launch a training run on Ray Train: datasets, TorchTrainer, checkpoints, resume.

The run is named (`run_name`) and stored under `storage`: running the same command
again with the same name resumes the stored run from its latest checkpoint, and a worker
that dies mid-run makes Ray Train restart the worker group from that checkpoint
(`max_failures` times). After the run, the best checkpoint by validation MRR is exported
in Hugging Face format to `out` and named in `out/train_summary.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import ray
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from r2ps.config import to_dict
from r2ps.data.schema import TRAIN_SUMMARY
from r2ps.log import get_logger
from r2ps.resources import cluster_has_gpus
from r2ps.storage import write_text_atomic
from r2ps.train.config import TrainConfig
from r2ps.train.loop import (
    DATA_CPUS,
    HF_DIR,
    SELECTION,
    STATE_FILE,
    Task,
    config_for_workers,
    train_loop,
)
from r2ps.train.retriever import (
    RetrieverTask,
)

log = get_logger(__name__)

SCORE = SELECTION  # valid MRR; a fresh ranker head's start is excluded


def worker_resources(cfg: TrainConfig, use_gpu: bool) -> dict[str, float]:
    """What each training worker reserves.

    On a CPU-only cluster, workers that reserve every CPU starve the tokenising tasks
    (fractional `num_cpus`) and the run hangs waiting for its first batch; so by default
    workers share what is left after `DATA_CPUS`. The reservation is logical: the
    threads a worker really runs are `threads_per_worker`.
    """
    if use_gpu:
        return {"GPU": 1, "CPU": 1}
    if cfg.cpus_per_worker:
        return {"CPU": cfg.cpus_per_worker}
    total = ray.cluster_resources().get("CPU", float(cfg.num_workers))
    return {"CPU": max(0.1, min(1.0, (total - DATA_CPUS) / cfg.num_workers))}


def resolve_paths(cfg: TrainConfig) -> TrainConfig:
    """Absolute local paths: Ray Train workers do not run in the driver's directory."""

    def fix(p: str) -> str:
        return p if not p or "://" in p else str(Path(p).resolve())

    names = (*cfg.INPUT_PATHS, "storage")
    return dataclasses.replace(cfg, **{name: fix(getattr(cfg, name)) for name in names})


def worker_env() -> dict[str, str]:
    """Environment of the training workers: one malloc arena unless the user set one.

    Ray Train runs the training loop in a second thread of the worker process, and glibc
    gives a second thread its own malloc arena: heaps it maps and unmaps as the step's
    activation tensors come and go, so every step page-faults its memory in again. Timed
    here (benchmarks/train_throughput.py's plain loop, 2 threads, MiniLM, batch 32): the
    same loop ran 17-21% slower in a second thread than in the main thread of one process
    (3.9 vs 4.7-4.9 pairs/s, 1.2M vs 0.5-0.9M minor faults a step); with
    MALLOC_ARENA_MAX=1 both ran at 4.8. That was the whole of the "Ray overhead".
    """
    return {"MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "1")}


def make_trainer(cfg: TrainConfig, task: Task | None = None) -> TorchTrainer:
    cfg = resolve_paths(cfg)
    task = task or RetrieverTask()
    use_gpu = cluster_has_gpus() if cfg.use_gpu is None else cfg.use_gpu
    ds, n_pairs = task.dataset(cfg)
    steps_per_epoch = n_pairs // (cfg.batch_size * cfg.num_workers)
    if steps_per_epoch == 0:
        raise ValueError(
            f"{n_pairs} training pairs make no full step of {cfg.num_workers} x {cfg.batch_size}"
        )
    resources = worker_resources(cfg, use_gpu)
    return TorchTrainer(
        train_loop,
        train_loop_config=config_for_workers(cfg, task, steps_per_epoch),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=cfg.storage,
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=SCORE, checkpoint_score_order="max"
            ),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            worker_runtime_env={"env_vars": worker_env()},  # merged into the job's
        ),
        datasets={"train": ds},
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )


def train(cfg: TrainConfig, task: Task | None = None) -> dict:
    """Fit, export the best checkpoint's model to `cfg.out`, return the summary.

    `task` replaces the default RetrieverTask (the ranker's task; tests use it to inject
    failures). A task's `data_summary()` (rows it could not use, and why) joins the summary.
    """
    start = time.time()
    task = task or RetrieverTask()
    result = make_trainer(cfg, task).fit()
    best = result.get_best_checkpoint(metric=SCORE, mode="max")
    if best is None:
        raise RuntimeError(f"run {cfg.run_name} reported no checkpoint")
    out = Path(cfg.out)
    with best.as_directory() as d:
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(Path(d) / HF_DIR, out)
    extra = task.after_export(cfg, out)  # finishes the model: the retriever's WiSE-FT
    best_metrics = next(m for c, m in result.best_checkpoints if c.path == best.path)
    summary = {
        "run_name": cfg.run_name,
        "best_checkpoint": best.path,
        "best_metrics": best_metrics,
        "exported_model": str(out),
        "history": run_history(result.checkpoint),
        "seconds": time.time() - start,
        "config": to_dict(cfg),
    }
    if task.data_summary():
        summary["data"] = task.data_summary()
    summary.update(extra)
    write_text_atomic(out / TRAIN_SUMMARY, json.dumps(summary, indent=1, default=str))
    log.info(
        "best checkpoint %s (%s=%.4f) exported to %s", best.path, SCORE, best_metrics[SCORE], out
    )
    # then what only reports on the model (the retriever's test comparison): the model and
    # its summary are on disk already, whatever happens to it
    if more := task.report(cfg, out):
        summary.update(more)
        write_text_atomic(out / TRAIN_SUMMARY, json.dumps(summary, indent=1, default=str))
    return summary


def run_history(latest: ray.train.Checkpoint | None) -> list[dict]:
    """Every report of the run, in order, from the latest checkpoint's state file."""
    if latest is None:
        return []
    with latest.as_directory() as d:
        state = json.loads((Path(d) / STATE_FILE).read_text())
    return state.get("history", [])
