"""Running the main job: its stages in order, locally or in a URI's mirror, then serve.yaml.

`run_pipeline` builds the stages (`pipeline/config.py`), runs them (`run_stages`: what is
up to date is skipped), writes `<out>/serve.yaml` for what the evaluation chose to serve
(`serve_config`) and returns where everything is (`format_summary` is what
`jobs/pipeline.py` prints). A URI `out` is worked on in a local mirror, each finished
stage uploaded at once.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import yaml

from r2ps.config import to_dict
from r2ps.pipeline.config import PipelineConfig, build_stages
from r2ps.pipeline.stages import Stage, run_stages
from r2ps.search.cascade import ServedCascade
from r2ps.serving.settings import CONFIG_ENV, SERVE_FILE, ServeConfig
from r2ps.storage import download, is_uri, mirror_path, upload, upload_file, write_text_atomic


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
