"""A file read into its units: a file that changed since the walk is a named skip."""

import os
from dataclasses import asdict

from r2ps.repo.files import NOT_REGULAR, OVERSIZE, SYMLINK, UNREADABLE, FileRules, walk_sources
from r2ps.repo.units import read_file


def test_a_file_that_changed_since_the_walk_is_named_not_fatal(tmp_path):
    """Between the walk and the read (another task, minutes later) a file can vanish,
    become a pipe (reading it would block forever), a link, or grow past the limit: each is
    a named skip; the others are read."""
    for name in ("gone", "pipe", "link", "grown", "kept"):
        (tmp_path / f"{name}.py").write_text(f"def {name}():\n    return 1\n")
    rules = FileRules(max_file_bytes=100)
    keep, _ = walk_sources(tmp_path, rules)
    (tmp_path / "gone.py").unlink()
    (tmp_path / "pipe.py").unlink()
    os.mkfifo(tmp_path / "pipe.py")
    (tmp_path / "link.py").unlink()
    (tmp_path / "link.py").symlink_to("kept.py")
    (tmp_path / "grown.py").write_text("def grown():\n" + "    x = 1\n" * 20)
    rows = {f.path: read_file(asdict(f), rules) for f in keep}
    assert {p: r["reason"] for p, r in rows.items()} == {
        "gone.py": f"{UNREADABLE}: FileNotFoundError: No such file or directory",
        "pipe.py": NOT_REGULAR,
        "link.py": SYMLINK,
        "grown.py": OVERSIZE,
        "kept.py": None,
    }
    assert rows["kept.py"]["status"] == "indexed" and rows["kept.py"]["n_units"] == 1
