"""Embed a code corpus with a retriever and build its faiss index (reused when up to date).

    python jobs/embed.py --model runs/demo/pipeline/retriever --codes runs/demo/pipeline/corpus/train --out runs/demo/embed
    python jobs/embed.py --codes runs/demo/pipeline/corpus/test --out runs/demo/embed_test index.kind=hnsw actors=2
    ray job submit --working-dir . -- python jobs/embed.py --model /shared/retriever --codes /shared/corpus/train --out /shared/embed
    python jobs/embed.py --model s3://b/retriever --codes s3://b/corpus/train --out s3://b/embed

Writes <out>/embeddings/part-*.parquet + manifest.json and <out>/index/ (index.faiss,
code_ids.parquet, manifest.json). A second run with the same model and corpus reuses them.
--codes is required; the model and the codes are checked before Ray starts (exit 2, naming
a missing one). Paths may be storage URIs (docs/STORAGE.md); a URI --out is downloaded
first, for that reuse.
Actors and tasks on other nodes read staged URIs themselves (docs/STORAGE.md).
"""

from __future__ import annotations

import json
import sys

import _require_r2ps  # noqa: F401  (first: says how to run jobs when r2ps is missing)
import ray

from r2ps.config import check_inputs, parse_config
from r2ps.log import setup_logging
from r2ps.mining.corpus_index import ensure_index
from r2ps.mining.embed import EmbedConfig
from r2ps.storage import staged

# Settings that are paths: a URI among them is staged through local disk (r2ps.storage).
INPUTS = ("model", "codes")
UPDATES = ("out",)  # read (what is up to date is reused) and written


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(EmbedConfig, argv, description=__doc__, check=check_inputs)
    setup_logging()
    ray.init(ignore_reinit_error=True)  # joins a running cluster when there is one
    with staged(cfg, inputs=INPUTS, updates=UPDATES) as local:
        index = ensure_index(local)
    print(json.dumps(index.manifest, indent=1, sort_keys=True))
    print(
        f"index: {cfg.out.rstrip('/')}/index ({index.manifest['kind']}, {len(index)} codes x "
        f"{index.dim} dims, searching on {index.device})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
