"""One row per code, and none an evaluation pool holds: the corpus builder's stages 3-4.

`dedupe`: exact and whitespace/comment-insensitive duplicates (one `codetext.code_id`)
collapse to the first row, by package and path, so vendored copies never straddle two
splits. `exclude`: every row whose docstring-insensitive match key is also in an
evaluation pool (a CoSQA folder, a split folder or a Parquet file of codes) is dropped;
`pool_match_keys` is the same test the mining job's false-negative guard uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from r2ps.config import Need, needs
from r2ps.data import codetext
from r2ps.data.cosqa import COSQA_POOL, cosqa_pool_codes
from r2ps.data.errors import check_utf8


def dedupe(pairs: pa.Table) -> tuple[pa.Table, dict]:
    """First row per code id; counts exact and normalised-only duplicates removed."""
    idx = pa.array(np.arange(pairs.num_rows))
    first = (
        pairs.select(["code_id"])
        .append_column("_row", idx)
        .group_by("code_id")
        .aggregate([("_row", "min")])
    )
    keep = pc.sort_indices(first["_row_min"])
    kept = pairs.take(pc.take(first["_row_min"], keep))
    n_raw = len(pc.unique(pairs["raw_hash"]))
    info = {
        "before": pairs.num_rows,
        "after": kept.num_rows,
        "exact_duplicates": pairs.num_rows - n_raw,
        "normalised_duplicates": n_raw - kept.num_rows,
    }
    return kept, info


def pool_needs(cfg: object, setting: str) -> list[Need]:
    """What each evaluation pool of `cfg.<setting>` must be for `pool_match_keys`: a
    Parquet file, or a folder holding a CoSQA pool or a split's codes."""
    what = "a CoSQA folder, a split folder or a .parquet file"
    folder = ((COSQA_POOL, "codes.parquet"),)  # either one
    return [
        need._replace(holds=() if need.path.endswith(".parquet") else folder)
        for need in needs(cfg, setting, what=what)
    ]


def pool_match_keys(pool: str | Path) -> set[str]:
    """Docstring-insensitive keys of every code in an evaluation pool.

    A pool is a CoSQA folder (`code_idx_map.txt`), an r2ps split folder
    (`codes.parquet`), or a Parquet file with a `code` column.
    """
    pool = Path(pool)
    if (pool / "code_idx_map.txt").exists():
        codes = cosqa_pool_codes(pool)
    elif (pool / "codes.parquet").exists():
        codes = _parquet_codes(pool / "codes.parquet")
    elif pool.suffix == ".parquet" and pool.is_file():
        codes = _parquet_codes(pool)
    else:
        raise FileNotFoundError(
            f"evaluation pool {pool}: expected a CoSQA folder (code_idx_map.txt), a split "
            "folder (codes.parquet) or a Parquet file with a 'code' column"
        )
    return {codetext.code_match_key(c) for c in codes}


def _parquet_codes(path: Path) -> list[str]:
    """A Parquet pool's `code` column; bytes that are not UTF-8 raise BadRecord (row, field)."""
    column = pq.read_table(path, columns=["code"])["code"]
    check_utf8(column, path, "code")
    return column.to_pylist()


def exclude(pairs: pa.Table, pools: list[str]) -> tuple[pa.Table, dict[str, int]]:
    removed: dict[str, int] = {}
    for pool in pools:
        keys = pa.array(sorted(pool_match_keys(pool)), pa.string())
        hit = pc.is_in(pairs["match_key"], value_set=keys)
        removed[str(pool)] = pc.sum(hit).as_py() or 0
        pairs = pairs.filter(pc.invert(hit))
    return pairs, removed
