"""Evaluate BM25, the untrained encoder, the retriever and the rankers' cascades; time them.

    python jobs/evaluate.py --cosqa ../shared/data/cosqa
    python jobs/evaluate.py --split runs/demo/corpus/test --valid runs/demo/corpus/valid \
        --retriever runs/demo/retriever --rr runs/demo/ranker_rr --rr-ps runs/demo/ranker
    python jobs/evaluate.py --config eval.yaml max_queries=0 pool_sizes=1000,10000

A missing model is skipped with a warning (listed in the results). The fusion weight is
chosen on --valid only. Writes <out>/results.json, results.md and results.png.
"""

from __future__ import annotations

import sys

from r2ps.config import parse_config
from r2ps.evaluate import EvalConfig, evaluate, markdown
from r2ps.log import setup_logging


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(EvalConfig, argv, description=__doc__)
    setup_logging()
    report = evaluate(cfg)
    print(markdown(report))
    for kind, path in report["files"].items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
