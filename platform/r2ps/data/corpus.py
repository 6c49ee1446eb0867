"""The corpus builder: Python source trees -> deduplicated, package-split Parquet corpus.

Stages, each a function so a test can run it alone:
1. `discover_sources`: list the .py files of the standard library (one package per
   top-level module), of every installed distribution (one package per distribution),
   and the source files of any extra roots in the six CodeSearchNet languages (one
   package per top-level entry).
2. `extract`: fan the files out over Ray Data tasks; each returns its pairs (with code
   ids computed in the worker) and one record per file saying what it dropped and why.
   Python goes through `r2ps.data.pysource` (ast); Go, Java, JavaScript/TypeScript, PHP
   and Ruby through the tree-sitter extractor (`r2ps.data.extract`), whose doc comments
   (Javadoc, JSDoc, PHPDoc, Go doc comments, RDoc/YARD) give the queries.
3. `dedupe`: one row per normalised code (exact and whitespace/comment-insensitive
   duplicates collapse to one code id); the copy kept is the first by package and path,
   so vendored copies never straddle two splits.
4. `exclude`: drop every code that also appears in an evaluation pool.
5. `assign_splits`: whole packages go to train/valid/test, never single rows.
6. `write_corpus`: one folder per split in the data model of `r2ps.data.schema`, plus
   `stats.json` and `skipped.jsonl` (every file that could not be parsed).
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import sys
import sysconfig
import time
import tokenize
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from r2ps.config import Need, needs
from r2ps.data import codetext
from r2ps.data.errors import BadRecord, check_text, check_utf8, printable, unencodable
from r2ps.data.extract import extract_units, pairs_from_units
from r2ps.data.grammars import BY_EXTENSION, LANGUAGE_LABEL, grammar_for
from r2ps.data.pysource import ExtractConfig, Extracted, extract_pairs
from r2ps.data.schema import CORPUS_STATS, PAIR_SCHEMA, SPLITS, RetrievalSet, split_pairs
from r2ps.log import get_logger
from r2ps.storage import input_file

log = get_logger(__name__)

QUERY_NAMESPACE = "python-sources"
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


@dataclass
class CorpusConfig:
    """Settings of `jobs/build_corpus.py`."""

    out: str = field(default="runs/corpus", metadata={"help": "output folder"})
    stdlib: bool = field(default=True, metadata={"help": "extract from the standard library"})
    site_packages: bool = field(
        default=True, metadata={"help": "extract from every installed distribution"}
    )
    roots: list[str] = field(
        default_factory=list, metadata={"help": "extra source roots (one package per entry)"}
    )
    exclude: list[str] = field(
        default_factory=list,
        metadata={
            "help": "evaluation pools whose codes must not be in the corpus (CoSQA dir or split dir)"
        },
    )
    valid_fraction: float = 0.05
    test_fraction: float = 0.05
    max_eval_package_fraction: float = field(
        default=0.02,
        metadata={"help": "packages larger than this share of all pairs always go to train"},
    )
    seed: int = 0
    workers: int = field(default=0, metadata={"help": "parallel extraction tasks (0: all CPUs)"})
    files_per_task: int = 64
    max_files: int = field(default=0, metadata={"help": "use only the first N files (0: all)"})
    strict: bool = field(
        default=False,
        metadata={"help": "fail on a source file that does not parse (default: report it)"},
    )
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    # your own pairs instead of source trees
    pairs: list[str] = field(
        default_factory=list,
        metadata={"help": "files or folders of (query, code) pairs: the corpus is built from "
                  "them instead of source trees"},
    )  # fmt: skip
    pairs_format: str = field(
        default="jsonl", metadata={"help": "pairs: csn (CodeSearchNet JSONL) | jsonl | parquet"}
    )
    query_field: str = field(default="query", metadata={"help": "pairs: the query column"})
    code_field: str = field(default="code", metadata={"help": "pairs: the code column"})
    pairs_language: str = field(
        default="python", metadata={"help": "pairs (jsonl/parquet): the code's language"}
    )
    skip_bad: bool = field(
        default=False, metadata={"help": "pairs: skip (and count) bad records instead of failing"}
    )
    pair_buckets: int = field(
        default=100,
        metadata={"help": "pairs: split in this many seeded buckets of codes (a file is not "
                  "a package)"},
    )  # fmt: skip

    def inputs(self) -> list[Need]:
        """Every path the build reads (`config.check_inputs`, before Ray starts); the
        evaluation pools too, although they are read last (`exclude`)."""
        return [
            *needs(self, "roots", what="a source folder"),
            *needs(self, "pairs", what="a pairs file or folder"),
            *pool_needs(self, "exclude"),
        ]


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


# ---------------------------------------------------------------- 3-5. dedupe, exclude, split


def dedupe(pairs: pa.Table) -> tuple[pa.Table, dict]:
    """First row per code id; counts exact and normalised-only duplicates removed."""
    idx = pa.array(np.arange(pairs.num_rows))
    first = (
        pairs.select(["code_id"])
        .append_column("_row", idx)
        .group_by("code_id")
        .aggregate([("_row", "min")])
    )
    keep = pc.sort_indices(first["_row_min"])
    kept = pairs.take(pc.take(first["_row_min"], keep))
    n_raw = len(pc.unique(pairs["raw_hash"]))
    info = {
        "before": pairs.num_rows,
        "after": kept.num_rows,
        "exact_duplicates": pairs.num_rows - n_raw,
        "normalised_duplicates": n_raw - kept.num_rows,
    }
    return kept, info


def pool_needs(cfg: object, setting: str) -> list[Need]:
    """What each evaluation pool of `cfg.<setting>` must be for `pool_match_keys`: a
    Parquet file, or a folder holding a CoSQA pool or a split's codes."""
    from r2ps.data.readers import COSQA_POOL

    what = "a CoSQA folder, a split folder or a .parquet file"
    folder = ((COSQA_POOL, "codes.parquet"),)  # either one
    return [
        need._replace(holds=() if need.path.endswith(".parquet") else folder)
        for need in needs(cfg, setting, what=what)
    ]


def pool_match_keys(pool: str | Path) -> set[str]:
    """Docstring-insensitive keys of every code in an evaluation pool.

    A pool is a CoSQA folder (`code_idx_map.txt`), an r2ps split folder
    (`codes.parquet`), or a Parquet file with a `code` column.
    """
    from r2ps.data import readers

    pool = Path(pool)
    if (pool / "code_idx_map.txt").exists():
        codes = readers.cosqa_pool_codes(pool)
    elif (pool / "codes.parquet").exists():
        codes = _parquet_codes(pool / "codes.parquet")
    elif pool.suffix == ".parquet" and pool.is_file():
        codes = _parquet_codes(pool)
    else:
        raise FileNotFoundError(
            f"evaluation pool {pool}: expected a CoSQA folder (code_idx_map.txt), a split "
            "folder (codes.parquet) or a Parquet file with a 'code' column"
        )
    return {codetext.code_match_key(c) for c in codes}


def _parquet_codes(path: Path) -> list[str]:
    """A Parquet pool's `code` column; bytes that are not UTF-8 raise BadRecord (row, field)."""
    column = pq.read_table(path, columns=["code"])["code"]
    check_utf8(column, path, "code")
    return column.to_pylist()


def exclude(pairs: pa.Table, pools: list[str]) -> tuple[pa.Table, dict[str, int]]:
    removed: dict[str, int] = {}
    for pool in pools:
        keys = pa.array(sorted(pool_match_keys(pool)), pa.string())
        hit = pc.is_in(pairs["match_key"], value_set=keys)
        removed[str(pool)] = pc.sum(hit).as_py() or 0
        pairs = pairs.filter(pc.invert(hit))
    return pairs, removed


def assign_splits(package_sizes: dict[str, int], cfg: CorpusConfig) -> dict[str, str]:
    """Package -> split. Whole packages only, in a seeded pseudo-random order.

    Valid and test are filled to their share of pairs with packages small enough that
    one package cannot dominate an evaluation split; everything else trains.
    """
    total = sum(package_sizes.values())
    cap = cfg.max_eval_package_fraction * total
    targets = {"valid": cfg.valid_fraction * total, "test": cfg.test_fraction * total}
    filled = dict.fromkeys(targets, 0)
    order = sorted(package_sizes, key=lambda p: codetext.content_hash(f"{cfg.seed}:{p}"))
    split_of = {}
    for pkg in order:
        size = package_sizes[pkg]
        split_of[pkg] = "train"
        if size > cap:
            continue
        for split in ("valid", "test"):
            if filled[split] + size <= targets[split] * 1.1 and filled[split] < targets[split]:
                split_of[pkg] = split
                filled[split] += size
                break
    return split_of


def to_pairs(extracted: pa.Table) -> pa.Table:
    """Extracted rows in the shared PAIR schema (query ids are text hashes)."""
    qids = [codetext.query_id(q, QUERY_NAMESPACE) for q in extracted["query"].to_pylist()]
    return pa.table(
        {
            "query_id": pa.array(qids, pa.string()),
            "query": extracted["query"],
            "code_id": extracted["code_id"],
            "code": extracted["code"],
            "language": pc.fill_null(extracted["language"], "python"),
            "source": extracted["package"],
        },
        schema=PAIR_SCHEMA,
    )


# ---------------------------------------------------------------- 6. statistics and output


def _histogram(values: list[int], edges: list[int]) -> dict[str, int]:
    counts, _ = np.histogram(values, bins=[*edges, np.inf])
    labels = [f"{a}-{b - 1}" for a, b in zip(edges, edges[1:], strict=False)] + [f"{edges[-1]}+"]
    return dict(zip(labels, (int(c) for c in counts), strict=True))


def split_stats(table: pa.Table) -> dict:
    q_tokens = [len(q.split()) for q in table["query"].to_pylist()]
    c_lines = [c.count("\n") + 1 for c in table["code"].to_pylist()]
    per_pkg = Counter(table["package"].to_pylist())
    return {
        "pairs": table.num_rows,
        "packages": len(per_pkg),
        "top_packages": dict(per_pkg.most_common(10)),
        "query_tokens": _histogram(q_tokens, [0, 5, 10, 20, 40, 80]),
        "code_lines": _histogram(c_lines, [0, 5, 10, 20, 40, 80, 160]),
    }


def format_stats(stats: dict) -> str:
    lines = [
        f"corpus: {stats['out']}  ({stats['seconds']:.1f} s, {stats['pairs_per_s']:.0f} pairs/s)"
    ]
    lines.append(
        f"files: {stats['files']} read, {stats['files_unparsed']} not parsed (see skipped.jsonl); "
        f"functions dropped: " + ", ".join(f"{k}={v}" for k, v in stats["dropped"].items())
    )
    d = stats["dedupe"]
    lines.append(
        f"dedupe: {d['before']} -> {d['after']} ({d['exact_duplicates']} exact, "
        f"{d['normalised_duplicates']} normalised duplicates); excluded: {stats['excluded'] or 'none'}"
    )
    lines.append(f"{'split':<6} {'pairs':>7} {'packages':>9}  top packages")
    for split in SPLITS:
        s = stats["splits"][split]
        top = ", ".join(f"{p} {n}" for p, n in list(s["top_packages"].items())[:5])
        lines.append(f"{split:<6} {s['pairs']:>7} {s['packages']:>9}  {top}")
    for key, title in (("query_tokens", "query tokens"), ("code_lines", "code lines")):
        lines.append(f"{title} (train):")
        hist = stats["splits"]["train"][key]
        peak = max(hist.values()) or 1
        for label, n in hist.items():
            lines.append(f"  {label:>8} {n:>7} {'#' * round(40 * n / peak)}")
    return "\n".join(lines)


def write_corpus(table: pa.Table, split_of: dict[str, str], out: Path) -> dict[str, pa.Table]:
    splits = pa.array([split_of[p] for p in table["package"].to_pylist()], pa.string())
    by_split = {s: table.filter(pc.equal(splits, s)) for s in SPLITS}
    for split, rows in by_split.items():
        RetrievalSet.write(split_pairs(to_pairs(rows)), out / split)
        pq.write_table(
            rows.select(["code_id", "package", "path", "line", "func_name"]),
            out / split / "provenance.parquet",
        )
    return by_split


def read_pair_files(cfg: CorpusConfig) -> tuple[pa.Table, pa.Table]:
    """Users' own (query, code) pairs, read over Ray Data (one task per file, readers of
    `r2ps.data.readers`), in the extracted rows' schema; and one row per bad record.

    A file is not a package: each pair goes to a seeded bucket by its code's match key, so
    `assign_splits` splits by bucket and every copy of a code lands in the same split.
    """
    from r2ps.data import readers

    kwargs = {}
    if cfg.pairs_format != "csn":
        kwargs = {
            "query_field": cfg.query_field,
            "code_field": cfg.code_field,
            "language": cfg.pairs_language,
        }
    ds = readers.pairs_dataset(cfg.pairs, cfg.pairs_format, skip_bad=cfg.skip_bad, **kwargs)
    pairs, skipped = readers.collect_pairs(ds)
    rows = []
    for r in pairs.to_pylist():
        key = codetext.code_match_key(r["code"], r["language"])
        bucket = int(codetext.content_hash(f"{cfg.seed}:{key}")[:8], 16) % cfg.pair_buckets
        rows.append(
            {
                "query": r["query"],
                "code": r["code"],
                "code_id": r["code_id"],
                "match_key": key,
                "raw_hash": codetext.content_hash(r["code"]),
                "package": f"bucket-{bucket:03d}",
                "path": r["source"],
                "line": None,
                "func_name": None,
                "language": r["language"],
            }
        )
    bad = pa.Table.from_pylist(
        [
            {
                "package": "",
                "path": s.file,
                "error": str(BadRecord(s.file, s.line, s.field, s.message)),
                "dropped": "{}",
            }
            for s in skipped.skipped
        ],
        schema=FILE_SCHEMA,
    )
    return pa.Table.from_pylist(rows, schema=EXTRACTED_SCHEMA), bad


def build_corpus(cfg: CorpusConfig) -> dict:
    """Run every stage; returns the statistics (also written to `<out>/stats.json`)."""
    start = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.pairs:
        log.info("reading pairs from %s (%s)", cfg.pairs, cfg.pairs_format)
        extracted, file_rows = read_pair_files(cfg)
        return _finish(cfg, out, start, extracted, file_rows, files=len(cfg.pairs))
    files = discover_sources(cfg)
    if not files:
        raise ValueError("no Python source files found: check --stdlib/--site-packages/--roots")
    log.info("extracting from %d files over Ray Data", len(files))
    extracted, file_rows = extract(files, cfg)
    return _finish(cfg, out, start, extracted, file_rows, files=len(files))


def _finish(
    cfg: CorpusConfig, out: Path, start: float, extracted: pa.Table, file_rows: pa.Table, files: int
) -> dict:
    """Stages 3-6 on extracted rows: dedupe, exclude, split, write, statistics."""
    errors = [e for e in file_rows["error"].to_pylist() if e]
    with open(out / "skipped.jsonl", "w") as f:
        for e in errors:
            f.write(json.dumps({"error": e}) + "\n")
    if errors and cfg.strict:
        raise SyntaxError(f"{len(errors)} source file(s) did not parse; first: {errors[0]}")
    dropped: Counter = Counter()
    for d in file_rows["dropped"].to_pylist():
        dropped.update(json.loads(d))
    kept, dedupe_info = dedupe(extracted)
    kept, excluded = exclude(kept, cfg.exclude)
    sizes = Counter(kept["package"].to_pylist())
    split_of = assign_splits(dict(sizes), cfg)
    by_split = write_corpus(kept, split_of, out)
    seconds = time.time() - start
    stats = {
        "out": str(out),
        "config": asdict(cfg),
        "python": sys.version.split()[0],
        "files": files,
        "files_unparsed": len(errors),
        "dropped": dict(dropped.most_common()),
        "extracted_pairs": extracted.num_rows,
        "dedupe": dedupe_info,
        "excluded": excluded,
        "splits": {s: split_stats(t) for s, t in by_split.items()},
        "split_of_package": split_of,
        "seconds": seconds,
        "pairs_per_s": extracted.num_rows / seconds,
    }
    (out / CORPUS_STATS).write_text(json.dumps(stats, indent=1))
    return stats
