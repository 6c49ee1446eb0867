"""The corpus builder's settings (`CorpusConfig`, `jobs/build_corpus.py`): read by the
discovery (`r2ps.data.sources`), the splits (`r2ps.data.splits`) and the job
(`r2ps.data.corpus`), so none of them imports the job for its settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from r2ps.config import Need, needs
from r2ps.data.dedupe import pool_needs
from r2ps.data.pysource import ExtractConfig


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
