"""Text UTF-8 cannot encode, wherever it enters r2ps: a Python str that holds lone
surrogates (a JSON "\\ud800" escape, bytes decoded with surrogateescape) or a Parquet
string that holds bytes that are not UTF-8 is a BadRecord naming file, line and field, or
with a skip log a counted skip, and every other record is kept."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r2ps.data.corpus_config import CorpusConfig
from r2ps.data.cosqa import read_cosqa
from r2ps.data.dedupe import pool_match_keys
from r2ps.data.errors import (
    BadRecord,
    SkipLog,
    check_text,
    printable,
    unencodable,
    utf8_errors,
)
from r2ps.data.pysource import ExtractConfig
from r2ps.data.readers import iter_csn, iter_table
from r2ps.data.sources import discover_sources, extract_files

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None)
SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
# any other text, however exotic, must pass through untouched
WORDS = st.text(st.characters(exclude_categories=("Cs",)), max_size=8)
# what a tool that does not check writes into a Parquet string: a stray continuation byte,
# 0xff, a lead byte without its continuation, a surrogate encoded as UTF-8 would (CESU-8)
BAD_BYTES = st.sampled_from([b"\x80", b"\xff", b"\xc3", b"\xed\xa0\x80"])


@st.composite
def records(draw, make, fields: list[str], units=SURROGATES):
    """(clean, written, bad): 1-8 records `make(i, word)`, and the same records as written
    to a file, where each record of `bad` ({index: field}) has one bad character (or
    bytes) put into that field at a random position."""
    words = draw(st.lists(WORDS, min_size=1, max_size=8))
    clean = [make(i, word) for i, word in enumerate(words)]
    hits = draw(
        st.dictionaries(
            st.integers(0, len(clean) - 1),
            st.tuples(st.sampled_from(fields), st.integers(0, 10**6), units),
            max_size=len(clean),
        )
    )
    written = [dict(rec) for rec in clean]
    for i, (field, position, unit) in hits.items():
        written[i][field] = put(written[i][field], position, unit)
    return clean, written, {i: field for i, (field, _, _) in hits.items()}


def put(value, position: int, unit):
    """`value` with `unit` inserted at `position` (modulo its length); in a token list, into
    one of its tokens."""
    if isinstance(value, list):
        i = position % len(value)
        return value[:i] + [put(value[i], position // len(value), unit)] + value[i + 1 :]
    if isinstance(unit, bytes):  # at a character boundary of the UTF-8 text
        k = position % (len(value) + 1)
        return value[:k].encode() + unit + value[k:].encode()
    k = position % (len(value) + 1)
    return value[:k] + unit + value[k:]


# ---------------------------------------------------------------- the one check


@given(st.text(st.characters(), max_size=30))
@PROPERTY
def test_unencodable_is_exactly_what_utf8_refuses(text):
    try:
        text.encode("utf-8")
        encodes = True
    except UnicodeEncodeError as e:
        encodes, first = False, e.start
    found = unencodable(text)
    assert (found is None) == encodes
    if found is not None:
        assert found[0] == first
    printable(text).encode("utf-8")  # a name or message always prints
    assert printable(text) == text or not encodes


def test_what_a_check_says():
    assert unencodable("caf\udce9") == (3, "byte 0xe9 is not UTF-8")  # surrogateescape
    with pytest.raises(BadRecord, match=r"^f\.jsonl:7: field 'query': U\+D800 .* \(character 2\)"):
        check_text("a\ud800b", "f.jsonl", 7, "query")
    assert check_text("naïve ✓ 𝔘", "f", 1, "q") == "naïve ✓ 𝔘"
    err = BadRecord("bad\udcffname.jsonl", 2, None, "no \ud800 here")
    assert str(err) == "bad\\xffname.jsonl:2: no \\ud800 here"  # storable, and says what
    column = pa.array([b"ok", None, b"x\xed\xa0\x80", b"\xff"]).view(pa.string())
    assert utf8_errors(column) == {
        2: "byte 0xed is not UTF-8 (byte 2)",
        3: "byte 0xff is not UTF-8 (byte 1)",
    }
    assert utf8_errors(pa.array(["fine", "✓"])) == {} and utf8_errors(pa.array([1])) == {}


# ---------------------------------------------------------------- each reader


def check_read(read, expected: list, bad: dict[int, str], line_of, fields_named=True):
    """Strict: the first bad record is raised, naming its line and field (or None where
    the field cannot be known). Lenient: each bad record is a skip naming the same, and
    every good record's row (`expected[i]`) is kept, in order."""
    wanted = [(line_of(i), bad[i] if fields_named else None) for i in sorted(bad)]
    if wanted:
        with pytest.raises(BadRecord) as info:
            read(None)
        assert (info.value.line, info.value.field) == wanted[0]
    log = SkipLog()
    assert read(log) == [row for i, row in enumerate(expected) if i not in bad]
    assert [(s.line, s.field) for s in log.skipped] == wanted


def csn_record(i: int, word: str) -> dict:
    return {"url": f"https://x/{i}", "repo": f"o/r{word}", "language": "python",
            "docstring_tokens": ["find", word, str(i)], "code": f"def f{i}(x):\n    return {word!r}"}  # fmt: skip


@given(records(csn_record, ["url", "repo", "language", "docstring_tokens", "code"]), st.booleans())
@PROPERTY
def test_csn_names_the_line_and_field_of_each_bad_text(case, escaped):
    """A surrogate as a JSON escape, or as the bytes UTF-8 would give it (`surrogatepass`,
    which `json.loads` reads back as the same surrogate): either way the field is named."""
    clean, written, bad = case
    text = "\n".join(json.dumps(rec, ensure_ascii=escaped) for rec in written) + "\n"
    expected = [(" ".join(rec["docstring_tokens"]), rec["code"]) for rec in clean]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "train.jsonl"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))

        def read(log):
            return [(r["query"], r["code"]) for r in iter_csn(path, log)]

        check_read(read, expected, bad, lambda i: i + 1)


def table_record(i: int, word: str) -> dict:
    return {"q": f"add {word}", "c": f"x = {i}  # {word}", "src": f"s{word}"}


def read_table(path: Path):
    def read(log):
        rows = iter_table(path, "q", "c", source_field="src", skip_log=log)
        return [(r["query"], r["code"], r["source"]) for r in rows]

    return read


@given(records(table_record, ["q", "c", "src"]))
@PROPERTY
def test_jsonl_tables_name_the_line_and_field_of_each_bad_text(case):
    clean, written, bad = case
    expected = [tuple(rec.values()) for rec in clean]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "pairs.jsonl"  # a blank line after each record: they count too
        path.write_text("".join(json.dumps(rec) + "\n\n" for rec in written))
        check_read(read_table(path), expected, bad, lambda i: 2 * i + 1)


@given(records(table_record, ["q", "c", "src"], units=BAD_BYTES))
@PROPERTY
def test_parquet_tables_name_the_row_and_column_of_each_bad_string(case):
    """Arrow reads any bytes into a string column without a check: each row that is not
    UTF-8 is named, across row groups, and the others are read."""
    clean, written, bad = case
    expected = [tuple(rec.values()) for rec in clean]
    columns = {
        name: [v if isinstance(v, bytes) else v.encode() for v in (r[name] for r in written)]
        for name in ("q", "c", "src")
    }
    table = pa.table({k: pa.array(v, pa.binary()).view(pa.string()) for k, v in columns.items()})
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "pairs.parquet"
        pq.write_table(table, path, row_group_size=3)
        check_read(read_table(path), expected, bad, lambda i: i + 1)


POOL = [
    "def add(a, b):\n    return a + b",
    "def sub(a, b):\n    return a - b",
    "def one():\n    return 1",
]


def write_pool(directory: Path, codes: list[str]) -> None:
    """code_idx_map.txt, an entry a line: entry i (0-based, retrieval_idx i) on line i + 2."""
    entries = ",\n".join(f"{json.dumps(code)}: {i}" for i, code in enumerate(codes))
    (directory / "code_idx_map.txt").write_text("{\n" + entries + "\n}\n")


def cosqa_record(i: int, word: str) -> dict:
    return {"idx": f"q{i}", "doc": f"find {word}", "code": "", "label": 1, "retrieval_idx": i % 3}


@given(records(cosqa_record, ["doc", "idx"]), st.booleans())
@PROPERTY
def test_cosqa_queries_name_the_record_and_field_of_each_bad_text(case, escaped):
    """As a JSON escape, the field is named; as raw bytes (not UTF-8, so decoded with
    surrogateescape), the record is named by the line it starts on."""
    clean, written, bad = case
    text = "[\n" + ",\n".join(json.dumps(r, ensure_ascii=escaped) for r in written) + "\n]\n"
    with tempfile.TemporaryDirectory() as d:
        write_pool(Path(d), POOL)
        (Path(d) / "q.json").write_bytes(text.encode("utf-8", "surrogatepass"))

        def read(log):
            return read_cosqa(d, "q.json", skip_log=log).queries["query"].to_pylist()

        expected = [rec["doc"] for rec in clean]
        check_read(read, expected, bad, lambda i: i + 2, fields_named=escaped)


@given(st.integers(0, 2), st.integers(0, 10**6), SURROGATES)
@PROPERTY
def test_a_cosqa_pool_entry_with_bad_text_is_named_by_line(entry, position, unit):
    codes = list(POOL)
    codes[entry] = put(codes[entry], position, unit)
    with tempfile.TemporaryDirectory() as d:
        write_pool(Path(d), codes)
        (Path(d) / "q.json").write_text("[]")
        with pytest.raises(BadRecord) as info:
            read_cosqa(d, "q.json")
    err = info.value
    assert (err.line, err.field) == (entry + 2, "code") and f"entry {entry + 1}:" in err.message


# ---------------------------------------------------------------- the corpus builder


def test_source_trees_name_each_bad_text_and_keep_the_rest(tmp_path):
    """A docstring's escape (a query UTF-8 cannot encode) drops that pair, named by file,
    line and field; a cookie whose codec decodes to surrogates, and a file name that is
    not UTF-8, are named files; every other pair is kept."""
    root = tmp_path / "src"
    (root / "pkg").mkdir(parents=True)
    body = "    total = x + 1\n    total *= 2\n    return total\n"
    (root / "pkg" / "mod.py").write_text(
        f'def good(x):\n    """Double the number after adding one."""\n{body}\n'
        f'def bad(x):\n    """Double the \\ud800 number after one."""\n{body}\n'
    )
    (root / "pkg" / "cookie.py").write_text(
        f'# coding: raw_unicode_escape\ndef f(x):\n    """Double the \\ud800 number."""\n{body}'
    )
    os.makedirs(os.fsencode(root) + b"/caf\xe9")
    with open(os.fsencode(root) + b"/caf\xe9/m.py", "w") as fh:
        fh.write(f'def other(x):\n    """Double the number again, later."""\n{body}')
    files = discover_sources(CorpusConfig(stdlib=False, site_packages=False, roots=[str(root)]))
    pairs, file_rows = extract_files(files, ExtractConfig())
    assert pairs["func_name"].to_pylist() == ["good"]
    errors = sorted(e for e in file_rows["error"].to_pylist() if e)
    assert len(errors) == 3, errors
    assert any("caf\\xe9" in e and "field 'path': byte 0xe9 is not UTF-8" in e for e in errors)
    assert any(
        e.endswith(
            ".py:7: field 'query': U+D800 is a lone surrogate, which UTF-8 cannot encode (character 12)"
        )
        for e in errors
    )
    assert any("cookie.py" in e and "surrogates not allowed" in e for e in errors)


def test_an_evaluation_pool_with_bytes_that_are_not_utf8_is_named(tmp_path):
    codes = pa.array([b"def f():\n    return 1", b"def g():\n    return '\xff'"]).view(pa.string())
    pq.write_table(pa.table({"code_id": ["a", "b"], "code": codes}), tmp_path / "codes.parquet")
    with pytest.raises(BadRecord, match=r"codes\.parquet:2: field 'code': byte 0xff is not UTF-8"):
        pool_match_keys(tmp_path)
