"""RetrievalSet.sample: a seeded sub-split whose pool is exactly its queries' gold codes."""

from __future__ import annotations

import pyarrow as pa

from r2ps.data.schema import split_pairs


def _pairs(n: int) -> pa.Table:
    rows = [(f"q{i}", f"query {i}", f"c{i}", f"def f{i}(): pass") for i in range(n)]
    rows.append(("q0", "query 0", "c_extra", "def extra(): pass"))  # q0 has two gold codes
    q, qt, c, ct = zip(*rows, strict=True)
    return pa.table(
        {
            "query_id": q,
            "query": qt,
            "code_id": c,
            "code": ct,
            "language": ["python"] * len(q),
            "source": ["test"] * len(q),
        }
    )


def test_sample_keeps_only_the_sampled_queries_gold_codes() -> None:
    rset = split_pairs(_pairs(50))
    sub = rset.sample(10, seed=3)
    qids = set(sub.queries["query_id"].to_pylist())
    assert len(qids) == 10
    assert set(sub.qrels["query_id"].to_pylist()) == qids
    assert set(sub.codes["code_id"].to_pylist()) == set(sub.qrels["code_id"].to_pylist())
    if "q0" in qids:
        assert {"c0", "c_extra"} <= set(sub.codes["code_id"].to_pylist())
    assert sub.sample(10, seed=3).queries.equals(sub.queries)  # n >= size: unchanged
    assert rset.sample(10, seed=3).queries.equals(sub.queries)  # seeded
    assert not rset.sample(10, seed=4).queries.equals(sub.queries)


def test_sample_of_zero_or_more_than_all_is_the_whole_split() -> None:
    rset = split_pairs(_pairs(5))
    assert rset.sample(0) is rset
    assert rset.sample(99) is rset
