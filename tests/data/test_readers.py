"""Readers: public formats -> pair rows, bad records named by file, line and field."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r2ps.data import codetext
from r2ps.data.errors import BadRecord, SkipLog
from r2ps.data.readers import (
    collect_pairs,
    expand_paths,
    iter_csn,
    iter_table,
    load_pairs,
    pairs_dataset,
)
from r2ps.data.schema import PAIR_SCHEMA

ADD = "def add(a, b):\n    return a + b"
SUB = "def sub(a, b):\n    return a - b"


def csn(url: str = "https://github.com/o/r/blob/x.py#L1", **fields) -> dict:
    rec = {
        "url": url,
        "repo": "o/r",
        "code": ADD,
        "code_tokens": ["def", "add", "(", "a", ",", "b", ")"],
        "docstring": "Add two numbers.\n\nLonger text.",
        "docstring_tokens": ["Add", "two", "numbers", "."],
        "original_string": ADD,
        "language": "python",
    }
    rec.update(fields)
    return {k: v for k, v in rec.items() if v is not ...}  # `...` removes a field


def write_lines(path: Path, lines: list) -> Path:
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


# ---------------------------------------------------------------- CodeSearchNet / AdvTest


def test_csn_happy_path_ids_stable(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [csn(), "", csn(url="u2", code=SUB)])
    rows = list(iter_csn(path))
    assert len(rows) == 2  # the blank line is not a record
    first = rows[0]
    assert first["query"] == "Add two numbers ."
    assert first["code"] == ADD
    assert first["code_id"] == codetext.code_id(ADD)
    assert first["query_id"] == codetext.query_id("Add two numbers .", namespace=csn()["url"])
    assert (first["language"], first["source"]) == ("python", "o/r")
    # same text, other url: other query id; rereading gives the same ids
    assert rows[1]["query_id"] != first["query_id"]
    assert list(iter_csn(path)) == rows
    assert set(rows[0]) == set(PAIR_SCHEMA.names)


def test_csn_fallbacks(tmp_path):
    rec = csn(docstring_tokens=..., code=..., repo=..., language=...)
    rows = list(iter_csn(write_lines(tmp_path / "a.jsonl", [rec])))
    assert rows[0]["query"] == "Add two numbers."  # first paragraph of docstring
    assert rows[0]["code"] == ADD  # original_string
    assert rows[0]["source"] == rec["url"]
    rec = csn(code=..., original_string=...)
    assert next(iter_csn(write_lines(tmp_path / "b.jsonl", [rec])))["code"] == "def add ( a , b )"


def test_csn_gz(tmp_path):
    path = write_lines(tmp_path / "train.jsonl.gz", [csn(), csn(url="u2")])
    assert [r["code"] for r in iter_csn(path)] == [ADD, ADD]


def test_advtest_function_tokens(tmp_path):
    tokens = ["def", "func", "(", "arg_0", ")", ":", "return", "arg_0"]
    rec = {"url": "u", "function": "def f(x): return x", "function_tokens": tokens,
           "docstring_tokens": ["Identity", "."], "idx": 3}  # fmt: skip
    (row,) = iter_csn(write_lines(tmp_path / "test.jsonl", [rec]))
    assert row["code"] == " ".join(tokens)  # the renamed tokens, not the original names
    assert row["query"] == "Identity ."


DOCUMENTED = (
    'def add(a, b):\n    """Add two numbers.\n\n    Longer text.\n    """\n    return a + b'
)


@pytest.mark.parametrize("field", ["code", "original_string"])
def test_csn_python_code_loses_its_docstring(tmp_path, field):
    # Real CodeSearchNet python lines hold the docstring in `code` and `original_string`:
    # kept, the query would sit inside its own gold code.
    rec = csn(**{"code": ..., "original_string": ..., field: DOCUMENTED})
    (row,) = iter_csn(write_lines(tmp_path / "t.jsonl", [rec]))
    assert row["code"] == ADD
    assert row["code_id"] == codetext.code_id(ADD)


def test_csn_python2_code_loses_its_docstring_and_other_languages_keep_their_code(tmp_path):
    py2 = "def show(x):\n        '''Print x.'''\n        print x\n        return x"
    java = 'public int add(int a, int b) {\n    /** "not a docstring" */\n    return a + b;\n}'
    recs = [csn(code=py2), csn(url="u2", code=java, language="java")]
    rows = list(iter_csn(write_lines(tmp_path / "t.jsonl", recs)))
    assert rows[0]["code"] == "def show(x):\n        print x\n        return x"
    assert rows[1]["code"] == java


def test_csn_docstring_on_the_def_line_falls_back_to_the_tokens(tmp_path):
    one_line = 'def add(a, b): """Add two numbers."""; return a + b'
    rec = csn(code=one_line, code_tokens=["def", "add", "(", ")", ":", "return", "a"])
    (row,) = iter_csn(write_lines(tmp_path / "t.jsonl", [rec]))
    assert row["code"] == "def add ( ) : return a"
    log = SkipLog()
    path = write_lines(tmp_path / "u.jsonl", [csn(code=one_line, code_tokens=...)])
    assert list(iter_csn(path, log)) == []
    assert "docstring cannot be cut out" in log.skipped[0].message


MALFORMED = [
    ("{not json", None, "not valid JSON"),
    ("[1, 2]", None, "expected a JSON object"),
    (csn(url=...), "url", "missing"),
    (csn(docstring_tokens="Add two"), "docstring_tokens", "list of strings"),
    (csn(docstring_tokens=["ok", 3]), "docstring_tokens", "list of strings"),
    (csn(code=42), "code", "expected a string"),
    (csn(docstring_tokens=[" "]), "docstring_tokens", "empty"),
    (csn(code="   "), "code", "empty"),
]


@pytest.mark.parametrize(("bad", "field", "why"), MALFORMED)
def test_csn_malformed_raises_naming_file_line_field(tmp_path, bad, field, why):
    path = write_lines(tmp_path / "bad.jsonl", [csn(), "", bad])
    with pytest.raises(BadRecord) as info:
        list(iter_csn(path))
    err = info.value
    assert (err.file, err.line, err.field) == (str(path), 3, field)
    assert f"{path}:3" in str(err) and why in str(err)
    if field:
        assert repr(field) in str(err)


def test_csn_skip_log_goes_on(tmp_path):
    lines = [csn(url="u1")] + [bad for bad, _, _ in MALFORMED] + [csn(url="u2")]
    path = write_lines(tmp_path / "mixed.jsonl", lines)
    log = SkipLog()
    rows = list(iter_csn(path, skip_log=log))
    assert len(rows) == 2
    assert len(log) == len(MALFORMED)
    assert [s.line for s in log.skipped] == list(range(2, 2 + len(MALFORMED)))
    assert [s.field for s in log.skipped] == [f for _, f, _ in MALFORMED]
    assert f"skipped {len(MALFORMED)} bad record(s)" in log.summary()


# ---------------------------------------------------------------- I/O and decode errors


def _cut_gz(path: Path, n: int = 2000) -> Path:
    recs = [csn(url=f"u{i}", code=f"def f{i}():\n    return {i}") for i in range(n)]
    data = gzip.compress(("\n".join(json.dumps(r) for r in recs) + "\n").encode())
    path.write_bytes(data[: len(data) // 2])
    return path


def test_a_truncated_gz_is_a_bad_record_naming_file_and_line_and_skippable(tmp_path):
    path = _cut_gz(tmp_path / "train_0.jsonl.gz")
    with pytest.raises(
        BadRecord, match=r"train_0\.jsonl\.gz:\d+: unreadable after line \d+ \(EOFError"
    ):
        list(iter_csn(path))
    log = SkipLog()
    rows = list(iter_csn(path, log))
    assert len(rows) > 100 and len(log) == 1  # the rows before the cut are kept
    assert log.skipped[0].line == len(rows) + 1 and log.skipped[0].file == str(path)


def test_a_file_that_is_not_gzip_and_a_folder_are_named(tmp_path):
    bad = tmp_path / "x.jsonl.gz"
    bad.write_bytes(b"plain text, not gzip\n")
    with pytest.raises(BadRecord, match=r"x\.jsonl\.gz:1: unreadable \(BadGzipFile"):
        list(iter_csn(bad))
    folder = tmp_path / "d.jsonl"
    folder.mkdir()
    log = SkipLog()
    assert (
        list(iter_table(folder, "q", "c", skip_log=log)) == [] and "d.jsonl" in log.skipped[0].file
    )
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        list(iter_csn(tmp_path / "missing.jsonl"))


def test_undecodable_and_bom_lines_in_jsonl(tmp_path):
    path = tmp_path / "t.jsonl"
    good = json.dumps(csn()).encode()
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\n" + good.replace(b"Add", b"\xff\xfe") + b"\n")
    log = SkipLog()
    rows = list(iter_csn(path, log))
    assert (
        len(rows) == 1 and log.skipped[0].line == 2 and "not valid JSON" in log.skipped[0].message
    )


def test_a_corrupt_parquet_file_is_named_and_skippable(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"q": ["a b c"] * 10, "c": ["x = 1"] * 10}), path)
    path.write_bytes(path.read_bytes()[:-20])  # footer cut off
    with pytest.raises(BadRecord, match=r"t\.parquet:1: unreadable as Parquet"):
        list(iter_table(path, "q", "c"))
    log = SkipLog()
    assert list(iter_table(path, "q", "c", skip_log=log)) == [] and len(log) == 1


# ---------------------------------------------------------------- plain tables


def test_table_jsonl(tmp_path):
    path = write_lines(
        tmp_path / "t.jsonl",
        [{"q": "add", "c": ADD, "pkg": "m"}, {"q": None, "c": ADD}, {"c": ADD}, {"q": "x", "c": 1}],
    )
    log = SkipLog()
    rows = list(iter_table(path, "q", "c", source_field="pkg", skip_log=log))
    assert [r["source"] for r in rows] == ["m"]
    assert [(s.line, s.field, s.message) for s in log.skipped] == [
        (2, "q", "is null"),
        (3, "q", "missing"),
        (4, "c", "expected a string, got int"),
    ]
    rows = list(iter_table(path, "q", "c", language="go", skip_log=SkipLog()))
    assert (rows[0]["source"], rows[0]["language"]) == ("t.jsonl", "go")


def test_table_parquet(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"q": ["add", None, "sub"], "c": [ADD, SUB, SUB]}), path)
    with pytest.raises(BadRecord, match=r"t\.parquet:2: field 'q': is null"):
        list(iter_table(path, "q", "c"))
    log = SkipLog()
    assert [r["query"] for r in iter_table(path, "q", "c", skip_log=log)] == ["add", "sub"]
    assert (log.skipped[0].line, log.skipped[0].field) == (2, "q")
    with pytest.raises(BadRecord, match="field 'nope': no such column"):
        list(iter_table(path, "nope", "c"))
    table = load_pairs(tmp_path, "parquet", skip_log=SkipLog(), query_field="q", code_field="c")
    assert table.schema == PAIR_SCHEMA and table.num_rows == 2


def test_expand_paths(tmp_path):
    for name in ["b.jsonl", "a.jsonl.gz", "c.txt"]:
        (tmp_path / name).write_text("")
    assert expand_paths(tmp_path, "csn") == [
        str(tmp_path / "a.jsonl.gz"),
        str(tmp_path / "b.jsonl"),
    ]
    with pytest.raises(ValueError, match="unknown format"):
        expand_paths(tmp_path, "xml")


# ---------------------------------------------------------------- Ray


@pytest.fixture
def two_files(tmp_path) -> Path:
    write_lines(tmp_path / "a.jsonl", [csn(url="a1"), csn(url="a2", code=SUB)])
    write_lines(tmp_path / "b.jsonl", [csn(url="b1"), "{broken", csn(url="b3")])
    return tmp_path


@pytest.mark.ray
def test_pairs_dataset_skip_bad(ray_local, two_files):
    ds = pairs_dataset(two_files, "csn", skip_bad=True)
    table, log = collect_pairs(ds)
    assert table.schema == PAIR_SCHEMA
    assert table.num_rows == 4
    assert table.sort_by("query_id").equals(
        load_pairs(two_files, "csn", SkipLog()).sort_by("query_id")
    )
    assert [(s.file, s.line, s.field) for s in log.skipped] == [
        (str(two_files / "b.jsonl"), 2, None)
    ]
    assert "not valid JSON" in log.skipped[0].message


@pytest.mark.ray
def test_pairs_dataset_strict_raises_with_location(ray_local, two_files):
    with pytest.raises(BadRecord) as info:
        collect_pairs(pairs_dataset(two_files, "csn"))
    assert f"{two_files / 'b.jsonl'}:2" in str(info.value)
    assert info.value.line == 2
    with pytest.raises(Exception, match=r"b\.jsonl:2: not valid JSON"):  # Ray's own wrapper
        pairs_dataset(two_files, "csn").materialize()
