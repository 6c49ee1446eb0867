"""Readers of pair files: public formats -> r2ps pair rows (`schema.PAIR_SCHEMA`).

The formats (`PATTERNS`): `csn` (CodeSearchNet/GraphCodeBERT JSONL, which also reads
AdvTest), `jsonl` and `parquet` with caller-named columns. Every reader is a plain
iterator over one file (small data, tests, no Ray needed) and `pairs_dataset` runs that
same iterator once per file inside Ray Data, so the in-memory and the distributed forms
can never disagree. A malformed record never disappears: it raises `BadRecord` (file,
line, field) or, with a `SkipLog`, is recorded and skipped. The CoSQA evaluation set,
which is not a pair file, has its own reader (`r2ps.data.cosqa`).
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from r2ps.data.codetext import code_id, query_id
from r2ps.data.errors import (
    BadRecord,
    SkipLog,
    Skipped,
    handle,
    nonempty,
    opt_str,
    opt_tokens,
    required_str,
    type_name,
    utf8_errors,
)
from r2ps.data.pysource import strip_docstring
from r2ps.data.schema import PAIR_SCHEMA

Row = dict[str, str]
PathLike = str | Path
PATTERNS = {
    "csn": ("*.jsonl", "*.jsonl.gz"),
    "jsonl": ("*.jsonl", "*.jsonl.gz"),
    "parquet": ("*.parquet",),
}
# What reading a file can raise besides a bad record: I/O, a cut or corrupt gzip stream
# (EOFError, BadGzipFile is an OSError, zlib.error), an unreadable Parquet file.
READ_ERRORS = (OSError, EOFError, zlib.error, pa.ArrowException)
# Pair columns plus `error`, all nullable: Ray concatenates blocks and must not see a
# non-null constraint on the empty strings of an error row.
ROW_SCHEMA = pa.schema([pa.field(n, pa.string()) for n in PAIR_SCHEMA.names + ["error"]])


def _pair(query: str, qid: str, code: str, language: str, source: str) -> Row:
    return {"query_id": qid, "query": query, "code_id": code_id(code), "code": code,
            "language": language, "source": source}  # fmt: skip


# ---------------------------------------------------------------- JSON lines


def _json_lines(path: PathLike) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes) of each non-blank line; `.gz` is read transparently.

    Bytes, not text: one undecodable line is then one bad record, not a dead file. A
    file that cannot be opened, or a stream that breaks off (a truncated or corrupt
    `.gz`), raises BadRecord naming the file and the line it broke at; the lines
    before it have been yielded already.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    number = 0
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                if raw.strip():
                    yield number, raw
    except FileNotFoundError:
        raise
    except READ_ERRORS as e:
        why = (
            f"unreadable after line {number} ({type(e).__name__}: {e})"
            if number
            else (f"unreadable ({type(e).__name__}: {e})")
        )
        raise BadRecord(path, number + 1, None, why) from None


def _parse_object(raw: bytes, file: PathLike, line: int) -> dict:
    try:
        value = json.loads(raw)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise BadRecord(file, line, None, f"not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise BadRecord(file, line, None, f"expected a JSON object, got {type_name(value)}")
    return value


def _iter_rows(path: PathLike, make_row, skip_log: SkipLog | None) -> Iterator[Row]:
    """Parse each JSON line and turn it into a row; bad lines go through `errors.handle`.

    A file that breaks off is one more BadRecord: with a skip log, the rows before the
    break are kept and the rest of the file is recorded as skipped.
    """
    lines = _json_lines(path)
    while True:
        try:
            line, raw = next(lines)
        except StopIteration:
            return
        except BadRecord as err:
            handle(err, skip_log)
            return
        try:
            yield make_row(_parse_object(raw, path, line), path, line)
        except BadRecord as err:
            handle(err, skip_log)


# ---------------------------------------------------------------- CodeSearchNet / AdvTest


def _csn_query(rec: dict, file: PathLike, line: int) -> str:
    """Docstring tokens (what GraphCodeBERT trains on), else the docstring's first paragraph."""
    tokens = opt_tokens(rec, "docstring_tokens", file, line)
    if tokens is not None:
        return nonempty(tokens, "docstring_tokens", file, line)
    doc = opt_str(rec, "docstring", file, line)
    if doc is None:
        raise BadRecord(file, line, "docstring_tokens", "missing (and no 'docstring')")
    first = doc.strip().split("\n\n")[0]
    return nonempty(" ".join(first.split()), "docstring", file, line)


# AdvTest's `function_tokens` come first: its test split renames identifiers there, and the
# un-renamed `function`/`original_string` would leak the names the benchmark hides.
_CODE_SOURCES = (("function_tokens", opt_tokens), ("code", opt_str),
                 ("original_string", opt_str), ("code_tokens", opt_tokens))  # fmt: skip
# What each field holds in the released files: CodeSearchNet's function_parser takes the
# whole function span for `code` / `original_string`, so a Python function keeps its
# docstring there (the query would sit inside its own gold code); the token lists leave it
# out. Other languages document a function in a comment before it, outside the span.
_WITH_DOCSTRING = ("code", "original_string")


def _csn_code(rec: dict, language: str, file: PathLike, line: int) -> str:
    for key, get in _CODE_SOURCES:
        value = get(rec, key, file, line)
        if value is None:
            continue
        value = nonempty(value, key, file, line)
        if key in _WITH_DOCSTRING and language == "python":
            stripped = strip_docstring(value)
            if stripped is None:  # the docstring shares a line with code: take the tokens
                tokens = opt_tokens(rec, "code_tokens", file, line)
                if tokens is None:
                    raise BadRecord(file, line, key, "its docstring cannot be cut out")
                return nonempty(tokens, "code_tokens", file, line)
            value = nonempty(stripped, key, file, line)
        return value
    raise BadRecord(file, line, "code", "missing (and no original_string/code_tokens)")


def _csn_row(rec: dict, file: PathLike, line: int) -> Row:
    url = required_str(rec, "url", file, line)
    language = opt_str(rec, "language", file, line) or "python"
    query, code = _csn_query(rec, file, line), _csn_code(rec, language, file, line)
    source = opt_str(rec, "repo", file, line) or url
    return _pair(query, query_id(query, namespace=url), code, language, source)


def iter_csn(path: PathLike, skip_log: SkipLog | None = None) -> Iterator[Row]:
    """Pair rows of a CodeSearchNet/GraphCodeBERT or AdvTest JSONL(.gz) file.

    AdvTest is recognised by its `function_tokens` field. A Python `code` or
    `original_string` loses its docstring (`pysource.strip_docstring`), as the corpus
    builder's codes do: CodeSearchNet keeps it there. Query ids are namespaced by
    `url`, so two records share one only when they have the same url and text.
    """
    return _iter_rows(path, _csn_row, skip_log)


# ---------------------------------------------------------------- plain tables


def iter_table(
    path: PathLike,
    query_field: str,
    code_field: str,
    language: str = "python",
    source_field: str | None = None,
    skip_log: SkipLog | None = None,
) -> Iterator[Row]:
    """Pair rows of a JSONL(.gz) or Parquet file whose column names the caller knows.

    `source` is `source_field`'s value, else the file name; query ids are namespaced by
    that source. Parquet errors use the 1-based row number as the line.
    """
    cols = (query_field, code_field, source_field)

    def make_row(rec: dict, file: PathLike, line: int) -> Row:
        query = required_str(rec, query_field, file, line)
        code = required_str(rec, code_field, file, line)
        source = required_str(rec, source_field, file, line) if source_field else Path(file).name
        return _pair(query, query_id(query, namespace=source), code, language, source)

    if str(path).endswith(".parquet"):
        return _iter_parquet(path, [c for c in cols if c], make_row, skip_log)
    return _iter_rows(path, make_row, skip_log)


def _iter_parquet(path: PathLike, columns: list[str], make_row, skip_log: SkipLog | None):
    """Rows of a Parquet file; an unreadable file or row group is a BadRecord naming the
    file and the row it broke at (rows before it are kept with a skip log)."""
    number = 0
    try:
        pfile = pq.ParquetFile(path)
        missing = [c for c in columns if c not in pfile.schema_arrow.names]
        if missing:  # one error for the whole file: no row can be read without the column
            raise BadRecord(
                path, None, missing[0], f"no such column; has {pfile.schema_arrow.names}"
            )
        batches = pfile.iter_batches(columns=columns)
        for batch in batches:
            for rec in _parquet_records(batch, path, number):
                number += 1
                try:
                    if isinstance(rec, BadRecord):
                        raise rec
                    yield make_row(rec, path, number)
                except BadRecord as err:
                    handle(err, skip_log)
    except FileNotFoundError:
        raise
    except READ_ERRORS as e:
        where = f"after row {number}" if number else "as Parquet"
        handle(BadRecord(path, number + 1, None, f"unreadable {where} ({e})"), skip_log)
    except BadRecord as err:
        handle(err, skip_log)


def _parquet_records(batch: pa.RecordBatch, path: PathLike, before: int) -> list:
    """The rows of a Parquet batch as dicts, except that a row with bytes that are not
    UTF-8 in a string column (Parquet does not check them) is a BadRecord naming its row
    (1-based: `before` rows came earlier) and column."""
    bad: dict[int, BadRecord] = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        for row, why in utf8_errors(column).items():
            bad.setdefault(row, BadRecord(path, before + row + 1, name, why))
    if not bad:
        return batch.to_pylist()
    return [bad.get(i) or batch.slice(i, 1).to_pylist()[0] for i in range(batch.num_rows)]


# ---------------------------------------------------------------- many files, with or without Ray


def expand_paths(paths: PathLike | Iterable[PathLike], fmt: str) -> list[str]:
    """Files named, with each directory replaced by its files of format `fmt` (sorted)."""
    if fmt not in PATTERNS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {sorted(PATTERNS)}")
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    out: list[str] = []
    for p in map(Path, items):
        out += (
            sorted(str(f) for pat in PATTERNS[fmt] for f in p.glob(pat)) if p.is_dir() else [str(p)]
        )
    return out


def iter_pairs(
    path: PathLike, fmt: str, skip_log: SkipLog | None = None, **reader_kwargs
) -> Iterator[Row]:
    """One file's pair rows with the reader for `fmt`."""
    if fmt == "csn":
        return iter_csn(path, skip_log=skip_log, **reader_kwargs)
    return iter_table(path, skip_log=skip_log, **reader_kwargs)


def load_pairs(
    paths: PathLike | Iterable[PathLike], fmt: str, skip_log: SkipLog | None = None, **kw
) -> pa.Table:
    """All pairs of `paths` in memory, no Ray: for small data and tests."""
    rows = [r for p in expand_paths(paths, fmt) for r in iter_pairs(p, fmt, skip_log, **kw)]
    return pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)


def _read_files(
    batch: pa.Table, fmt: str, skip_bad: bool, kw: dict, chunk: int = 4096
) -> Iterator[pa.Table]:
    """Ray UDF: the rows of each file named in `batch`, in blocks of `chunk`, errors as rows."""
    for path in batch.column("path").to_pylist():
        log, rows = (SkipLog() if skip_bad else None), []
        for row in iter_pairs(path, fmt, log, **kw):  # strict: a BadRecord reaches the driver
            rows.append(row)
            if len(rows) >= chunk:
                yield pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
                rows = []
        empty = dict.fromkeys(PAIR_SCHEMA.names, "")
        rows += [
            {**empty, "error": str(BadRecord(s.file, s.line, s.field, s.message))}
            for s in (log.skipped if log else [])
        ]
        if rows:
            yield pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def pairs_dataset(
    paths: PathLike | Iterable[PathLike], fmt: str, skip_bad: bool = False, **reader_kwargs
):
    """A lazy Ray Dataset of pair rows plus `error`, one read task per file.

    Sharding by file keeps every reader a simple sequential iterator (line numbers stay
    exact) while the files are read in parallel and streamed in blocks.
    """
    import ray.data

    files = expand_paths(paths, fmt)
    if not files:
        raise FileNotFoundError(f"no {fmt} files in {paths}")
    ds = ray.data.from_items([{"path": p} for p in files], override_num_blocks=len(files))
    fn_kwargs = {"fmt": fmt, "skip_bad": skip_bad, "kw": reader_kwargs}
    return ds.map_batches(_read_files, batch_size=1, batch_format="pyarrow", fn_kwargs=fn_kwargs)


_ERROR_RE = re.compile(
    r"^(?P<file>.+?)(?::(?P<line>\d+))?: (?:field '(?P<field>[^']*)': )?(?P<message>.*)$", re.S
)


def _skipped(error: str) -> Skipped:
    """Back from `str(BadRecord)` to its parts."""
    m = _ERROR_RE.match(error)
    if not m:
        return Skipped("?", None, None, error)
    line = int(m["line"]) if m["line"] else None
    return Skipped(m["file"], line, m["field"], m["message"])


def collect_pairs(ds) -> tuple[pa.Table, SkipLog]:
    """Materialise `pairs_dataset` output: the good rows as a PAIR_SCHEMA table, and the bad.

    In strict mode the first BadRecord of any read task is raised here, as a BadRecord.
    """
    try:
        blocks = [
            t.cast(ROW_SCHEMA) for t in ds.iter_batches(batch_size=None, batch_format="pyarrow")
        ]
    except BadRecord as err:  # Ray's wrapper (a BadRecord subclass): re-raise the plain error
        raise BadRecord(err.file, err.line, err.field, err.message) from err
    table = pa.concat_tables(blocks) if blocks else ROW_SCHEMA.empty_table()
    errors = table.column("error")
    log = SkipLog([_skipped(e) for e in errors.drop_null().to_pylist()])
    good = table.filter(errors.is_null()).drop_columns(["error"])
    return good.cast(PAIR_SCHEMA), log
