"""A tree's units and the state a run leaves for the next: stage 2 of the repository index.

`read_file` reads and parses one file (`r2ps.data.extract`) into its row of
`TASK_SCHEMA`: the file's metadata, status (indexed | skipped, with the reason from
`r2ps.repo.files`) and its units nested in it, one per function, method, class and type
declaration and one for the file's module-level code (`MODULE_UNITS`, `TYPE_UNITS`), each
with a unit id (where it is and what it holds) and a content id (a hash of the code
text: what vectors are kept by). It never raises for a bad file. `read_files` does it
for many files, over Ray Data tasks (`r2ps.data.sources.map_files`) when there are many,
and returns the file rows (`FILE_SCHEMA`) and units (`UNIT_SCHEMA`) apart.

The state: `codes.parquet` (the units) and `files.parquet` (the file rows, stamped with
`state_fingerprint`: the extractor version, the file rules, the source root) are what
the next run compares against; `load_state` gives them back, or None when they are
missing, made with other settings or damaged (named in a warning).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from r2ps.data import codetext
from r2ps.data.extract import extract_units
from r2ps.data.grammars import grammar_for
from r2ps.data.sources import map_files
from r2ps.log import get_logger
from r2ps.repo.config import RepoIndexConfig
from r2ps.repo.files import FileRules, NotRead, check_content, read_regular
from r2ps.storage import atomic_path

log = get_logger(__name__)

# bump when extraction changes what a file gives (2: a lone carriage return ends a line,
# "generated" markers only where a line says so, UTF-16 files with a BOM are read; 3:
# module units and type units)
EXTRACTOR_VERSION = "3"
# What a file gives beyond its functions, methods and classes (docs/REPO_SEARCH.md, "what
# is indexed", measured on semble's dev split): one module unit (its code outside them) and
# its other type declarations (TS interfaces, type aliases and enums; Go's other types);
# a `/** */` comment above a blank line is not attached (it measured worse).
MODULE_UNITS = True
TYPE_UNITS = True
DETACHED_DOCS = False
CODES = "codes.parquet"
FILES = "files.parquet"

UNIT_FIELDS = [
    ("code_id", pa.string()),  # unit id: location + content (what the index's rows are)
    ("code", pa.string()),
    ("language", pa.string()),
    ("source", pa.string()),  # the path again: the code store's generic "where from"
    ("path", pa.string()),
    ("start_line", pa.int64()),
    ("end_line", pa.int64()),
    ("def_line", pa.int64()),
    ("symbol", pa.string()),
    ("kind", pa.string()),
    ("doc", pa.string()),
    ("content_id", pa.string()),  # hash of the code text: what vectors are kept by
]
UNIT_SCHEMA = pa.schema(UNIT_FIELDS)
FILE_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("language", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("status", pa.string()),  # indexed | skipped
        ("reason", pa.string()),  # why skipped (r2ps.repo.files reasons, unreadable)
        ("error_lines", pa.list_(pa.int64())),  # syntax errors tree-sitter recovered from
        ("undecodable_line", pa.int64()),
        ("n_units", pa.int64()),
    ]
)
# What an extraction task returns: each file's row with its units nested in it.
TASK_SCHEMA = FILE_SCHEMA.append(pa.field("units", pa.list_(pa.struct(UNIT_FIELDS))))


# ------------------------------------------------------------------ 2. extraction


def unit_id(row: dict) -> str:
    """A unit's id: where it is and what it holds (two copies of a function are two hits)."""
    key = "\0".join(
        str(row[k]) for k in ("path", "symbol", "kind", "start_line", "end_line", "content_id")
    )
    return codetext.content_hash(key, "u")


def read_file(f: dict, rules: FileRules) -> dict:
    """One file's row of `TASK_SCHEMA`: its units, or why it was skipped. Never raises
    for a bad file (binary, generated, minified, unreadable, undecodable, syntax errors),
    nor for one that changed since the walk (gone, grown past the limit, now a link or
    a pipe)."""
    row = {
        "path": f["path"],
        "language": None,
        "size": f["size"],
        "mtime_ns": f["mtime_ns"],
        "status": "skipped",
        "reason": None,
        "error_lines": [],
        "undecodable_line": None,
        "n_units": 0,
        "units": [],
    }
    grammar = grammar_for(f["path"])
    row["language"] = grammar.name if grammar else None
    try:
        data = read_regular(f["abspath"], rules.max_file_bytes)
    except NotRead as e:
        row["reason"] = e.reason
        return row
    reason = check_content(data, rules)
    if reason:
        row["reason"] = reason
        return row
    found = extract_units(
        data,
        f["path"],
        grammar,
        module_unit=MODULE_UNITS,
        type_units=TYPE_UNITS,
        detached_docs=DETACHED_DOCS,
    )
    units = []
    for u in found.rows():
        u["content_id"] = codetext.content_hash(u["code"], "c")
        u["source"] = u["path"]
        u["code_id"] = unit_id(u)
        units.append(u)
    row.update(
        status="indexed",
        language=found.language,
        error_lines=found.error_lines,
        undecodable_line=found.undecodable_line,
        n_units=len(units),
        units=units,
    )
    return row


def _read_batch(batch: pa.Table, rules: FileRules) -> pa.Table:
    """Ray Data task: a batch of files -> their TASK_SCHEMA rows."""
    return pa.Table.from_pylist([read_file(f, rules) for f in batch.to_pylist()], TASK_SCHEMA)


def read_files(files: list[dict], cfg: RepoIndexConfig) -> tuple[pa.Table, pa.Table]:
    """(file rows, their units) of `files`, over Ray Data tasks when there are
    `cfg.local_limit()` files or more."""
    if len(files) < cfg.local_limit():
        table = pa.Table.from_pylist([read_file(f, cfg.rules) for f in files], TASK_SCHEMA)
        return _split_units(table)
    join_ray(cfg.ray_address)
    found = map_files(files, _read_batch, {"rules": cfg.rules}, cfg.files_per_task, cfg.workers)
    tables = [t.cast(TASK_SCHEMA) for t in found]
    return _split_units(pa.concat_tables(tables) if tables else TASK_SCHEMA.empty_table())


def _split_units(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """TASK_SCHEMA rows -> (FILE_SCHEMA rows, UNIT_SCHEMA rows), in Arrow."""
    units = pc.list_flatten(table["units"])
    unit_table = pa.Table.from_struct_array(units) if len(units) else UNIT_SCHEMA.empty_table()
    return table.select(FILE_SCHEMA.names), unit_table.cast(UNIT_SCHEMA)


def join_ray(address: str = ""):
    """Ray, joined or started here (`address`: `RepoIndexConfig.ray_address`; '' joins a
    cluster running on this machine when there is one): called only by the steps large
    enough to fan out (`read_files`, `r2ps.repo.vectors`), so a small run never starts it."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address or None, ignore_reinit_error=True)
    return ray


# ------------------------------------------------------------------ state


def state_fingerprint(cfg: RepoIndexConfig) -> str:
    """What shapes the units a file gives: the extractor, the file rules, the source root."""
    payload = json.dumps(
        {
            "extractor": EXTRACTOR_VERSION,
            "units": {"modules": MODULE_UNITS, "types": TYPE_UNITS, "docs": DETACHED_DOCS},
            "rules": asdict(cfg.rules),
            "source": str(Path(cfg.source).resolve()),
        },
        sort_keys=True,
    )
    return codetext.content_hash(payload, "s")


def load_state(out: Path, fingerprint: str) -> tuple[pa.Table, pa.Table] | None:
    """The last run's (file rows, units), or None when there is no usable state (a first
    run, a run cut short, one made with other extraction settings, or files that cannot
    be read as its tables: named in a warning)."""
    path = out / FILES
    if not path.exists() or not (out / CODES).exists():
        return None
    try:
        meta = pq.read_schema(path).metadata or {}
        if meta.get(b"r2ps_state", b"").decode() != fingerprint:
            log.info("%s was made with other extraction settings: re-reading every file", path)
            return None
        files = pq.read_table(path).cast(FILE_SCHEMA)
        return files, pq.read_table(out / CODES).cast(UNIT_SCHEMA)
    except (OSError, ValueError, pa.ArrowException) as e:  # damaged by hand or by a disk
        log.warning("%s: the last run's state is not usable (%s): re-reading every file", out, e)
        return None


def write_atomic(table: pa.Table, path: Path) -> None:
    """`table` written to `path` as Parquet whole or not at all (a run cut short leaves
    the last run's file)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
