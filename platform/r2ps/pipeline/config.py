"""The main job's settings: presets, one section per stage, and the wiring of the stages.

Settings: defaults of each job < the preset (`demo` or `full`, configs/<name>.yaml) < the
wiring (every path under `out`, each stage reading its inputs' outputs) <
`section.key=value` overrides (`retriever.lr=1e-4`, `mine.index.kind=hnsw`,
`evaluate.ks=5,10`). `build_stages` checks them all, and every input from outside `out`
(CoSQA, source roots, pair files, a starting model), before anything runs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from r2ps.config import ConfigError, Need, check_inputs, from_dict, needs
from r2ps.data.corpus_config import CorpusConfig
from r2ps.data.cosqa import COSQA_FILES
from r2ps.data.schema import SPLITS
from r2ps.evaluation.config import EvalConfig
from r2ps.evaluation.config import check_config as check_eval_config
from r2ps.mining.mine import MineConfig
from r2ps.pipeline.stages import STAGES, SampleConfig, Stage
from r2ps.storage import is_uri
from r2ps.train.config import RankerConfig, RetrieverConfig
from r2ps.train.ranker_data import check_config as check_ranker_config

STORAGE_ENV = "R2PS_STORAGE"  # the cluster's default for PipelineConfig.storage
# Presets are YAML files (configs/<name>.yaml: each stage's section of job settings, with
# the timings they were sized by); `--preset` takes a name or a path.
PRESET_DIR = Path(__file__).resolve().parents[3] / "configs"


def load_preset(preset: str) -> dict[str, dict[str, Any]]:
    """The sections of a preset: `configs/<preset>.yaml`, or the YAML file `preset` names.

    Raises ConfigError naming the presets there are when it names neither.
    """
    path = Path(preset) if preset.endswith((".yaml", ".yml")) else PRESET_DIR / f"{preset}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ConfigError(f"preset {preset!r}: no {path}; presets: {names} or a .yaml path")
    data = yaml.safe_load(path.read_text()) or {}
    sections = {f.name for f in dataclasses.fields(PipelineConfig)} - {"preset", "out", "cosqa"}
    unknown = sorted(set(data) - sections)
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; sections: {sorted(sections)}")
    return data


def section(job: type, note: str = "") -> Any:
    """A PipelineConfig field holding overrides of `job`'s settings (a dataclass)."""
    return field(default_factory=dict, metadata={"section": job, "help": note})


@dataclass
class PipelineConfig:
    """Settings of `jobs/pipeline.py`; a section holds overrides of that stage's job config."""

    preset: str = field(
        default="demo",
        metadata={"help": "configs/<name>.yaml: demo (< 30 min on 2 CPUs) | full; or a .yaml path"},
    )
    out: str = field(
        default="",
        metadata={
            "help": "every output goes here (default: runs/<preset>/pipeline, where `make "
            "demo` writes and the single jobs' defaults read)"
        },
    )
    cosqa: str = field(
        default="",
        metadata={"help": "CoSQA folder: kept out of corpus and negatives, evaluated on"},
    )
    storage: str = field(
        default_factory=lambda: os.environ.get(STORAGE_ENV, ""),
        metadata={
            "help": "where Ray Train keeps checkpoints, under <storage>/ray_results: a URI every "
            f"node reaches (default: ${STORAGE_ENV}, which cluster.yaml and deploy/ set; "
            "else <out>/ray_results)"
        },
    )
    # Each section overrides the settings of one stage's job, typed and checked by that
    # job's dataclass (`--help` lists every key): defaults < preset < wiring < section.
    corpus: dict[str, Any] = section(CorpusConfig)
    sample: dict[str, Any] = section(SampleConfig)
    retriever: dict[str, Any] = section(RetrieverConfig)
    mine: dict[str, Any] = section(MineConfig)
    ranker: dict[str, Any] = section(RankerConfig, "both rankers")
    evaluate: dict[str, Any] = section(EvalConfig)

    def __post_init__(self) -> None:
        if not self.out:
            self.out = f"runs/{Path(self.preset).stem}/pipeline"

    def inputs(self) -> list[Need]:
        """The pipeline's own input (each stage's are its job's: `build_stages`)."""
        return needs(self, "cosqa", *COSQA_FILES, what="a CoSQA folder")


# ---------------------------------------------------------------- wiring


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            value = _merge(out[key], value)
        out[key] = value
    return out


def build_stages(cfg: PipelineConfig, checkpoints: str = "") -> list[Stage]:
    """The stages with their job configs: defaults < preset < wiring < overrides.

    `checkpoints`: where Ray Train keeps its runs when neither `cfg.storage` nor the
    default (`<out>/ray_results`) should (a URI --out keeps them beside its stages).
    Raises ConfigError or ValueError, before anything runs, for a setting no stage can
    run with or an input from outside `out` that is missing (`config.check_inputs`).
    """
    if is_uri(cfg.cosqa):
        raise ValueError(f"--cosqa {cfg.cosqa}: a local folder (it is read by every stage)")
    check_inputs(cfg)
    preset, out = load_preset(cfg.preset), Path(cfg.out)
    cosqa = cfg.cosqa
    pools = [cosqa] if cosqa else []

    def make(cls: type, section: str, wiring: dict) -> Any:
        data = _merge(_merge(preset.get(section, {}), wiring), getattr(cfg, section))
        return from_dict(cls, data, prefix=f"{section}.")

    corpus = make(CorpusConfig, "corpus", {"out": str(out / "corpus"), "exclude": pools})
    splits = {s: str(Path(corpus.out) / s) for s in SPLITS}
    sample = make(SampleConfig, "sample", {"split": splits["train"], "out": str(out / "sample")})
    # Ray Train checkpoints: under `out`, or on a cluster `storage` (a URI every node reaches)
    storage = cfg.storage.rstrip("/")
    storage = f"{storage}/ray_results" if storage else (checkpoints or str(out / "ray_results"))
    retriever = make(
        RetrieverConfig,
        "retriever",
        {
            "corpus": corpus.out,
            "out": str(out / "retriever"),
            "run_name": "retriever",
            "storage": storage,
            # CoSQA is reported once, by the evaluate stage: a validation embeds its 6,267
            # codes (~3 min on 2 cores) each time and chooses nothing
            "eval_cosqa": "",
            # the evaluate stage compares the untrained and trained retrievers on test
            "final_test": False,
        },
    )
    mined = make(
        MineConfig,
        "mine",
        {"model": retriever.out, "pairs": sample.out, "out": str(out / "mined"), "exclude": pools},
    )
    rankers = {}
    for name, source in (("ranker_ps", "ps"), ("ranker_rr", "in_batch")):
        rankers[name] = make(
            RankerConfig,
            "ranker",
            {
                "corpus": corpus.out,
                "out": str(out / name),
                "run_name": name,
                "storage": storage,
                "negatives_source": source,
                "negatives": mined.out if source == "ps" else "",
                "retriever": retriever.out,
            },
        )
    evaluation = make(
        EvalConfig,
        "evaluate",
        {
            "split": splits["test"],
            "valid": splits["valid"],
            "cosqa": cosqa,
            "retriever": retriever.out,
            "rr": rankers["ranker_rr"].out,
            "rr_ps": rankers["ranker_ps"].out,
            "pool_source": corpus.out,
            "out": str(out / "eval"),
        },
    )
    for ranker in rankers.values():
        check_ranker_config(ranker)
    check_eval_config(evaluation)

    configs = {
        "corpus": corpus,
        "sample": sample,
        "retriever": retriever,
        "mine": mined,
        **rankers,
        "evaluate": evaluation,
    }
    for config in configs.values():  # what earlier stages make is not there yet: skipped
        check_inputs(config, skip_under=out)
    return [dataclasses.replace(stage, config=configs[stage.name]) for stage in STAGES]
