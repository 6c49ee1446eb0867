"""Package splits: whole packages only, seeded, big packages always train."""

from r2ps.data.corpus_config import CorpusConfig
from r2ps.data.splits import assign_splits


def test_assign_splits_moves_whole_packages_and_keeps_big_ones_in_train():
    sizes = {f"p{i}": 10 for i in range(100)} | {"huge": 5000}
    cfg = CorpusConfig(valid_fraction=0.05, test_fraction=0.05, max_eval_package_fraction=0.02)
    split_of = assign_splits(sizes, cfg)
    assert set(split_of) == set(sizes) and split_of["huge"] == "train"
    per_split = {s: sum(n for p, n in sizes.items() if split_of[p] == s) for s in ("valid", "test")}
    total = sum(sizes.values())
    for n in per_split.values():
        assert 0.04 * total <= n <= 0.06 * total
    assert assign_splits(sizes, cfg) == split_of  # deterministic
    assert assign_splits(sizes, CorpusConfig(seed=1)) != split_of
