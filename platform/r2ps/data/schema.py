"""The one data model every job reads and writes (Arrow in memory, Parquet on disk).

- corpus rows:    code_id, code, language, source   (`source` says where the code came
                  from: a package name, a data set, a file)
- query rows:     query_id, query
- relevance rows: query_id, code_id                 (many-to-many: a query may have
                  several gold codes, a code may answer several queries)

A *pair* row is the unit readers produce (one query with one gold code); `split_pairs`
turns pairs into the three tables above. A corpus directory holds one folder per split
(`train/`, `valid/`, `test/`, or `pool/` for an evaluation set), each with
`codes.parquet`, `queries.parquet` and `qrels.parquet`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

CODE_SCHEMA = pa.schema(
    [
        pa.field("code_id", pa.string(), nullable=False),
        pa.field("code", pa.string(), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)
QUERY_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
    ]
)
QREL_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("code_id", pa.string(), nullable=False),
    ]
)
PAIR_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field("code_id", pa.string(), nullable=False),
        pa.field("code", pa.string(), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)

TABLE_FILES = {"codes": CODE_SCHEMA, "queries": QUERY_SCHEMA, "qrels": QREL_SCHEMA}
# The split folders of a corpus, and the summary each stage writes beside its outputs.
SPLITS = ("train", "valid", "test")
CORPUS_STATS = "stats.json"  # data/corpus.py
MINE_SUMMARY = "mine_summary.json"  # mining/mine.py
TRAIN_SUMMARY = "train_summary.json"  # train/launch.py, beside the exported model
MODEL_CONFIG = "config.json"  # in every model folder (Hugging Face format)
HEAD_FILE = "head.safetensors"  # a trained ranker's scoring head (r2ps.models.cross)


def split_files(split: str = "") -> tuple[str, ...]:
    """The tables of a split folder (`codes.parquet`, `queries.parquet`, `qrels.parquet`),
    inside `<split>/` when a split is named (a corpus's `train/codes.parquet`, ...): what
    a job that reads the split checks for before it starts (`config.Need`)."""
    return tuple(f"{split}/{t}.parquet" if split else f"{t}.parquet" for t in TABLE_FILES)


def codes_file(codes: str | Path, columns: tuple[str, ...] = ("code_id", "code")) -> Path:
    """The codes Parquet file a `codes` setting names (a split folder or the file itself),
    checked to exist, to be Parquet and to hold `columns`; absolute.

    Raises FileNotFoundError or ValueError naming the path (and the missing columns).
    """
    if not str(codes):
        raise ValueError("codes: no split folder or codes .parquet file given")
    path = Path(codes)
    if path.is_dir():
        path = path / "codes.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: codes file not found (codes setting {str(codes)!r})")
    try:
        names = pq.read_schema(path).names
    except pa.ArrowException as e:  # its message names no file
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from None
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"{path}: field(s) {missing} missing; columns are {names}")
    return path.resolve()


@dataclass
class RetrievalSet:
    """One split: the codes to search, the queries, and which codes answer which query."""

    codes: pa.Table
    queries: pa.Table
    qrels: pa.Table

    def __post_init__(self) -> None:
        self.codes = conform(self.codes, CODE_SCHEMA)
        self.queries = conform(self.queries, QUERY_SCHEMA)
        self.qrels = conform(self.qrels, QREL_SCHEMA)

    def write(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in TABLE_FILES:
            pq.write_table(getattr(self, name), directory / f"{name}.parquet")

    @classmethod
    def read(cls, directory: str | Path) -> RetrievalSet:
        directory = Path(directory)
        missing = [n for n in TABLE_FILES if not (directory / f"{n}.parquet").exists()]
        if missing:
            raise FileNotFoundError(
                f"{directory}: not a split folder, missing {', '.join(m + '.parquet' for m in missing)}"
            )
        tables = {n: pq.read_table(directory / f"{n}.parquet") for n in TABLE_FILES}
        return cls(**tables)

    def sample(self, n_queries: int, seed: int = 0) -> RetrievalSet:
        """A seeded sample of `n_queries` queries, their qrels, and only their gold codes.

        The pool shrinks with the queries: a smaller split whose every code still answers
        a query, e.g. a CoSQA-sized (20k) mining pool cut from a larger training split.
        """
        if n_queries <= 0 or n_queries >= self.queries.num_rows:
            return self
        order = np.random.default_rng(seed).permutation(self.queries.num_rows)[:n_queries]
        queries = self.queries.take(pa.array(np.sort(order)))
        qrels = self.qrels.filter(pc.is_in(self.qrels["query_id"], queries["query_id"]))
        codes = self.codes.filter(pc.is_in(self.codes["code_id"], qrels["code_id"]))
        return RetrievalSet(codes=codes, queries=queries, qrels=qrels)

    def pairs(self) -> pa.Table:
        """Join back to (query, gold code) pairs: the training form."""
        joined = self.qrels.join(self.queries, "query_id").join(self.codes, "code_id")
        return joined.select(PAIR_SCHEMA.names).sort_by([("query_id", "ascending")])


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast `table` to `schema`; a missing column or a null names the column."""
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise ValueError(f"table lacks column(s) {missing}; has {table.column_names}")
    table = table.select(schema.names)
    for field in schema:
        if not field.nullable and table.column(field.name).null_count:
            raise ValueError(
                f"column {field.name!r} has {table.column(field.name).null_count} nulls"
            )
    return table.cast(schema)


def split_pairs(pairs: pa.Table) -> RetrievalSet:
    """Pairs -> codes, queries, qrels, each row once (duplicates merged by id)."""
    pairs = conform(pairs, PAIR_SCHEMA)
    codes = _first_by(pairs.select(CODE_SCHEMA.names), "code_id")
    queries = _first_by(pairs.select(QUERY_SCHEMA.names), "query_id")
    qrels = pairs.select(QREL_SCHEMA.names).group_by(["query_id", "code_id"]).aggregate([])
    return RetrievalSet(codes=codes, queries=queries, qrels=qrels)


def _first_by(table: pa.Table, key: str) -> pa.Table:
    """First row per distinct `key`, in order of first appearance."""
    idx = pa.array(range(table.num_rows), pa.int64())
    first = (
        table.select([key]).append_column("_row", idx).group_by(key).aggregate([("_row", "min")])
    )
    rows = pc.sort_indices(first.column("_row_min"))
    return table.take(pc.take(first.column("_row_min"), rows))
