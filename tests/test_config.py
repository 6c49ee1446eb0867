import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from r2ps.config import ConfigError, Need, check_inputs, load_config, needs, parse_config


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10


@dataclass
class Outer:
    name: str = "run"
    flag: bool = False
    tags: list[str] = field(default_factory=list)
    limit: int | None = None
    inner: Inner = field(default_factory=Inner)


def test_defaults_yaml_and_overrides_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: fromyaml\ninner:\n  lr: 0.5\n  steps: 3\n")
    cfg = load_config(Outer, path, ["inner.steps=7", "flag=true", "limit=4"])
    assert cfg == Outer(name="fromyaml", flag=True, limit=4, inner=Inner(lr=0.5, steps=7))


def test_flags_beat_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: fromyaml\n")
    cfg = parse_config(
        Outer, ["--config", str(path), "--name", "cli", "--tags", "a", "--tags", "b"]
    )
    assert cfg.name == "cli" and cfg.tags == ["a", "b"]
    assert parse_config(Outer, ["--flag"]).flag is True
    assert parse_config(Outer, ["tags=x,y"]).tags == ["x", "y"]


@pytest.mark.parametrize(
    "override, needle",
    [("inner.steps=three", "inner.steps"), ("nope=1", "nope"), ("flag=maybe", "flag")],
)
def test_bad_settings_name_the_field(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(Outer, None, [override])


def test_cli_error_exits_with_message(capsys):
    with pytest.raises(SystemExit):
        parse_config(Outer, ["inner.lr=fast"])
    assert "inner.lr" in capsys.readouterr().err


def test_a_config_file_that_cannot_be_read_is_a_usage_error(tmp_path, capsys):
    """A missing or malformed --config file: one line naming it, exit 2, no traceback."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("lr: [1, 2\n")
    for path, needle in ((tmp_path / "nope.yaml", "No such file"), (broken, "broken.yaml")):
        with pytest.raises(SystemExit) as exit_info:
            parse_config(Outer, ["--config", str(path)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, err


def test_exponent_floats_without_a_dot(tmp_path):
    """YAML 1.1 reads 5e-5 as a string; a float field still takes it, from CLI and YAML."""
    assert load_config(Outer, None, ["inner.lr=5e-5"]).inner.lr == 5e-5
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  lr: 2e-5\n")
    assert load_config(Outer, path, []).inner.lr == 2e-5


def test_overrides_may_follow_flags():
    cfg = parse_config(Outer, ["flag=true", "--name", "cli", "inner.steps=4", "limit=2"])
    assert (cfg.flag, cfg.name, cfg.inner.steps, cfg.limit) == (True, "cli", 4, 2)


def test_help_names_every_setting_once_with_one_default():
    """`--help` lists each top-level flag and each nested dotted key once, its default once."""
    from r2ps.config import build_parser, nested_settings
    from r2ps.mining.embed import EmbedConfig

    text = build_parser(EmbedConfig).format_help()
    keys = [key for key, _, _ in nested_settings(EmbedConfig)]
    assert "index.kind" in keys and "index.nprobe" in keys
    for key in keys:
        assert text.count(f"  {key} ") == 1, key
    options = text.split("options:")[1].split("nested settings")[0]
    blocks = re.split(r"\n  (?=--)", options)[1:]
    flags = [b for b in blocks if not b.startswith(("--help", "-h", "--config"))]
    assert sum(b.startswith("--out ") for b in flags) == 1
    for block in flags:
        assert block.count("(default:") == 1, block


def test_every_file_under_configs_loads(tmp_path):
    """The YAML files the docs point at are valid settings: presets build every stage, job
    configs load into their job's dataclass."""
    from pathlib import Path

    from r2ps.pipeline.config import PipelineConfig, build_stages
    from r2ps.train.config import RetrieverConfig

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert {p.stem for p in configs} >= {"demo", "full", "retriever-gpu"}
    for path in configs:
        if path.stem.startswith("retriever"):
            assert load_config(RetrieverConfig, path).epochs >= 1
        else:
            stages = build_stages(PipelineConfig(preset=path.stem, out=str(tmp_path)))
            assert [s.name for s in stages][0] == "corpus"


def test_pipeline_help_lists_each_section_key_once():
    from r2ps.config import build_parser
    from r2ps.pipeline.config import PipelineConfig

    text = build_parser(PipelineConfig).format_help()
    for key in ("corpus.max_files", "retriever.lr", "mine.window_end", "evaluate.ks"):
        assert text.count(f"  {key} ") == 1, key
    assert text.count("  ranker.head_lr ") == 1


@dataclass
class Lists:
    counts: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def test_list_overrides_read_as_yaml_lists_or_comma_separated():
    # "[1,8]" was once split on the comma into "[1" and "8]"
    for text in ("[1,8]", "[1, 8]", "1,8", "1, 8"):
        assert parse_config(Lists, [f"counts={text}"]).counts == [1, 8], text
    assert parse_config(Lists, ["names=[torch,onnx,onnx-int8]"]).names == [
        "torch",
        "onnx",
        "onnx-int8",
    ]
    assert parse_config(Lists, ["counts=[]"]).counts == []
    with pytest.raises(ConfigError, match=r"counts: '\[1, 8' is not a YAML list"):
        load_config(Lists, None, ["counts=[1, 8"])


# ---------------------------------------------------------------- input paths


@dataclass
class Reads:
    """A job's settings that name what it reads, as every job's config does."""

    model: str = ""
    pools: list[str] = field(default_factory=list)
    codes: str = ""

    def inputs(self) -> list[Need]:
        return [
            *needs(self, "model", "config.json", what="a model folder"),
            *needs(self, "pools", ("map.txt", "codes.parquet")),
            *needs(self, "codes", required=True),
        ]


def make_inputs(root: Path) -> dict[str, str]:
    (root / "model").mkdir(parents=True)
    (root / "model" / "config.json").write_text("{}")
    (root / "pool").mkdir()
    (root / "pool" / "codes.parquet").write_text("")
    (root / "codes.parquet").write_text("")
    return {"model": str(root / "model"), "pool": str(root / "pool")}


def test_check_inputs_names_the_setting_and_the_path_of_the_first_missing(tmp_path):
    made = make_inputs(tmp_path)
    codes = str(tmp_path / "codes.parquet")
    check_inputs(Reads(model=made["model"], pools=[made["pool"]], codes=codes))
    check_inputs(Reads(codes=codes))  # empty settings are not read
    cases = {
        "model: .*/nowhere does not exist \\(expected a model folder\\)": Reads(
            model=str(tmp_path / "nowhere"), codes=codes
        ),
        "model: .*/pool holds no config.json \\(expected a model folder\\)": Reads(
            model=made["pool"], codes=codes
        ),
        "pools: .*/model holds none of map.txt, codes.parquet$": Reads(
            pools=[made["pool"], made["model"]], codes=codes
        ),
        "^codes: not given$": Reads(model=made["model"]),
    }
    for says, cfg in cases.items():
        with pytest.raises(ConfigError, match=says):
            check_inputs(cfg)
    # what a pipeline's earlier stages will write is not looked for
    later = Reads(model=str(tmp_path / "out" / "retriever"), codes=codes)
    check_inputs(later, skip_under=tmp_path / "out")
    with pytest.raises(ConfigError, match="model: "):
        check_inputs(later, skip_under=tmp_path / "elsewhere")


def test_check_inputs_asks_a_uri_of_its_store(tmp_path):
    """`file://` is a real pyarrow filesystem, as s3:// is (test_storage_s3.py)."""
    made = make_inputs(tmp_path)
    as_uri = {k: Path(v).resolve().as_uri() for k, v in made.items()}
    codes = (tmp_path / "codes.parquet").as_uri()
    check_inputs(Reads(model=as_uri["model"], pools=[as_uri["pool"]], codes=codes))
    with pytest.raises(ConfigError, match=f"model: {re.escape(as_uri['pool'])} holds no config"):
        check_inputs(Reads(model=as_uri["pool"], codes=codes))
    with pytest.raises(ConfigError, match="codes: file:///.*/gone.parquet does not exist"):
        check_inputs(Reads(codes=(tmp_path / "gone.parquet").as_uri()))
    with pytest.raises(ConfigError, match="codes: nosuchscheme://x/y cannot be checked"):
        check_inputs(Reads(codes="nosuchscheme://x/y"))


def test_a_job_with_a_missing_input_exits_2_with_one_line(tmp_path, capsys):
    argv = ["codes=" + str(tmp_path / "gone.parquet")]
    with pytest.raises(SystemExit) as exit_:
        parse_config(Reads, argv, check=check_inputs)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.fullmatch(r"\S+: error: codes: \S+ does not exist\n", err)
