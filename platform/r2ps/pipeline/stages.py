"""The main job's stages, and how a list of stages runs.

`STAGES` is the main job in order: each stage's name, the function that does its work on
one job config (the same dataclasses the single jobs take; `pipeline/config.py`'s
`build_stages` fills them in), the stages it reads from, and the files under its `out`
that say it is done. The `sample` stage (a seeded sample of the train split's queries:
the mining pool) has no job of its own: its settings and its body are here.

`run_stages` runs stages in order; a stage whose `<out>/stage.json` holds the same
fingerprint and whose outputs exist is skipped, so a crashed pipeline restarts at the
stage that failed. The fingerprint is a sha256 of the stage name, its config (paths
included), its inputs' fingerprints and the r2ps version: a changed setting reruns its
stage and everything downstream, nothing else. It hashes settings, not file contents:
an output replaced by hand is not noticed (delete its stage.json to rerun it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r2ps import __version__
from r2ps.config import Need, needs, to_dict
from r2ps.data.corpus import build_corpus
from r2ps.data.schema import (
    CORPUS_STATS,
    MINE_SUMMARY,
    MODEL_CONFIG,
    SPLITS,
    TRAIN_SUMMARY,
    RetrievalSet,
    split_files,
)
from r2ps.evaluation.evaluate import evaluate
from r2ps.log import get_logger
from r2ps.mining.mine import MineConfig, mine
from r2ps.mining.negatives import MiningSettingsError
from r2ps.models.cross import HEAD_FILE
from r2ps.search.cascade import SERVED_FILE
from r2ps.storage import write_text_atomic
from r2ps.train.config import RankerConfig, RetrieverConfig

log = get_logger(__name__)

STAGE_FILE = "stage.json"


@dataclass
class Stage:
    name: str
    fn: Callable[[Any], Any]  # does the work: fn(config)
    config: Any  # a dataclass; `config.out` is the stage's folder
    inputs: list[str] = field(default_factory=list)  # earlier stages it reads from
    outputs: list[str] = field(default_factory=list)  # files under `out` that say it is done


# ---------------------------------------------------------------- stage bodies


@dataclass
class SampleConfig:
    """A seeded sample of a split's queries with their gold codes (the mining pool)."""

    split: str = ""
    out: str = ""
    n_queries: int = 0  # 0: the whole split
    seed: int = 0

    def inputs(self) -> list[Need]:
        return needs(self, "split", *split_files(), what="a split folder", required=True)


def sample_split(cfg: SampleConfig) -> None:
    RetrievalSet.read(cfg.split).sample(cfg.n_queries, cfg.seed).write(cfg.out)


def train_retriever(cfg: RetrieverConfig) -> None:
    from r2ps.train.launch import train

    train(cfg)


def train_ranker(cfg: RankerConfig) -> None:
    from r2ps.train.launch import train
    from r2ps.train.ranker import RankerTask

    train(cfg, task=RankerTask())


def mine_negatives(cfg: MineConfig) -> None:
    """mine(); shards left by other settings (this folder is the pipeline's) are redone."""
    try:
        mine(cfg)
    except MiningSettingsError as e:
        log.warning("%s: removing them and mining again", e)
        shutil.rmtree(Path(cfg.out) / "negatives")
        mine(cfg)


# ---------------------------------------------------------------- the stages

_SPLIT_FILES = [name for split in SPLITS for name in split_files(split)]
_MODEL_FILES = [MODEL_CONFIG, TRAIN_SUMMARY]
# The main job, in order: each stage's name, the function that does its work on that stage's
# job settings (`build_stages` fills them in), the stages it reads from, and the files under
# its `out` that say it is done.
STAGES = (
    Stage("corpus", build_corpus, None, [], [CORPUS_STATS, *_SPLIT_FILES]),
    Stage("sample", sample_split, None, ["corpus"], list(split_files())),
    Stage("retriever", train_retriever, None, ["corpus"], _MODEL_FILES),
    Stage("mine", mine_negatives, None, ["retriever", "sample"], [MINE_SUMMARY, "index/manifest.json"]),
    Stage("ranker_ps", train_ranker, None, ["corpus", "retriever", "mine"], [*_MODEL_FILES, HEAD_FILE]),
    Stage("ranker_rr", train_ranker, None, ["corpus", "retriever"], [*_MODEL_FILES, HEAD_FILE]),
    Stage("evaluate", evaluate, None, ["corpus", "retriever", "ranker_ps", "ranker_rr"], ["results.json", "results.md", SERVED_FILE]),
)  # fmt: skip


# ---------------------------------------------------------------- running stages


# Settings added to a job's config after runs were made, each with the value that does
# what the job did before the setting existed. At that value a setting is left out of the
# fingerprint, so adding one does not rerun every finished stage; any other value (a
# changed default included) is hashed as usual. A new setting goes here when it is added.
ADDED_SETTINGS: dict[str, dict[str, Any]] = {
    "RankerConfig": {"pooling": "first_token"},
}


def fingerprint(name: str, config: Any, inputs: dict[str, str]) -> str:
    settings = to_dict(config)
    for key, before in ADDED_SETTINGS.get(type(config).__name__, {}).items():
        if key in settings and settings[key] == before:
            del settings[key]
    blob = {"stage": name, "config": settings, "inputs": inputs, "version": __version__}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def up_to_date(stage: Stage, fp: str) -> bool:
    out = Path(stage.config.out)
    try:
        record = json.loads((out / STAGE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return record.get("fingerprint") == fp and all((out / f).exists() for f in stage.outputs)


def run_stages(
    stages: list[Stage], after: Callable[[Stage], None] | None = None
) -> dict[str, dict]:
    """Run the stages in order, skipping those up to date; returns what each did.

    `after(stage)` is called once a stage that ran has written its stage.json (the
    pipeline uploads the stage's folder there when its output is a URI).

    A config with a `run_name` (Ray Train resumes a run of the same name) gets the
    fingerprint appended: a crashed run resumes its own checkpoint, a changed config
    starts a new run. A stage that raises leaves no stage.json and stops the pipeline.
    """
    outs = [str(Path(s.config.out).resolve()) for s in stages]
    if len(set(outs)) != len(outs):
        raise ValueError(f"two stages share an output folder: {outs}")
    fps: dict[str, str] = {}
    report: dict[str, dict] = {}
    for stage in stages:
        unknown = [i for i in stage.inputs if i not in fps]
        if unknown:
            raise ValueError(f"stage {stage.name}: inputs {unknown} are not earlier stages")
        fp = fps[stage.name] = fingerprint(
            stage.name, stage.config, {i: fps[i] for i in stage.inputs}
        )
        if up_to_date(stage, fp):
            log.info("skip %s: up to date", stage.name)
            report[stage.name] = {"fingerprint": fp, "ran": False}
            continue
        config = stage.config
        if hasattr(config, "run_name"):
            config = dataclasses.replace(config, run_name=f"{config.run_name}-{fp[:8]}")
        out = Path(config.out)
        (out / STAGE_FILE).unlink(missing_ok=True)
        log.info("run %s -> %s (fingerprint %s)", stage.name, out, fp[:8])
        start = time.time()
        stage.fn(config)
        missing = [f for f in stage.outputs if not (out / f).exists()]
        if missing:
            raise RuntimeError(f"stage {stage.name} finished without writing {missing} in {out}")
        seconds = round(time.time() - start, 1)
        record = {
            "stage": stage.name,
            "fingerprint": fp,
            "inputs": {i: fps[i] for i in stage.inputs},
            "version": __version__,
            "seconds": seconds,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "config": to_dict(config),
        }
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / STAGE_FILE, json.dumps(record, indent=1, default=str))
        log.info("done %s in %.1f s", stage.name, seconds)
        report[stage.name] = {"fingerprint": fp, "ran": True, "seconds": seconds}
        if after:
            after(stage)
    return report
