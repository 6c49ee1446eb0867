"""The evaluation job's settings (`EvalConfig`): read by the quality table (evaluate.py)
and by the efficiency table (efficiency.py), so neither imports the other for them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from r2ps.config import Need, needs
from r2ps.data.schema import MODEL_CONFIG, SPLITS, split_files
from r2ps.models.cross import HEAD_FILE

# What the efficiency table's pool source may hold: a split folder's codes, or a corpus's.
POOL_FILES = ("codes.parquet", *(f"{s}/codes.parquet" for s in SPLITS))

RANKERS = {"rr": "RR", "rr_ps": "RR+PS"}  # setting name -> method label
DEMO = "runs/demo/pipeline"  # what `make demo` writes (r2ps.pipeline's layout)


@dataclass
class EvalConfig:
    split: str = field(
        default=f"{DEMO}/corpus/test",
        metadata={"help": "corpus split folder to evaluate on ('' for none)"},
    )
    cosqa: str = field(default="", metadata={"help": "CoSQA folder: also evaluate on CoSQA dev"})
    valid: str = field(
        default=f"{DEMO}/corpus/valid",
        metadata={
            "help": "split folder the fusion weight is chosen on (never the test split; "
            "'' = no fused rows)"
        },
    )
    retriever: str = field(
        default=f"{DEMO}/retriever",
        metadata={"help": "trained DualEncoder dir (DE; '' = none: rerank the untrained one)"},
    )
    untrained: str = field(
        default="", metadata={"help": "untrained encoder dir ('' = bundled MiniLM)"}
    )
    rr: str = field(
        default=f"{DEMO}/ranker_rr",
        metadata={"help": "ranker trained on in-batch negatives ('' = none)"},
    )
    rr_ps: str = field(
        default=f"{DEMO}/ranker_ps", metadata={"help": "ranker trained on PS negatives ('' = none)"}
    )
    ks: list[int] = field(
        default_factory=lambda: [5, 10, 20, 50], metadata={"help": "cascade depths K"}
    )
    alpha_grid: list[float] = field(
        default_factory=lambda: [round(0.1 * i, 1) for i in range(11)],
        metadata={"help": "fusion weights tried on the valid split"},
    )
    max_queries: int = field(
        default=500, metadata={"help": "queries per data set (0 = all; lowest query ids)"}
    )
    max_valid_queries: int = field(
        default=500, metadata={"help": "valid queries the served K and weight are chosen on"}
    )
    bootstrap: int = field(
        default=2000, metadata={"help": "resamples of the paired bootstrap against DE"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the bootstrap"})
    serve_needs_interval: bool = field(
        default=True,
        metadata={
            "help": "serve a cascade only when its valid MRR gain's bootstrap interval "
            "excludes 0 (false: when its valid MRR is above the retriever's)"
        },
    )
    batch_size: int = 64
    # efficiency (Table 5)
    pool_sizes: list[int] = field(
        default_factory=lambda: [1000, 10000, 100000],
        metadata={"help": "pool sizes of the efficiency table ([] = no efficiency table)"},
    )
    pool_source: str = field(
        default=f"{DEMO}/corpus",
        metadata={"help": "codes for the timing pools: a corpus folder (its splits) or a split"},
    )
    max_embed_codes: int = field(
        default=10000,
        metadata={"help": "codes embedded for timing; larger pools repeat their embeddings"},
    )
    timing_queries: int = field(default=20, metadata={"help": "queries timed one at a time"})
    timing_pairs: int = field(
        default=64, metadata={"help": "(query, code) pairs timed for the cross encoder"}
    )
    efficiency_k: int = field(default=10, metadata={"help": "K of the timed cascade"})
    out: str = field(default="runs/demo/eval", metadata={"help": "results folder"})

    def inputs(self) -> list[Need]:
        """Every path this evaluation will read (`config.check_inputs`): the data sets, the
        models given, the valid split when there is a ranker to fuse, the timing pool when
        there is an efficiency table. A model setting left empty is not read."""
        from r2ps.data.cosqa import COSQA_FILES

        split, ranker = "a split folder", "a trained ranker folder"
        out = [
            *needs(self, "split", *split_files(), what=split),
            *needs(self, "cosqa", *COSQA_FILES, what="a CoSQA folder"),
            *needs(self, "untrained", MODEL_CONFIG, what="a model folder"),
            *needs(self, "retriever", MODEL_CONFIG, what="a trained retriever folder"),
            *needs(self, "rr", MODEL_CONFIG, HEAD_FILE, what=ranker),
            *needs(self, "rr_ps", MODEL_CONFIG, HEAD_FILE, what=ranker),
        ]
        if self.rr or self.rr_ps:  # their fusion weight is chosen on valid
            out += needs(self, "valid", *split_files(), what=split)
        if self.pool_sizes:  # the efficiency table, read last
            what = "a corpus or split folder"
            out += needs(self, "pool_source", POOL_FILES, what=what, required=True)
        return out


def check_config(cfg: EvalConfig) -> None:
    """Fail before loading any model on settings that cannot run."""
    if not cfg.split and not cfg.cosqa:
        raise ValueError("nothing to evaluate: give a corpus split (--split) and/or --cosqa")
    if not cfg.ks or min(cfg.ks) < 1:
        raise ValueError(f"ks must be a non-empty list of positive depths, got {cfg.ks}")
    if any(not 0.0 <= a <= 1.0 for a in cfg.alpha_grid) or not cfg.alpha_grid:
        raise ValueError(f"alpha_grid must be weights in [0, 1], got {cfg.alpha_grid}")
    if cfg.valid and cfg.split and Path(cfg.valid).resolve() == Path(cfg.split).resolve():
        raise ValueError(f"valid ({cfg.valid}) is the evaluated split: choose alpha elsewhere")
    if any(n < 1 for n in cfg.pool_sizes):
        raise ValueError(f"pool_sizes must be positive, got {cfg.pool_sizes}")
    for name in ("timing_queries", "timing_pairs", "efficiency_k", "max_embed_codes"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
