"""Build the default training corpus from the Python sources installed on this machine.

python jobs/build_corpus.py --out runs/corpus [--exclude ../shared/data/cosqa] [key=value ...]
ray job submit --working-dir . -- python jobs/build_corpus.py --out s3://bucket/r2ps/corpus

Every --roots, --pairs and --exclude path (the pools are read last) is checked before Ray
starts (exit 2, naming a missing one). Paths may be storage URIs (docs/STORAGE.md).
"""

from __future__ import annotations

import sys

import _require_r2ps  # noqa: F401  (first: says how to run jobs when r2ps is missing)
import ray

from r2ps.config import check_inputs, parse_config
from r2ps.data.corpus import build_corpus, format_stats
from r2ps.data.corpus_config import CorpusConfig
from r2ps.log import setup_logging
from r2ps.storage import staged

# Settings that are paths: a URI among them is staged through local disk (r2ps.storage).
INPUTS = ("roots", "exclude")
OUTPUTS = ("out",)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(CorpusConfig, argv, description=__doc__, check=check_inputs)
    setup_logging()
    ray.init(ignore_reinit_error=True)  # joins a running cluster when there is one
    with staged(cfg, inputs=INPUTS, outputs=OUTPUTS) as local:
        stats = build_corpus(local)
    print(format_stats(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
