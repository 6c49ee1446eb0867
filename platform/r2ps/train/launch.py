"""Launch a training run on Ray Train: datasets, TorchTrainer, checkpoints, resume.

The run is named (`run_name`) and stored under `storage`: running the same command
again with the same name resumes the stored run from its latest checkpoint, and a worker
that dies mid-run makes Ray Train restart the worker group from that checkpoint
(`max_failures` times). After the run, the best checkpoint by validation MRR is exported
in Hugging Face format to `out` and named in `out/train_summary.json`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import ray
import torch
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from r2ps.config import to_dict
from r2ps.log import get_logger
from r2ps.train.config import TrainConfig
from r2ps.train.loop import HF_DIR, config_for_workers, train_loop
from r2ps.train.retriever import RetrieverTask, model_path, tokenize_pairs, training_pairs

log = get_logger(__name__)

SCORE = "valid_mrr"


def retriever_dataset(cfg: TrainConfig) -> tuple[ray.data.Dataset, int]:
    """The train pairs as a Ray Dataset, tokenised in the stream; and its row count."""
    pairs = training_pairs(cfg)
    blocks = max(cfg.num_workers * 4, pairs.num_rows // 2048, 1)
    ds = ray.data.from_arrow(pairs).repartition(blocks)  # one Arrow table is one block
    ds = ds.map_batches(
        tokenize_pairs,
        fn_kwargs={
            "model_path": model_path(cfg),
            "max_query_len": cfg.max_query_len,
            "max_code_len": cfg.max_code_len,
        },
        batch_size=512,
        batch_format="pyarrow",
        num_cpus=0.5,  # a fraction, or the training workers starve the tokenisers
    )
    return ds, pairs.num_rows


def make_trainer(cfg: TrainConfig, task: RetrieverTask | None = None) -> TorchTrainer:
    use_gpu = torch.cuda.is_available() if cfg.use_gpu is None else cfg.use_gpu
    ds, n_pairs = retriever_dataset(cfg)
    steps_per_epoch = n_pairs // (cfg.batch_size * cfg.num_workers)
    if steps_per_epoch == 0:
        raise ValueError(
            f"{n_pairs} training pairs make no full step of {cfg.num_workers} x {cfg.batch_size}"
        )
    resources = {"GPU": 1, "CPU": 1} if use_gpu else {"CPU": 1}
    return TorchTrainer(
        train_loop,
        train_loop_config=config_for_workers(cfg, task or RetrieverTask(), steps_per_epoch),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=_storage(cfg.storage),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=SCORE, checkpoint_score_order="max"
            ),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
        ),
        datasets={"train": ds},
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )


def _storage(storage: str) -> str:
    """Ray Train wants an absolute path or a URI (s3://, gs://, ...)."""
    return storage if "://" in storage else str(Path(storage).resolve())


def train(cfg: TrainConfig, task: RetrieverTask | None = None) -> dict:
    """Fit, export the best checkpoint's model to `cfg.out`, return the summary.

    `task` replaces the default RetrieverTask (tests use it to inject failures).
    """
    start = time.time()
    result = make_trainer(cfg, task).fit()
    best = result.get_best_checkpoint(metric=SCORE, mode="max")
    if best is None:
        raise RuntimeError(f"run {cfg.run_name} reported no checkpoint")
    out = Path(cfg.out)
    with best.as_directory() as d:
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(Path(d) / HF_DIR, out)
    history = result.metrics_dataframe
    best_metrics = next(m for c, m in result.best_checkpoints if c.path == best.path)
    summary = {
        "run_name": cfg.run_name,
        "best_checkpoint": best.path,
        "best_metrics": best_metrics,
        "exported_model": str(out),
        "history": history.to_dict(orient="records") if history is not None else [],
        "seconds": time.time() - start,
        "config": to_dict(cfg),
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    log.info(
        "best checkpoint %s (%s=%.4f) exported to %s", best.path, SCORE, best_metrics[SCORE], out
    )
    return summary


def compare_on_test(cfg: TrainConfig, trained: str) -> dict:
    """The starting model against the trained one on the corpus test split (and CoSQA).

    Run once after training, on held-out packages no checkpoint was chosen on.
    """
    from r2ps.data.readers import read_cosqa
    from r2ps.data.schema import RetrievalSet
    from r2ps.models.dual import DualEncoder
    from r2ps.train.retriever import evaluate_retriever

    sets = {"test": RetrievalSet.read(Path(cfg.corpus) / "test")}
    if cfg.eval_cosqa:
        sets["cosqa"] = read_cosqa(cfg.eval_cosqa)
    torch.set_num_threads(cfg.threads_per_worker)
    out: dict[str, dict] = {}
    for name, path in (("start", model_path(cfg)), ("trained", trained)):
        model = DualEncoder.from_pretrained(
            path, max_query_len=cfg.max_query_len, max_code_len=cfg.max_code_len
        )
        for split, rset in sets.items():
            out[f"{name}/{split}"] = evaluate_retriever(model, rset, 0, cfg.eval_batch_size)
            log.info("%s on %s: %s", name, split, out[f"{name}/{split}"])
    return out
