"""The one training loop, run by every Ray Train worker (nanoGPT-style: short and direct).

What differs between the retriever and the ranker lives in a `Task` (how a batch becomes
a loss, how the model is evaluated and exported); everything else is here: DeepSpeed
set-up, the learning-rate schedule, resuming from a checkpoint, periodic validation,
progress logging and `ray.train.report`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    import ray.data

from r2ps.config import from_dict
from r2ps.log import get_logger, setup_logging
from r2ps.storage import on_this_node
from r2ps.train.config import TrainConfig

log = get_logger(__name__)

STATE_FILE = "r2ps_state.json"
DS_DIR = "deepspeed"
HF_DIR = "hf"
DS_TAG = "r2ps"
# The metric the best checkpoint is chosen by: the task's `selects_on` (valid MRR), except at
# a task's starting point when that is no model of its own (see Task.start_is_candidate).
DATA_CPUS = 0.5  # logical CPUs training leaves free for the Ray Data tasks feeding it
SELECTION = (
    "selection_mrr"  # not "latest": DeepSpeed writes a file of that name beside the tag folder
)


class Task:
    """The parts of training that depend on which encoder is trained: the contract between
    the shared loop (here and launch.py) and `RetrieverTask` / `RankerTask`.

    A task must say how its rows are made (`dataset`), how a model is built, how a batch
    becomes a loss, how a model is validated and exported. The other hooks have defaults
    that do nothing; a task overrides the ones it needs. Tasks travel to every worker
    (pickled), so they hold settings and caches, never live models.
    """

    # Whether the model before the first step may be exported as the best: False for a
    # model whose start is no model of its own (a fresh ranker head scores at random).
    start_is_candidate: bool = True
    # The validation metric the best checkpoint is chosen by (the loop's SELECTION).
    selects_on: str = "valid_mrr"
    # What one training row is, for the throughput the loop logs and reports
    # (`<rows>_per_s`): a (query, code) pair for the retriever, a query's group for a ranker.
    rows: str = "pairs"

    def dataset(self, cfg: TrainConfig) -> tuple[ray.data.Dataset, int]:
        """The training rows as a Ray Dataset (on the driver), and how many there are."""
        raise NotImplementedError

    def build_model(self, cfg: TrainConfig) -> nn.Module:
        raise NotImplementedError

    def loss(self, engine: Any, batch: Any, cfg: TrainConfig) -> torch.Tensor:
        """The loss of one batch (or of what `prepare` made of it)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, cfg: TrainConfig) -> dict[str, float]:
        """Validation metrics; `valid_mrr` (or the task's SELECTION) picks the best."""
        raise NotImplementedError

    def export(self, model: nn.Module, directory: Path) -> None:
        raise NotImplementedError

    def prepare(self, batch: dict[str, Any], cfg: TrainConfig) -> Any:
        """The CPU part of a step (tokenising). A task that overrides it has it run one
        batch ahead in a background thread; `loss` then receives what it returned."""
        return batch

    def set_epoch(self, epoch: int) -> None:
        """Called on every worker before each epoch, for data that changes per epoch."""

    def worker_inputs(self, cfg: TrainConfig) -> list[str]:
        """More paths the workers read, found through the config's (staged on each node)."""
        return []

    def after_export(self, cfg: TrainConfig, directory: Path) -> dict:
        """Run on the driver once the best model is exported to `directory`, to finish it
        (the retriever's WiSE-FT); what it returns joins train_summary.json."""
        return {}

    def report(self, cfg: TrainConfig, directory: Path) -> dict:
        """Run once the finished model and its train_summary.json are written: what it
        returns (the retriever's test comparison) is added to the summary. A failure here
        keeps the model and its summary."""
        return {}

    def data_summary(self) -> dict:
        """What the dataset left out and why, for train_summary.json ({}: nothing)."""
        return {}

    def param_groups(self, model: nn.Module, cfg: TrainConfig) -> list[dict]:
        """The optimizer's parameter groups: by default one, at `cfg.lr`."""
        return [{"params": list(model.parameters())}]


def overrides(task: Task, hook: str) -> bool:
    """Whether `task`'s class overrides `hook` of the base Task."""
    return getattr(type(task), hook) is not getattr(Task, hook)


def deepspeed_config(cfg: TrainConfig, use_cuda: bool) -> dict:
    if cfg.zero_stage not in (0, 1, 2):
        raise ValueError(f"zero_stage must be 0, 1 or 2, got {cfg.zero_stage}")
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        # bf16 on GPUs; fp32 on CPUs, where bf16 is ~9x slower on AVX2 cores.
        "bf16": {"enabled": use_cuda},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int):
    """Linear warm-up to the peak rate, then linear decay to zero (METHOD.md section 1)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_engine(
    model: nn.Module,
    cfg: TrainConfig,
    total_steps: int,
    use_cuda: bool,
    groups: list[dict],
):
    """The DeepSpeed engine the loop trains with: AdamW over `groups` (the task's
    `param_groups`), warm-up then linear decay over `total_steps`, `deepspeed_config`.
    The benchmarks build theirs here too, so what they time is the loop's engine.
    Returns (engine, scheduler)."""
    deepspeed = _import_deepspeed()
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = linear_schedule(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(cfg, use_cuda),
    )
    return engine, scheduler


def _import_deepspeed():
    import deepspeed

    # The shared-memory comm op compiles for 30-85 s on CPU and gloo does not need it.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


def train_loop(config: dict) -> None:
    """Ray Train entry point: `config` holds the TrainConfig, the Task and the step count.

    The run's input paths are made present on this worker's node first: a job staged
    their URIs on the driver's node, and a worker elsewhere needs its own copy.
    """
    setup_logging()
    cfg: TrainConfig = from_dict(config["config_type"], config["train"])
    task: Task = config["task"]
    with contextlib.ExitStack() as stack:
        stack.enter_context(on_this_node(*(getattr(cfg, name) for name in cfg.INPUT_PATHS)))
        stack.enter_context(on_this_node(*task.worker_inputs(cfg)))  # found through the above
        run(cfg, task, config["steps_per_epoch"])


def run(cfg: TrainConfig, task: Task, steps_per_epoch: int) -> None:
    """The training loop of one worker."""
    # imported here, not at the top: the step's pieces above (deepspeed_config,
    # build_engine, linear_schedule) also run without Ray (benchmarks/gpu_check.py)
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    use_cuda = torch.cuda.is_available() and cfg.use_gpu is not False
    if not use_cuda:
        torch.set_num_threads(cfg.threads_per_worker)
    torch.manual_seed(cfg.seed)
    _import_deepspeed()  # imported before the model is built, as it always was

    model = task.build_model(cfg)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    engine, scheduler = build_engine(
        model, cfg, total_steps, use_cuda, task.param_groups(model, cfg)
    )

    state = {"epoch": 0, "step": 0, "step_in_epoch": 0, "best_valid_mrr": -1.0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            engine.load_checkpoint(str(Path(d) / DS_DIR), tag=DS_TAG)
            state = json.loads((Path(d) / STATE_FILE).read_text())
        log.info("rank %d resumed at epoch %d, step %d", rank, state["epoch"], state["step"])

    def report(metrics: dict[str, float]) -> None:
        """Validation metrics + a checkpoint: every rank saves its DeepSpeed shard.

        The state file carries every report so far (`history`): Ray Train keeps only the
        metrics of the checkpoints it retains, and a resumed run must not lose the curve.
        """
        row = {**metrics, **{k: state[k] for k in ("epoch", "step")}}
        state.setdefault("history", []).append(row)
        with tempfile.TemporaryDirectory() as tmp:
            engine.save_checkpoint(str(Path(tmp) / DS_DIR), tag=DS_TAG)
            if rank == 0:
                task.export(engine.module, Path(tmp) / HF_DIR)
                (Path(tmp) / STATE_FILE).write_text(json.dumps(state))
            ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def validate() -> dict[str, float]:
        metrics = task.evaluate(engine.module, cfg)
        metrics[SELECTION] = metrics.get(task.selects_on, -1.0)
        state["best_valid_mrr"] = max(state["best_valid_mrr"], metrics.get("valid_mrr", -1.0))
        if rank == 0:
            log.info("step %d: %s", state["step"], _fmt(metrics))
        return metrics

    reported_at = -1
    if checkpoint is None:
        start = validate()
        if not task.start_is_candidate:
            start[SELECTION] = -1.0  # reported and kept for resume, never exported as best
        report(start)
        reported_at = 0  # the starting point, so every run shows what it improved on

    # Dropout on for every step, whatever came before: validation restores the mode it
    # found, and a run that resumes from a checkpoint skips the start's validation.
    engine.train()
    shard = ray.train.get_dataset_shard("train")
    tick, seen, last_loss = time.time(), 0, float("nan")
    while state["epoch"] < cfg.epochs and state["step"] < total_steps:
        task.set_epoch(state["epoch"])
        batches = shard.iter_batches(
            batch_size=cfg.batch_size,
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=cfg.batch_size * 8,
            local_shuffle_seed=cfg.seed + state["epoch"],
        )
        # resuming mid-epoch: skip what the checkpoint already covered
        skip = state["step_in_epoch"]
        batches = itertools.islice(batches, skip, None)
        if overrides(task, "prepare"):  # CPU work of the next step overlaps this one
            batches = prefetched(batches, functools.partial(task.prepare, cfg=cfg))
        for i, batch in enumerate(batches, start=skip):
            if state["step"] >= total_steps:
                break
            loss = task.loss(engine, batch, cfg)
            engine.backward(loss)
            engine.step()
            last_loss = loss.item()
            state["step"] += 1
            state["step_in_epoch"] = i + 1
            seen += cfg.batch_size * world
            if rank == 0 and state["step"] % cfg.log_every_steps == 0:
                rate = seen / (time.time() - tick)
                eta = (total_steps - state["step"]) * cfg.batch_size * world / max(rate, 1e-9)
                log.info(
                    "epoch %d step %d/%d loss %.4f lr %.2e %.1f %s/s eta %s",
                    state["epoch"],
                    state["step"],
                    total_steps,
                    last_loss,
                    scheduler.get_last_lr()[0],
                    rate,
                    task.rows,
                    _hms(eta),
                )
            if cfg.eval_every_steps and state["step"] % cfg.eval_every_steps == 0:
                rate = seen / (time.time() - tick)  # before validation, which is not training
                report({**validate(), "train_loss": last_loss, f"{task.rows}_per_s": rate})
                reported_at = state["step"]
                tick, seen = time.time(), 0
        state["epoch"] += 1
        state["step_in_epoch"] = 0
        if reported_at != state["step"]:  # not twice for the same weights
            rate = seen / max(time.time() - tick, 1e-9)
            report({**validate(), "train_loss": last_loss, f"{task.rows}_per_s": rate})
        tick, seen = time.time(), 0


def prefetched(items: Iterable[Any], prepare: Callable[[Any], Any]) -> Iterator[Any]:
    """`prepare(item)` for each item, the next one computed in a background thread while
    the caller works on the current one.

    The ranker builds and tokenises its (query, code) groups here: on a GPU that CPU work
    was 60-67% of the step when it ran inside it. Tokenisers release the GIL, so the two
    overlap; on a CPU-only machine the step is compute-bound and this changes little.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare") as pool:
        pending = None
        for item in items:
            ahead = pool.submit(prepare, item)
            if pending is not None:
                yield pending.result()
            pending = ahead
        if pending is not None:
            yield pending.result()


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def config_for_workers(cfg: TrainConfig, task: Task, steps_per_epoch: int) -> dict:
    return {
        "train": asdict(cfg),
        "config_type": type(cfg),  # RetrieverConfig or RankerConfig
        "task": task,
        "steps_per_epoch": steps_per_epoch,
    }
