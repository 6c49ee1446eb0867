"""The main job: corpus -> retriever -> index + PS negatives -> two rankers -> evaluation.

Each stage is a plain function of one job config (the same dataclasses the single jobs
take), its output folder is that config's `out`, and it lists the stages it reads from.
Stages run in order in one Ray job; a stage whose `<out>/stage.json` holds the same
fingerprint and whose outputs exist is skipped, so a crashed pipeline restarts at the
stage that failed. The fingerprint is a sha256 of the stage name, its config (paths
included), its inputs' fingerprints and the r2ps version: a changed setting reruns its
stage and everything downstream, nothing else. It hashes settings, not file contents:
an output replaced by hand is not noticed (delete its stage.json to rerun it).

Settings: defaults of each job < the preset (`demo` or `full`) < the wiring (every path
under `out`, each stage reading its inputs' outputs) < `section.key=value` overrides
(`retriever.lr=1e-4`, `mine.index.kind=hnsw`, `evaluate.ks=5,10`). `build_stages` checks
them all, and every input from outside `out` (CoSQA, source roots, pair files, a starting
model), before anything runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from r2ps import __version__
from r2ps.config import ConfigError, Need, check_inputs, from_dict, needs, to_dict
from r2ps.data.corpus import CorpusConfig, build_corpus
from r2ps.data.readers import COSQA_FILES
from r2ps.data.schema import (
    CORPUS_STATS,
    MINE_SUMMARY,
    MODEL_CONFIG,
    SPLITS,
    TRAIN_SUMMARY,
    RetrievalSet,
    split_files,
)
from r2ps.evaluation.config import EvalConfig
from r2ps.evaluation.config import check_config as check_eval_config
from r2ps.evaluation.evaluate import evaluate
from r2ps.log import get_logger
from r2ps.mining.mine import MineConfig, MiningSettingsError, mine
from r2ps.models.cross import HEAD_FILE
from r2ps.search.cascade import SERVED_FILE, ServedCascade
from r2ps.serving.settings import CONFIG_ENV, SERVE_FILE, ServeConfig
from r2ps.storage import download, is_uri, mirror_path, upload, upload_file, write_text_atomic
from r2ps.train.config import RankerConfig, RetrieverConfig
from r2ps.train.ranker_data import check_config as check_ranker_config

log = get_logger(__name__)

STAGE_FILE = "stage.json"
STORAGE_ENV = "R2PS_STORAGE"  # the cluster's default for PipelineConfig.storage


@dataclass
class Stage:
    name: str
    fn: Callable[[Any], Any]  # does the work: fn(config)
    config: Any  # a dataclass; `config.out` is the stage's folder
    inputs: list[str] = field(default_factory=list)  # earlier stages it reads from
    outputs: list[str] = field(default_factory=list)  # files under `out` that say it is done


# ---------------------------------------------------------------- stage bodies


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


# Presets are YAML files (configs/<name>.yaml: each stage's section of job settings, with
# the timings they were sized by); `--preset` takes a name or a path.
PRESET_DIR = Path(__file__).resolve().parents[2] / "configs"


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
class SampleConfig:
    """A seeded sample of a split's queries with their gold codes (the mining pool)."""

    split: str = ""
    out: str = ""
    n_queries: int = 0  # 0: the whole split
    seed: int = 0

    def inputs(self) -> list[Need]:
        return needs(self, "split", *split_files(), what="a split folder", required=True)


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


# ---------------------------------------------------------------- the pipeline


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


def serve_config(stages: dict[str, Stage], where: Callable[[str], str] = str) -> ServeConfig:
    """The endpoint over what the pipeline built: its index of the mined split, and the
    cascade the evaluation chose on the valid split (`ServedCascade`, its served.json):
    that ranker, K and fusion weight, or the retriever alone (`rerank_k` 0; the RR+PS
    ranker stays deployed for requests that ask for a rerank_k).

    `where` maps each absolute local path to what serve.yaml names (a URI `--out`: the
    uploaded copy, so replicas anywhere stage what they read).
    """
    mined = stages["mine"].config
    served = ServedCascade.read(stages["evaluate"].config.out)

    def absolute(path: str) -> str:
        return where(str(Path(path).resolve()))

    return ServeConfig(
        retriever=absolute(stages["retriever"].config.out),
        ranker=absolute(served.ranker_path or stages["ranker_ps"].config.out),
        codes=absolute(mined.pairs),
        embed_out=absolute(mined.index_dir or mined.out),
        index=dataclasses.replace(mined.index),
        rerank_k=served.rerank_k,
        alpha=served.alpha,
        served_reason=served.reason,
    )


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Run (or skip) every stage, write `<out>/serve.yaml`; returns where everything is.

    A URI `out` (s3://, gs://, file://) is worked on in a local mirror (`mirror_path`, the
    same path every run): what the URI already holds is downloaded first, so finished
    stages are skipped as they would be locally; each stage's folder is uploaded to
    `<out>/<stage>` as soon as that stage succeeds, so a crash keeps every finished stage;
    Ray Train's checkpoints go to `<out>/ray_results` directly (unless `storage` says
    otherwise). serve.yaml names the URIs (each replica stages what it reads); the paths
    inside stage.json are the mirror's.
    """
    if is_uri(cfg.out):
        return _run_mirrored(cfg)
    return _run_local(cfg)


def _run_mirrored(cfg: PipelineConfig) -> dict:
    uri = cfg.out.rstrip("/")
    local = mirror_path(uri)
    shutil.rmtree(local, ignore_errors=True)  # what the URI holds is the truth
    if not download(uri, local):
        local.mkdir(parents=True)
    local_cfg = dataclasses.replace(cfg, out=str(local))

    mirror = local.resolve()

    def uploaded(path: str) -> str:
        """The URI a path inside the mirror is uploaded to; any other path as it is."""
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(mirror):
            return path
        return "/".join([uri, *resolved.relative_to(mirror).parts])

    def publish(stage: Stage) -> None:
        target = uploaded(stage.config.out)
        if not is_uri(target):
            raise ValueError(
                f"{stage.name}: output {target} is outside {mirror}, the mirror of {uri}"
            )
        upload(stage.config.out, target)

    summary = _run_local(local_cfg, publish, f"{uri}/ray_results", served_as=uploaded)
    upload_file(summary["serve_config"], f"{uri}/{SERVE_FILE}")
    summary["uploaded_to"] = uri
    return summary


def _run_local(
    cfg: PipelineConfig,
    after: Callable[[Stage], None] | None = None,
    checkpoints: str = "",
    served_as: Callable[[str], str] = str,
) -> dict:
    stages = {s.name: s for s in build_stages(cfg, checkpoints)}
    report = run_stages(list(stages.values()), after)
    serve = serve_config(stages, served_as)
    serve_file = Path(cfg.out, SERVE_FILE).resolve()
    write_text_atomic(serve_file, yaml.safe_dump(to_dict(serve), sort_keys=False))
    evaluation = Path(stages["evaluate"].config.out).resolve()
    return {
        "stages": report,
        "retriever": serve.retriever,
        # named as serve.yaml names the retriever: absolute, or the uploaded URI
        "rankers": {
            name: served_as(str(Path(stages[stage].config.out).resolve()))
            for name, stage in (("RR+PS", "ranker_ps"), ("RR", "ranker_rr"))
        },
        "index": f"{serve.embed_out}/index",
        "codes": serve.codes,
        "results": {kind: str(evaluation / f"results.{kind}") for kind in ("md", "json", "png")},
        "serve_config": str(serve_file),
        "served": serve.served_reason,
        "serve_command": f"{CONFIG_ENV}={serve_file} serve run serve.app:cascade",
    }


def format_summary(summary: dict) -> str:
    lines = ["stages:"]
    for name, done in summary["stages"].items():
        did = f"ran in {done['seconds']} s" if done["ran"] else "up to date, skipped"
        lines.append(f"  {name:<10} {did} (fingerprint {done['fingerprint'][:8]})")
    lines += [
        f"retriever: {summary['retriever']}",
        "rankers:   " + ", ".join(f"{k} {v}" for k, v in summary["rankers"].items()),
        f"index:     {summary['index']} (codes of {summary['codes']})",
        f"results:   {summary['results']['md']} (also .json, .png)",
        f"served:    {summary['served']}",
    ]
    if summary.get("uploaded_to"):
        lines.append(f"uploaded:  every stage and serve.yaml to {summary['uploaded_to']}")
    lines += [
        "",
        Path(summary["results"]["md"]).read_text(),
        "serve them (from the repository root):",
        f"  {summary['serve_command']}",
    ]
    return "\n".join(lines)
