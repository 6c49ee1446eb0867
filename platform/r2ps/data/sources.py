"""Source trees -> extracted pairs: the corpus builder's first two stages.

1. `discover_sources`: the .py files of the standard library (one package per
   top-level module), of every installed distribution (one package per distribution),
   and the source files of any extra roots in the six CodeSearchNet languages (one
   package per top-level entry); test folders are left out. Each file is a dict
   {path, package, relpath}.
2. `extract`: fan the files out over Ray Data tasks (`map_files`, which the repository
   index uses too); each returns its pairs (`EXTRACTED_SCHEMA`, code ids computed in the
   worker) and one row per file (`FILE_SCHEMA`) saying what it dropped and why, or its
   parse error as a `BadRecord` text naming file and line. Python goes through
   `r2ps.data.pysource` (ast); Go, Java, JavaScript/TypeScript, PHP and Ruby through the
   tree-sitter extractor (`r2ps.data.extract`), whose doc comments (Javadoc, JSDoc,
   PHPDoc, Go doc comments, RDoc/YARD) give the queries.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import sysconfig
import tokenize
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from r2ps.data import codetext
from r2ps.data.corpus_config import CorpusConfig
from r2ps.data.errors import BadRecord, check_text, printable, unencodable
from r2ps.data.extract import extract_units, pairs_from_units
from r2ps.data.grammars import BY_EXTENSION, LANGUAGE_LABEL, grammar_for
from r2ps.data.pysource import ExtractConfig, Extracted, extract_pairs
from r2ps.storage import input_file

TEST_DIRS = {"test", "tests"}

EXTRACTED_SCHEMA = pa.schema(
    [
        ("query", pa.string()),
        ("code", pa.string()),
        ("code_id", pa.string()),
        ("match_key", pa.string()),
        ("raw_hash", pa.string()),
        ("package", pa.string()),
        ("path", pa.string()),
        ("line", pa.int64()),
        ("func_name", pa.string()),
        ("language", pa.string()),
    ]
)
FILE_SCHEMA = pa.schema(
    [
        ("package", pa.string()),
        ("path", pa.string()),
        ("error", pa.string()),
        ("dropped", pa.string()),
    ]
)


# ---------------------------------------------------------------- 1. discovery


def _root_files(root: Path, prefix: str = "", suffixes: tuple[str, ...] = (".py",)) -> list[dict]:
    """Source files under `root` (by suffix), packaged by their top-level entry (skipping
    test folders)."""
    out = []
    paths = (p for p in root.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
    for path in sorted(paths):
        rel = path.relative_to(root)
        if TEST_DIRS & set(rel.parts[:-1]) or "site-packages" in rel.parts:
            continue
        top = rel.parts[0].removesuffix(path.suffix) if len(rel.parts) == 1 else rel.parts[0]
        out.append({"path": str(path), "package": prefix + top, "relpath": str(rel)})
    return out


def _distribution_files() -> list[dict]:
    """.py files of every installed distribution, packaged by distribution name."""
    out, seen = [], set()
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if not name or name in seen or not dist.files:
            continue
        seen.add(name)
        for f in dist.files:
            if f.suffix != ".py" or TEST_DIRS & set(f.parts[:-1]):
                continue
            path = Path(dist.locate_file(f))
            if path.is_file():
                out.append({"path": str(path), "package": name, "relpath": str(f)})
    return sorted(out, key=lambda r: (r["package"], r["relpath"]))


def discover_sources(cfg: CorpusConfig) -> list[dict]:
    files: list[dict] = []
    if cfg.stdlib:
        files += _root_files(Path(sysconfig.get_paths()["stdlib"]), prefix="stdlib/")
    if cfg.site_packages:
        files += _distribution_files()
    for root in cfg.roots:
        if not Path(root).is_dir():
            raise FileNotFoundError(f"source root {root!r} is not a directory")
        files += _root_files(Path(root), suffixes=tuple(BY_EXTENSION))
    # A file reachable twice (a distribution inside a root) is read once.
    unique = list({f["path"]: f for f in files}.values())
    return unique[: cfg.max_files] if cfg.max_files else unique


# ---------------------------------------------------------------- 2. extraction


def read_source(path: str) -> str:
    """A source file's text, decoded by its PEP 263 cookie (or UTF-8), newlines made `\n`.

    A file under a staged URI root that this node has no copy of (a task on another node
    than the driver's) is read straight from its URI.
    """
    found = input_file(path)
    if isinstance(found, str):
        with tokenize.open(found) as fh:
            return fh.read()
    with found:
        data = found.read()
    encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    return io.TextIOWrapper(io.BytesIO(data), encoding).read()


def extract_files(files: list[dict], cfg: ExtractConfig) -> tuple[pa.Table, pa.Table]:
    """Pairs of a batch of files, and one row per file: its parse error or drop counts,
    plus one error row per pair left out for text UTF-8 cannot encode (a docstring's
    `\\ud800` escape), naming file, line and field. A file whose name is not UTF-8 is
    not read: it could not be stored (its row names it with escapes)."""
    pairs, file_rows = [], []
    for f in files:
        bad_name = unencodable(f["relpath"]) or unencodable(f["package"])
        if bad_name:
            error = BadRecord(f["path"], None, "path", bad_name[1])
            file_rows.append({**_file_key(f), "error": str(error), "dropped": "{}"})
            continue
        grammar = grammar_for(f["path"])
        language = LANGUAGE_LABEL[grammar.name] if grammar else "python"
        try:
            if language == "python":
                result = extract_pairs(read_source(f["path"]), f["path"], cfg)
            else:
                result = _tree_sitter_pairs(f, grammar, cfg)
        except (SyntaxError, ValueError, OSError) as e:  # UnicodeError is a ValueError
            error = BadRecord(
                f["path"], getattr(e, "lineno", None), None, f"{type(e).__name__}: {e}"
            )
            file_rows.append({**_file_key(f), "error": str(error), "dropped": "{}"})
            continue
        file_rows.append({**_file_key(f), "error": None, "dropped": json.dumps(result.dropped)})
        for p in result.pairs:
            try:
                for name in ("query", "code", "func_name"):
                    check_text(p[name], f["path"], p["line"], name)
            except BadRecord as error:
                file_rows.append({**_file_key(f), "error": str(error), "dropped": "{}"})
                continue
            code = p["code"]
            pairs.append(
                {
                    "query": p["query"],
                    "code": code,
                    "code_id": codetext.code_id(code, language),
                    "match_key": codetext.code_match_key(code, language),
                    "raw_hash": codetext.content_hash(code),
                    "package": f["package"],
                    "path": f["relpath"],
                    "line": p["line"],
                    "func_name": p["func_name"],
                    "language": language,
                }
            )
    return (
        pa.Table.from_pylist(pairs, EXTRACTED_SCHEMA),
        pa.Table.from_pylist(file_rows, FILE_SCHEMA),
    )


def _tree_sitter_pairs(f: dict, grammar, cfg: ExtractConfig) -> Extracted:
    """Pairs of a Go/Java/JS/TS/PHP/Ruby file; syntax errors are recovered, not raised."""
    found = input_file(f["path"])
    if isinstance(found, str):
        with open(found, "rb") as fh:
            data = fh.read()
    else:
        with found:
            data = found.read()
    pairs, dropped = pairs_from_units(extract_units(data, f["relpath"], grammar).units, cfg)
    return Extracted(pairs=pairs, dropped=dropped)


def _file_key(f: dict) -> dict:
    return {"package": printable(f["package"]), "path": printable(f["relpath"])}


def _extract_batch(batch: pa.Table, cfg: ExtractConfig) -> pa.Table:
    """Ray Data UDF: both outputs in one table, told apart by `kind`."""
    pairs, file_rows = extract_files(batch.to_pylist(), cfg)
    n_p, n_f = pairs.num_rows, file_rows.num_rows
    merged = pa.concat_tables(
        [
            pairs.append_column("error", pa.nulls(n_p, pa.string())).append_column(
                "dropped", pa.nulls(n_p, pa.string())
            ),
            _widen(file_rows),
        ]
    )
    kinds = pa.array(["pair"] * n_p + ["file"] * n_f, pa.string())
    return merged.append_column("kind", kinds)


def _widen(file_rows: pa.Table) -> pa.Table:
    n = file_rows.num_rows
    cols = {}
    for f in EXTRACTED_SCHEMA:
        cols[f.name] = (
            file_rows[f.name] if f.name in file_rows.column_names else pa.nulls(n, f.type)
        )
    cols["error"], cols["dropped"] = file_rows["error"], file_rows["dropped"]
    return pa.table(cols)


def map_files(
    files: list[dict], fn, fn_kwargs: dict, files_per_task: int, workers: int = 0
) -> list[pa.Table]:
    """`fn(batch of file rows, **fn_kwargs) -> pa.Table` over Ray Data tasks, one block of
    `files_per_task` files each, at most `workers` at a time (0: one per CPU of the cluster);
    the tables in file order. Shared by the corpus builder and the repository index."""
    import ray

    workers = workers or int(ray.available_resources().get("CPU", 1)) or 1
    n_blocks = max(1, -(-len(files) // files_per_task))
    ds = ray.data.from_items(files, override_num_blocks=n_blocks)
    ds = ds.map_batches(
        fn,
        fn_kwargs=fn_kwargs,
        batch_size=files_per_task,
        batch_format="pyarrow",
        compute=ray.data.TaskPoolStrategy(size=workers),
        num_cpus=1,
    )
    return ray.get(ds.to_arrow_refs())


def extract(files: list[dict], cfg: CorpusConfig) -> tuple[pa.Table, pa.Table]:
    """Run extraction over Ray Data tasks; returns (pairs, per-file records)."""
    tables = map_files(files, _extract_batch, {"cfg": cfg.extract}, cfg.files_per_task, cfg.workers)
    table = pa.concat_tables(tables)
    is_pair = pc.equal(table["kind"], "pair")
    pairs = table.filter(is_pair).select(EXTRACTED_SCHEMA.names)
    file_rows = table.filter(pc.invert(is_pair)).select(FILE_SCHEMA.names)
    # Ray Data does not promise order across blocks: sort so every run is identical.
    pairs = pairs.sort_by([("package", "ascending"), ("path", "ascending"), ("line", "ascending")])
    return pairs, file_rows
