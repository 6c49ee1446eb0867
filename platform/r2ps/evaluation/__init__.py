"""Evaluation: metrics and the evaluation job.

`metrics` (MRR, Recall@k, NDCG@10, the tie rule, the paired bootstrap; every metric path
goes through it), `retrieval` (a whole pool ranked: used by validation during training
and by the evaluation), `evaluate` (the quality table), `efficiency` (seconds per query by
pool size, the paper's Table 5), `report` (results.md and the figure), `config` (the
job's settings, which both the quality and the efficiency parts read).

May import: the package root, `r2ps.data`, `r2ps.models`, `r2ps.mining`, `r2ps.search`.
"""
