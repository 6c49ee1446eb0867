"""The corpus builder job: one real build on Ray from a source tree, one from your own pairs."""

import json
import shutil
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r2ps.data import codetext
from r2ps.data.corpus import build_corpus
from r2ps.data.corpus_config import CorpusConfig
from r2ps.data.schema import RetrievalSet

STDLIB = Path(sysconfig.get_paths()["stdlib"])
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "repos"


@pytest.fixture
def source_tree(tmp_path):
    """A small real tree: a few standard-library packages, a vendored copy, a bad file."""
    root = tmp_path / "src"
    for name in ("json", "email", "logging", "concurrent", "importlib", "urllib", "http"):
        shutil.copytree(STDLIB / name, root / name, ignore=shutil.ignore_patterns("test*"))
    for name in ("textwrap.py", "shlex.py", "difflib.py", "calendar.py", "fractions.py"):
        shutil.copy(STDLIB / name, root / name)
    shutil.copytree(STDLIB / "json", root / "vendored" / "json")  # duplicates of json/
    (root / "broken.py").write_text("def f(:\n    pass\n")
    # documented Go, Java, JS, TS, PHP and Ruby code: pairs through tree-sitter
    shutil.copytree(FIXTURES, root / "polyglot", ignore=shutil.ignore_patterns("*.py", "blob.*"))
    return root


@pytest.mark.ray
def test_build_corpus_on_a_real_tree(ray_local, source_tree, tmp_path):
    pool = tmp_path / "pool"
    # An evaluation pool holding one real function of the tree (with its docstring).
    src = (source_tree / "textwrap.py").read_text()
    start = src.index("def dedent(text):")
    excluded_code = src[start : src.index("\ndef ", start + 1)].rstrip()
    pool.mkdir()
    pq.write_table(
        pa.table(
            {"code_id": ["x"], "code": [excluded_code], "language": ["python"], "source": ["t"]}
        ),
        pool / "codes.parquet",
    )
    for name in ("queries", "qrels"):
        pq.write_table(pa.table({"query_id": pa.array([], pa.string())}), pool / f"{name}.parquet")

    out = tmp_path / "corpus"
    cfg = CorpusConfig(
        out=str(out),
        stdlib=False,
        site_packages=False,
        roots=[str(source_tree)],
        exclude=[str(pool / "codes.parquet")],
        valid_fraction=0.15,
        test_fraction=0.15,
        max_eval_package_fraction=0.3,
        workers=2,
        files_per_task=8,
    )
    stats = build_corpus(cfg)

    splits = {s: RetrievalSet.read(out / s) for s in ("train", "valid", "test")}
    packages = {s: set(r.codes["source"].to_pylist()) for s, r in splits.items()}
    assert all(packages.values())
    assert not (
        packages["train"] & packages["valid"]
        or packages["train"] & packages["test"]
        or packages["valid"] & packages["test"]
    )
    all_ids = [i for r in splits.values() for i in r.codes["code_id"].to_pylist()]
    assert len(all_ids) == len(set(all_ids))  # no code twice, not even across splits
    assert "vendored" not in packages["train"] | packages["valid"] | packages["test"]
    languages = {lang for r in splits.values() for lang in r.codes["language"].to_pylist()}
    assert languages == {"python", "go", "java", "javascript", "typescript", "php", "ruby"}
    assert stats["dedupe"]["exact_duplicates"] >= 10
    assert stats["excluded"] == {str(pool / "codes.parquet"): 1}
    assert codetext.code_match_key(excluded_code) not in set(all_ids)
    for split, r in splits.items():
        assert stats["splits"][split]["pairs"] == r.qrels.num_rows == len(r.pairs())
        assert set(r.qrels["code_id"].to_pylist()) <= set(r.codes["code_id"].to_pylist())
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert len(skipped) == 1 and "broken.py:1" in skipped[0]["error"]
    assert stats["files_unparsed"] == 1

    # Same inputs, same corpus: ids and order are stable across runs.
    again = build_corpus(CorpusConfig(**{**cfg.__dict__, "out": str(tmp_path / "again")}))
    assert again["split_of_package"] == stats["split_of_package"]
    assert pq.read_table(tmp_path / "again" / "train" / "codes.parquet").equals(
        pq.read_table(out / "train" / "codes.parquet")
    )

    with pytest.raises(SyntaxError, match="broken.py"):
        build_corpus(CorpusConfig(**{**cfg.__dict__, "out": str(tmp_path / "s"), "strict": True}))


def test_build_corpus_from_your_own_pairs(ray_local, tmp_path):
    """A JSONL of (query, code) pairs becomes a three-split corpus: copies of one code stay
    in one split, bad records (one without code, one whose query UTF-8 cannot encode) are
    skipped and named, nothing else is lost."""
    from r2ps.data.corpus import build_corpus
    from r2ps.data.corpus_config import CorpusConfig

    rows = [
        {"question": f"add {i} to a number", "snippet": f"def add_{i}(x):\n    return x + {i}"}
        for i in range(400)
    ]
    rows.append({"question": "add 7 to a number again", "snippet": rows[7]["snippet"] + "  "})
    lines = [json.dumps(r) for r in rows]
    lines.insert(10, '{"question": "no code here"}')
    lines.insert(
        20, '{"question": "add \\ud800 to a number", "snippet": "def f():\\n    return 1"}'
    )
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    cfg = CorpusConfig(
        out=str(tmp_path / "corpus"),
        pairs=[str(tmp_path / "pairs.jsonl")],
        query_field="question",
        code_field="snippet",
        skip_bad=True,
    )
    stats = build_corpus(cfg)
    assert stats["files_unparsed"] == 2
    skipped = (tmp_path / "corpus" / "skipped.jsonl").read_text()
    assert "pairs.jsonl:11" in skipped and "snippet" in skipped
    assert "pairs.jsonl:21: field 'question': U+D800 is a lone surrogate" in skipped
    assert stats["dedupe"]["after"] == 400  # the respaced copy of add_7 is the same code
    sizes = {s: stats["splits"][s]["pairs"] for s in ("train", "valid", "test")}
    assert sum(sizes.values()) == 400 and sizes["valid"] > 0 and sizes["test"] > 0
    codes = {
        s: set(RetrievalSet.read(tmp_path / "corpus" / s).codes["code_id"].to_pylist())
        for s in sizes
    }
    assert not (codes["train"] & codes["valid"]) and not (codes["train"] & codes["test"])
