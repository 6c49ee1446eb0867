"""Train the retriever (dual encoder) on Ray Train + DeepSpeed.

    python jobs/train.py retriever --corpus runs/demo/corpus --out runs/demo/retriever [key=value ...]
    ray job submit --working-dir . -- python jobs/train.py retriever --config configs/retriever.yaml

Without a running cluster this starts a local Ray. Running again with the same
--run-name resumes that run from its latest checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ray

from r2ps.config import parse_config
from r2ps.log import setup_logging
from r2ps.train.config import TrainConfig

KINDS = ("retriever",)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in KINDS:
        print(f"usage: train.py {{{','.join(KINDS)}}} [--help] [options] [key=value ...]")
        return 2
    rest = argv[1:]  # the kind: only the retriever so far
    cfg = parse_config(TrainConfig, rest, description=__doc__)
    setup_logging()
    ray.init(ignore_reinit_error=True)
    from r2ps.train.launch import compare_on_test, train

    summary = train(cfg)
    if cfg.final_test:
        summary["final_test"] = compare_on_test(cfg, summary["exported_model"])
        path = Path(summary["exported_model"]) / "train_summary.json"
        path.write_text(json.dumps(summary, indent=1, default=str))
    keys = ("best_checkpoint", "best_metrics", "exported_model", "final_test")
    print(json.dumps({k: summary[k] for k in keys if k in summary}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
