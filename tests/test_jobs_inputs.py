"""Every job checks every input it will read before its first expensive step.

An evaluation ran 23 minutes and then died on the efficiency table's pool, the last thing
it reads. Here each job is run as a cluster runs it (`python jobs/<job>.py ...`), with
every input right but one that the job reads late: it must exit 2 within seconds with one
line naming the setting and the path, before starting Ray (`RAY_TMPDIR` stays empty) or
loading a model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from r2ps.data.schema import MINE_SUMMARY, PAIR_SCHEMA, split_pairs
from r2ps.models.cross import CrossEncoder

REPO = Path(__file__).resolve().parents[1]
# The interpreter and the imports (torch, transformers, ray) take ~5 s on 2 busy cores; a
# job that got as far as Ray or a model takes minutes. The bound tells the two apart.
SECONDS = 60

PAIRS = [
    ("read a json file", "def read_json(path):\n    return json.load(open(path))"),
    ("sort a list", "def sort_numbers(xs):\n    return sorted(xs)"),
    ("reverse a string", "def reverse_string(s):\n    return s[::-1]"),
]


def write_split(folder: Path) -> Path:
    rows = [
        {
            "query_id": f"q{i}",
            "query": q,
            "code_id": f"c{i}",
            "code": c,
            "language": "python",
            "source": "handmade",
        }
        for i, (q, c) in enumerate(PAIRS)
    ]
    split_pairs(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)).write(folder)
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_bert_dir) -> dict[str, Path]:
    """Real inputs of every kind: a corpus (train, valid, test), a corpus lacking its test
    split, a retriever (the tiny BERT), a saved ranker, a source tree, a mining output
    whose summary names a split that is gone."""
    root = tmp_path_factory.mktemp("job_inputs")
    for split in ("train", "valid", "test"):
        write_split(root / "corpus" / split)
    for split in ("train", "valid"):
        write_split(root / "no_test" / split)
    ranker = root / "ranker"
    CrossEncoder.from_pretrained(tiny_bert_dir).save_pretrained(ranker)
    src = root / "src"
    src.mkdir()
    (src / "m.py").write_text('def f(x):\n    """Double x."""\n    return 2 * x\n')
    mined = root / "mined"
    (mined / "negatives").mkdir(parents=True)
    (mined / MINE_SUMMARY).write_text(json.dumps({"pairs": str(root / "gone" / "train")}))
    return {
        "corpus": root / "corpus",
        "no_test": root / "no_test",
        "retriever": tiny_bert_dir,
        "ranker": ranker,
        "src": src,
        "mined": mined,
        "missing": root / "missing",
        "gone": root / "gone" / "train",
    }


# job, its arguments, the setting named, the path named, what is said of it (`i` holds the
# inputs above, `out` a fresh output folder)
CASES = {
    "build_corpus: an --exclude pool (read after extraction)": (
        "build_corpus",
        lambda i, out: (
            ["--out", out, "--roots", i["src"], "--exclude", i["missing"]]
            + ["stdlib=false", "site_packages=false"]
        ),
        "exclude",
        "missing",
        "does not exist",
    ),
    "build_corpus: a pool folder that is no pool": (
        "build_corpus",
        lambda i, out: ["--out", out, "--roots", i["src"], "--exclude", i["src"]],
        "exclude",
        "src",
        "holds none of code_idx_map.txt, codes.parquet",
    ),
    "train retriever: the test split (read after training)": (
        "train",
        lambda i, out: ["retriever", "--corpus", i["no_test"], "--out", out],
        "corpus",
        "no_test",
        "holds no test/codes.parquet",
    ),
    "train ranker: the split the mining summary names": (
        "train",
        lambda i, out: (
            ["ranker", "--corpus", i["corpus"], "--negatives", i["mined"]]
            + ["--retriever", i["retriever"], "--out", out]
        ),
        "negatives",
        "gone",
        "does not exist",
    ),
    "embed: the model": (
        "embed",
        lambda i, out: ["--model", i["missing"], "--codes", i["corpus"] / "test", "--out", out],
        "model",
        "missing",
        "does not exist",
    ),
    "embed: the codes, required": (
        "embed",
        lambda i, out: ["--model", i["retriever"], "--out", out],
        "codes",
        "",
        "not given",
    ),
    "mine: an --exclude pool (read after the index is built)": (
        "mine",
        lambda i, out: (
            ["--model", i["retriever"], "--pairs", i["corpus"] / "train"]
            + ["--out", out, "--exclude", i["missing"]]
        ),
        "exclude",
        "missing",
        "does not exist",
    ),
    "evaluate: the efficiency table's pool (read last)": (
        "evaluate",
        lambda i, out: (
            ["--split", i["corpus"] / "test", "--valid", i["corpus"] / "valid"]
            + ["--retriever", i["retriever"], "--untrained", i["retriever"]]
            + ["--rr", i["ranker"], "--rr-ps", i["ranker"], "--pool-source", i["missing"]]
            + ["--out", out]
        ),
        "pool_source",
        "missing",
        "does not exist",
    ),
    "evaluate: a ranker that is not a trained one": (
        "evaluate",
        lambda i, out: (
            ["--split", i["corpus"] / "test", "--valid", i["corpus"] / "valid"]
            + ["--retriever", i["retriever"], "--rr", i["retriever"], "--rr-ps", i["ranker"]]
            + ["--pool-source", i["corpus"], "--out", out]
        ),
        "rr",
        "retriever",
        "holds no head.safetensors",
    ),
    "export_onnx: the second model": (
        "export_onnx",
        lambda i, out: ["--models", i["retriever"], "--models", i["missing"]],
        "models",
        "missing",
        "does not exist",
    ),
    "index: the model (read after the walk and the extraction)": (
        "index",
        lambda i, out: ["--source", i["src"], "--out", out, "--model", i["missing"]],
        "model",
        "missing",
        "does not exist",
    ),
    "pipeline: a corpus.pairs file (the first stage's input)": (
        "pipeline",
        lambda i, out: ["--out", out, f"corpus.pairs={i['missing']}"],
        "pairs",
        "missing",
        "does not exist",
    ),
    "pipeline: --cosqa (read by the corpus, mining and evaluation)": (
        "pipeline",
        lambda i, out: ["--out", out, "--cosqa", i["missing"]],
        "cosqa",
        "missing",
        "does not exist",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_missing_late_input_fails_the_job_at_once(case, inputs, tmp_path):
    job, args, setting, name, says = CASES[case]
    ray_tmp = tmp_path / "ray_tmp"
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)  # a job that got to ray.init would start a Ray of its own
    argv = [str(a) for a in args(inputs, tmp_path / "out")]
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, str(REPO / "jobs" / f"{job}.py"), *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.perf_counter() - start
    assert run.returncode == 2, run.stderr[-3000:]
    path = str(inputs[name]) if name else ""
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith(f"{job}.py: error: ")]
    assert len(errors) == 1, run.stderr[-3000:]
    assert errors[0].startswith(f"{job}.py: error: {setting}: {path}"), errors[0]
    assert says in errors[0], errors[0]
    assert "Traceback" not in run.stderr
    assert seconds < SECONDS, f"{seconds:.0f} s"
    assert not ray_tmp.exists(), "Ray was started before the inputs were checked"
    assert not (tmp_path / "out").exists()  # nothing written
