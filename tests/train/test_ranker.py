"""Ranker training: groups from both negative sources, and short runs on a real local Ray.

The data is the hand-made corpus of test_training.py (queries and codes share words) and
a negatives folder written here in the mining contract's schema: for each train pair, a
window of the codes that use the same variable names with another operator (the hard
ones). Three rows are special: one with an empty window, one whose window holds its own
positive, and the query with two gold codes, whose window holds the other gold.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.cloudpickle
import ray.train
import torch
from test_training import (
    DUPLICATE_QUERY,
    append_record,
    handmade_pairs,
    read_records,
    small_config,
    train_cli,
)

from r2ps.data import codetext
from r2ps.data.schema import PAIR_SCHEMA, RetrievalSet, split_pairs
from r2ps.evaluation.retrieval import top_candidates
from r2ps.mining.negatives import read_negatives
from r2ps.models.dual import DualEncoder
from r2ps.train.config import RankerConfig
from r2ps.train.ranker import RankerTask
from r2ps.train.ranker_data import (
    NEGATIVE_COLUMNS,
    build_groups,
    check_config,
    code_texts,
    in_batch_groups,
    pairs_folder,
    ps_rows,
)
from r2ps.train.retriever import training_pairs

pytestmark = pytest.mark.ray
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests

__all__ = ["train_cli"]  # the CLI fixture of test_training, used below

NEGATIVES_SCHEMA = pa.schema(  # the mining contract
    [
        ("query_id", pa.string()),
        ("code_id", pa.string()),
        ("cand_ids", pa.list_(pa.string())),
        ("cand_ranks", pa.list_(pa.int32())),
        ("cand_scores", pa.list_(pa.float32())),
        ("pos_score", pa.float32()),
    ]
)
M = 3


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ranker_corpus")
    for split, rows in handmade_pairs().items():
        split_pairs(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)).write(out / split)
    return out


def _names(code: str) -> str:
    """The variable names of a hand-made code: `def sum_price_tax(...)` -> 'price_tax'."""
    return code.split("(")[0].split("_", 1)[-1]


@pytest.fixture(scope="module")
def negatives_dir(corpus_dir, tmp_path_factory) -> Path:
    train = RetrievalSet.read(corpus_dir / "train")
    pairs = train.pairs().to_pylist()
    by_names: dict[str, list[str]] = {}
    for c in train.codes.to_pylist():
        by_names.setdefault(_names(c["code"]), []).append(c["code_id"])
    rng = np.random.default_rng(0)
    dup_golds = {p["code_id"] for p in pairs if p["query"] == DUPLICATE_QUERY}
    plain = [i for i, p in enumerate(pairs) if p["query"] != DUPLICATE_QUERY]
    rows = []
    for i, p in enumerate(pairs):
        if p["query"] == DUPLICATE_QUERY:  # the other gold code of the same query, and 3 more
            cands = [*(dup_golds - {p["code_id"]}), *by_names["a_b"][:3]]
        else:
            cands = [c for c in by_names[_names(p["code"])] if c != p["code_id"]]
        if i == plain[0]:
            cands = []  # an empty window
        elif i == plain[1]:
            cands = [p["code_id"], *cands]  # the positive itself
        rows.append(
            {
                "query_id": p["query_id"],
                "code_id": p["code_id"],
                "cand_ids": cands,
                "cand_ranks": list(range(1, len(cands) + 1)),
                "cand_scores": sorted(rng.random(len(cands)).tolist(), reverse=True),
                "pos_score": 0.9,
            }
        )
    out = tmp_path_factory.mktemp("mined")
    (out / "negatives").mkdir()
    half = len(rows) // 2
    for n, part in enumerate((rows[:half], rows[half:])):
        table = pa.Table.from_pylist(part, schema=NEGATIVES_SCHEMA)
        pq.write_table(table, out / "negatives" / f"part-{n:05d}.parquet")
    summary = {"pairs": str(corpus_dir / "train"), "model": "handmade", "settings": {}}
    (out / "mine_summary.json").write_text(json.dumps({**summary, "queries": len(rows)}))
    return out


def ranker_config(corpus, model, root, run_name, negatives="", **kw) -> RankerConfig:
    settings = dict(
        negatives=str(negatives),
        num_negatives=M,
        max_pair_len=48,
        retriever=str(model),
        rerank_k=5,
        ranker_scale=10.0,
        lr=3e-3,  # a random tiny BERT learns cross attention slowly; MiniLM wants ~2e-5
    )
    settings.update(kw)
    return small_config(corpus, model, root, run_name, RankerConfig, **settings)


def numpy_batch(table: pa.Table, n: int) -> dict:
    """The first `n` rows as the training loop receives them from Ray Data."""
    return ray.data.from_arrow(table.slice(0, n)).take_batch(n, batch_format="numpy")


def train_golds(corpus_dir: Path) -> dict[str, set[str]]:
    """query text -> its gold code texts in the train split."""
    gold: dict[str, set[str]] = {}
    for p in RetrievalSet.read(corpus_dir / "train").pairs().to_pylist():
        gold.setdefault(p["query"], set()).add(p["code"])
    return gold


# --- rows and groups ------------------------------------------------------------------


def test_ps_rows_report_empty_windows_and_remove_golds(corpus_dir, negatives_dir, tiny_bert_dir):
    cfg = ranker_config(corpus_dir, tiny_bert_dir, corpus_dir, "unused", negatives=negatives_dir)
    rows, report = ps_rows(cfg)
    n_pairs = read_negatives(negatives_dir).num_rows
    assert report["rows_read"] == n_pairs
    assert report["empty_windows"] == 1 and len(report["empty_window_queries"]) == 1
    assert report["rows_used"] == rows.num_rows == n_pairs - 1
    assert report["gold_candidates_removed"] == 3  # own positive once, the other gold twice
    assert pairs_folder(negatives_dir) == corpus_dir / "train"
    assert ps_rows(cfg)[0].equals(rows)  # seeded shuffle


def test_ps_groups_resample_each_epoch_reproducibly(
    ray_local, corpus_dir, negatives_dir, tiny_bert_dir
):
    cfg = ranker_config(corpus_dir, tiny_bert_dir, corpus_dir, "unused", negatives=negatives_dir)
    rows, _ = ps_rows(cfg)
    batch = numpy_batch(rows, 8)
    queries, codes, size = build_groups(batch, cfg, epoch=0)
    assert size == 1 + M and len(queries) == len(codes) == 8 * size
    gold = train_golds(corpus_dir)
    for i in range(8):
        group_q, group_c = queries[i * size : (i + 1) * size], codes[i * size : (i + 1) * size]
        assert set(group_q) == {batch["query"][i]}
        assert group_c[0] == batch["code"][i]  # the positive first
        assert not set(group_c[1:]) & gold[batch["query"][i]]  # never a gold code
    assert build_groups(batch, cfg, epoch=0) == (queries, codes, size)  # same seed and epoch
    assert build_groups(batch, cfg, epoch=1)[1] != codes  # another epoch, another draw
    other_seed = dataclasses.replace(cfg, seed=1)
    assert build_groups(batch, other_seed, epoch=0)[1] != codes
    # seeded by the query, not by the batch: row 3 alone draws what it drew inside the batch
    alone = {k: v[3:4] for k, v in batch.items()}
    assert build_groups(alone, cfg, epoch=0)[1] == codes[3 * size : 4 * size]


def test_random_negatives_come_from_the_pool_and_are_never_gold(
    ray_local, corpus_dir, negatives_dir, tiny_bert_dir
):
    cfg = ranker_config(
        corpus_dir, tiny_bert_dir, corpus_dir, "unused", negatives=negatives_dir, ps_random=2
    )
    rows, _ = ps_rows(cfg)
    batch = numpy_batch(rows, 8)
    queries, codes, size = build_groups(batch, cfg, epoch=0)
    gold = train_golds(corpus_dir)
    pool = set(code_texts(str(negatives_dir)).values())
    for i in range(8):
        group = codes[i * size : (i + 1) * size]
        assert group[0] == batch["code"][i] and set(group) <= pool
        assert not set(group[1:]) & gold[batch["query"][i]]
    assert build_groups(batch, cfg, epoch=0)[1] == codes  # seeded
    with pytest.raises(ValueError, match="ps_random"):
        check_config(dataclasses.replace(cfg, ps_random=M + 1))


@pytest.mark.parametrize("max_tokens", [0, 40])
def test_group_scores_line_up_with_their_pairs(
    corpus_dir, negatives_dir, tiny_bert_dir, monkeypatch, max_tokens
):
    """What the loss reads as group g's member j (column 0: the positive) is the score of
    that (query, code) pair, through grouping, tokenising, length slicing and `view`; a
    residual ranker's prior is the retriever's score of the same pair."""
    monkeypatch.setattr("r2ps.models.encoder.CPU_MAX_TOKENS", max_tokens)
    cfg = ranker_config(
        corpus_dir, tiny_bert_dir, corpus_dir, "unused", negatives=negatives_dir, residual=True
    )
    rows, _ = ps_rows(cfg)
    batch = {k: np.asarray(v, dtype=object) for k, v in rows.slice(0, 4).to_pydict().items()}
    task = RankerTask()
    torch.manual_seed(0)
    model = task.build_model(cfg).eval()
    assert task.start_is_candidate and model.residual  # step 0 is the retriever
    with torch.no_grad():  # a head that scores pairs differently (a fresh one gives 0)
        model.head[3].weight.normal_()
    prepared = task.prepare(batch, cfg)
    queries, codes, size = build_groups(batch, cfg, 0)
    with torch.no_grad():
        scores = model(**prepared["inputs"]).view(-1, size)
    retriever = DualEncoder.from_pretrained(tiny_bert_dir).eval()
    for g in range(4):
        assert codes[g * size] == batch["code"][g]  # the positive is column 0
        for j in range(size):
            q, c = queries[g * size + j], codes[g * size + j]
            assert q == batch["query"][g]
            assert model.score_pairs([q], [c])[0] == pytest.approx(scores[g, j].item(), abs=1e-5)
            want = float((retriever.embed_queries([q]) @ retriever.embed_codes([c]).T)[0, 0])
            assert prepared["prior"][g * size + j].item() == pytest.approx(want, abs=1e-5)


def test_ps_groups_fill_small_windows(ray_local, corpus_dir, negatives_dir, tiny_bert_dir):
    cfg = ranker_config(
        corpus_dir, tiny_bert_dir, corpus_dir, "unused", negatives=negatives_dir, num_negatives=12
    )
    rows, _ = ps_rows(cfg)  # windows of 9 or fewer codes
    queries, codes, size = build_groups(numpy_batch(rows, 4), cfg, epoch=0)
    assert size == 13 and len(codes) == 4 * 13


def test_in_batch_groups_skip_duplicates_of_the_positive(corpus_dir, tiny_bert_dir):
    cfg = ranker_config(
        corpus_dir, tiny_bert_dir, corpus_dir, "unused", negatives_source="in_batch"
    )
    table = training_pairs(cfg)
    dup = [i for i, q in enumerate(table["query"].to_pylist()) if q == DUPLICATE_QUERY]
    others = [i for i in range(table.num_rows) if i not in dup][:4]
    batch = {k: np.asarray(v) for k, v in table.take(dup + others).to_pydict().items()}
    queries, codes, size = in_batch_groups(batch)
    assert size == 6 and len(queries) == len(codes) == 36
    for i in range(6):
        group = codes[i * size : (i + 1) * size]
        assert group[0] == batch["code"][i]
        same = {batch["code"][j] for j in range(6) if batch["group"][j] == batch["group"][i]}
        assert not set(group[1:]) & same
    # the two gold codes of the duplicate query are not each other's negatives
    assert batch["code"][1] not in codes[1:size]
    # through the same entry point as ps
    assert build_groups(batch, cfg, epoch=5) == (queries, codes, size)


def test_bad_negatives_fail_naming_file_and_field(corpus_dir, tiny_bert_dir, tmp_path):
    (tmp_path / "negatives").mkdir()
    bad = pa.table({"query_id": ["q"], "code_id": ["c"], "cand_ids": [["x"]]})
    pq.write_table(bad, tmp_path / "negatives" / "part-00000.parquet")
    with pytest.raises(ValueError, match=r"part-00000.parquet: missing column 'cand_scores'"):
        read_negatives(tmp_path, NEGATIVE_COLUMNS)
    with pytest.raises(FileNotFoundError, match="mine_summary.json"):
        pairs_folder(tmp_path)
    (tmp_path / "mine_summary.json").write_text(json.dumps({"model": "x"}))
    with pytest.raises(ValueError, match="field 'pairs'"):
        pairs_folder(tmp_path)
    cfg = ranker_config(corpus_dir, tiny_bert_dir, tmp_path, "unused")
    with pytest.raises(ValueError, match="needs --negatives"):
        check_config(cfg)
    with pytest.raises(ValueError, match="negatives_source"):
        check_config(dataclasses.replace(cfg, negatives_source="random"))


# --- training runs --------------------------------------------------------------------


@dataclasses.dataclass
class RecordingRanker(RankerTask):
    """RankerTask that appends each loss and evaluation to files under `log_dir`."""

    log_dir: str = ""

    def _append(self, name: str, record: dict) -> None:
        append_record(self.log_dir, name, record)

    def loss(self, engine, batch, cfg):
        value = super().loss(engine, batch, cfg)
        record = {"step": int(engine.global_steps), "epoch": self.epoch, "loss": value.item()}
        record["training"] = all(m.training for m in engine.module.modules())  # dropout on
        self._append("loss", record)
        return value

    def evaluate(self, model, cfg):
        metrics = super().evaluate(model, cfg)
        self._append("eval", {"metrics": metrics})
        return metrics


def run_ranker(root: Path, cfg: RankerConfig) -> tuple[dict, Path]:
    from r2ps.train.launch import train

    log_dir = root / "records"
    log_dir.mkdir()
    return train(cfg, task=RecordingRanker(log_dir=str(log_dir))), log_dir


def test_ps_run_learns_and_exports(ray_local, corpus_dir, negatives_dir, tiny_bert_dir, tmp_path):
    from r2ps.models.cross import CrossEncoder

    cfg = ranker_config(
        corpus_dir, tiny_bert_dir, tmp_path, "ranker_ps", negatives=negatives_dir, epochs=4
    )
    summary, log_dir = run_ranker(tmp_path, cfg)

    losses = [r for r in read_records(log_dir, "loss") if r["rank"] == 0]
    steps_per_epoch = (read_negatives(negatives_dir).num_rows - 1) // (8 * 2)
    assert [r["step"] for r in losses] == list(range(4 * steps_per_epoch))
    assert {r["epoch"] for r in losses} == {0, 1, 2, 3}  # set_epoch reached the workers
    assert all(r["training"] for r in losses)  # dropout on at every step
    first = np.mean([r["loss"] for r in losses[:8]])
    last = np.mean([r["loss"] for r in losses[-8:]])
    assert last < 0.9 * first, (first, last)

    evals = [r["metrics"] for r in read_records(log_dir, "eval") if r["rank"] == 0]
    assert len(evals) == 1 + cfg.epochs
    for m in evals:  # the retriever's part does not change while the ranker trains
        assert m["valid_de_mrr"] == evals[0]["valid_de_mrr"]
        assert 0.0 < m["valid_mrr"] <= 1.0 and m["valid_n_queries"] == 20
    # the start (a zero head: the retriever's order) is reported but never the best; the
    # best is the checkpoint whose cascade fused at its valid-chosen weight scores highest
    best = summary["best_metrics"]
    assert best["step"] > 0
    assert best["selection_mrr"] == best["valid_fused_mrr"]
    assert best["valid_fused_mrr"] == max(m["valid_fused_mrr"] for m in evals[1:])
    # throughput counts what a row is here: a query's group, not a pair
    assert all("groups_per_s" in h and "pairs_per_s" not in h for h in summary["history"][1:])
    assert summary["data"]["empty_windows"] == 1

    model = CrossEncoder.from_pretrained(cfg.out)
    assert (model.max_query_len, model.max_len) == (cfg.max_query_len, cfg.max_pair_len)
    scores = model.score_pairs(["return the sum of a and b"] * 2, ["def f(a, b): a + b", "x"])
    assert scores.shape == (2,) and np.isfinite(scores).all()


def test_in_batch_run_learns(ray_local, corpus_dir, tiny_bert_dir, tmp_path):
    cfg = ranker_config(
        corpus_dir,
        tiny_bert_dir,
        tmp_path,
        "ranker_in_batch",
        negatives_source="in_batch",
        num_workers=1,
        batch_size=8,
        epochs=2,
        max_steps=60,  # 30 steps an epoch
    )
    summary, log_dir = run_ranker(tmp_path, cfg)
    losses = [r["loss"] for r in read_records(log_dir, "loss")]
    assert len(losses) == 60 and np.isfinite(losses).all()
    # groups of 8 codes that share few words: the tiny random BERT's loss barely moves in
    # 60 steps; the start (a zero head, i.e. the retriever's order) is never the best
    evals = [r["metrics"] for r in read_records(log_dir, "eval")]
    assert evals[0]["valid_mrr"] == evals[0]["valid_de_mrr"]  # zero head: no reordering
    assert summary["best_metrics"]["step"] > 0
    assert summary["best_metrics"]["valid_fused_mrr"] == max(
        m["valid_fused_mrr"] for m in evals[1:]
    )
    assert summary["data"] == {"source": "in_batch", "rows_used": 2 * 12 * 10 + 2}
    assert (Path(cfg.out) / "head.safetensors").exists()


# --- the command line -----------------------------------------------------------------


def test_cli_parses_ranker(train_cli, corpus_dir, negatives_dir, capsys):
    corpus = ["--corpus", str(corpus_dir)]
    argv = ["ranker", *corpus, "--negatives", str(negatives_dir), "num_negatives=31"]
    kind, cfg = train_cli.parse(argv)
    assert kind == "ranker" and isinstance(cfg, RankerConfig)
    assert (cfg.negatives, cfg.num_negatives, cfg.run_name) == (str(negatives_dir), 31, "ranker")
    kind, cfg = train_cli.parse(["ranker", *corpus, "negatives_source=in_batch"])
    assert cfg.negatives_source == "in_batch" and cfg.out == "runs/demo/ranker"
    with pytest.raises(SystemExit) as exc:  # ps without a negatives folder
        train_cli.main(["ranker", *corpus])
    assert exc.value.code == 2 and "needs --negatives" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["ranker", "--help"])
    assert exc.value.code == 0
    assert "--negatives-source" in capsys.readouterr().out


def test_fresh_head_scores_zero_and_gets_its_own_learning_rate(tiny_bert_dir):
    """A zero last layer starts the listwise loss at log(group size), not at a random,
    saturating guess; `head_lr` puts only the head's parameters in a faster group."""
    from r2ps.models.cross import CrossEncoder

    model = CrossEncoder.from_pretrained(tiny_bert_dir)
    scores = model.score_pairs(["read a file", "sort a list"], ["def f(): pass", "x = 1"])
    assert np.allclose(scores, 0.0)
    groups = RankerTask().param_groups(model, RankerConfig(head_lr=1e-3, lr=2e-5))
    head = {id(p) for p in model.head.parameters()}
    assert [len(g["params"]) for g in groups] == [
        len(list(model.parameters())) - len(head),
        len(head),
    ]
    assert groups[1]["lr"] == 1e-3 and {id(p) for p in groups[1]["params"]} == head
    assert len(RankerTask().param_groups(model, RankerConfig(head_lr=0.0))) == 1


def test_a_fresh_head_is_validated_without_scoring_its_pairs(tiny_bert_dir, monkeypatch):
    """A zero last layer scores every pair 0, so step 0's cascade is the retriever's order
    and is computed without a forward pass; a head that learned anything is scored."""
    from r2ps.evaluation.retrieval import Retrieved
    from r2ps.models.cross import CrossEncoder
    from r2ps.train.ranker import cascade_metrics

    codes = ["def f(): pass", "x = 1", "open(p).read()"]
    got = Retrieved(
        ["read a file", "sort a list"],
        [{0}, {0}],  # ranks 1 and 2
        np.array([[0, 2, 1], [1, 0, 2]]),
        np.array([[0.9, 0.8, 0.1], [0.7, 0.6, 0.5]], np.float32),
    )
    model = CrossEncoder.from_pretrained(tiny_bert_dir)
    calls = []
    real = CrossEncoder._score
    monkeypatch.setattr(CrossEncoder, "_score", lambda self, *a: calls.append(1) or real(self, *a))
    assert model.scores_zero()
    fresh = cascade_metrics(model, got, codes, 3, 8)
    assert not calls and fresh["mrr"] == fresh["de_mrr"] == pytest.approx(0.75)
    with torch.no_grad():
        model.head[3].bias.fill_(0.1)  # still one score for every pair, but not known as 0
    assert not model.scores_zero()
    assert cascade_metrics(model, got, codes, 3, 8)["mrr"] == fresh["mrr"] and calls


def test_num_layers_builds_a_shallower_ranker(corpus_dir, negatives_dir, tiny_bert_dir):
    cfg = ranker_config(
        corpus_dir, tiny_bert_dir, corpus_dir, "unused", negatives=negatives_dir, num_layers=1
    )
    assert len(RankerTask().build_model(cfg).encoder.encoder.layer) == 1
    with pytest.raises(ValueError, match="num_layers must be >= 0"):
        RankerConfig(num_layers=-1)


def test_pooling_setting_builds_a_segments_ranker(corpus_dir, negatives_dir, tiny_bert_dir):
    cfg = ranker_config(
        corpus_dir, tiny_bert_dir, corpus_dir, "unused", negatives=negatives_dir, pooling="segments"
    )
    assert RankerTask().build_model(cfg).pooling == "segments"
    with pytest.raises(ValueError, match="pooling must be one of"):
        RankerConfig(pooling="cls")


def test_top_candidates_keep_pool_order_in_ties_and_refuse_nan():
    q = np.ones((2, 4), np.float32)
    c = np.ones((6, 4), np.float32)
    c[3] = 2.0
    ids, scores = top_candidates(q, c, 4)
    assert ids.tolist() == [[3, 0, 1, 2]] * 2
    c[5, 1] = np.nan
    with pytest.raises(ValueError, match=r"code embeddings: 1 of 6 rows .* \(rows 5\)"):
        top_candidates(q, c, 4)


def test_ps_rows_remove_golds_of_the_same_query_text_under_another_id(
    corpus_dir, tiny_bert_dir, tmp_path
):
    # One text, two ids (two records of one docstring): each id's gold code is the
    # other's false negative, whatever the miner wrote.
    text, codes = "Return the user name.", ["def a():\n    return 1", "def b():\n    return 2"]
    rows = [
        {"query_id": qid, "query": text, "code_id": codetext.code_id(c), "code": c,
         "language": "python", "source": "t"}
        for qid, c in zip(["q1", "q2"], codes, strict=True)
    ] + [{"query_id": "q3", "query": "Other.", "code_id": "c3", "code": "x = 3",
          "language": "python", "source": "t"}]  # fmt: skip
    split_pairs(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)).write(tmp_path / "pairs")
    ids = [r["code_id"] for r in rows]
    mined = [
        {"query_id": "q1", "code_id": ids[0], "cand_ids": [ids[1], "c3"]},
        {"query_id": "q2", "code_id": ids[1], "cand_ids": [ids[0], "c3"]},
    ]
    (tmp_path / "mined" / "negatives").mkdir(parents=True)
    table = pa.Table.from_pylist(
        [{**m, "cand_ranks": [1, 2], "cand_scores": [0.8, 0.1], "pos_score": 0.9} for m in mined],
        schema=NEGATIVES_SCHEMA,
    )
    pq.write_table(table, tmp_path / "mined" / "negatives" / "part-00000.parquet")
    summary = {"pairs": str(tmp_path / "pairs"), "queries": 2}
    (tmp_path / "mined" / "mine_summary.json").write_text(json.dumps(summary))
    cfg = ranker_config(corpus_dir, tiny_bert_dir, tmp_path, "unused", negatives=tmp_path / "mined")
    out, report = ps_rows(cfg)
    assert out["cand_ids"].to_pylist() == [["c3"], ["c3"]]
    assert report["gold_candidates_removed"] == 2
