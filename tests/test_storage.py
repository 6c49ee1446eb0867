"""Storage URIs: staging through local disk, on a real pyarrow filesystem behind `file://`."""

from __future__ import annotations

import dataclasses
import runpy
import shutil
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from r2ps import storage
from r2ps.data.schema import RetrievalSet
from r2ps.storage import (
    exists,
    filesystem,
    input_file,
    is_uri,
    local_input,
    local_output,
    on_this_node,
    source_uri,
    staged,
    staging_path,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def staging(tmp_path, monkeypatch) -> Path:
    """Each test stages under its own folder."""
    root = tmp_path / "staging"
    monkeypatch.setenv("R2PS_STAGING_DIR", str(root))
    return root


def uri(path: Path) -> str:
    return path.resolve().as_uri()  # file:///...


def make_tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha")
    (root / "sub" / "b.txt").write_text("beta")
    return root


def files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.is_file()}


def test_what_is_a_uri():
    assert is_uri("s3://bucket/corpus") and is_uri("gs://b/x") and is_uri("file:///tmp/x")
    assert not any(is_uri(p) for p in ("runs/demo/corpus", "/abs/path", "", None))
    fs, path = filesystem("file:///tmp/some/where")
    assert isinstance(fs, pafs.LocalFileSystem) and path == "/tmp/some/where"
    fs, path = filesystem("runs/x")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(Path("runs/x").resolve())


def test_local_paths_pass_through_without_a_copy(tmp_path, staging):
    src = make_tree(tmp_path / "src")
    with local_input(str(src)) as got:
        assert got == str(src)
    with local_output(str(tmp_path / "out")) as got:
        assert got == str(tmp_path / "out")
    assert not staging.exists()  # nothing staged, nothing copied


def test_a_uri_input_folder_is_downloaded_then_removed(tmp_path, staging):
    src = make_tree(tmp_path / "corpus" / "test")
    with local_input(uri(src)) as got:
        local = Path(got)
        assert local != src and local.is_relative_to(staging)
        assert local.name == "test"  # jobs name data sets after the folder
        assert files(local) == files(src)
        assert local == staging_path(uri(src))  # the same path on every run
        assert source_uri(local) == uri(src)
        assert source_uri(local / "a.txt") == uri(src) + "/a.txt"
    assert not local.exists()
    assert source_uri(src) is None


def test_a_uri_input_file_and_a_missing_uri(tmp_path):
    table = pa.table({"code_id": ["a", "b"], "code": ["x", "y"]})
    pq.write_table(table, tmp_path / "codes.parquet")
    with local_input(uri(tmp_path / "codes.parquet")) as got:
        assert pq.read_table(got).equals(table)
    with local_input(uri(tmp_path / "nowhere")) as got:
        assert not Path(got).exists()  # the library reports it as it would a local path


def test_users_of_one_input_share_the_copy_and_the_last_one_removes_it(tmp_path):
    src = make_tree(tmp_path / "src")
    with local_input(uri(src)) as first:
        with local_input(uri(src)) as second:
            assert second == first
        assert files(Path(first)) == files(src)  # still in use: kept
    assert not Path(first).exists()


def test_a_worker_shares_the_drivers_staged_copy(tmp_path):
    src = make_tree(tmp_path / "src")
    with local_input(uri(src)) as driver:
        Path(driver, "driver-only.txt").write_text("x")  # a re-download would lose it
        with on_this_node(driver, str(Path(driver) / "sub"), "runs/local", None):
            assert Path(driver, "driver-only.txt").exists()
        assert Path(driver).exists()  # the driver still uses it


def test_a_worker_on_another_node_downloads_its_own_copy_then_removes_it(tmp_path):
    """Another node: the path the driver passed (its staging path) does not exist here."""
    src = make_tree(tmp_path / "src")
    path = staging_path(uri(src))
    assert not path.exists()
    with on_this_node(str(path / "sub")):  # a path inside the staged folder stages it
        assert files(path) == files(src)
    assert not path.exists()


def test_a_task_on_another_node_reads_a_staged_file_from_its_uri(tmp_path):
    table = pa.table({"code_id": ["a", "b"], "code": ["x", "y"]})
    pq.write_table(table, tmp_path / "codes.parquet")
    split = uri(tmp_path)
    with local_input(split) as here:
        path = str(Path(here) / "codes.parquet")
        assert input_file(path) == path  # this node has the copy: read it
    assert not Path(path).exists()  # as on a node without the copy
    assert pq.ParquetFile(input_file(path)).read().equals(table)
    assert input_file(tmp_path / "nowhere.parquet") == str(tmp_path / "nowhere.parquet")


def test_an_output_is_uploaded_on_success_replacing_what_was_there(tmp_path, staging):
    dest = make_tree(tmp_path / "results")
    with local_output(uri(dest)) as got:
        assert Path(got).is_relative_to(staging) and not any(Path(got).iterdir())
        (Path(got) / "results.json").write_text("{}")
        (Path(got) / "deep" / "er").mkdir(parents=True)
        (Path(got) / "deep" / "er" / "x.bin").write_bytes(b"\0\1")
    assert files(dest) == {"results.json": "{}", "deep/er/x.bin": "\0\1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "staging"]  # no .tmp-
    assert not any(staging.rglob("*.json"))  # the local folder is gone


def test_nothing_is_uploaded_when_the_job_fails(tmp_path, staging):
    dest = make_tree(tmp_path / "results")
    with pytest.raises(RuntimeError, match="job failed"), local_output(uri(dest)) as got:
        (Path(got) / "half.json").write_text("{")
        raise RuntimeError("job failed")
    assert files(dest) == {"a.txt": "alpha", "sub/b.txt": "beta"}  # untouched
    with pytest.raises(RuntimeError), local_output(uri(tmp_path / "new")):
        raise RuntimeError("job failed")
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "staging"]
    assert not any(staging.rglob("half.json"))


def test_a_partial_output_keeps_what_a_failed_job_finished(tmp_path, staging):
    """The evaluation writes its quality table, then fails on the efficiency table: with
    `partial` (`staged(partial_outputs=...)`) the URI gets the finished files."""
    dest = make_tree(tmp_path / "results")
    with (
        pytest.raises(RuntimeError, match="efficiency"),
        local_output(uri(dest), partial=True) as got,
    ):
        (Path(got) / "results.json").write_text('{"pending": ["efficiency"]}')
        raise RuntimeError("efficiency table failed")
    assert files(dest) == {"results.json": '{"pending": ["efficiency"]}'}
    with pytest.raises(RuntimeError), local_output(uri(tmp_path / "new"), partial=True):
        raise RuntimeError("failed before writing anything")
    assert not (tmp_path / "new").exists()  # nothing finished: nothing replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "staging"]


def test_exists_for_paths_and_uris_inside_them(tmp_path):
    root = make_tree(tmp_path / "t")
    for base in (str(root), uri(root)):
        assert exists(base) and exists(base, "sub/b.txt") and exists(base, "sub")
        assert not exists(base, "sub/nothing.txt")
    assert not exists(str(tmp_path / "none")) and not exists(uri(tmp_path / "none"))


def test_a_resumed_output_starts_from_what_the_uri_holds(tmp_path):
    dest = make_tree(tmp_path / "embed")
    with local_output(uri(dest), resume=True) as got:
        assert files(Path(got)) == files(dest)
        (Path(got) / "a.txt").write_text("alpha 2")
    assert files(dest) == {"a.txt": "alpha 2", "sub/b.txt": "beta"}
    with local_output(uri(tmp_path / "fresh"), resume=True) as got:  # nothing there yet
        (Path(got) / "x").write_text("x")
    assert files(tmp_path / "fresh") == {"x": "x"}


class NoFolderRename:
    """A real local filesystem that cannot rename folders, as S3 and GCS cannot."""

    def __init__(self) -> None:
        self.fs = pafs.LocalFileSystem()

    def move(self, src: str, dest: str) -> None:
        if self.fs.get_file_info(src).type == pafs.FileType.Directory:
            raise OSError("cannot move directories")
        self.fs.move(src, dest)

    def __getattr__(self, name):
        return getattr(self.fs, name)


def test_without_folder_rename_the_upload_is_copied_into_place(tmp_path):
    dest = make_tree(tmp_path / "out")
    tmp = make_tree(tmp_path / "out.tmp-1")
    (tmp / "a.txt").write_text("new")
    (tmp / "sub" / "b.txt").unlink()
    (tmp / "c.txt").write_text("gamma")
    storage._replace(NoFolderRename(), str(tmp), str(dest))
    assert files(dest) == {"a.txt": "new", "c.txt": "gamma"}  # the old b.txt is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@dataclasses.dataclass
class JobConfig:
    data: str = ""
    model: str = ""
    pools: list[str] = dataclasses.field(default_factory=list)
    out: str = ""
    other: str = ""
    steps: int = 3


def test_staged_swaps_only_the_uris_of_the_fields_named(tmp_path):
    data = make_tree(tmp_path / "data")
    pool = make_tree(tmp_path / "pool")
    cfg = JobConfig(
        data=uri(data),
        model=str(tmp_path / "local_model"),
        pools=[uri(pool), str(tmp_path / "local_pool"), uri(data)],
        out=uri(tmp_path / "out"),
        other=uri(data),  # a URI in a field not named: left alone
    )
    with staged(cfg, inputs=["data", "model", "pools"], outputs=["out"]) as local:
        assert type(local) is JobConfig and local is not cfg
        assert files(Path(local.data)) == files(data) and not is_uri(local.data)
        assert local.model == cfg.model  # local: untouched
        assert local.pools[0] == str(staging_path(uri(pool)))
        assert local.pools[1] == cfg.pools[1]
        assert local.pools[2] == local.data  # one URI, one copy
        assert local.other == cfg.other and local.steps == 3
        Path(local.out, "done").write_text("yes")
    assert (tmp_path / "out" / "done").read_text() == "yes"
    assert cfg.data == uri(data)  # the caller's config is unchanged
    with staged(JobConfig(data=str(data), out=str(tmp_path / "o2")), ["data"], ["out"]) as local:
        assert local == JobConfig(data=str(data), out=str(tmp_path / "o2"))
    both = JobConfig(data=uri(data), out=uri(data))
    with (
        pytest.raises(ValueError, match="both an input and an output"),
        staged(both, ["data"], ["out"]),
    ):
        pass


def test_the_ranker_job_stages_again_the_split_a_mining_run_staged(tmp_path):
    """mine_summary.json names the staging path of a URI split; the ranker reads it there."""
    import json

    job = runpy.run_path(str(REPO / "jobs" / "train.py"), run_name="train_job")
    split = make_tree(tmp_path / "corpus" / "train")
    mined = tmp_path / "mined"
    mined.mkdir()
    assert job["mined_split"](str(mined)) is None and job["mined_split"]("") is None
    recorded = str(staging_path(uri(split)))  # what mining wrote while the split was staged
    (mined / "mine_summary.json").write_text(json.dumps({"pairs": recorded}))
    assert job["mined_split"](str(mined)) == uri(split)
    with local_input(uri(split)) as got:
        assert got == recorded and files(Path(got)) == files(split)
    (mined / "mine_summary.json").write_text(json.dumps({"pairs": str(split)}))
    assert job["mined_split"](str(mined)) is None  # a local split: read where it is


@pytest.mark.ray
def test_build_corpus_job_reads_and_writes_file_uris(ray_local, tmp_path, staging):
    """The real job, its source root and its output both given as URIs."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    src = tmp_path / "src"
    src.mkdir()
    for name in ("textwrap.py", "shlex.py", "fractions.py", "calendar.py", "difflib.py"):
        shutil.copy(stdlib / name, src / name)
    out = tmp_path / "bucket" / "corpus"
    job = runpy.run_path(str(REPO / "jobs" / "build_corpus.py"), run_name="build_corpus_job")
    argv = ["--out", uri(out), "--roots", uri(src), "stdlib=false", "site_packages=false"]
    argv += ["valid_fraction=0.2", "test_fraction=0.2", "max_eval_package_fraction=0.5"]
    assert job["main"]([*argv, "workers=1", "files_per_task=2"]) == 0

    splits = {s: RetrievalSet.read(out / s) for s in ("train", "valid", "test")}
    assert sum(r.qrels.num_rows for r in splits.values()) > 20
    assert splits["train"].qrels.num_rows and (out / "stats.json").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["corpus"]  # no .tmp- left
    assert not (staging / "in" / storage._local_name(uri(src))).exists()  # copy removed


def test_the_pipeline_refuses_a_uri_cosqa_rather_than_writing_to_a_folder_named_s3(capsys):
    job = runpy.run_path(str(REPO / "jobs" / "pipeline.py"), run_name="pipeline_job")
    with pytest.raises(SystemExit) as exit_:
        job["main"](["--cosqa", "s3://bucket/cosqa"])
    assert exit_.value.code == 2
    assert "--cosqa s3://bucket/cosqa: a local folder" in capsys.readouterr().err


def test_an_extraction_task_on_another_node_reads_a_source_from_its_uri(tmp_path):
    """read_source decodes as tokenize.open does (PEP 263 cookie, newlines) either way."""
    from r2ps.data.sources import read_source

    root = tmp_path / "src"
    root.mkdir()
    text = "# -*- coding: latin-1 -*-\r\ndef f():\r\n    return 'caf\xe9'\r\n"
    (root / "m.py").write_bytes(text.encode("latin-1"))
    with local_input(uri(root)) as here:
        path = str(Path(here) / "m.py")
        on_this_node_text = read_source(path)
    assert not Path(path).exists()  # as on a node without the copy
    assert read_source(path) == on_this_node_text == text.replace("\r\n", "\n")


def test_a_worker_on_another_node_fetches_a_finished_pipeline_stage_from_the_uri(tmp_path):
    """The pipeline's stages read each other's outputs at mirror paths; a node without the
    driver's mirror fetches the uploaded stage folder to that same path."""
    from r2ps.storage import mirror_path

    bucket = tmp_path / "bucket" / "r2ps"
    make_tree(bucket / "corpus")
    mirror = mirror_path(uri(bucket))
    assert not mirror.exists()  # another node: no mirror here
    with on_this_node(str(mirror / "corpus" / "sub")):
        assert files(mirror / "corpus") == files(bucket / "corpus")
    assert files(mirror / "corpus") == files(bucket / "corpus")  # kept for later stages
    (mirror / "corpus" / "a.txt").write_text("driver's own")
    (mirror / "corpus.lock").unlink()
    with on_this_node(str(mirror / "corpus")):  # the driver's mirror: left as it is
        assert (mirror / "corpus" / "a.txt").read_text() == "driver's own"
    shutil.rmtree(mirror)  # a read task elsewhere opens the file from the URI
    assert input_file(mirror / "corpus" / "a.txt").read() == b"alpha"


def test_a_stage_not_uploaded_yet_is_fetched_once_it_is(tmp_path):
    """A node that looked for a stage before its upload must not keep "nothing" for good."""
    from r2ps.storage import mirror_path

    bucket = tmp_path / "bucket" / "r2ps"
    bucket.mkdir(parents=True)
    mirror = mirror_path(uri(bucket))
    with on_this_node(str(mirror / "mined")):
        assert not (mirror / "mined").exists()
    make_tree(bucket / "mined")  # the stage finishes and is uploaded
    with on_this_node(str(mirror / "mined")):
        assert files(mirror / "mined") == files(bucket / "mined")


def test_atomic_path_replaces_whole_or_not_at_all(tmp_path):
    """A failed write leaves the old output and no temporary; a folder replaces a folder."""
    from r2ps.storage import atomic_path, write_text_atomic

    target = tmp_path / "summary.json"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]
    folder = tmp_path / "embeddings"
    for content in ("first", "second"):
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            (tmp / "part-0.parquet").write_text(content)
    assert (folder / "part-0.parquet").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embeddings", "summary.json"]
