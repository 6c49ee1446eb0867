"""Evaluate BM25, the untrained encoder, the retriever and the rankers' cascades; time them.

    python jobs/evaluate.py --cosqa ../shared/data/cosqa
    python jobs/evaluate.py --split runs/demo/corpus/test --valid runs/demo/corpus/valid \
        --retriever runs/demo/retriever --rr runs/demo/ranker_rr --rr-ps runs/demo/ranker
    python jobs/evaluate.py --config eval.yaml max_queries=0 pool_sizes=1000,10000

A missing model is skipped with a warning (listed in the results). The fusion weight is
chosen on --valid only. Writes <out>/results.json, results.md and results.png. Paths may
be storage URIs (docs/STORAGE.md).
"""

from __future__ import annotations

import sys

import _require_r2ps  # noqa: F401  (first: says how to run jobs when r2ps is missing)

from r2ps.config import parse_config
from r2ps.evaluate import EvalConfig, evaluate
from r2ps.log import setup_logging
from r2ps.report import markdown
from r2ps.storage import staged

# Settings that are paths: a URI among them is staged through local disk (r2ps.storage).
INPUTS = ("split", "cosqa", "valid", "retriever", "untrained", "rr", "rr_ps", "pool_source")
OUTPUTS = ("out",)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(EvalConfig, argv, description=__doc__)
    setup_logging()
    with staged(cfg, inputs=INPUTS, outputs=OUTPUTS) as local:
        report = evaluate(local)
    print(markdown(report))
    for kind in report["files"]:
        print(f"{kind}: {cfg.out.rstrip('/')}/results.{kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
