"""`gpu_check.py`'s training checks: the retriever's and the ranker's DeepSpeed steps.

Each runs r2ps's own training step (the task's model, loss and optimizer groups,
`deepspeed_config`, bf16 on CUDA) under a single-process `deepspeed.initialize`, without
Ray, and returns pairs/s of the timed steps (warm-up steps excluded) with the settings
and losses that say what was timed.
"""

from __future__ import annotations

import time

import pyarrow as pa
import torch
from gpu_setup import cuda_timed, peak_gpu_mib, single_process_dist_env

from r2ps.models.cross import CrossEncoder
from r2ps.models.cross import tokenize_pairs as tokenize_ranker_pairs
from r2ps.models.encoder import default_model_path, load_tokenizer
from r2ps.train.config import RankerConfig, RetrieverConfig
from r2ps.train.loop import build_engine, deepspeed_config, prefetched
from r2ps.train.losses import listwise_ce
from r2ps.train.ranker import RankerTask
from r2ps.train.retriever import RetrieverTask, group_keys, model_path, tokenize_pairs

# ------------------------------------------------------------------ 1. the retriever's step


def check_train(queries: list[str], codes: list[str], args) -> dict:
    """Pairs/s of the retriever's DeepSpeed step (bf16 on CUDA), warm-up steps excluded."""
    cfg = RetrieverConfig(
        batch_size=args.train_batch, max_train_pairs=0, use_gpu=True, model=args.model
    )
    steps = args.train_warmup + args.train_steps
    n = steps * cfg.batch_size
    table = pa.table(
        {
            "query": queries[:n],
            "code": codes[:n],
            "group": group_keys(queries[:n], codes[:n]),  # texts stand in for ids
        }
    )
    tokens = tokenize_pairs(
        table, load_tokenizer(model_path(cfg)), cfg.max_query_len, cfg.max_code_len
    )
    batches = []
    for i in range(steps):
        part = tokens.slice(i * cfg.batch_size, cfg.batch_size)
        batches.append({c: part[c].to_numpy(zero_copy_only=False) for c in part.column_names})

    single_process_dist_env()
    torch.manual_seed(cfg.seed)
    task = RetrieverTask()
    model = task.build_model(cfg)
    engine, _ = build_engine(model, cfg, steps, True, task.param_groups(model, cfg))
    losses: list[float] = []

    def run(part: list[dict]) -> None:
        for batch in part:  # the loop's step: loss, backward, step, loss.item()
            loss = task.loss(engine, batch, cfg)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())

    warm_s = cuda_timed(lambda: run(batches[: args.train_warmup]))
    seconds = cuda_timed(lambda: run(batches[args.train_warmup :]))
    q_tokens = sum(len(x) for b in batches for x in b["q_ids"]) / n
    c_tokens = sum(len(x) for b in batches for x in b["c_ids"]) / n
    out = {
        "pairs_per_s": args.train_steps * cfg.batch_size / seconds,
        "step_ms": 1000 * seconds / args.train_steps,
        "batch_size": cfg.batch_size,
        "timed_steps": args.train_steps,
        "warmup_steps": args.train_warmup,
        "warmup_s": warm_s,
        "max_query_len": cfg.max_query_len,
        "max_code_len": cfg.max_code_len,
        "mean_query_tokens": q_tokens,
        "mean_code_tokens": c_tokens,
        "bf16": deepspeed_config(cfg, use_cuda=True)["bf16"]["enabled"],
        "zero_stage": cfg.zero_stage,
        "engine_dtype": str(next(engine.module.parameters()).dtype),
        "optimizer": type(engine.optimizer).__name__,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "peak_gpu_mib": peak_gpu_mib(),
    }
    return out  # the engine is freed with this frame; free_gpu() collects it


# ------------------------------------------------------------------ 1b. the ranker's step


def check_ranker_train(queries: list[str], codes: list[str], args) -> dict:
    """Pairs/s of the ranker's DeepSpeed step (bf16 on CUDA): groups of 1 positive + m
    negatives scored by the cross encoder, listwise loss, as `RankerTask.loss` does it;
    tokenising inside the step, then prepared a step ahead in a thread (the loop's way)."""
    cfg = RankerConfig(
        batch_size=args.ranker_train_groups,
        num_negatives=args.ranker_train_m,
        max_pair_len=args.ranker_train_len,
        use_gpu=True,
        model=args.model,
    )
    size = cfg.num_negatives + 1
    steps = args.train_warmup + args.train_steps

    def groups(step: int) -> tuple[list[str], list[str]]:
        qs, cs = [], []
        for g in range(cfg.batch_size):
            i = step * cfg.batch_size + g
            qs += [queries[i % len(queries)]] * size
            cs += [codes[(i + j * 7919) % len(codes)] for j in range(size)]  # j = 0: the positive
        return qs, cs

    single_process_dist_env()
    torch.manual_seed(cfg.seed)
    model = CrossEncoder.from_pretrained(
        args.model or default_model_path(),
        max_query_len=cfg.max_query_len,
        max_len=cfg.max_pair_len,
    )
    head_groups = RankerTask().param_groups(model, cfg)  # the head at head_lr, as the loop
    engine, _ = build_engine(model, cfg, steps + args.train_steps, True, head_groups)
    losses: list[float] = []
    tokenize_s = [0.0]

    def tokenized(step: int) -> dict:
        qs, cs = groups(step)
        start = time.perf_counter()
        inputs = tokenize_ranker_pairs(
            engine.module.tokenizer, qs, cs, cfg.max_query_len, cfg.max_pair_len
        )
        tokenize_s[0] += time.perf_counter() - start
        return inputs

    def run(first: int, last: int, ahead: bool = False) -> None:
        """The steps with tokenising inside each, or (`ahead`) one step ahead in a thread
        as the training loop runs the ranker's (loop.prefetched)."""
        steps = range(first, last)
        for inputs in prefetched(steps, tokenized) if ahead else map(tokenized, steps):
            scores = engine(**{k: v.to(engine.device) for k, v in inputs.items()})
            loss = listwise_ce(scores.view(-1, size), cfg.ranker_scale)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())

    warm_s = cuda_timed(lambda: run(0, args.train_warmup))
    tokenize_s[0] = 0.0
    seconds = cuda_timed(lambda: run(args.train_warmup, steps))
    in_step_tokenize_s = tokenize_s[0]
    ahead_s = cuda_timed(lambda: run(steps, steps + args.train_steps, ahead=True))
    pairs = args.train_steps * cfg.batch_size * size
    return {
        "pairs_per_s": pairs / ahead_s,
        "pairs_per_s_tokenising_in_step": pairs / seconds,
        "groups_per_s": args.train_steps * cfg.batch_size / ahead_s,
        "step_ms": 1000 * ahead_s / args.train_steps,
        "step_ms_tokenising_in_step": 1000 * seconds / args.train_steps,
        "tokenize_share": in_step_tokenize_s / seconds,
        "groups_per_step": cfg.batch_size,
        "group_size": size,
        "max_pair_len": cfg.max_pair_len,
        "max_query_len": cfg.max_query_len,
        "timed_steps": args.train_steps,
        "warmup_s": warm_s,
        "bf16": deepspeed_config(cfg, use_cuda=True)["bf16"]["enabled"],
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "peak_gpu_mib": peak_gpu_mib(),
    }
