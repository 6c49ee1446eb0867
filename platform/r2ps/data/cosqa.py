"""The CoSQA evaluation set: its pool and dev queries -> a `RetrievalSet`.

A CoSQA folder holds `code_idx_map.txt` (one JSON object {code text: retrieval_idx}, the
pool) and `cosqa-retrieval-dev-500.json` (a JSON list of records: `doc` the query, `idx`
its name, `retrieval_idx` its gold code, `label` 1 for a relevant pair). `read_cosqa`
gives the whole pool as codes, the relevant queries and their qrels; `cosqa_pool_codes`
the pool's texts alone (what a training corpus must not contain).

A broken pool raises `BadRecord` (file, line, field): it would make every number wrong.
A bad query record raises too, or with a `SkipLog` is recorded and skipped; an item
holding bytes that are not UTF-8 is that item's error only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from r2ps.data.codetext import code_id, query_id
from r2ps.data.errors import (
    BadRecord,
    SkipLog,
    check_text,
    handle,
    nonempty,
    required_str,
    type_name,
    unencodable,
)
from r2ps.data.schema import CODE_SCHEMA, QREL_SCHEMA, QUERY_SCHEMA, RetrievalSet

# What a CoSQA folder holds that r2ps reads: the pool, and the dev queries.
COSQA_POOL, COSQA_DEV = COSQA_FILES = ("code_idx_map.txt", "cosqa-retrieval-dev-500.json")


def _read_text(path: Path) -> str:
    """A JSON file's text: UTF-8, a byte-order mark (Windows tools write one) ignored.

    Undecodable bytes become lone surrogates (`surrogateescape`), so the record holding
    them is the one reported (`_json_items`), not the whole file; an unreadable file
    raises BadRecord naming it.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise BadRecord(path, None, None, f"unreadable ({e})") from None
    return data.decode("utf-8-sig", errors="surrogateescape")


def _read_pool(path: Path) -> dict[int, str]:
    """retrieval_idx -> code text. A broken pool makes the whole evaluation wrong: raise."""
    pool: dict[int, str] = {}
    for number, line, entry in _json_items(path, "entry"):
        if isinstance(entry, BadRecord):
            raise entry
        code, idx = entry
        try:
            if not isinstance(idx, int) or isinstance(idx, bool) or idx in pool:
                raise BadRecord(path, line, "retrieval_idx", f"bad or repeated id {idx!r}")
            pool[idx] = nonempty(check_text(code, path, line, "code"), "code", path, line)
        except BadRecord as err:
            raise BadRecord(
                err.file, err.line, err.field, f"entry {number}: {err.message}"
            ) from None
    return pool


def cosqa_pool_codes(directory: str | Path) -> list[str]:
    """The CoSQA pool texts in id order: what a training corpus must not contain."""
    pool = _read_pool(Path(directory) / COSQA_POOL)
    return [pool[i] for i in sorted(pool)]


def _json_items(path: Path, noun: str) -> Iterator[tuple[int, int, Any]]:
    """(item number, line it starts on, item) of each item of a JSON file holding one list
    (`noun` "record": the items are its elements) or one object ("entry": the items are
    its (key, value) members).

    An item holding bytes that are not UTF-8 is yielded as a BadRecord for that item only
    (the reader may skip it and go on); a break in the syntax raises BadRecord naming the
    line, and nothing after it can be read.
    """
    text, decoder, ws = _read_text(path), json.JSONDecoder(), re.compile(r"\s*")
    is_list = noun == "record"
    opening, closing = "[]" if is_list else "{}"
    pos = ws.match(text).end()
    if not text.startswith(opening, pos):
        shape = "a JSON list of records" if is_list else "one JSON object {code text: id}"
        raise BadRecord(path, 1, None, f"expected {shape}")
    pos, number, line, counted = ws.match(text, pos + 1).end(), 0, 1, 0
    while not text.startswith(closing, pos):
        number, line, counted = number + 1, line + text.count("\n", counted, pos), pos
        try:
            item, end = decoder.raw_decode(text, pos)
            if not is_list:  # `"key": value`
                colon = ws.match(text, end).end()
                if not isinstance(item, str) or not text.startswith(":", colon):
                    raise BadRecord(path, line, None, f'{noun} {number}: expected "key": value')
                value, end = decoder.raw_decode(text, ws.match(text, colon + 1).end())
                item = (item, value)
        except json.JSONDecodeError as e:
            raise BadRecord(path, e.lineno, None, f"{noun} {number}: not valid JSON") from None
        bad = unencodable(text, pos, end)
        yield (
            number,
            line,
            (BadRecord(path, line, None, f"{noun} {number}: {bad[1]}") if bad else item),
        )
        pos = ws.match(text, end).end()
        if text.startswith(",", pos):
            pos = ws.match(text, pos + 1).end()
        elif not text.startswith(closing, pos):
            why = f"{noun} {number}: expected ',' or '{closing}' after it"
            raise BadRecord(path, line, None, why)
    if text[pos + 1 :].strip():
        line += text.count("\n", counted, pos)
        raise BadRecord(path, line, None, f"text after the closing '{closing}'")


def _cosqa_query(
    rec: Any, path: Path, number: int, line: int, pool: dict[int, str]
) -> tuple[str, str, int] | None:
    """(query id, query, gold retrieval_idx), or None for a non-relevant (label != 1) record."""
    if isinstance(rec, BadRecord):
        raise rec
    try:
        if not isinstance(rec, dict):
            raise BadRecord(path, line, None, f"expected a JSON object, got {type_name(rec)}")
        doc = required_str(rec, "doc", path, line)
        name = required_str(rec, "idx", path, line)
        gold, label = rec.get("retrieval_idx"), rec.get("label", 1)
        if not isinstance(gold, int) or isinstance(gold, bool):
            raise BadRecord(
                path, line, "retrieval_idx", f"expected an integer, got {type_name(gold)}"
            )
        if gold not in pool:
            raise BadRecord(
                path, line, "retrieval_idx", f"{gold} is not in the pool (code_idx_map.txt)"
            )
        if label not in (0, 1) or isinstance(label, bool):
            raise BadRecord(path, line, "label", f"expected 0 or 1, got {label!r}")
    except BadRecord as err:
        raise BadRecord(err.file, err.line, err.field, f"record {number}: {err.message}") from None
    return (query_id(doc, namespace="cosqa:" + name), doc, gold) if label == 1 else None


def read_cosqa(
    directory: str | Path,
    queries_file: str = COSQA_DEV,
    skip_log: SkipLog | None = None,
) -> RetrievalSet:
    """The CoSQA retrieval task: the whole pool as codes, `doc` as queries, gold qrels.

    Only `label == 1` records are relevance pairs (a 0 marks a query-code pair that does
    not match), so a query appears only with at least one gold code. Pool codes that
    normalise to one code_id become one code; every retrieval_idx maps to that id, so
    qrels stay correct. (The released dev data: 6,267 distinct codes, all labels 1.)
    """
    directory = Path(directory)
    pool = _read_pool(directory / COSQA_POOL)
    ids = {idx: code_id(code) for idx, code in pool.items()}
    codes: dict[str, dict[str, str]] = {}
    for idx in sorted(pool):  # codes sharing an id keep the lowest retrieval_idx as source
        row = {"code_id": ids[idx], "code": pool[idx], "language": "python"}
        codes.setdefault(ids[idx], {**row, "source": f"cosqa:{idx}"})
    queries: dict[str, str] = {}
    qrels: dict[tuple[str, str], None] = {}
    path = directory / queries_file
    records = _json_items(path, "record")
    while True:
        try:
            number, line, rec = next(records)
        except StopIteration:
            break
        except BadRecord as err:  # the list breaks off: keep what came before it
            handle(err, skip_log)
            break
        try:
            found = _cosqa_query(rec, path, number, line, pool)
        except BadRecord as err:
            handle(err, skip_log)
            continue
        if found:
            queries.setdefault(found[0], found[1])
            qrels[(found[0], ids[found[2]])] = None
    return RetrievalSet(
        codes=pa.Table.from_pylist(list(codes.values()), schema=CODE_SCHEMA),
        queries=pa.Table.from_pylist(
            [{"query_id": q, "query": t} for q, t in queries.items()], schema=QUERY_SCHEMA
        ),
        qrels=pa.Table.from_pylist(
            [{"query_id": q, "code_id": c} for q, c in qrels], schema=QREL_SCHEMA
        ),
    )
