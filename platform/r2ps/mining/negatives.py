"""The mining job's output on disk, its counts, and the one reader of it (the ranker).

`<out>/negatives/` holds a Parquet shard per `shard_queries` queries (`NEGATIVES_SCHEMA`:
a row per (query, positive) pair with the PS window kept for it: candidate ids, their
ranks and scores, and the positive's score). Each shard is written whole (a temporary
name, then a rename) with its counts in the file's metadata (`STATS_KEY`), so a crashed
run resumes at the first missing shard and the summary still adds up every shard.
`settings.json` beside them records what decided their content: shards mined with other
settings are refused (`MiningSettingsError`), never mixed. `<out>/mine_summary.json` adds
the shards' counts up (`summarize`; `format_summary` is what the job prints). The ranker
reads the rows with `read_negatives` and finds the mined split with `named_split`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from r2ps.data.schema import MINE_SUMMARY
from r2ps.mining.ps import FILTERS, GUARDS, Kept, sample_negatives
from r2ps.storage import atomic_path, write_text_atomic

NEGATIVES_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("code_id", pa.string(), nullable=False),
        pa.field("cand_ids", pa.list_(pa.string()), nullable=False),
        pa.field("cand_ranks", pa.list_(pa.int32()), nullable=False),
        pa.field("cand_scores", pa.list_(pa.float32()), nullable=False),
        pa.field("pos_score", pa.float32(), nullable=False),
    ]
)
STATS_KEY = b"r2ps_mine_stats"


# ---------------------------------------------------------------- the shards


class MiningSettingsError(RuntimeError):
    """The output folder holds shards mined with other settings: they must not be mixed."""


def check_settings(neg_dir: Path, settings: dict) -> None:
    """Record `settings` in `<neg_dir>/settings.json`, first refusing (MiningSettingsError)
    shards mined with other ones; a crash's half-written temporary files are removed."""
    path = neg_dir / "settings.json"
    shards = sorted(neg_dir.glob("part-*.parquet"))
    if path.exists():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            raise MiningSettingsError(
                f"{neg_dir} holds {len(shards)} shard(s) mined with other settings "
                f"(differing: {', '.join(diff)}); use a new --out or delete that folder"
            )
    elif shards:
        raise MiningSettingsError(
            f"{neg_dir} holds shards but no settings.json: cannot tell how they were mined"
        )
    neg_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(settings, indent=1, sort_keys=True, default=str))
    for stale in neg_dir.glob("*.tmp-*"):  # a crash between write and rename
        stale.unlink()


def write_shard(path: Path, table: pa.Table, stats: dict) -> None:
    """Write a shard to a temporary name, then rename: a shard on disk is always whole."""
    meta = {STATS_KEY: json.dumps(stats).encode()}
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(meta), tmp)


def read_shard_stats(path: Path) -> dict | None:
    """A finished shard's stats (kept in its Parquet metadata), or None if it is unreadable."""
    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[STATS_KEY])
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None


# ---------------------------------------------------------------- counts and the summary


def empty_stats() -> dict:
    """A shard's counts before its first pair (`count_pair` adds to them)."""
    return {
        "pairs": 0,
        "rows": 0,
        "empty": 0,
        "below_m": 0,
        "kept_sum": 0,
        "kept_min": None,
        "kept_max": 0,
        "removed": dict.fromkeys(GUARDS + FILTERS, 0),
        "draw_rank_sum": 0.0,
        "draw_score_sum": 0.0,
        "draws": 0,
    }


def count_pair(stats: dict, kept: Kept, m: int, inv_tau: float, rng: np.random.Generator) -> None:
    """Add one pair's filter result to the shard stats, with one seeded preview draw of
    `m` negatives at `inv_tau` (as the ranker will draw them)."""
    n = int(kept.positions.size)
    stats["pairs"] += 1
    for reason, count in kept.removed.items():
        stats["removed"][reason] += count
    if n == 0:
        stats["empty"] += 1
        stats["below_m"] += 1
        return
    stats["rows"] += 1
    stats["below_m"] += int(n < m)
    stats["kept_sum"] += n
    stats["kept_min"] = n if stats["kept_min"] is None else min(stats["kept_min"], n)
    stats["kept_max"] = max(stats["kept_max"], n)
    drawn = sample_negatives(kept.scores, m, inv_tau, rng)
    stats["draw_rank_sum"] += float(kept.ranks[drawn].sum())
    stats["draw_score_sum"] += float(kept.scores[drawn].sum())
    stats["draws"] += int(drawn.size)


def merge_stats(total: dict, part: dict) -> None:
    """Add a shard's counts (`part`) to the run's (`total`, which starts as {"removed": {}})."""
    for key, value in part.items():
        if key == "removed":
            for reason, count in value.items():
                total["removed"][reason] = total["removed"].get(reason, 0) + count
        elif key == "kept_min":
            if value is not None:
                cur = total.get("kept_min")
                total["kept_min"] = value if cur is None else min(cur, value)
        elif key == "kept_max":
            total["kept_max"] = max(total.get("kept_max", 0), value)
        else:
            total[key] = total.get(key, 0) + value


def summarize(settings: dict, manifest: dict, t: dict, window: tuple, n: int) -> dict:
    """mine_summary.json's counts: the run's `settings` (what decided the shards' content,
    `pairs` resolved), the index `manifest`, the shards' counts added up (`t`), the rank
    `window` (start, end) and the number `n` of codes that could be candidates.
    """
    rows = t.get("rows", 0)
    draws = t.get("draws", 0)
    return {
        "pairs": settings["pairs"],
        "model": manifest.get("model_path") or settings["model"],
        "settings": settings,
        "queries": t.get("queries", 0),
        "pairs_mined": t.get("pairs", 0),
        "rows": rows,
        "pairs_without_candidates": t.get("empty", 0),
        "window": {"start": window[0], "end": window[1], "candidate_codes": n},
        "candidates_per_row": {
            "mean": round(t.get("kept_sum", 0) / rows, 3) if rows else 0.0,
            "min": t.get("kept_min"),
            "max": t.get("kept_max", 0),
        },
        "pairs_below_m": t.get("below_m", 0),
        "removed": t.get("removed", {}),
        "preview_draw": {
            "m": settings["m"],
            "inv_tau": settings["inv_tau"],
            "mean_rank": round(t.get("draw_rank_sum", 0.0) / draws, 3) if draws else None,
            "mean_score": round(t.get("draw_score_sum", 0.0) / draws, 4) if draws else None,
        },
        "index": {k: manifest.get(k) for k in ("kind", "count", "dim", "model_path")},
    }


def format_summary(summary: dict) -> str:
    """The summary as a few readable lines (the job prints this)."""
    c, w, s = summary["candidates_per_row"], summary["window"], summary["seconds"]
    removed = ", ".join(f"{k} {v}" for k, v in summary["removed"].items())
    lines = [
        f"mined {summary['queries']} queries, {summary['pairs_mined']} pairs -> "
        f"{summary['rows']} rows ({summary['pairs_without_candidates']} pairs without candidates)",
        f"window [{w['start']}, {w['end']}) over {w['candidate_codes']} candidate codes; "
        f"kept per row mean {c['mean']} min {c['min']} max {c['max']}; "
        f"{summary['pairs_below_m']} pairs below m={summary['preview_draw']['m']}",
        f"removed: {removed}",
        "seconds: " + ", ".join(f"{k} {v}" for k, v in s.items()),
        f"shards: {summary['shards']}",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- reading them back


def read_negatives(
    out: str | Path, columns: Sequence[str] = tuple(NEGATIVES_SCHEMA.names)
) -> pa.Table:
    """`columns` of every mined row of `<out>/negatives/`, in shard order (what the ranker reads).

    Each file is checked against the mining schema: a missing column, or a list column
    that is not a list, fails naming the file and the column.
    """
    parts = sorted(Path(out, "negatives").glob("part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"{out}/negatives: no part-*.parquet (run jobs/mine.py first)")
    schema = pa.schema([NEGATIVES_SCHEMA.field(name) for name in columns])
    tables = []
    for path in parts:
        table = pq.read_table(path)
        for col in schema:
            if col.name not in table.column_names:
                raise ValueError(f"{path}: missing column {col.name!r} (have {table.column_names})")
            tp = table.schema.field(col.name).type
            if pa.types.is_list(col.type) and not (
                pa.types.is_list(tp) or pa.types.is_large_list(tp)
            ):
                raise ValueError(f"{path}: column {col.name!r} must be a list, got {tp}")
        tables.append(table.select(list(columns)).cast(schema))
    return pa.concat_tables(tables)


def named_split(negatives: str | Path) -> Path:
    """The split folder `<negatives>/mine_summary.json` names (`pairs`), whether or not it
    is there (a split mining staged from a URI is staged again by jobs/train.py).

    A relative path is taken from the working directory, or else from the negatives folder.
    """
    summary_path = Path(negatives) / MINE_SUMMARY
    if not summary_path.exists():
        raise FileNotFoundError(f"{summary_path} not found: is {negatives} a mining output?")
    summary = json.loads(summary_path.read_text())
    if not isinstance(summary, dict) or not summary.get("pairs"):
        raise ValueError(f"{summary_path}: field 'pairs' (the mined split folder) is missing")
    folder = Path(summary["pairs"])
    if not folder.is_absolute() and not folder.exists():
        folder = Path(negatives) / folder
    return folder
