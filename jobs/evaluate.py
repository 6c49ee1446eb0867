"""Evaluate BM25, the untrained encoder, the retriever and the rankers' cascades; time them.

    python jobs/evaluate.py                      # what `make demo` trained (runs/demo/pipeline)
    python jobs/evaluate.py --cosqa ../shared/data/cosqa
    python jobs/evaluate.py --split runs/x/corpus/test --valid runs/x/corpus/valid \
        --retriever runs/x/retriever --rr runs/x/ranker_rr --rr-ps runs/x/ranker_ps \
        --pool-source runs/x/corpus
    python jobs/evaluate.py --config eval.yaml max_queries=0 pool_sizes=1000,10000

Every input is checked before anything loads: a path that is missing, or holds no model
or split, stops the job at once (exit 2, naming the setting and the path). A model
setting left empty ('') is skipped (listed in the results). The fusion weight is chosen
on --valid only. Writes <out>/served.json, then results.json, results.md and results.png
after each data set and again after the efficiency table, so a job that stops late
keeps its quality table. Paths may be storage URIs (docs/STORAGE.md); a URI --out gets
what was finished even when the job fails.
"""

from __future__ import annotations

import sys

import _require_r2ps  # noqa: F401  (first: says how to run jobs when r2ps is missing)

from r2ps.config import check_inputs, parse_config
from r2ps.evaluation.config import EvalConfig
from r2ps.evaluation.evaluate import evaluate
from r2ps.evaluation.report import markdown
from r2ps.log import setup_logging
from r2ps.storage import staged

# Settings that are paths: a URI among them is staged through local disk (r2ps.storage).
INPUTS = ("split", "cosqa", "valid", "retriever", "untrained", "rr", "rr_ps", "pool_source")
OUTPUTS = ("out",)  # a URI gets what was finished, even when a later part fails


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(EvalConfig, argv, description=__doc__, check=check_inputs)
    setup_logging()
    with staged(cfg, inputs=INPUTS, partial_outputs=OUTPUTS) as local:
        report = evaluate(local)
    print(markdown(report))
    for kind in report["files"]:
        print(f"{kind}: {cfg.out.rstrip('/')}/results.{kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
