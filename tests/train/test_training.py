"""Retriever training end to end on a real local Ray: Ray Train v2 + DeepSpeed on CPU.

A tiny random BERT learns a hand-made corpus where queries and codes share words
("return the sum of price and tax" <-> `def sum_price_tax(price, tax): ...`). The runs:

- a 2-worker run whose loss falls, whose export loads, and whose summary names the best
  checkpoint; then the same run name again, which resumes the finished run (no new step);
- a 2-worker run whose rank 0 dies once mid-run: Ray Train restarts the worker group from
  the last checkpoint and the run still ends at the planned step.

What the workers do is recorded by a `RetrieverTask` subclass in JSON-lines files (the
workers are other processes): one line per loss call (pid, rank, step, loss) and per
evaluation (pid, rank, metrics).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray.cloudpickle
import ray.train
from ray.train.v2._internal.constants import DEFAULT_HEALTH_CHECK_INTERVAL_S

from r2ps.data import codetext
from r2ps.data.schema import PAIR_SCHEMA, split_pairs
from r2ps.train.config import RetrieverConfig, TrainConfig
from r2ps.train.retriever import RetrieverTask, group_keys, training_pairs

pytestmark = pytest.mark.ray

# The tasks below travel to the Ray workers inside the trainer's config; the workers
# cannot import this test module (tests/train is not on their sys.path), so pickle it
# by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

REPO = Path(__file__).resolve().parents[2]
HEALTH_CHECK_INTERVAL_S = DEFAULT_HEALTH_CHECK_INTERVAL_S

OPS = [  # (query word, code operator)
    ("sum", "{a} + {b}"),
    ("difference", "{a} - {b}"),
    ("product", "{a} * {b}"),
    ("quotient", "{a} / {b}"),
    ("remainder", "{a} % {b}"),
    ("power", "{a} ** {b}"),
    ("maximum", "max({a}, {b})"),
    ("minimum", "min({a}, {b})"),
    ("average", "({a} + {b}) / 2"),
    ("distance", "abs({a} - {b})"),
]
NAMES = [
    ("a", "b"),
    ("x", "y"),
    ("left", "right"),
    ("first", "second"),
    ("price", "tax"),
    ("width", "height"),
    ("count", "total"),
    ("start", "stop"),
    ("speed", "time"),
    ("low", "high"),
    ("old", "new"),
    ("base", "offset"),
    ("score", "bonus"),
    ("row", "col"),
    ("mass", "volume"),
]
TEMPLATES = ["return the {op} of {a} and {b}", "compute the {op} of {a} and {b}"]
VALID_NAMES = {("speed", "time"), ("low", "high")}  # held-out variable names
TEST_NAMES = {("score", "bonus")}
DUPLICATE_QUERY = "combine two numbers"  # one query text, two gold codes (in train)


def _pair(query: str, code: str) -> dict:
    return {
        "query_id": codetext.query_id(query),
        "query": query,
        "code_id": codetext.code_id(code),
        "code": code,
        "language": "python",
        "source": "handmade",
    }


def handmade_pairs() -> dict[str, list[dict]]:
    """~300 (query, code) pairs by split; train has 2 queries per code and a shared query."""
    splits: dict[str, list[dict]] = {"train": [], "valid": [], "test": []}
    for a, b in NAMES:
        split = "valid" if (a, b) in VALID_NAMES else "test" if (a, b) in TEST_NAMES else "train"
        for op, expr in OPS:
            code = f"def {op}_{a}_{b}({a}, {b}):\n    return {expr.format(a=a, b=b)}\n"
            templates = TEMPLATES if split == "train" else TEMPLATES[:1]
            for t in templates:
                splits[split].append(_pair(t.format(op=op, a=a, b=b), code))
    for code in ("def add(a, b):\n    return a + b\n", "def plus(x, y):\n    return x + y\n"):
        splits["train"].append(_pair(DUPLICATE_QUERY, code))
    return splits


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("handmade_corpus")
    for split, rows in handmade_pairs().items():
        split_pairs(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)).write(out / split)
    return out


def small_config(
    corpus: Path, model: Path, root: Path, run_name: str, kind: type = RetrieverConfig, **kw
) -> TrainConfig:
    """Settings of a tiny run of `kind` (RetrieverConfig or RankerConfig) over `corpus`."""
    settings = dict(
        corpus=str(corpus),
        model=str(model),
        out=str(root / f"{run_name}_model"),
        storage=str(root / "ray_results"),
        run_name=run_name,
        batch_size=8,
        max_query_len=16,
        max_eval_queries=20,
        eval_batch_size=32,
        lr=1e-3,
        warmup_ratio=0.1,
        num_workers=2,
        threads_per_worker=1,
        use_gpu=False,
        max_failures=0,
        log_every_steps=5,
    )
    if kind is RetrieverConfig:
        settings.update(max_code_len=32, temperature=0.1, final_test=False)
    settings.update(kw)
    return kind(**settings)


# --- tasks that record what the workers do -------------------------------------------


def append_record(log_dir: str, name: str, record: dict) -> None:
    """One JSON line (with the worker's pid and rank) in `<log_dir>/<name>.jsonl`."""
    rank = ray.train.get_context().get_world_rank()
    with open(Path(log_dir) / f"{name}.jsonl", "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "rank": rank, **record}) + "\n")


@dataclasses.dataclass
class RecordingTask(RetrieverTask):
    """RetrieverTask that appends each loss call and evaluation to files under `log_dir`."""

    log_dir: str = ""

    def _append(self, name: str, record: dict) -> None:
        append_record(self.log_dir, name, record)

    def loss(self, engine, batch, cfg):
        step = int(engine.global_steps)  # steps done before this one (restored on resume)
        self.before_step(step)
        value = super().loss(engine, batch, cfg)
        training = all(m.training for m in engine.module.modules())  # dropout on
        # what glibc read when the process started, not a later os.environ change
        started_with = Path("/proc/self/environ").read_bytes().split(b"\0")
        arenas = b"MALLOC_ARENA_MAX=1" in started_with
        self._append(
            "loss",
            {"step": step, "loss": float(value.item()), "training": training, "arenas": arenas},
        )
        return value

    def before_step(self, step: int) -> None:
        pass

    def evaluate(self, model, cfg):
        metrics = super().evaluate(model, cfg)
        self._append("eval", {"metrics": metrics})
        return metrics


@dataclasses.dataclass
class CrashOnceTask(RecordingTask):
    """Rank 0 dies (a hard exit, like a lost node) before step `crash_at_step`, once.

    It dies some seconds after its last report, not instantly: Ray Train's controller
    collects reports when it polls the workers (every 2 s by default), so a worker that
    dies between a report and the next poll loses that report, and the restart resumes
    from the checkpoint before it (still a resume, only an older one).
    """

    crash_at_step: int = 0
    marker: str = ""

    def before_step(self, step: int) -> None:
        if step != self.crash_at_step or ray.train.get_context().get_world_rank() != 0:
            return
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return  # the restarted attempt: carry on
        time.sleep(3 * HEALTH_CHECK_INTERVAL_S)
        os._exit(1)


def read_records(log_dir: Path, name: str) -> list[dict]:
    path = log_dir / f"{name}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def attempts(records: list[dict]) -> list[list[dict]]:
    """Rank-0 records grouped by worker process, in order of first appearance."""
    by_pid: dict[int, list[dict]] = {}
    for r in records:
        if r["rank"] == 0:
            by_pid.setdefault(r["pid"], []).append(r)
    return list(by_pid.values())


# --- group keys ----------------------------------------------------------------------


def test_group_keys_link_pairs_sharing_a_query_or_a_code():
    #        pair: 0     1     2     3     4     5     6
    queries = ["q1", "q2", "q1", "q3", "q4", "q5", "x"]
    codes = ["c1", "c2", "c3", "c2", "c5", "c3", "x"]
    keys = group_keys(queries, codes)
    assert keys.dtype == np.int64 and keys.shape == (7,)
    assert keys[0] == keys[2]  # shared query q1
    assert keys[1] == keys[3]  # shared code c2
    assert keys[5] == keys[0]  # transitive: q5 -c3- q1 -c1
    # distinct groups otherwise; a query id equal to a code id ("x") links nothing
    groups = {keys[0], keys[1], keys[4], keys[6]}
    assert len(groups) == 4
    assert sorted(set(keys.tolist())) == list(range(4))  # dense keys


def test_group_keys_of_a_one_to_one_set_are_all_distinct():
    keys = group_keys([f"q{i}" for i in range(5)], [f"c{i}" for i in range(5)])
    assert sorted(keys.tolist()) == [0, 1, 2, 3, 4]


def test_training_pairs_group_duplicates(corpus_dir, tiny_bert_dir):
    cfg = small_config(corpus_dir, tiny_bert_dir, corpus_dir, "unused")
    table = training_pairs(cfg)
    rows = table.to_pylist()
    assert len(rows) == 2 * 12 * len(OPS) + 2
    # the two queries of one code, and the two codes of one query, share a key
    by_code: dict[str, set[int]] = {}
    for r in rows:
        by_code.setdefault(r["code"], set()).add(r["group"])
    assert all(len(g) == 1 for g in by_code.values())
    dup = {r["group"] for r in rows if r["query"] == DUPLICATE_QUERY}
    assert len(dup) == 1
    assert len({r["group"] for r in rows}) == 12 * len(OPS) + 1
    # seeded: the same config gives the same order
    assert training_pairs(cfg).equals(table)


# --- training runs -------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(ray_local, corpus_dir, tiny_bert_dir, tmp_path_factory):
    """One 2-worker run of 2 epochs (30 steps), validated every 5 steps."""
    from r2ps.train.launch import train

    root = tmp_path_factory.mktemp("finished_run")
    log_dir = root / "records"
    log_dir.mkdir()
    cfg = small_config(
        corpus_dir,
        tiny_bert_dir,
        root,
        "two_workers",
        epochs=2,
        eval_every_steps=5,
        final_test=True,
    )
    summary = train(cfg, task=RecordingTask(log_dir=str(log_dir)))
    return cfg, summary, log_dir


def test_training_ends_comparing_start_and_trained_on_test(finished_run):
    """`final_test`: the job and the pipeline alike (r2ps.train, not the job script)."""
    cfg, summary, _ = finished_run
    assert set(summary["final_test"]) == {"start/test", "trained/test"}
    saved = json.loads((Path(cfg.out) / "train_summary.json").read_text())
    assert (
        saved["final_test"]["trained/test"]["mrr"] == summary["final_test"]["trained/test"]["mrr"]
    )


def test_two_worker_run_learns_and_exports(finished_run):
    from transformers import AutoModel

    from r2ps.models.dual import DualEncoder

    cfg, summary, log_dir = finished_run
    steps_per_epoch = (2 * 12 * len(OPS) + 2) // (cfg.batch_size * cfg.num_workers)
    total = steps_per_epoch * cfg.epochs

    losses = read_records(log_dir, "loss")
    assert {r["rank"] for r in losses} == {0, 1}
    rank0 = [r for r in losses if r["rank"] == 0]
    assert [r["step"] for r in rank0] == list(range(total))  # one attempt, every step once
    assert all(r["training"] for r in losses)  # dropout on, on every rank
    assert all(r["arenas"] for r in losses)  # workers started with one malloc arena
    first, last = np.mean([r["loss"] for r in rank0[:5]]), np.mean([r["loss"] for r in rank0[-5:]])
    assert last < 0.8 * first, (first, last)

    # the first evaluation is of the untrained model; the best checkpoint beats it
    evals = [r["metrics"] for r in read_records(log_dir, "eval") if r["rank"] == 0]
    # one validation per distinct step: every eval_every_steps and at each epoch's end,
    # once when the two coincide
    report_steps = set(range(cfg.eval_every_steps, total + 1, cfg.eval_every_steps))
    report_steps |= {steps_per_epoch * (e + 1) for e in range(cfg.epochs)}
    assert len(evals) == 1 + len(report_steps)
    start_mrr = evals[0]["valid_mrr"]
    best = summary["best_metrics"]
    assert best["valid_mrr"] > start_mrr + 0.05, (start_mrr, best)
    assert best["valid_mrr"] == max(e["valid_mrr"] for e in evals)

    # the history holds every report in order (Ray Train itself keeps only the metrics of
    # the 2 checkpoints it retains): the learning curve survives
    history = summary["history"]
    assert [h["step"] for h in history] == [0, *sorted(report_steps)]
    assert [h["valid_mrr"] for h in history] == [e["valid_mrr"] for e in evals]

    out = Path(cfg.out)
    assert summary["exported_model"] == str(out)
    written = json.loads((out / "train_summary.json").read_text())
    assert written["best_checkpoint"] == summary["best_checkpoint"]
    assert Path(written["best_checkpoint"]).is_dir()
    assert written["best_metrics"]["valid_mrr"] == best["valid_mrr"]
    assert AutoModel.from_pretrained(out).config.hidden_size == 32
    model = DualEncoder.from_pretrained(out)
    assert (model.max_query_len, model.max_code_len) == (cfg.max_query_len, cfg.max_code_len)
    assert model.temperature == cfg.temperature
    emb = model.embed_queries(["return the sum of a and b"])
    assert emb.shape == (1, 32) and np.isclose(np.linalg.norm(emb), 1.0, atol=1e-4)


def test_same_run_name_resumes_the_finished_run(finished_run):
    """Ray Train v2 loads the run's checkpoint list from storage; the loop resumes from the
    latest checkpoint, finds the planned steps done, and the run ends without a step."""
    from r2ps.train.launch import train

    cfg, first, log_dir = finished_run
    n_loss, n_eval = len(read_records(log_dir, "loss")), len(read_records(log_dir, "eval"))
    again = dataclasses.replace(cfg, out=cfg.out + "_again")
    summary = train(again, task=RecordingTask(log_dir=str(log_dir)))
    assert len(read_records(log_dir, "loss")) == n_loss  # no training step
    assert len(read_records(log_dir, "eval")) == n_eval  # no new step-0 validation
    assert summary["best_checkpoint"] == first["best_checkpoint"]
    assert summary["best_metrics"] == first["best_metrics"]
    assert max(h["step"] for h in summary["history"]) == max(h["step"] for h in first["history"])
    assert (Path(again.out) / "train_summary.json").exists()


@pytest.mark.slow
def test_a_worker_crash_resumes_from_the_last_checkpoint(
    ray_local, corpus_dir, tiny_bert_dir, tmp_path
):
    from r2ps.train.launch import train

    log_dir = tmp_path / "records"
    log_dir.mkdir()
    marker = tmp_path / "crashed"
    cfg = small_config(
        corpus_dir,
        tiny_bert_dir,
        tmp_path,
        "crash_once",
        max_steps=12,
        eval_every_steps=5,
        max_failures=1,
    )
    task = CrashOnceTask(log_dir=str(log_dir), crash_at_step=7, marker=str(marker))
    summary = train(cfg, task=task)

    assert marker.exists()
    runs = attempts(read_records(log_dir, "loss"))
    assert len(runs) == 2
    assert [r["step"] for r in runs[0]] == list(range(7))  # died before step 7
    # the second worker group starts from the checkpoint of step 5, not from 0
    assert [r["step"] for r in runs[1]] == list(range(5, 12))
    # both attempts train in train mode (the resumed one skips the start's validation)
    assert all(r["training"] for run in runs for r in run)
    # first attempt: the untrained model and step 5; second: step 10 and the end (12)
    evals = attempts(read_records(log_dir, "eval"))
    assert [len(e) for e in evals] == [2, 2]
    # the history of the resumed run still holds the first attempt's reports
    assert [h["step"] for h in summary["history"]] == [0, 5, 10, 12]
    assert (Path(cfg.out) / "train_summary.json").exists()


def test_a_failing_test_comparison_keeps_the_model_and_its_summary(
    ray_local, corpus_dir, tiny_bert_dir, tmp_path
):
    """The final test comparison runs after the model and train_summary.json are written
    (`Task.report`): a test split that turns out unreadable then (it exists, so the job's
    input check passed) fails the job without losing the trained model."""
    import shutil

    from r2ps.train.launch import train

    corpus = tmp_path / "corpus"
    shutil.copytree(corpus_dir, corpus)
    (corpus / "test" / "codes.parquet").write_text("not parquet")
    cfg = small_config(corpus, tiny_bert_dir, tmp_path, "bad_test", max_steps=2, final_test=True)
    with pytest.raises(pa.ArrowInvalid):
        train(cfg)
    saved = json.loads((Path(cfg.out) / "train_summary.json").read_text())
    assert "step" in saved["best_metrics"] and "final_test" not in saved
    assert (Path(cfg.out) / "config.json").exists()


# --- the command line ----------------------------------------------------------------


@pytest.fixture(scope="module")
def train_cli():
    spec = importlib.util.spec_from_file_location("r2ps_jobs_train", REPO / "jobs" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv", [[], ["reranker"], ["--help"]])
def test_cli_wants_a_kind(train_cli, argv, capsys):
    assert train_cli.main(argv) == 2
    assert "usage: train.py {retriever,ranker}" in capsys.readouterr().out


def test_cli_help(train_cli, capsys):
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["retriever", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--run-name" in out and "--max-failures" in out


def test_cli_rejects_a_bad_setting(train_cli, capsys):
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["retriever", "epochs=three"])
    assert exc.value.code == 2
    assert "epochs" in capsys.readouterr().err


def test_prefetched_prepares_the_next_item_while_the_current_one_is_used():
    import threading

    from r2ps.train.loop import prefetched

    started: list[int] = []
    ready = {i: threading.Event() for i in range(4)}

    def prepare(i: int) -> int:
        started.append(i)
        ready[i].set()
        return i * 10

    out = []
    for value in prefetched(range(4), prepare):
        i = value // 10
        if i + 1 < 4:  # the next item is being prepared while this one is in use
            assert ready[i + 1].wait(timeout=5)
        out.append(value)
    assert out == [0, 10, 20, 30] and started == [0, 1, 2, 3]
    assert list(prefetched([], prepare)) == []


def test_prefetched_raises_what_prepare_raised():
    from r2ps.train.loop import prefetched

    def prepare(i: int) -> int:
        if i == 2:
            raise ValueError("bad row 2")
        return i

    with pytest.raises(ValueError, match="bad row 2"):
        list(prefetched(range(4), prepare))


def test_web_register_rewrites_summaries_deterministically():
    from r2ps.train.retriever import web_register

    queries = [f"Return the value number {i} of `the` table." for i in range(300)]
    out = [web_register(q) for q in queries]
    assert out == [web_register(q) for q in queries]  # seeded by the text
    assert all(q == q.lower() and not q.endswith(".") and "`" not in q for q in out)
    dropped = sum("return" not in q for q in out) / len(out)
    assert 0.55 < dropped < 0.78  # two thirds lose "Return the"
    forms = [q.startswith("python ") for q in out], [q.startswith("how to ") for q in out]
    assert 0.3 < np.mean(forms[0]) < 0.5 and 0.12 < np.mean(forms[1]) < 0.28


def test_group_keys_and_gold_sets_key_on_query_text_not_on_ids(tmp_path):
    # Two CodeSearchNet records with one docstring get two namespaced query ids; both
    # codes answer that text, so neither may be the other's in-batch negative, and in
    # evaluation the text has both golds.
    keys = group_keys(["Return the name.", "Return  the name. ", "Other."], ["c1", "c2", "c3"])
    assert keys[0] == keys[1] != keys[2]
    from r2ps.data.readers import load_pairs
    from r2ps.evaluation.retrieval import eval_queries

    text = ["Return", "the", "name", "of", "the", "user", "."]
    recs = [
        {"url": "u/a.py", "docstring_tokens": text, "code_tokens": ["def", "a", "(", ")"]},
        {"url": "u/b.py", "docstring_tokens": text, "code_tokens": ["def", "b", "(", ")"]},
        {"url": "u/c.py", "docstring_tokens": ["Other", "text", "here"], "code_tokens": ["x"]},
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    rset = split_pairs(load_pairs(path, "csn"))
    assert rset.queries.num_rows == 3  # two ids for one text
    texts, gold = eval_queries(rset, 0)
    codes = rset.codes["code"].to_pylist()
    by_text = {t: {codes[p] for p in g} for t, g in zip(texts, gold, strict=True)}
    assert by_text == {" ".join(text): {"def a ( )", "def b ( )"}, "Other text here": {"x"}}
    assert len(eval_queries(rset, 1)[0]) == 1


def test_the_task_contract_is_a_base_class_with_defaults():
    """What a task must say raises until it says it; optional hooks do nothing by default,
    and only a task that overrides `prepare` has it run ahead in a thread."""
    from r2ps.train.loop import Task, overrides
    from r2ps.train.ranker import RankerTask

    bare = Task()
    for call in (
        lambda: bare.dataset(TrainConfig()),
        lambda: bare.build_model(TrainConfig()),
        lambda: bare.evaluate(None, TrainConfig()),
    ):
        with pytest.raises(NotImplementedError):
            call()
    assert bare.worker_inputs(TrainConfig()) == [] and bare.data_summary() == {}
    assert bare.start_is_candidate and bare.prepare({"x": 1}, TrainConfig()) == {"x": 1}
    # a ranker's checkpoint is chosen as its cascade is served: fused with the retriever
    assert (bare.selects_on, RankerTask().selects_on) == ("valid_mrr", "valid_fused_mrr")
    assert (bare.rows, RankerTask().rows) == ("pairs", "groups")  # what "<rows>/s" counts
    assert overrides(RankerTask(), "prepare") and not overrides(RetrieverTask(), "prepare")
    assert isinstance(RetrieverTask(), Task) and isinstance(RankerTask(), Task)
