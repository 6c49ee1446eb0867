"""Settings of `jobs/train.py`: what both encoders share, then each one's own.

`TrainConfig` holds the run, optimisation, scale-out and validation settings the shared
loop (loop.py, launch.py) reads; `RetrieverConfig` and `RankerConfig` add what only
their task reads, so each `--help` lists only settings that do something.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from r2ps.config import Need, needs
from r2ps.storage import is_uri, source_uri


@dataclass
class TrainConfig:
    """The shared settings. Defaults fit a 2-core CPU machine; a GPU cluster raises workers
    and batch size."""

    # The settings that are paths the run reads: a job stages URIs among them
    # (r2ps.storage) and every training worker makes them present on its own node.
    INPUT_PATHS: ClassVar[tuple[str, ...]] = ("corpus", "model", "eval_cosqa")

    corpus: str = field(
        default="runs/demo/pipeline/corpus",
        metadata={"help": "corpus folder (build_corpus output; default: what `make demo` built)"},
    )
    out: str = field(
        default="runs/demo/retriever", metadata={"help": "where the best model is exported"}
    )
    model: str = field(
        default="", metadata={"help": "HF model dir to start from (default: MiniLM)"}
    )
    run_name: str = field(
        default="retriever", metadata={"help": "Ray Train run; same name resumes"}
    )
    storage: str = field(
        default="runs/ray_results", metadata={"help": "checkpoint storage (path or URI)"}
    )
    # optimisation (METHOD.md section 1)
    epochs: int = 1
    batch_size: int = field(default=32, metadata={"help": "pairs per worker per step"})
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    max_query_len: int = 64
    max_train_pairs: int = field(
        default=8000,
        metadata={"help": "use a seeded sample of N pairs (0: all); sized for < 1 h on 2 cores"},
    )
    max_steps: int = field(default=0, metadata={"help": "stop after N steps (0: epochs decide)"})
    seed: int = 0
    # scale-out
    num_workers: int = 1
    threads_per_worker: int = 2
    cpus_per_worker: float = field(
        default=0.0, metadata={"help": "CPUs each worker reserves (0: share all but 0.5)"}
    )
    zero_stage: int = 0
    use_gpu: bool | None = field(default=None, metadata={"help": "default: use CUDA when present"})
    max_failures: int = 2
    # evaluation and checkpoints
    eval_every_steps: int = field(default=125, metadata={"help": "also validate every N steps"})
    max_eval_queries: int = field(
        default=500, metadata={"help": "valid queries per evaluation (0: all)"}
    )
    eval_cosqa: str = field(default="", metadata={"help": "CoSQA folder: also report CoSQA dev"})
    eval_batch_size: int = 64
    log_every_steps: int = 10

    def inputs(self) -> list[Need]:
        """Every path the run reads (`config.check_inputs`, before Ray starts)."""
        return self._inputs(("train", "valid"))

    def _inputs(self, splits: tuple[str, ...]) -> list[Need]:
        """The corpus's `splits`, the starting model and CoSQA, when given."""
        from r2ps.data.cosqa import COSQA_FILES
        from r2ps.data.schema import MODEL_CONFIG, split_files

        corpus = [f for split in splits for f in split_files(split)]
        return [
            *needs(
                self,
                "corpus",
                *corpus,
                what="a corpus folder, as build_corpus writes",
                required=True,
            ),
            *needs(self, "model", MODEL_CONFIG, what="a model folder"),
            *needs(self, "eval_cosqa", *COSQA_FILES, what="a CoSQA folder"),
        ]


@dataclass
class RetrieverConfig(TrainConfig):
    """The dual encoder's settings: InfoNCE with in-batch negatives (METHOD.md section 1)."""

    temperature: float = 0.05
    max_code_len: int = 256
    web_queries: bool = field(
        default=False, metadata={"help": "train queries rewritten toward web-query register"}
    )
    wise_ft: float = field(
        default=1.0,
        metadata={"help": "export (1-w)*start + w*trained weights (WiSE-FT); 1: trained"},
    )
    wise_ft_choose: list[float] = field(
        default_factory=list,
        metadata={
            "help": "WiSE-FT weights to choose from on valid: the one closest to the start "
            "whose valid MRR is within noise of the best (train/wise_ft.py); empty: wise_ft"
        },
    )
    final_test: bool = field(
        default=True, metadata={"help": "after training, compare start and trained model on test"}
    )

    def inputs(self) -> list[Need]:
        return self._inputs(("train", "valid", "test") if self.final_test else ("train", "valid"))

    def __post_init__(self) -> None:
        if self.wise_ft_choose and self.wise_ft != 1.0:
            raise ValueError(
                "set wise_ft (one weight) or wise_ft_choose (weights chosen among on valid), "
                f"not both: wise_ft={self.wise_ft}, wise_ft_choose={self.wise_ft_choose}"
            )


@dataclass
class RankerConfig(TrainConfig):
    """The cross encoder's settings (METHOD.md section 2), with its own defaults: a run of
    its own, CPU-sized groups of (query, code) pairs."""

    INPUT_PATHS: ClassVar[tuple[str, ...]] = TrainConfig.INPUT_PATHS + ("negatives", "retriever")

    out: str = field(
        default="runs/demo/ranker", metadata={"help": "where the best model is exported"}
    )
    run_name: str = field(default="ranker", metadata={"help": "Ray Train run; same name resumes"})
    batch_size: int = field(
        default=8, metadata={"help": "queries per worker per step (each a group of pairs)"}
    )
    head_lr: float = field(
        default=1e-3, metadata={"help": "lr of the fresh (zero-initialised) head; 0: lr"}
    )
    max_query_len: int = field(
        default=128, metadata={"help": "query tokens kept inside a pair (paper: 128)"}
    )
    max_pair_len: int = field(
        default=256, metadata={"help": "tokens of query + code (paper: 384; CPU: 256)"}
    )
    max_eval_queries: int = field(
        default=200, metadata={"help": "valid queries per evaluation (each costs K pairs)"}
    )
    negatives: str = field(
        default="", metadata={"help": "mining output folder (negatives_source=ps)"}
    )
    negatives_source: str = field(
        default="ps",
        metadata={"help": "ps (mined window, resampled each epoch) or in_batch (RR)"},
    )
    num_negatives: int = field(
        default=7, metadata={"help": "m negatives per query with ps (paper: 31)"}
    )
    ps_inv_tau: float = field(default=0.0, metadata={"help": "1/tau' of PS sampling (0: uniform)"})
    ps_random: int = field(
        default=0, metadata={"help": "of the m PS negatives, N drawn uniformly from the whole pool"}
    )
    ranker_scale: float = field(
        default=20.0, metadata={"help": "listwise loss on scale * tanh(score)"}
    )
    retriever: str = field(
        default="", metadata={"help": "validation: DualEncoder dir (default: MiniLM)"}
    )
    rerank_k: int = field(default=10, metadata={"help": "validation: top K reranked"})
    residual: bool = field(
        default=False,
        metadata={
            "help": "learn a correction of the retriever's score (cascade score "
            "DE + tanh(CE)); the zero head makes step 0 the retriever"
        },
    )
    start_from_retriever: bool = field(
        default=False, metadata={"help": "start the encoder from --retriever's weights"}
    )
    num_layers: int = field(
        default=0,
        metadata={
            "help": "keep the starting encoder's first N layers (0: all); fewer layers "
            "score pairs proportionally faster (docs/INFERENCE.md)"
        },
    )

    pooling: str = field(
        default="first_token",
        metadata={
            "help": "what the head reads: first_token (the [CLS] state, the paper's) or "
            "segments (query and code mean states multiplied: what a mean-pooling retriever "
            "compares; models/cross.segment_features)"
        },
    )

    def __post_init__(self) -> None:
        # the model owns the list; imported here to keep this module light to import
        from r2ps.models.cross import POOLINGS

        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.num_layers < 0:
            raise ValueError(f"num_layers must be >= 0 (0: all layers), got {self.num_layers}")

    def inputs(self) -> list[Need]:
        """Besides the corpus (valid; train too for in-batch negatives): the retriever and,
        for PS negatives, the mining output and the split its summary names."""
        from r2ps.data.schema import MINE_SUMMARY, MODEL_CONFIG, split_files
        from r2ps.mining.negatives import named_split

        out = self._inputs(("valid",) if self.negatives_source == "ps" else ("train", "valid"))
        out += needs(self, "retriever", MODEL_CONFIG, what="a trained retriever folder")
        if self.negatives_source != "ps":
            return out
        mined = "a mining output (jobs/mine.py)"
        out += needs(self, "negatives", MINE_SUMMARY, "negatives", what=mined)
        # The mined split is read late (building the rows, after Ray starts). Only a local
        # summary is looked into here: a URI's is read once staged (jobs/train.py).
        if not is_uri(self.negatives) and Path(self.negatives, MINE_SUMMARY).is_file():
            split = str(named_split(self.negatives))
            split = source_uri(split) or split  # mined from a URI: jobs/train.py stages it
            what = f"the split {self.negatives}/{MINE_SUMMARY} names"
            out.append(Need("negatives", split, split_files(), what))
        return out
