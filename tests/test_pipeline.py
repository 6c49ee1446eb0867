"""The pipeline's orchestration (fingerprints, skipping, crash and restart) and its presets.

Fast: no Ray, no models. Stage bodies are small functions that write files.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml

import r2ps.pipeline.run as pipeline_run
from r2ps.config import ConfigError, parse_config
from r2ps.data.schema import MINE_SUMMARY
from r2ps.pipeline.config import PipelineConfig, build_stages
from r2ps.pipeline.run import format_summary, run_pipeline
from r2ps.pipeline.stages import ADDED_SETTINGS, STAGE_FILE, Stage, fingerprint, run_stages
from r2ps.search.cascade import SERVED_FILE
from r2ps.serving.settings import ServeConfig

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Toy:
    out: str
    value: int = 0


@dataclass
class ToyRun:
    out: str
    run_name: str = "toy"


def chain(root: Path, calls: list[str], values=(1, 2, 3), fail: str = "") -> list[Stage]:
    """a -> b -> c; each writes done.txt (its value); `fail` names a stage that raises."""

    def body(name: str):
        def fn(cfg: Toy) -> None:
            calls.append(name)
            if name == fail:
                Path(cfg.out).mkdir(parents=True, exist_ok=True)
                (Path(cfg.out) / "partial.txt").write_text("half done")
                raise RuntimeError(f"{name} crashed")
            Path(cfg.out).mkdir(parents=True, exist_ok=True)
            (Path(cfg.out) / "done.txt").write_text(str(cfg.value))

        return fn

    a, b, c = values
    return [
        Stage("a", body("a"), Toy(str(root / "a"), a), [], ["done.txt"]),
        Stage("b", body("b"), Toy(str(root / "b"), b), ["a"], ["done.txt"]),
        Stage("c", body("c"), Toy(str(root / "c"), c), ["b"], ["done.txt"]),
    ]


def ran(report: dict) -> list[str]:
    return [name for name, r in report.items() if r["ran"]]


# ---------------------------------------------------------------- fingerprints


def test_fingerprint_follows_config_and_inputs_only():
    base = fingerprint("b", Toy("x", 1), {"a": "f1"})
    assert base == fingerprint("b", Toy("x", 1), {"a": "f1"})
    assert len(base) == 64
    assert base != fingerprint("b", Toy("x", 2), {"a": "f1"})  # a setting
    assert base != fingerprint("b", Toy("y", 1), {"a": "f1"})  # an output path
    assert base != fingerprint("b", Toy("x", 1), {"a": "f2"})  # the upstream stage
    assert base != fingerprint("c", Toy("x", 1), {"a": "f1"})  # the stage


def test_a_setting_added_at_its_old_behaviour_keeps_finished_stages(monkeypatch):
    """A stage fingerprinted before `value` existed stays up to date while `value` holds
    the behaviour it had then (ADDED_SETTINGS); any other value reruns it."""

    @dataclass
    class Before:
        out: str

    @dataclass
    class After:  # the same job once `value` was added
        out: str
        value: int = 1

    old = fingerprint("b", Before("x"), {})
    assert fingerprint("b", After("x"), {}) != old  # unregistered: every stage would rerun
    monkeypatch.setitem(ADDED_SETTINGS, "After", {"value": 1})
    assert fingerprint("b", After("x"), {}) == old
    assert fingerprint("b", After("x", 2), {}) != old
    assert fingerprint("b", After("y"), {}) != old  # the other settings still count


def test_the_settings_registered_as_added_exist_with_their_registered_types():
    jobs = {  # the job config of every section of the pipeline's settings
        f.metadata["section"].__name__: f.metadata["section"]
        for f in dataclasses.fields(PipelineConfig)
        if "section" in f.metadata
    }
    assert len(jobs) == 6
    for job, settings in ADDED_SETTINGS.items():
        fields = {f.name: f for f in dataclasses.fields(jobs[job])}
        for key, before in settings.items():
            assert key in fields, f"{job}.{key}"
            assert isinstance(before, type(fields[key].default)), f"{job}.{key}"


def test_an_upstream_change_changes_every_fingerprint_downstream(tmp_path):
    first = run_stages(chain(tmp_path, []))
    changed = run_stages(chain(tmp_path, [], values=(9, 2, 3)))  # only a's setting
    assert all(first[s]["fingerprint"] != changed[s]["fingerprint"] for s in "abc")
    again = run_stages(chain(tmp_path, [], values=(9, 2, 3)))
    assert all(changed[s]["fingerprint"] == again[s]["fingerprint"] for s in "abc")


# ---------------------------------------------------------------- skipping


def test_second_run_skips_every_stage(tmp_path, caplog):
    calls: list[str] = []
    assert ran(run_stages(chain(tmp_path, calls))) == ["a", "b", "c"]
    record = json.loads((tmp_path / "b" / STAGE_FILE).read_text())
    assert record["config"] == {"out": str(tmp_path / "b"), "value": 2}
    assert set(record["inputs"]) == {"a"}
    caplog.set_level("INFO", logger="r2ps.pipeline.stages")
    assert ran(run_stages(chain(tmp_path, calls))) == []
    assert calls == ["a", "b", "c"]
    assert "skip b: up to date" in caplog.text


def test_changed_setting_reruns_its_stage_and_those_after(tmp_path):
    calls: list[str] = []
    run_stages(chain(tmp_path, calls))
    assert ran(run_stages(chain(tmp_path, calls, values=(1, 5, 3)))) == ["b", "c"]
    assert (tmp_path / "b" / "done.txt").read_text() == "5"


def test_missing_output_reruns_only_that_stage(tmp_path):
    calls: list[str] = []
    run_stages(chain(tmp_path, calls))
    (tmp_path / "b" / "done.txt").unlink()
    assert ran(run_stages(chain(tmp_path, calls))) == ["b"]  # same fingerprint downstream


@pytest.mark.parametrize("record", ['{"fingerprint": "0000"}', "{not json", ""])
def test_other_or_broken_stage_json_reruns(tmp_path, record):
    calls: list[str] = []
    run_stages(chain(tmp_path, calls))
    (tmp_path / "a" / STAGE_FILE).write_text(record)
    assert ran(run_stages(chain(tmp_path, calls))) == ["a"]
    assert json.loads((tmp_path / "a" / STAGE_FILE).read_text())["stage"] == "a"


# ---------------------------------------------------------------- crash and restart


def test_crash_leaves_no_stage_json_and_stops(tmp_path):
    calls: list[str] = []
    with pytest.raises(RuntimeError, match="b crashed"):
        run_stages(chain(tmp_path, calls, fail="b"))
    assert calls == ["a", "b"]
    assert (tmp_path / "a" / STAGE_FILE).exists()
    assert not (tmp_path / "b" / STAGE_FILE).exists()
    assert not (tmp_path / "c").exists()


def test_restart_after_crash_runs_only_the_rest(tmp_path):
    calls: list[str] = []
    with pytest.raises(RuntimeError):
        run_stages(chain(tmp_path, calls, fail="c"))
    calls.clear()
    assert ran(run_stages(chain(tmp_path, calls))) == ["c"]
    assert calls == ["c"]


def test_crash_of_a_changed_stage_drops_its_old_record(tmp_path):
    calls: list[str] = []
    run_stages(chain(tmp_path, calls))
    with pytest.raises(RuntimeError):  # b changed, and its new run crashes
        run_stages(chain(tmp_path, calls, values=(1, 7, 3), fail="b"))
    assert not (tmp_path / "b" / STAGE_FILE).exists()
    calls.clear()
    # back to the old settings: b's outputs exist, but it has no record, so it reruns
    assert ran(run_stages(chain(tmp_path, calls))) == ["b"]


def test_stage_without_its_outputs_fails(tmp_path):
    stage = Stage("lazy", lambda cfg: None, Toy(str(tmp_path / "lazy")), [], ["model.bin"])
    with pytest.raises(RuntimeError, match="model.bin"):
        run_stages([stage])
    assert not (tmp_path / "lazy" / STAGE_FILE).exists()


def test_bad_wiring_is_refused(tmp_path):
    def noop(cfg):
        return None

    later = Stage("b", noop, Toy(str(tmp_path / "b")), ["a"])
    with pytest.raises(ValueError, match="not earlier stages"):
        run_stages([later, Stage("a", noop, Toy(str(tmp_path / "a")))])
    with pytest.raises(ValueError, match="share an output folder"):
        run_stages([Stage("a", noop, Toy(str(tmp_path))), Stage("b", noop, Toy(str(tmp_path)))])


def test_run_name_comes_from_the_fingerprint(tmp_path):
    seen: list[str] = []

    def fn(cfg: ToyRun) -> None:
        seen.append(cfg.run_name)
        Path(cfg.out).mkdir(parents=True, exist_ok=True)

    def stage(out: str) -> Stage:
        return Stage("train", fn, ToyRun(out), [], [])

    fp = run_stages([stage(str(tmp_path / "t"))])["train"]["fingerprint"]
    assert seen == [f"toy-{fp[:8]}"]
    assert json.loads((tmp_path / "t" / STAGE_FILE).read_text())["config"]["run_name"] == seen[0]
    (tmp_path / "t" / STAGE_FILE).unlink()  # a crash: the rerun resumes the same run
    run_stages([stage(str(tmp_path / "t"))])
    run_stages([stage(str(tmp_path / "t2"))])  # another config: another run
    assert seen[1] == seen[0] != seen[2]


# ---------------------------------------------------------------- the real stages

PATH_FIELDS = {
    "out", "corpus", "storage", "negatives", "retriever", "model", "pairs", "split",
    "valid", "rr", "rr_ps", "pool_source", "index_dir", "eval_cosqa", "cosqa",
}  # fmt: skip


@pytest.mark.parametrize("preset", ["demo", "full"])
def test_presets_build_valid_job_configs_under_out(preset, tmp_path, monkeypatch):
    monkeypatch.delenv("R2PS_STORAGE", raising=False)
    out = tmp_path / "p"
    stages = {s.name: s for s in build_stages(PipelineConfig(preset=preset, out=str(out)))}
    assert list(stages) == [
        "corpus", "sample", "retriever", "mine", "ranker_ps", "ranker_rr", "evaluate",
    ]  # fmt: skip
    for stage in stages.values():
        for name, value in dataclasses.asdict(stage.config).items():
            if name in PATH_FIELDS and value:
                assert Path(value).resolve().is_relative_to(out.resolve()), (stage.name, name)
    cfg = {name: s.config for name, s in stages.items()}
    assert cfg["sample"].split == str(Path(cfg["corpus"].out) / "train")
    assert cfg["mine"].model == cfg["retriever"].out
    assert cfg["mine"].pairs == cfg["sample"].out
    assert cfg["ranker_ps"].negatives == cfg["mine"].out
    assert cfg["ranker_ps"].negatives_source == "ps"
    assert cfg["ranker_rr"].negatives_source == "in_batch"
    assert cfg["ranker_rr"].out != cfg["ranker_ps"].out
    assert len({cfg[n].run_name for n in ("retriever", "ranker_ps", "ranker_rr")}) == 3
    ev = cfg["evaluate"]
    assert (ev.retriever, ev.rr, ev.rr_ps) == (
        cfg["retriever"].out,
        cfg["ranker_rr"].out,
        cfg["ranker_ps"].out,
    )
    assert ev.split.endswith("test") and ev.valid.endswith("valid") and not ev.cosqa
    assert cfg["corpus"].exclude == [] == cfg["mine"].exclude


def test_demo_is_small_and_full_is_the_readme_run(tmp_path):
    from r2ps.train.config import RankerConfig, RetrieverConfig

    demo = {s.name: s.config for s in build_stages(PipelineConfig(out=str(tmp_path)))}
    assert demo["corpus"].max_files and demo["sample"].n_queries
    assert 0 < demo["retriever"].max_steps <= 50 and 0 < demo["ranker_ps"].max_steps <= 50
    assert demo["evaluate"].max_queries <= 100 and max(demo["evaluate"].pool_sizes) <= 1000
    full = {
        s.name: s.config for s in build_stages(PipelineConfig(preset="full", out=str(tmp_path)))
    }
    assert full["corpus"].max_files == 0 and full["sample"].n_queries == 20000
    assert full["retriever"].max_steps == RetrieverConfig().max_steps
    # the 2-hour budget: 215 steps of 32 pairs, validated at its start and end only
    assert full["retriever"].max_train_pairs == 6880 and full["retriever"].eval_every_steps == 0
    assert full["retriever"].batch_size == RetrieverConfig().batch_size == 32
    assert full["ranker_ps"].batch_size == RankerConfig().batch_size
    assert full["evaluate"].ks == [5, 10] and full["ranker_rr"].max_pair_len == 128
    for preset in (demo, full):  # the recipe chosen on valid (docs/RESULTS.md)
        for name in ("ranker_ps", "ranker_rr"):
            assert preset[name].residual and preset[name].start_from_retriever


def test_overrides_beat_the_preset(tmp_path):
    cfg = parse_config(
        PipelineConfig,
        [
            "--out", str(tmp_path), "retriever.max_steps=5", "evaluate.ks=5,20",
            "mine.index.kind=hnsw", "ranker.lr=1e-4", "mine.out=" + str(tmp_path / "neg"),
        ],
    )  # fmt: skip
    stages = {s.name: s.config for s in build_stages(cfg)}
    assert stages["retriever"].max_steps == 5
    assert stages["retriever"].batch_size == 16  # the rest of the preset stays
    assert stages["evaluate"].ks == [5, 20]
    assert stages["mine"].index.kind == "hnsw"
    assert stages["ranker_ps"].lr == stages["ranker_rr"].lr == 1e-4
    assert stages["ranker_ps"].negatives == str(tmp_path / "neg")  # wired to the new folder


def test_bad_settings_name_their_section(tmp_path):
    with pytest.raises(ConfigError, match=r"retriever\.lrr"):
        build_stages(PipelineConfig(out=str(tmp_path), retriever={"lrr": 1}))
    with pytest.raises(ConfigError, match=r"evaluate\.max_queries"):
        build_stages(PipelineConfig(out=str(tmp_path), evaluate={"max_queries": "many"}))
    with pytest.raises(ValueError, match="preset"):
        build_stages(PipelineConfig(preset="huge", out=str(tmp_path)))
    with pytest.raises(ValueError, match="needs batch_size >= 2"):
        build_stages(PipelineConfig(out=str(tmp_path), ranker={"batch_size": 1}))


def test_cosqa_is_excluded_and_evaluated_when_given(tmp_path, cosqa_dir):
    stages = {
        s.name: s.config
        for s in build_stages(PipelineConfig(out=str(tmp_path), cosqa=str(cosqa_dir)))
    }
    assert stages["corpus"].exclude == [str(cosqa_dir)] == stages["mine"].exclude
    assert stages["evaluate"].cosqa == str(cosqa_dir)
    assert stages["retriever"].eval_cosqa == ""  # CoSQA: reported by evaluate only


def test_inputs_from_outside_out_are_checked_before_anything_runs(tmp_path):
    """A CoSQA folder asked for but missing is an error, not a run without CoSQA; so is any
    other input from outside `out`. What earlier stages will write is not looked for."""
    with pytest.raises(ConfigError, match=r"cosqa: \S*none does not exist"):
        build_stages(PipelineConfig(out=str(tmp_path), cosqa=str(tmp_path / "none")))
    (tmp_path / "cosqa").mkdir()
    with pytest.raises(ConfigError, match=r"cosqa: \S*cosqa holds no code_idx_map.txt"):
        build_stages(PipelineConfig(out=str(tmp_path / "p"), cosqa=str(tmp_path / "cosqa")))
    pairs = {"pairs": [str(tmp_path / "pairs.jsonl")]}
    with pytest.raises(ConfigError, match=r"pairs: \S*pairs.jsonl does not exist"):
        build_stages(PipelineConfig(out=str(tmp_path / "p"), corpus=pairs))
    start = {"model": str(tmp_path / "start")}
    with pytest.raises(ConfigError, match=r"model: \S*start does not exist"):
        build_stages(PipelineConfig(out=str(tmp_path / "p"), retriever=start))
    (tmp_path / "pairs.jsonl").write_text('{"query": "q", "code": "def f(): pass"}\n')
    assert build_stages(PipelineConfig(out=str(tmp_path / "p"), corpus=pairs))  # the rest: later


def test_the_default_out_is_where_make_demo_writes():
    """What the single jobs' defaults read (runs/demo/pipeline/...), per preset."""
    assert PipelineConfig().out == "runs/demo/pipeline"
    assert PipelineConfig(preset="full").out == "runs/full/pipeline"
    assert PipelineConfig(out="x").out == "x"


def test_checkpoint_storage_is_a_setting_defaulting_to_the_cluster_environment(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("R2PS_STORAGE", "s3://bucket/r2ps/")
    stages = {s.name: s.config for s in build_stages(PipelineConfig(out=str(tmp_path)))}
    assert stages["retriever"].storage == "s3://bucket/r2ps/ray_results"
    assert stages["ranker_rr"].storage == stages["retriever"].storage
    cfg = parse_config(PipelineConfig, ["--out", str(tmp_path), "--storage", "gs://b/x"])
    stages = {s.name: s.config for s in build_stages(cfg)}
    assert stages["ranker_ps"].storage == "gs://b/x/ray_results"
    monkeypatch.delenv("R2PS_STORAGE")
    stages = {s.name: s.config for s in build_stages(PipelineConfig(out=str(tmp_path)))}
    assert stages["retriever"].storage == str(tmp_path / "ray_results")


REAL_BUILD = build_stages


def fake_stage_bodies(monkeypatch, crash_at: str = "", served: dict | None = None) -> list[str]:
    """Every real stage, each body replaced by one that writes its expected outputs (or
    raises, for `crash_at`); returns the list the bodies append their stage names to.
    `served`: the evaluation's served.json (default {}: the retriever alone)."""
    calls: list[str] = []

    def fake(cfg, *args):
        stages = REAL_BUILD(cfg, *args)
        for stage in stages:

            def write(config, stage=stage):
                if stage.name == crash_at:
                    raise RuntimeError(f"{stage.name} crashed")
                calls.append(stage.name)
                for name in stage.outputs:
                    path = Path(config.out) / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    text = "| method | MRR |\n" if name == "results.md" else "{}"
                    if name == MINE_SUMMARY:  # the field a ranker's input check reads
                        text = json.dumps({"pairs": config.pairs})
                    if name == SERVED_FILE and served is not None:
                        text = json.dumps(
                            {**served, "ranker_path": str(Path(config.rr_ps))}
                            if served.get("ranker") == "RR+PS"
                            else served
                        )
                    path.write_text(text)

            stage.fn = write
        return stages

    monkeypatch.setattr(pipeline_run, "build_stages", fake)
    monkeypatch.delenv("R2PS_STORAGE", raising=False)
    return calls


def test_run_pipeline_wires_serving_and_summary(tmp_path, monkeypatch):
    calls = fake_stage_bodies(monkeypatch)
    out = tmp_path / "p"
    summary = run_pipeline(PipelineConfig(out=str(out)))
    assert calls == list(summary["stages"])
    assert run_pipeline(PipelineConfig(out=str(out)))["stages"]["evaluate"]["ran"] is False
    assert calls == list(summary["stages"])  # the second run did nothing

    serve_file = Path(summary["serve_config"])
    assert serve_file == (out / "serve.yaml").resolve()
    served = ServeConfig.from_env({"R2PS_SERVE_CONFIG": str(serve_file)})
    assert served.retriever == str((out / "retriever").resolve())
    assert served.ranker == str((out / "ranker_ps").resolve())
    assert served.codes == str((out / "sample").resolve())
    assert served.embed_out == str((out / "mined").resolve())  # <embed_out>/index
    assert yaml.safe_load(serve_file.read_text())["index"]["kind"] == "flat"
    assert summary["serve_command"] == (
        f"R2PS_SERVE_CONFIG={serve_file} serve run serve.app:cascade"
    )
    text = format_summary(summary)
    assert "| method | MRR |" in text and summary["serve_command"] in text
    assert str(out / "mined" / "index") in text or summary["index"] in text
    # every path the summary names is absolute, as serve.yaml names them
    assert summary["rankers"] == {
        "RR+PS": str((out / "ranker_ps").resolve()),
        "RR": str((out / "ranker_rr").resolve()),
    }
    assert summary["results"]["md"] == str((out / "eval" / "results.md").resolve())


def test_serve_yaml_carries_the_cascade_chosen_on_valid(tmp_path, monkeypatch):
    """serve.yaml serves what the evaluation chose (its served.json, the one place both
    read): that ranker, K and weight; or, when no ranker beat the retriever, rerank_k 0,
    said in the summary."""
    fake_stage_bodies(monkeypatch, served={"ranker": "RR+PS", "rerank_k": 5, "alpha": 0.3})
    out = tmp_path / "chosen"
    summary = run_pipeline(PipelineConfig(out=str(out)))
    served = ServeConfig.from_env({"R2PS_SERVE_CONFIG": summary["serve_config"]})
    assert (served.ranker, served.rerank_k, served.alpha) == (
        str((out / "ranker_ps").resolve()),
        5,
        0.3,
    )
    monkeypatch.undo()
    reason = "retriever alone: the best cascade, RR+PS K=10 alpha=0.0, has valid MRR 30.0"
    fake_stage_bodies(monkeypatch, served={"reason": reason})
    out = tmp_path / "alone"
    summary = run_pipeline(PipelineConfig(out=str(out)))
    served = ServeConfig.from_env({"R2PS_SERVE_CONFIG": summary["serve_config"]})
    assert (served.rerank_k, served.served_reason) == (0, reason)
    assert f"served:    {reason}" in format_summary(summary)


def test_job_help_and_usage_errors(capsys):
    spec = importlib.util.spec_from_file_location("pipeline_job", REPO / "jobs" / "pipeline.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    with pytest.raises(SystemExit) as exit_:
        job.main(["--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    assert "--preset" in help_text and "--cosqa" in help_text
    flags = [ln.split()[0] for ln in help_text.splitlines() if ln.startswith("  --")]
    assert "--retriever" not in flags  # sections take section.key=value, not a flag
    assert "  retriever.lr " in help_text
    with pytest.raises(SystemExit) as exit_:  # before Ray starts
        job.main(["retriever.lrr=1"])
    assert exit_.value.code == 2
    assert ": error: unknown setting(s) retriever.lrr" in capsys.readouterr().err


@pytest.fixture(params=["file", "s3"])
def remote_out(request, tmp_path) -> str:
    """Where a pipeline uploads: a `file://` folder or a bucket on the local S3 server."""
    if request.param == "file":
        return (tmp_path / "bucket" / "r2ps").resolve().as_uri()
    return request.getfixturevalue("s3_bucket") + "/r2ps"


def remote_names(uri: str) -> list[str]:
    fs, path = pafs.FileSystem.from_uri(uri)
    return sorted(Path(i.path).name for i in fs.get_file_info(pafs.FileSelector(path)))


def remote_text(uri: str) -> str:
    fs, path = pafs.FileSystem.from_uri(uri)
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def test_a_uri_out_uploads_each_stage_as_it_finishes_and_resumes_from_it(
    tmp_path, monkeypatch, remote_out
):
    monkeypatch.setenv("R2PS_STAGING_DIR", str(tmp_path / "staging"))
    calls = fake_stage_bodies(monkeypatch, crash_at="mine")
    uri = remote_out
    with pytest.raises(RuntimeError, match="mine crashed"):
        run_pipeline(PipelineConfig(out=uri))
    assert calls == ["corpus", "sample", "retriever"]
    assert remote_names(uri) == sorted(calls)  # each when it finished
    retriever = json.loads(remote_text(f"{uri}/retriever/stage.json"))
    assert retriever["config"]["storage"] == f"{uri}/ray_results"  # checkpoints: the URI

    shutil.rmtree(tmp_path / "staging")  # another run, no local copy: the URI is the truth
    calls = fake_stage_bodies(monkeypatch)
    summary = run_pipeline(PipelineConfig(out=uri))
    assert calls == ["mine", "ranker_ps", "ranker_rr", "evaluate"]
    assert [name for name, done in summary["stages"].items() if not done["ran"]] == [
        "corpus",
        "sample",
        "retriever",
    ]
    assert summary["uploaded_to"] == uri
    assert remote_text(f"{uri}/eval/results.md").startswith("| method")
    served = yaml.safe_load(remote_text(f"{uri}/serve.yaml"))
    assert (served["retriever"], served["ranker"]) == (f"{uri}/retriever", f"{uri}/ranker_ps")
    assert (served["codes"], served["embed_out"]) == (f"{uri}/sample", f"{uri}/mined")
    assert summary["rankers"] == {"RR+PS": f"{uri}/ranker_ps", "RR": f"{uri}/ranker_rr"}
    assert f"uploaded:  every stage and serve.yaml to {uri}" in format_summary(summary)


def test_presets_are_yaml_files_and_a_path_is_a_preset(tmp_path):
    """`--preset demo` reads configs/demo.yaml; a .yaml path is a preset of one's own, and a
    section that is no stage fails naming the file."""
    from r2ps.pipeline.config import PRESET_DIR, load_preset

    assert {p.stem for p in PRESET_DIR.glob("*.yaml")} >= {"demo", "full"}
    mine = tmp_path / "mine.yaml"
    mine.write_text("retriever:\n  max_steps: 7\n")
    stages = {s.name: s for s in build_stages(PipelineConfig(preset=str(mine), out=str(tmp_path)))}
    assert stages["retriever"].config.max_steps == 7
    (tmp_path / "bad.yaml").write_text("retreiver:\n  max_steps: 7\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown section\(s\) \['retreiver'\]"):
        load_preset(str(tmp_path / "bad.yaml"))
    assert load_preset("demo")["ranker"]["residual"] is True
