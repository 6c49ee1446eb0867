"""Dedupe and exclusion: one row per normalised code, none an evaluation pool holds."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r2ps.data import codetext
from r2ps.data.dedupe import dedupe, exclude
from r2ps.data.sources import EXTRACTED_SCHEMA


def rows(codes, packages=None):
    packages = packages or ["pkg"] * len(codes)
    return pa.Table.from_pylist(
        [
            {
                "query": f"query number {i}",
                "code": c,
                "code_id": codetext.code_id(c),
                "match_key": codetext.code_match_key(c),
                "raw_hash": codetext.content_hash(c),
                "package": p,
                "path": "m.py",
                "line": i,
                "func_name": "f",
            }
            for i, (c, p) in enumerate(zip(codes, packages, strict=True))
        ],
        EXTRACTED_SCHEMA,
    )


def test_dedupe_counts_exact_and_normalised_duplicates_and_keeps_the_first():
    a = "def f(x):\n    return x + 1\n"
    table = rows(
        [a, a, "def f(x):\n    return x+1  # same\n", "def g():\n    return 2\n"],
        ["a", "b", "c", "a"],
    )
    kept, info = dedupe(table)
    assert kept["package"].to_pylist() == ["a", "a"]
    assert info == {"before": 4, "after": 2, "exact_duplicates": 1, "normalised_duplicates": 1}


def test_exclude_removes_pool_codes_even_when_the_pool_keeps_docstrings(tmp_path):
    corpus_code = "def area(w, h):\n    return w * h\n"
    pool_code = 'def area(w, h):\n    """Area."""\n    return w * h  # note\n'
    pq.write_table(pa.table({"code": [pool_code]}), tmp_path / "pool.parquet")
    table = rows([corpus_code, "def other():\n    return 0\n"])
    kept, removed = exclude(table, [str(tmp_path / "pool.parquet")])
    assert kept["code"].to_pylist() == ["def other():\n    return 0\n"]
    assert removed == {str(tmp_path / "pool.parquet"): 1}


def test_exclude_rejects_an_unknown_pool(tmp_path):
    with pytest.raises(FileNotFoundError, match="evaluation pool"):
        exclude(rows(["def f():\n    return 1\n"]), [str(tmp_path)])
