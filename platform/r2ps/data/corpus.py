"""The corpus builder job: Python source trees or pair files -> deduplicated,
package-split Parquet corpus (`jobs/build_corpus.py`, settings in
`r2ps.data.corpus_config`).

Stages, each a function of its own module so a test can run it alone:
1-2. `sources.discover_sources`, `sources.extract`: the files of the source trees and
   their pairs over Ray Data tasks; or, from users' own pair files, `read_pair_files`
   (readers of `r2ps.data.readers`), bucketed by code since a file is not a package.
3-4. `dedupe.dedupe`, `dedupe.exclude`: one row per normalised code; none that is in an
   evaluation pool.
5-6. `splits.assign_splits`, `splits.write_corpus`: whole packages to train/valid/test,
   one folder per split.
Then `stats.json` (`split_stats`, `format_stats`) and `skipped.jsonl` (every file that
could not be parsed, every bad record).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from r2ps.data import codetext
from r2ps.data.corpus_config import CorpusConfig
from r2ps.data.dedupe import dedupe, exclude
from r2ps.data.errors import BadRecord
from r2ps.data.readers import collect_pairs, pairs_dataset
from r2ps.data.schema import CORPUS_STATS, SPLITS
from r2ps.data.sources import EXTRACTED_SCHEMA, FILE_SCHEMA, discover_sources, extract
from r2ps.data.splits import assign_splits, write_corpus
from r2ps.log import get_logger

log = get_logger(__name__)


# ---------------------------------------------------------------- statistics


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


# ---------------------------------------------------------------- the job


def read_pair_files(cfg: CorpusConfig) -> tuple[pa.Table, pa.Table]:
    """Users' own (query, code) pairs, read over Ray Data (one task per file, readers of
    `r2ps.data.readers`), in the extracted rows' schema; and one row per bad record.

    A file is not a package: each pair goes to a seeded bucket by its code's match key, so
    `assign_splits` splits by bucket and every copy of a code lands in the same split.
    """
    kwargs = {}
    if cfg.pairs_format != "csn":
        kwargs = {
            "query_field": cfg.query_field,
            "code_field": cfg.code_field,
            "language": cfg.pairs_language,
        }
    ds = pairs_dataset(cfg.pairs, cfg.pairs_format, skip_bad=cfg.skip_bad, **kwargs)
    pairs, skipped = collect_pairs(ds)
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
