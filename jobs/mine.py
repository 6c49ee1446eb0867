"""Mine PS hard-negative candidate windows for a training split (METHOD.md section 4).

python jobs/mine.py --model runs/demo/retriever --pairs runs/demo/corpus/train --out runs/demo/mined \
    window_end=64 rho2=0.95 margin=0.05 --exclude ../shared/data/cosqa
ray job submit --working-dir . -- python jobs/mine.py --pairs /shared/corpus/train --out /shared/mined

Reuses the embeddings and index under --out (or --index-dir) when they were made by this
model for this split, and makes them otherwise. Re-running the same command after a crash
redoes only the missing shards.
"""

from __future__ import annotations

import sys

import ray

from r2ps.config import parse_config
from r2ps.log import setup_logging
from r2ps.mining import MineConfig, format_summary, mine


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(MineConfig, argv, description=__doc__)
    setup_logging()
    ray.init(ignore_reinit_error=True)  # joins a running cluster when there is one
    print(format_summary(mine(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
