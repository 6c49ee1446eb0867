"""Discovery and extraction of source trees: test folders left out, the standard library
packaged by module, pairs in every CodeSearchNet language, broken files reported."""

from pathlib import Path

from r2ps.data.corpus_config import CorpusConfig
from r2ps.data.pysource import ExtractConfig
from r2ps.data.sources import discover_sources, extract_files

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "repos"


def test_discover_skips_test_folders_and_packages_stdlib_by_module():
    files = discover_sources(CorpusConfig(site_packages=False))
    packages = {f["package"] for f in files}
    assert {"stdlib/json", "stdlib/asyncio", "stdlib/os"} <= packages
    assert not any("/test/" in f"/{f['relpath']}" or "/tests/" in f"/{f['relpath']}" for f in files)


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
