"""Whole packages to train/valid/test, and the split folders written: the corpus
builder's stages 5-6.

`assign_splits` sends whole packages (never single rows) to a split, in a seeded order;
`write_corpus` writes each split in the data model of `r2ps.data.schema` (codes,
queries, qrels; `to_pairs` gives the shared pair rows) plus `provenance.parquet`
(code id -> package, path, line, function).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from r2ps.data import codetext
from r2ps.data.corpus_config import CorpusConfig
from r2ps.data.schema import PAIR_SCHEMA, SPLITS, RetrievalSet, split_pairs

QUERY_NAMESPACE = "python-sources"


def assign_splits(package_sizes: dict[str, int], cfg: CorpusConfig) -> dict[str, str]:
    """Package -> split. Whole packages only, in a seeded pseudo-random order.

    Valid and test are filled to their share of pairs with packages small enough that
    one package cannot dominate an evaluation split; everything else trains.
    """
    total = sum(package_sizes.values())
    cap = cfg.max_eval_package_fraction * total
    targets = {"valid": cfg.valid_fraction * total, "test": cfg.test_fraction * total}
    filled = dict.fromkeys(targets, 0)
    order = sorted(package_sizes, key=lambda p: codetext.content_hash(f"{cfg.seed}:{p}"))
    split_of = {}
    for pkg in order:
        size = package_sizes[pkg]
        split_of[pkg] = "train"
        if size > cap:
            continue
        for split in ("valid", "test"):
            if filled[split] + size <= targets[split] * 1.1 and filled[split] < targets[split]:
                split_of[pkg] = split
                filled[split] += size
                break
    return split_of


def to_pairs(extracted: pa.Table) -> pa.Table:
    """Extracted rows in the shared PAIR schema (query ids are text hashes)."""
    qids = [codetext.query_id(q, QUERY_NAMESPACE) for q in extracted["query"].to_pylist()]
    return pa.table(
        {
            "query_id": pa.array(qids, pa.string()),
            "query": extracted["query"],
            "code_id": extracted["code_id"],
            "code": extracted["code"],
            "language": pc.fill_null(extracted["language"], "python"),
            "source": extracted["package"],
        },
        schema=PAIR_SCHEMA,
    )


def write_corpus(table: pa.Table, split_of: dict[str, str], out: Path) -> dict[str, pa.Table]:
    splits = pa.array([split_of[p] for p in table["package"].to_pylist()], pa.string())
    by_split = {s: table.filter(pc.equal(splits, s)) for s in SPLITS}
    for split, rows in by_split.items():
        RetrievalSet.write(split_pairs(to_pairs(rows)), out / split)
        pq.write_table(
            rows.select(["code_id", "package", "path", "line", "func_name"]),
            out / split / "provenance.parquet",
        )
    return by_split
