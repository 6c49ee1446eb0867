"""The corpus builder: dedupe, exclusion, package splits, and one real build on Ray."""

import json
import shutil
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r2ps.data import codetext
from r2ps.data.corpus import (
    EXTRACTED_SCHEMA,
    CorpusConfig,
    assign_splits,
    build_corpus,
    dedupe,
    discover_sources,
    exclude,
    extract_files,
)
from r2ps.data.pysource import ExtractConfig
from r2ps.data.schema import RetrievalSet

STDLIB = Path(sysconfig.get_paths()["stdlib"])
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "repos"


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


def test_discover_skips_test_folders_and_packages_stdlib_by_module():
    files = discover_sources(CorpusConfig(site_packages=False))
    packages = {f["package"] for f in files}
    assert {"stdlib/json", "stdlib/asyncio", "stdlib/os"} <= packages
    assert not any("/test/" in f"/{f['relpath']}" or "/tests/" in f"/{f['relpath']}" for f in files)


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


def test_roots_give_codesearchnet_pairs_in_every_language():
    files = discover_sources(CorpusConfig(stdlib=False, site_packages=False, roots=[str(FIXTURES)]))
    assert {Path(f["path"]).suffix for f in files} >= {
        ".py",
        ".go",
        ".java",
        ".js",
        ".ts",
        ".php",
        ".rb",
    }
    good = [f for f in files if not Path(f["path"]).name.startswith(("blob", "broken"))]
    pairs, file_rows = extract_files(good, ExtractConfig(min_code_lines=2))
    assert set(pairs["language"].to_pylist()) == {
        "python", "go", "java", "javascript", "typescript", "php", "ruby"
    }  # fmt: skip
    rows = {(r["language"], r["func_name"]): r for r in pairs.to_pylist()}
    java = rows[("java", "circleArea")]
    assert java["query"] == "Returns the area of a circle with the given radius."
    assert java["code"].startswith("public static double circleArea") and java["line"] == 14
    assert java["path"] == "java/src/geo/Shapes.java" and java["package"] == "java"
    ruby = rows[("ruby", "area")]
    assert ruby["query"] == "The area of the circle, pi r squared."
    assert ruby["code"] == "def area\n  Math::PI * @r * @r\nend"
    # the binary and broken files: Python's are reported, the others' recovered or empty
    bad = [f for f in files if Path(f["path"]).name.startswith(("blob", "broken"))]
    _, bad_rows = extract_files(bad, ExtractConfig())
    errors = [e for e in bad_rows["error"].to_pylist() if e]
    assert len(errors) == 2 and all(".py" in e for e in errors)


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
    from r2ps.data.corpus import CorpusConfig, build_corpus

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
