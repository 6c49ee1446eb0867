"""The repository index's settings: paths checked before anything is read or written."""

import os

import pytest

from r2ps.config import ConfigError
from r2ps.repo.config import RepoIndexConfig, check_paths


def test_a_source_path_that_is_not_utf8_is_refused_by_name(tmp_path):
    """Every path is stored and shown as text: a source or output folder whose own name is
    not UTF-8 is refused before anything is written (names inside are skipped by the walk)."""
    src = os.fsencode(tmp_path) + b"/caf\xe9"
    os.mkdir(src)
    with pytest.raises(ConfigError, match=r"source: .*caf\\\\xe9.*not UTF-8"):
        check_paths(RepoIndexConfig(source=os.fsdecode(src), out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()
    bad_out = os.fsdecode(os.fsencode(tmp_path) + b"/out\xfe")
    with pytest.raises(ConfigError, match=r"out: .*out\\\\xfe.*not UTF-8"):
        check_paths(RepoIndexConfig(source=str(tmp_path), out=bad_out))


def test_an_out_folder_of_other_files_is_refused_before_anything_is_written(tmp_path):
    """`--out .` (or any folder of one's own files) would have its files replaced or
    deleted by the run (found by a new user's trial): refused, naming a file there."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep.py").write_text("def f():\n    return 1\n")
    with pytest.raises(ConfigError, match=r"out: .*not an r2ps index \(e\.g\. 'keep\.py'\)"):
        check_paths(RepoIndexConfig(source=str(src), out=str(src)))
    assert [p.name for p in src.iterdir()] == ["keep.py"]
    empty = tmp_path / "empty"
    empty.mkdir()
    check_paths(RepoIndexConfig(source=str(src), out=str(empty)))  # new or empty: fine
    (empty / "files.parquet").write_bytes(b"")  # an earlier run's folder: fine
    (empty / "notes.txt").write_text("x")
    check_paths(RepoIndexConfig(source=str(src), out=str(empty)))
