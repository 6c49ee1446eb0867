"""Storage URIs against a real S3 API (moto's server on localhost, through pyarrow's S3
filesystem, as r2ps talks to AWS).

test_storage.py covers the staging logic with `file://`; these check what only an object
store shows: no folder rename (uploads are copied into place object by object), folders
that exist only as key prefixes, and reads straight from the bucket.
"""

from __future__ import annotations

import runpy
import shutil
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from test_storage import files, make_tree, staging  # noqa: F401 (staging: autouse fixture)

from r2ps.data.schema import RetrievalSet
from r2ps.storage import (
    input_file,
    local_input,
    local_output,
    mirror_path,
    on_this_node,
    staged,
    staging_path,
    upload_file,
)

REPO = Path(__file__).resolve().parents[1]


def put(local: Path, uri: str) -> None:
    """Copy a local tree into the bucket with plain pyarrow, not with r2ps."""
    fs, path = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(str(local), path, destination_filesystem=fs)


def object_keys(uri: str) -> list[str]:
    """Every object under `uri`, as keys relative to it, listed with plain pyarrow."""
    fs, path = pafs.FileSystem.from_uri(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted(i.path[len(path) + 1 :] for i in infos if i.type == pafs.FileType.File)


def keys(uri: str) -> dict[str, str]:
    """Every object under `uri` (relative key -> text), read with plain pyarrow."""
    fs, path = pafs.FileSystem.from_uri(uri)
    out = {}
    for key in object_keys(uri):
        with fs.open_input_stream(f"{path}/{key}") as f:
            out[key] = f.read().decode()
    return out


def listing(bucket: str) -> list[str]:
    """The bucket's top-level names: where a `.tmp-` or `.old` leftover would show."""
    fs, path = pafs.FileSystem.from_uri(bucket)
    return sorted(Path(i.path).name for i in fs.get_file_info(pafs.FileSelector(path)))


def test_an_input_folder_and_file_are_downloaded_then_removed(tmp_path, s3_bucket):
    put(make_tree(tmp_path / "corpus"), f"{s3_bucket}/data/corpus")
    with local_input(f"{s3_bucket}/data/corpus") as got:
        assert Path(got) == staging_path(f"{s3_bucket}/data/corpus")
        assert files(Path(got)) == files(tmp_path / "corpus")
    assert not Path(got).exists()
    with local_input(f"{s3_bucket}/data/corpus/sub/b.txt") as got:
        assert Path(got).read_text() == "beta"
    with local_input(f"{s3_bucket}/data/nothing") as got:  # missing: a missing local path
        assert not Path(got).exists()


def test_an_output_replaces_the_old_folder_without_a_folder_rename(tmp_path, s3_bucket):
    """S3 cannot rename: the old folder is deleted and the upload copied into place inside
    the bucket, leaving no `.tmp-` or `.old` keys behind."""
    dest = f"{s3_bucket}/results"
    put(make_tree(tmp_path / "old"), dest)
    with local_output(dest) as got:
        (Path(got) / "results.json").write_text("{}")
        (Path(got) / "deep" / "er").mkdir(parents=True)
        (Path(got) / "deep" / "er" / "x.txt").write_text("x")
    assert keys(dest) == {"results.json": "{}", "deep/er/x.txt": "x"}  # a.txt, sub/ gone
    assert listing(s3_bucket) == ["results"]


def test_a_failed_job_uploads_nothing(tmp_path, s3_bucket):
    dest = f"{s3_bucket}/results"
    put(make_tree(tmp_path / "old"), dest)
    with pytest.raises(RuntimeError, match="job failed"), local_output(dest) as got:
        (Path(got) / "half.json").write_text("{")
        raise RuntimeError("job failed")
    assert keys(dest) == {"a.txt": "alpha", "sub/b.txt": "beta"}
    assert listing(s3_bucket) == ["results"]


def test_inputs_are_checked_in_the_bucket_before_a_job_starts(tmp_path, s3_bucket):
    """A job's input check asks the store (one request per name): a folder that exists
    only as a key prefix, a file in it, a query string (`?region=`) kept out of the key."""
    from r2ps.config import ConfigError, check_inputs
    from r2ps.evaluation.config import EvalConfig

    put(make_tree(tmp_path / "model"), f"{s3_bucket}/model")  # a.txt, sub/b.txt: no config.json
    cfg = EvalConfig(split="", cosqa="", rr="", rr_ps="", pool_sizes=[])
    with pytest.raises(ConfigError, match=f"retriever: {s3_bucket}/model holds no config.json"):
        check_inputs(EvalConfig(**{**vars(cfg), "retriever": f"{s3_bucket}/model"}))
    with pytest.raises(ConfigError, match=f"retriever: {s3_bucket}/gone does not exist"):
        check_inputs(EvalConfig(**{**vars(cfg), "retriever": f"{s3_bucket}/gone"}))
    (tmp_path / "model" / "config.json").write_text("{}")
    put(tmp_path / "model", f"{s3_bucket}/model")
    for retriever in (f"{s3_bucket}/model", f"{s3_bucket}/model?region=us-east-1"):
        check_inputs(EvalConfig(**{**vars(cfg), "retriever": retriever}))


def test_a_resumed_output_starts_from_what_the_bucket_holds(tmp_path, s3_bucket):
    dest = f"{s3_bucket}/embed"
    put(make_tree(tmp_path / "old"), dest)
    with local_output(dest, resume=True) as got:
        assert files(Path(got)) == files(tmp_path / "old")
        (Path(got) / "a.txt").write_text("alpha 2")
    assert keys(dest) == {"a.txt": "alpha 2", "sub/b.txt": "beta"}


def test_staged_config_reads_and_writes_s3(tmp_path, s3_bucket):
    import dataclasses

    @dataclasses.dataclass
    class Job:
        data: str
        out: str

    put(make_tree(tmp_path / "data"), f"{s3_bucket}/data")
    cfg = Job(data=f"{s3_bucket}/data", out=f"{s3_bucket}/out")
    with staged(cfg, inputs=["data"], outputs=["out"]) as local:
        text = (Path(local.data) / "a.txt").read_text()
        (Path(local.out) / "copy.txt").write_text(text.upper())
    assert keys(cfg.out) == {"copy.txt": "ALPHA"}


def test_a_node_without_the_copy_fetches_from_s3_or_reads_straight_from_it(tmp_path, s3_bucket):
    """A training worker elsewhere downloads its own copy; a read task opens the object."""
    table = pa.table({"code_id": ["c1", "c2"], "code": ["def f(): pass", "x = 1"]})
    pq.write_table(table, tmp_path / "codes.parquet")
    (tmp_path / "codes").mkdir()
    shutil.move(tmp_path / "codes.parquet", tmp_path / "codes" / "codes.parquet")
    put(tmp_path / "codes", f"{s3_bucket}/codes")
    staged_path = staging_path(f"{s3_bucket}/codes")  # what the driver passes its workers
    assert not staged_path.exists()  # this "node" has no copy
    with on_this_node(str(staged_path / "codes.parquet")):
        assert pq.read_table(staged_path / "codes.parquet").equals(table)
    assert not staged_path.exists()  # the last user on the node removed it
    assert pq.ParquetFile(input_file(staged_path / "codes.parquet")).read().equals(table)


def test_a_pipeline_stage_is_fetched_from_s3_to_its_mirror_path(tmp_path, s3_bucket):
    out = f"{s3_bucket}/r2ps"
    put(make_tree(tmp_path / "corpus"), f"{out}/corpus")
    (tmp_path / "serve.yaml").write_text("retriever: x\n")
    upload_file(tmp_path / "serve.yaml", f"{out}/serve.yaml")
    assert keys(out)["serve.yaml"] == "retriever: x\n"
    mirror = mirror_path(out)
    with on_this_node(str(mirror / "corpus" / "sub")):
        assert files(mirror / "corpus") == files(tmp_path / "corpus")
    shutil.rmtree(mirror)
    assert input_file(mirror / "corpus" / "a.txt").read() == b"alpha"


@pytest.mark.ray
def test_build_corpus_job_reads_its_sources_from_and_writes_its_corpus_to_s3(
    ray_local, tmp_path, s3_bucket
):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    src = tmp_path / "src"
    src.mkdir()
    for name in ("textwrap.py", "shlex.py", "fractions.py", "calendar.py", "difflib.py"):
        shutil.copy(stdlib / name, src / name)
    put(src, f"{s3_bucket}/sources")
    out = f"{s3_bucket}/corpus"
    job = runpy.run_path(str(REPO / "jobs" / "build_corpus.py"), run_name="build_corpus_job")
    argv = ["--out", out, "--roots", f"{s3_bucket}/sources", "stdlib=false"]
    argv += ["site_packages=false", "valid_fraction=0.2", "test_fraction=0.2"]
    argv += ["max_eval_package_fraction=0.5", "workers=1", "files_per_task=2"]
    assert job["main"](argv) == 0

    assert "stats.json" in object_keys(out) and listing(s3_bucket) == ["corpus", "sources"]
    with local_input(out) as local:
        splits = {s: RetrievalSet.read(Path(local) / s) for s in ("train", "valid", "test")}
    assert sum(r.qrels.num_rows for r in splits.values()) > 20
    assert not staging_path(f"{s3_bucket}/sources").exists()  # the copy is removed
