"""Mine PS hard-negative candidate windows for a training split (METHOD.md section 4).

python jobs/mine.py --model runs/demo/pipeline/retriever --pairs runs/demo/pipeline/corpus/train --out runs/demo/mined \
    window_end=64 rho2=0.95 margin=0.05 --exclude ../shared/data/cosqa
ray job submit --working-dir . -- python jobs/mine.py --pairs /shared/corpus/train --out /shared/mined
python jobs/mine.py --pairs s3://b/corpus/train --out s3://b/mined     # docs/STORAGE.md

--pairs defaults to what `make demo` built. The model, the split and the --exclude pools
(read last) are checked before Ray starts (exit 2, naming a missing one). Reuses the
embeddings and index under --out (or --index-dir) when they were made by this
model for this split, and makes them otherwise. Re-running the same command after a crash
redoes only the missing shards. Paths may be storage URIs (docs/STORAGE.md): a URI --out
is downloaded first and uploaded when mining succeeds, so a crash keeps nothing of that run.
"""

from __future__ import annotations

import sys

import _require_r2ps  # noqa: F401  (first: says how to run jobs when r2ps is missing)
import ray

from r2ps.config import check_inputs, parse_config
from r2ps.log import setup_logging
from r2ps.mining.mine import MineConfig, mine
from r2ps.mining.negatives import format_summary
from r2ps.storage import staged

# Settings that are paths: a URI among them is staged through local disk (r2ps.storage).
INPUTS = ("model", "pairs", "exclude")
UPDATES = ("out", "index_dir")  # read (shards, embeddings and index are reused) and written


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(MineConfig, argv, description=__doc__, check=check_inputs)
    setup_logging()
    ray.init(ignore_reinit_error=True)  # joins a running cluster when there is one
    with staged(cfg, inputs=INPUTS, updates=UPDATES) as local:
        summary = mine(local)
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
