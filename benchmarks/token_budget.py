"""CPU inference batch size by padded tokens: ranker ms per pair and embedding codes/s.

Claim: on a CPU, closing each inference batch at `CPU_MAX_TOKENS` padded tokens (r2ps's
default there; `r2ps.models.encoder.cpu_token_budget`) is faster than one batch padded
to its longest row: a ranker request of 10 or 60 (query, code) pairs, and code embedding in
length-grouped batches of 64, and a training step's forward and backward (the retriever's
code side, 32 codes; the ranker's 8 groups of 1 + 7 pairs). Every budget runs in this one process, alternating, so the
ratios are not machine drift; 0 = no budget (what r2ps did before).

Inputs: real codes (a split's `codes.parquet`) and the bundled MiniLM (or `--model`), both
encoders' real `score_pairs` / `embed_codes`, with the budget swapped in.

    python benchmarks/token_budget.py --codes runs/demo/pipeline/corpus/test
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

import r2ps.models.encoder as encoder
from r2ps.models.cross import CrossEncoder
from r2ps.models.dual import DualEncoder, tokenize

QUERY = "read a json file and return the parsed object"


def ranker_ms_per_pair(model: CrossEncoder, codes: list[str], per_request: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(codes) - per_request + 1, per_request):
        model.score_pairs([QUERY] * per_request, codes[i : i + per_request], batch_size=64)
    return 1000 * (time.perf_counter() - start) / (len(codes) // per_request * per_request)


def embed_codes_per_s(model: DualEncoder, codes: list[str]) -> float:
    start = time.perf_counter()
    model.embed_codes(codes, batch_size=64)
    return len(codes) / (time.perf_counter() - start)


def retriever_step_codes_per_s(model: DualEncoder, codes: list[str]) -> float:
    """Forward and backward of one training step's code side: 32 codes, in-batch loss."""
    batch = tokenize(model.tokenizer, codes[:32], model.max_code_len)
    start = time.perf_counter()
    emb = model.encode(batch["input_ids"], batch["attention_mask"])
    (emb @ emb.T / 0.05).log_softmax(1).diagonal().sum().neg().backward()
    model.zero_grad()
    return 32 / (time.perf_counter() - start)


def ranker_step_pairs_per_s(model: CrossEncoder, codes: list[str]) -> float:
    """Forward and backward of one ranker step: 8 groups of 1 + 7 pairs, listwise loss."""
    batch = model.tokenize([QUERY] * 64, codes[:64])
    start = time.perf_counter()
    scores = model(**batch).view(8, 8)
    scores.log_softmax(1)[:, 0].sum().neg().backward()
    model.zero_grad()
    return 64 / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--codes", default="runs/demo/pipeline/corpus/test", help="split folder")
    ap.add_argument("--model", default="", help="model dir ('' = bundled MiniLM)")
    ap.add_argument("--n", type=int, default=120, help="codes per measurement")
    ap.add_argument("--budgets", default="0,512,1024,2048")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best is kept")
    ap.add_argument("--out", default="benchmarks/results/token_budget.json")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    model_dir = args.model or encoder.default_model_path()
    texts = pq.read_table(Path(args.codes) / "codes.parquet", columns=["code"])["code"]
    codes = texts.to_pylist()[: args.n]
    cross = CrossEncoder.from_pretrained(model_dir).eval()
    dual = DualEncoder.from_pretrained(model_dir).eval()
    train_dual = DualEncoder.from_pretrained(model_dir).train()  # dropout on, as in training
    train_cross = CrossEncoder.from_pretrained(model_dir).train()
    budgets = [int(b) for b in args.budgets.split(",")]
    cases = {
        "ranker, 10 pairs a request (ms/pair)": lambda: ranker_ms_per_pair(cross, codes, 10),
        "ranker, 60 pairs a request (ms/pair)": lambda: ranker_ms_per_pair(cross, codes, 60),
        "embedding, batches of 64 (codes/s)": lambda: embed_codes_per_s(dual, codes),
        "retriever train step, 32 codes (codes/s)": lambda: retriever_step_codes_per_s(
            train_dual, codes
        ),
        "ranker train step, 64 pairs (pairs/s)": lambda: ranker_step_pairs_per_s(
            train_cross, codes
        ),
    }
    lower_is_better = {name: "ms/pair" in name for name in cases}
    ranker_pairs = cross.tokenize([QUERY] * len(codes), codes)["attention_mask"].sum(1)
    print(f"{len(codes)} codes; ranker pairs: {ranker_pairs.float().mean():.0f} tokens mean, "
          f"{int(ranker_pairs.max())} max; {args.threads} threads")  # fmt: skip
    results: dict[str, dict[int, list[float]]] = {n: {b: [] for b in budgets} for n in cases}
    for name, run in cases.items():
        encoder.CPU_MAX_TOKENS = budgets[0]
        run()  # warm-up
        for _ in range(args.rounds):
            for b in budgets:
                encoder.CPU_MAX_TOKENS = b
                results[name][b].append(run())
    rows = []
    for name, by_budget in results.items():
        pick = min if lower_is_better[name] else max
        best = {b: pick(v) for b, v in by_budget.items()}
        base = best[0] if 0 in best else best[budgets[0]]
        for b, value in best.items():
            speedup = base / value if lower_is_better[name] else value / base
            rows.append(
                {
                    "case": name,
                    "max_tokens": b,
                    "best": round(value, 1),
                    "all": [round(v, 1) for v in by_budget[b]],
                    "speedup_vs_no_budget": round(speedup, 2),
                }
            )
    print(
        "\n| case | max_tokens | best | speedup vs no budget | all rounds |\n|---|---|---|---|---|"
    )
    for r in rows:
        print(f"| {r['case']} | {r['max_tokens'] or 'none'} | {r['best']} | "
              f"{r['speedup_vs_no_budget']}x | {r['all']} |")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {**vars(args), "model": model_dir, "n_codes": len(codes)}
    out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
