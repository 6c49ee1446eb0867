"""The CoSQA reader: pool and dev queries -> a RetrievalSet, bad records named by file,
line and field (or skipped with a SkipLog), byte-order marks ignored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r2ps.data import codetext
from r2ps.data.cosqa import cosqa_pool_codes, read_cosqa
from r2ps.data.errors import BadRecord, SkipLog

ADD = "def add(a, b):\n    return a + b"
SUB = "def sub(a, b):\n    return a - b"


def test_cosqa_real_data(cosqa_dir):
    rs = read_cosqa(cosqa_dir)
    records = json.loads((cosqa_dir / "cosqa-retrieval-dev-500.json").read_text())
    assert rs.codes.num_rows == 6267  # no two pool codes normalise to one id
    assert rs.queries.num_rows == 500 and rs.qrels.num_rows == 500
    assert set(rs.qrels.column("code_id").to_pylist()) <= set(
        rs.codes.column("code_id").to_pylist()
    )
    assert len(set(rs.qrels.column("code_id").to_pylist())) == 478
    assert rs.queries.column("query").to_pylist() == [r["doc"] for r in records]
    pairs = {p["query"]: p["code"] for p in rs.pairs().to_pylist()}
    assert all(pairs[r["doc"]] == r["code"] for r in records)  # gold text is the record's code
    assert len(cosqa_pool_codes(cosqa_dir)) == 6267


def make_cosqa(directory: Path, records: list, pool: dict | None = None) -> Path:
    directory.mkdir()
    pool = pool if pool is not None else {ADD: 0, SUB: 1, "def add(a,b):  return a+b": 2}
    (directory / "code_idx_map.txt").write_text(json.dumps(pool, indent=1))
    (directory / "q.json").write_text(json.dumps(records, indent=1))
    return directory


def rec(idx: str, doc: str, gold: int, **more) -> dict:
    return {"idx": idx, "doc": doc, "code": "", "docstring_tokens": "own docstring",
            "label": 1, "retrieval_idx": gold, **more}  # fmt: skip


def test_cosqa_tiny_dedupes_pool_and_keeps_qrels(tmp_path):
    d = make_cosqa(tmp_path / "c", [rec("a", "add two", 2), rec("b", "minus", 1, label=0)])
    rs = read_cosqa(d, "q.json")
    assert rs.codes.num_rows == 2  # pool 0 and 2 are the same code after normalisation
    assert rs.queries.to_pylist() == [
        {"query_id": codetext.query_id("add two", namespace="cosqa:a"), "query": "add two"}
    ]  # label 0 is not a relevance pair
    assert rs.qrels.column("code_id").to_pylist() == [codetext.code_id(ADD)]
    assert cosqa_pool_codes(d)[2] == "def add(a,b):  return a+b"


def test_cosqa_missing_pool_id_names_file_record_field(tmp_path):
    d = make_cosqa(tmp_path / "c", [rec("a", "add", 0), rec("b", "gone", 99), rec("c", 5, 1)])
    with pytest.raises(BadRecord) as info:
        read_cosqa(d, "q.json")
    err = info.value
    assert err.file == str(d / "q.json") and err.field == "retrieval_idx"
    assert "record 2" in str(err) and "99" in str(err)
    lines = (d / "q.json").read_text().splitlines()
    assert lines[err.line - 1].strip() == "{"  # the real line where record 2 starts
    log = SkipLog()
    rs = read_cosqa(d, "q.json", skip_log=log)
    assert rs.queries.num_rows == 1
    assert [(s.field, s.message.split(":")[0]) for s in log.skipped] == [
        ("retrieval_idx", "record 2"),
        ("doc", "record 3"),
    ]


BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize("which", ["code_idx_map.txt", "q.json"])
def test_cosqa_files_with_a_byte_order_mark_read_as_without(tmp_path, which):
    d = make_cosqa(tmp_path / "c", [rec("a", "python add numbers", 0)])
    plain = read_cosqa(d, "q.json")
    (d / which).write_bytes(BOM + (d / which).read_bytes())
    got = read_cosqa(d, "q.json")
    assert got.codes.equals(plain.codes) and got.queries.equals(plain.queries)


def test_cosqa_decode_and_syntax_errors_name_the_file_and_line(tmp_path):
    d = make_cosqa(tmp_path / "c", [rec("a", "python add numbers", 0), rec("b", "sub", 1)])
    qfile = d / "q.json"
    text = qfile.read_bytes()
    qfile.write_bytes(text.replace(b'"sub"', b'"s\xffb"'))  # record 2 is not UTF-8
    with pytest.raises(BadRecord, match=r"q\.json:10: record 2: byte 0xff is not UTF-8"):
        read_cosqa(d, "q.json")
    log = SkipLog()
    assert read_cosqa(d, "q.json", skip_log=log).queries.num_rows == 1 and len(log) == 1
    qfile.write_bytes(text[: text.index(b'"b"')])  # the list breaks off in record 2
    with pytest.raises(BadRecord, match=r"q\.json:\d+: record 2: not valid JSON"):
        read_cosqa(d, "q.json")
    log = SkipLog()
    assert read_cosqa(d, "q.json", skip_log=log).queries.num_rows == 1 and len(log) == 1
    pool = d / "code_idx_map.txt"
    pool.write_bytes(pool.read_bytes().replace(b"return", b"ret\xffurn", 1))
    with pytest.raises(BadRecord, match=r"code_idx_map\.txt:2: entry 1: byte 0xff is not UTF-8"):
        read_cosqa(d, "q.json")
    pool.write_bytes(b'{"def f():": 0,')
    with pytest.raises(BadRecord, match=r"code_idx_map\.txt:1: entry 2: not valid JSON"):
        read_cosqa(d, "q.json")
