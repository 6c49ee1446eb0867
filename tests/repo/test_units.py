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


def _units(root, rel: str) -> dict[str, dict]:
    keep, _ = walk_sources(root, FileRules())
    (f,) = [f for f in keep if f.path == rel]
    row = read_file(asdict(f), FileRules())
    assert row["status"] == "indexed" and row["n_units"] == len(row["units"])
    return {u["symbol"]: u for u in row["units"]}


def test_module_units_are_indexed_with_stable_ids(tmp_path):
    """A file of assignments is indexed (its module unit); a module unit's ids change
    only with its own lines, so editing inside a function re-embeds the function alone."""
    (tmp_path / "settings.py").write_text("DEBUG = False\nNAME = 'app'\n")
    units = _units(tmp_path, "settings.py")
    assert [(u["kind"], u["start_line"], u["end_line"]) for u in units.values()] == [
        ("module", 1, 2)
    ]
    app = tmp_path / "app.py"
    app.write_text("import os\n\n\ndef f():\n    return 1\n\nX = 1\n")
    before = _units(tmp_path, "app.py")
    assert {s: u["kind"] for s, u in before.items()} == {"f": "function", "app": "module"}
    assert before["app"]["code"] == "import os\n\n\n\n\n\nX = 1"  # lines keep their numbers
    app.write_text("import os\n\n\ndef f():\n    return 2\n\nX = 1\n")
    after = _units(tmp_path, "app.py")
    assert after["app"]["code_id"] == before["app"]["code_id"]
    assert after["f"]["content_id"] != before["f"]["content_id"]
    # a longer function moves the module unit's last line: that unit is new too
    app.write_text("import os\n\n\ndef f():\n    x = 2\n    return x\n\nX = 1\n")
    longer = _units(tmp_path, "app.py")
    assert longer["app"]["end_line"] == after["app"]["end_line"] + 1
    assert longer["app"]["code_id"] != after["app"]["code_id"]
