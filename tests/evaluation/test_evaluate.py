"""The evaluation job: BM25, the quality table, the fusion weight's split, Table 5 arithmetic.

Models are the tiny random BERT (as retriever, untrained encoder and both rankers): the
numbers mean nothing, the tests check what is computed on which data and what is written.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import r2ps.evaluation.evaluate as ev
from r2ps.config import ConfigError, check_inputs
from r2ps.data.schema import PAIR_SCHEMA, split_pairs
from r2ps.evaluation.config import EvalConfig, check_config
from r2ps.evaluation.efficiency import efficiency_row, extrapolate, pool_codes
from r2ps.evaluation.evaluate import evaluate
from r2ps.models.cross import CrossEncoder
from r2ps.search.bm25 import BM25, tokenize
from r2ps.search.cascade import ServedCascade

TEST_PAIRS = [
    (
        "read a json file",
        "def read_json(path):\n    with open(path) as f:\n        return json.load(f)",
    ),
    ("sort a list of numbers", "def sort_numbers(xs):\n    return sorted(xs)"),
    ("send an http request", "def http_get(url):\n    return requests.get(url).text"),
    ("reverse a string", "def reverse_string(s):\n    return s[::-1]"),
    ("count words in text", "def count_words(text):\n    return len(text.split())"),
    ("open a zip archive", "def open_zip(path):\n    return zipfile.ZipFile(path)"),
]
EXTRA_CODES = ["def add(a, b):\n    return a + b", "def upper(s):\n    return s.upper()"]
VALID_PAIRS = [
    ("parse a date string", "def parse_date(s):\n    return datetime.strptime(s, '%Y-%m-%d')"),
    ("square every item", "def squares(xs):\n    return [x * x for x in xs]"),
    ("join two paths", "def join_paths(a, b):\n    return os.path.join(a, b)"),
    ("hash a password", "def hash_password(p):\n    return hashlib.sha256(p.encode()).hexdigest()"),
]


def write_split(folder, pairs, extra=()):
    """A split folder from (query, code) pairs; `extra` codes answer no query."""
    rows = [
        {
            "query_id": f"{folder.name}-q{i}",
            "query": q,
            "code_id": f"{folder.name}-c{i}",
            "code": c,
            "language": "python",
            "source": "handmade",
        }
        for i, (q, c) in enumerate(pairs)
    ]
    rset = split_pairs(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA))
    codes = pa.concat_tables(
        [
            rset.codes,
            pa.Table.from_pylist(
                [
                    {
                        "code_id": f"{folder.name}-x{i}",
                        "code": c,
                        "language": "python",
                        "source": "x",
                    }
                    for i, c in enumerate(extra)
                ],
                schema=rset.codes.schema,
            ),
        ]
    )
    type(rset)(codes, rset.queries, rset.qrels).write(folder)
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("eval")
    test = write_split(root / "corpus" / "test", TEST_PAIRS, EXTRA_CODES)
    valid = write_split(root / "corpus" / "valid", VALID_PAIRS)
    rankers = {}
    for name in ("rr", "rr_ps"):
        rankers[name] = root / name
        CrossEncoder.from_pretrained(tiny_bert_dir).save_pretrained(rankers[name])
    cfg = EvalConfig(
        split=str(test),
        valid=str(valid),
        retriever=str(tiny_bert_dir),
        untrained=str(tiny_bert_dir),
        rr=str(rankers["rr"]),
        rr_ps=str(rankers["rr_ps"]),
        ks=[1, 2, 3],
        alpha_grid=[0.0, 0.5, 1.0],
        max_queries=0,
        pool_sizes=[4, 20],
        pool_source=str(root / "corpus"),
        max_embed_codes=8,
        timing_queries=2,
        timing_pairs=6,
        out=str(root / "results"),
    )
    return cfg


def test_tokenize_splits_identifiers():
    assert tokenize("def readJSONFile(file_path):") == [
        "def",
        "read",
        "json",
        "file",
        "file",
        "path",
    ]
    assert tokenize("HTTPServer parse2D") == ["http", "server", "parse", "2", "d"]
    # every script's letters are kept, and split the same way
    assert tokenize("größeBerechnen(wert_ÄNDERN) 数据加载 HTTPServeur2é") == [
        "größe", "berechnen", "wert", "ändern", "数据加载", "http", "serveur", "2", "é"
    ]  # fmt: skip


def test_bm25_ranks_exact_word_match_first():
    docs = [
        "def add(a, b): return a + b",
        "def load_json(path): return json.load(open(path))",
        "def sort_items(items): return sorted(items)",
        "def load_config(path): return yaml.safe_load(open(path))",
    ]
    index = BM25(docs)
    ids, scores = index.top_k("load a json file", 4)
    assert ids[0] == 1
    assert scores[0] > scores[1] > 0  # load_config shares "load" only
    assert index.scores("nothing matches zebra").max() == 0.0
    # the rarer term weighs more: "json" (1 doc) beats "load" (2 docs)
    assert index.idf("json") > index.idf("load") > 0


def test_bm25_matches_the_okapi_formula():
    docs = ["load json file", "load yaml", "sort list sort"]
    index = BM25(docs, k1=1.2, b=0.75)
    avg = (3 + 2 + 3) / 3

    def term(tf, df, length):  # Lucene's BM25 (bm25s method="lucene": no k1 + 1 factor)
        idf = math.log(1 + (3 - df + 0.5) / (df + 0.5))
        return idf * tf / (tf + 1.2 * (1 - 0.75 + 0.75 * length / avg))

    expected = [term(1, 2, 3) + term(1, 1, 3), term(1, 2, 2), 0.0]
    np.testing.assert_allclose(index.scores("load json"), expected, rtol=1e-6)
    # a repeated query term counts twice; a document's repeated term saturates
    assert index.scores("sort")[2] == pytest.approx(term(2, 1, 3), rel=1e-6)
    assert index.scores("sort sort")[2] == pytest.approx(2 * term(2, 1, 3), rel=1e-6)


def test_extrapolation_arithmetic():
    assert extrapolate(0.5, 10, 1000) == pytest.approx(50.0)
    row = efficiency_row(
        pool=1000,
        de_s=0.01,
        rr_s=0.05,
        pair_seconds=0.64,
        timed_pairs=64,
        embed_seconds=2.0,
        embedded=100,
        build_s=0.1,
    )
    assert row["ce_all_s_per_query"] == pytest.approx(10.0)  # 10 ms per pair x 1000 codes
    assert row["ce_all_extrapolated"] and row["index_embed_extrapolated"]
    assert row["speedup_rr_vs_ce_all"] == pytest.approx(200.0)
    assert row["index_embed_s"] == pytest.approx(20.0)
    small = efficiency_row(32, 0.01, 0.05, 0.64, 64, 2.0, 100, 0.1)
    assert small["ce_all_s_per_query"] == pytest.approx(0.32)
    assert not small["ce_all_extrapolated"] and not small["index_embed_extrapolated"]
    with pytest.raises(ValueError):
        extrapolate(1.0, 0, 10)


def test_evaluation_writes_every_method_and_chooses_alpha_on_valid(setup, monkeypatch):
    cfg = setup
    seen = []
    real = ev.choose_fusion

    def spy(retrieved, ce, ks, grid):
        seen.append(list(retrieved.queries))
        return real(retrieved, ce, ks, grid)

    monkeypatch.setattr(ev, "choose_fusion", spy)
    # the PS ranker as a training run leaves it: its summary names the step exported
    summary = {"best_metrics": {"step": 0}, "history": [{"step": 0}, {"step": 10}]}
    (Path(cfg.rr_ps) / "train_summary.json").write_text(json.dumps(summary))
    report = evaluate(cfg)

    valid_queries = {q for q, _ in VALID_PAIRS}
    assert len(seen) == 2  # once per ranker
    assert all(set(queries) == valid_queries for queries in seen)
    assert report["alpha"]["split"] == cfg.valid

    methods = report["datasets"]["test"]["methods"]
    expected = {"BM25", "untrained DE", "DE", "served"}
    for label in ("RR", "RR+PS"):
        expected |= {f"{label} K={k}" for k in cfg.ks} | {f"{label} as served"}
        assert methods[f"{label} as served"]["alpha"] in cfg.alpha_grid
        assert methods[f"{label} as served"]["k"] in cfg.ks
    assert set(methods) == expected
    for row in methods.values():
        assert 0.0 <= row["mrr"] <= 1.0 and row["n_queries"] == len(TEST_PAIRS)
        d = row["vs_de"]  # paired bootstrap against DE on the same queries
        assert d["lo"] <= d["diff"] <= d["hi"]
        assert d["diff"] == pytest.approx(row["mrr"] - methods["DE"]["mrr"])
    assert methods["DE"]["vs_de"] == {"diff": 0.0, "lo": 0.0, "hi": 0.0}
    # Fresh heads score every pair 0: no cascade beats the retriever on valid, so the
    # retriever alone is served, and the served row is DE's.
    served = report["served"]
    assert (served["rerank_k"], served["ranker"]) == (0, "")
    assert served["reason"].startswith("retriever alone")
    assert ServedCascade.read(cfg.out) == ServedCascade(**served)
    assert methods["served"]["mrr"] == methods["DE"]["mrr"]
    # BM25 on handmade pairs whose queries share words with their code: nearly perfect.
    assert methods["BM25"]["mrr"] > 0.8
    # K = 1 reranks one code: the cascade keeps the retriever's order exactly.
    assert methods["RR K=1"]["mrr"] == pytest.approx(methods["DE"]["mrr"])

    files = report["files"]
    saved = json.loads(Path(files["json"]).read_text())
    assert set(saved["datasets"]["test"]["methods"]) == expected
    table = Path(files["md"]).read_text()
    for method in expected:  # a fused row is shown as "<ranker> fused (K=.., alpha=..)"
        assert f"| {method.replace(' as served', ' fused (K=')}" in table
    assert "| served (retriever alone) |" in table and "MRR - DE [95% CI]" in table
    assert "(extrapolated)" in table
    assert report["checkpoints"] == {"RR": None, "RR+PS": {"step": 0, "of": 10}}
    assert "RR+PS step 0 of 10" in table
    assert Path(files["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    eff = report["efficiency"]
    assert [r["pool"] for r in eff["rows"]] == [4, 20]
    for r in eff["rows"]:
        assert r["ce_all_s_per_query"] == pytest.approx(eff["ce_s_per_pair"] * r["pool"])
        assert r["ce_all_extrapolated"] == (r["pool"] > cfg.timing_pairs)
        assert r["de_s_per_query"] > 0 and r["rr_s_per_query"] >= r["de_s_per_query"]
    assert eff["distinct_codes_embedded"] == 8


def test_models_left_empty_are_skipped_with_a_warning(setup, tmp_path, caplog):
    cfg = EvalConfig(
        **{
            **vars(setup),
            "rr": "",
            "retriever": "",
            "pool_sizes": [],
            "out": str(tmp_path / "out"),
        }
    )
    with caplog.at_level(logging.WARNING, logger="r2ps.evaluation.evaluate"):
        report = evaluate(cfg)
    assert any("RR (rr): none given" in r.getMessage() for r in caplog.records)
    assert any("RR (rr)" in s for s in report["skipped"])
    methods = report["datasets"]["test"]["methods"]
    assert "DE" not in methods and "RR K=1" not in methods and "RR+PS as served" in methods
    assert report["models"]["first_stage"] == "untrained DE"
    no_ranker = EvalConfig(**{**vars(cfg), "rr": "", "rr_ps": "", "out": str(tmp_path / "none")})
    evaluate(no_ranker)
    alone = ServedCascade.read(no_ranker.out)  # serving always finds a choice
    assert alone.rerank_k == 0 and alone.reason.startswith("retriever alone")
    assert "efficiency" not in report and report["pending"] == []


@pytest.mark.parametrize(
    ("setting", "make", "says"),
    [
        ("rr", lambda p: p, "does not exist (expected a trained ranker folder)"),
        ("rr_ps", lambda p: p.mkdir() or p, "holds no config.json"),
        ("retriever", lambda p: p.mkdir() or p, "holds no config.json"),
        ("valid", lambda p: p.mkdir() or p, "holds no codes.parquet"),
        ("cosqa", lambda p: p.mkdir() or p, "holds no code_idx_map.txt"),
        (
            "pool_source",
            lambda p: (p / "train").mkdir(parents=True) or p,
            "holds none of codes.parquet, train/",
        ),
        ("pool_source", lambda p: "", "not given"),
    ],
)
def test_a_bad_input_stops_the_job_before_anything_loads(setup, tmp_path, setting, make, says):
    """Every input is checked first, the efficiency table's pool (read last) included."""
    path = make(tmp_path / "bad")
    cfg = EvalConfig(**{**vars(setup), setting: str(path), "out": str(tmp_path / "out")})
    with pytest.raises(ConfigError, match=f"{setting}: {path}.*{re.escape(says)}"):
        evaluate(cfg)
    assert not (tmp_path / "out").exists()  # stopped before writing (or loading) anything
    # a ranker given (here the tiny BERT, no head) must be a trained one
    not_ranker = EvalConfig(**{**vars(setup), "rr": setup.retriever})
    with pytest.raises(ConfigError, match="rr: .* holds no head.safetensors"):
        check_inputs(not_ranker)


def test_the_quality_table_is_written_before_the_efficiency_table(setup, tmp_path):
    """A timing pool that fails to read (a codes.parquet that is not Parquet: it exists, so
    the first check passes) stops the job in its last part: the quality table and the
    served choice computed before it are on disk, and results.md says what is missing."""
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "codes.parquet").write_text("not parquet")
    out = tmp_path / "out"
    cfg = EvalConfig(**{**vars(setup), "pool_source": str(pool), "out": str(out)})
    with pytest.raises(pa.ArrowInvalid):
        evaluate(cfg)
    saved = json.loads((out / "results.json").read_text())
    assert saved["pending"] == ["efficiency"] and "efficiency" not in saved
    assert saved["datasets"]["test"]["methods"]["DE"]["n_queries"] == len(TEST_PAIRS)
    assert "Not computed yet: efficiency" in (out / "results.md").read_text()
    assert (out / "results.png").exists() and ServedCascade.read(out).reason
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]  # every write whole


def test_bad_settings_fail_clearly(setup):
    with pytest.raises(ValueError, match="valid"):
        check_config(EvalConfig(**{**vars(setup), "valid": setup.split}))
    with pytest.raises(ValueError, match="ks"):
        check_config(EvalConfig(**{**vars(setup), "ks": [0, 5]}))
    with pytest.raises(ValueError, match="not a trained ranker"):
        ev.load_ranker(setup.retriever)  # a plain encoder: its head would be random
    with pytest.raises(FileNotFoundError, match="codes.parquet"):
        pool_codes("/nonexistent/pool", 10)


def test_job_command_line(setup, tmp_path, capsys):
    path = Path(__file__).resolve().parents[2] / "jobs" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("evaluate_job", path)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    out = tmp_path / "cli"
    argv = [
        "--split",
        setup.split,
        "--valid",
        setup.valid,
        "--retriever",
        setup.retriever,
        "--untrained",
        setup.untrained,
        "--rr",
        setup.rr,
        "--rr-ps",
        setup.rr_ps,
        "--out",
        str(out),
        "ks=1,2",
        "pool_sizes=",
        "alpha_grid=0,1",
    ]
    assert job.main(argv) == 0
    printed = capsys.readouterr().out
    assert (
        "| RR+PS fused (K=" in printed
        and "chosen on valid) |" in printed
        and str(out / "results.md") in printed
    )
    assert np.isfinite(
        json.loads((out / "results.json").read_text())["datasets"]["test"]["methods"]["DE"]["mrr"]
    )
