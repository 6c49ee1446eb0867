"""Which files the indexer reads: .gitignore at every level, and every skip reason."""

import os
import shutil
import socket
import subprocess

import pytest

from r2ps.repo.files import (
    BAD_NAME,
    BINARY,
    GENERATED,
    IGNORED,
    INVALID_PATTERN,
    MAX_IGNORE_BYTES,
    MINIFIED,
    NOT_REGULAR,
    NOT_UTF8_LINE,
    OTHER_LANGUAGE,
    OUTPUT,
    OVERSIZE,
    RULES_NOT_APPLIED,
    SYMLINK,
    UNREADABLE,
    VENDORED,
    FileRules,
    check_content,
    parse_gitignore,
    walk_sources,
)


def test_walk_keeps_sources_and_names_every_skip(source_repo):
    keep, skipped = walk_sources(source_repo, FileRules())
    reasons = {s.path: s.reason for s in skipped}
    kept = {f.path for f in keep}
    assert "python/pkg/shapes.py" in kept and "ruby/lib/shapes.rb" in kept
    assert reasons["python/ignored/"] == IGNORED  # the language folder's own .gitignore
    assert reasons["build/"] == IGNORED  # the root's .gitignore
    assert reasons["go/vendor/"] == VENDORED
    assert reasons["javascript/node_modules/"] == VENDORED
    # headers and line lengths are checked when a task reads the file, not here
    assert {"go/shapes/zz_gen.go", "javascript/lib/packed.js", "go/blob.go"} <= kept
    assert reasons["javascript/lib/app.min.js"] == MINIFIED
    assert reasons["python/big.py"] == OVERSIZE
    assert reasons["python/link.py"] == SYMLINK
    assert reasons["python/notes.txt"] == OTHER_LANGUAGE
    # nothing under a skipped folder is listed or kept one by one
    assert not any(p.startswith(("build/", "go/vendor/", "python/ignored/")) for p in kept)
    assert not any(s.path.startswith("javascript/node_modules/dep") for s in skipped)
    assert [f.path for f in keep] == sorted(kept)


def test_gitignore_negation_and_nesting(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".gitignore").write_text("*.py\n!keep.py\n")
    (tmp_path / "a" / ".gitignore").write_text("!again.py\n")
    for rel in ("x.py", "keep.py", "a/again.py", "a/other.py", "a/b/deep.go"):
        (tmp_path / rel).write_text("x = 1\n")
    keep, skipped = walk_sources(tmp_path, FileRules())
    assert {f.path for f in keep} == {"keep.py", "a/again.py", "a/b/deep.go"}
    assert {s.path for s in skipped if s.reason == IGNORED} == {"x.py", "a/other.py"}
    keep, _ = walk_sources(tmp_path, FileRules(gitignore=False))
    assert len(keep) == 5


def test_gitignore_contents_pattern_lets_a_file_back_in(tmp_path):
    """`x/**` ignores what is inside x, not x itself, so `!x/keep.py` keeps that file
    (as `git ls-files` does); `build/` ignores the folder, which no `!` can reopen; a
    `/**` pattern's folder is entered and its files judged one by one."""
    (tmp_path / ".gitignore").write_text("x/**\n!x/keep.py\nbuild/\n!build/keep.py\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".gitignore").write_text("gen/**\n")
    for rel in ("x/keep.py", "x/drop.py", "build/keep.py", "sub/gen/g.py", "sub/s.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    keep, skipped = walk_sources(tmp_path, FileRules())
    assert {f.path for f in keep} == {"x/keep.py", "sub/s.py"}
    ignored = {s.path for s in skipped if s.reason == IGNORED}
    assert ignored == {"x/drop.py", "build/", "sub/gen/g.py"}


def test_gitignore_contents_pattern_as_git_ls_files_reads_it(tmp_path):
    """What `git ls-files --others --exclude-standard` keeps on this tree: `x/**` matches
    x/sub as a folder, which no `!` reopens; x's own .gitignore is read and can keep a
    file (only x itself is entered, its folders stay one skipped entry each)."""
    (tmp_path / "a" / "x" / "sub").mkdir(parents=True)
    (tmp_path / "a" / ".gitignore").write_text("x/**\n!x/sub/keep.py\n")
    (tmp_path / "b" / "x").mkdir(parents=True)
    (tmp_path / "b" / ".gitignore").write_text("x/**\n")
    (tmp_path / "b" / "x" / ".gitignore").write_text("!keep.py\n")
    for rel in ("a/x/sub/keep.py", "a/x/top.py", "b/x/keep.py", "b/x/drop.py"):
        (tmp_path / rel).write_text("x = 1\n")
    keep, skipped = walk_sources(tmp_path, FileRules())
    assert [f.path for f in keep] == ["b/x/keep.py"]
    ignored = {s.path for s in skipped if s.reason == IGNORED}
    # b/x/.gitignore is itself ignored by `x/**` and still read, as git reads it
    assert ignored == {"a/x/sub/", "a/x/top.py", "b/x/drop.py", "b/x/.gitignore"}


def test_a_gitignore_that_cannot_be_read_is_named_not_fatal(tmp_path):
    """A dangling or looping .gitignore link, or a pipe named .gitignore (reading it would
    block), is named with its reason; the walk goes on without its rules."""
    (tmp_path / "l").mkdir()
    (tmp_path / "l" / ".gitignore").symlink_to(tmp_path / "nowhere")
    (tmp_path / "l" / "a.py").write_text("x = 1\n")
    (tmp_path / "p").mkdir()
    os.mkfifo(tmp_path / "p" / ".gitignore")
    (tmp_path / "p" / "b.py").write_text("x = 1\n")
    keep, skipped = walk_sources(tmp_path, FileRules())
    assert [f.path for f in keep] == ["l/a.py", "p/b.py"]
    reasons = {s.path: s.reason for s in skipped}
    assert reasons["l/.gitignore"] == f"{SYMLINK} (its rules are not applied)"
    assert reasons["p/.gitignore"] == f"{NOT_REGULAR} (its rules are not applied)"


def test_check_content_reasons():
    rules = FileRules()
    assert check_content(b"GIF89a\x00\x01", rules) == BINARY
    assert (
        check_content(b"// Code generated by protoc. DO NOT EDIT.\npackage x\n", rules) == GENERATED
    )
    assert check_content(b"# @generated\ndef f(): pass\n", rules) == GENERATED
    for header in (
        b"# Generated by Django 4.2 on 2024-01-01 10:00\n",
        b"/* auto-generated by tool */\n",
        b"# This file is automatically generated from schema.json\n",
        b"# autogenerated file\n",
        b"// Code generated by stringer. DO NOT EDIT.\n",
        b"# This file is autogenerated by pip-compile with Python 3.11\n",
        b"# This file is auto-generated. Do not modify.\n",
        b"# WARNING: this file is auto-generated by tools/gen.py\n",
        b"// THIS FILE IS GENERATED - DO NOT MODIFY\n",
    ):
        assert check_content(header + b"def f(): pass\n", rules) == GENERATED, header
    for prose in (  # hand-written files that talk about generation
        b'"""Tokens generated by the lexer are consumed here."""\n',
        b"# the ids generated by the database are kept\n",
        b'def f():\n    """Return the autogenerated key."""\n',
        b"@generated_property\ndef f(): pass\n",
        b'"""Please do not modify the global state in tests."""\n',
        b"X = 3  # do not edit\n",
        b"# emails like me@generated.com are fine\n",
    ):
        assert check_content(prose + b"def f(): pass\n", rules) is None, prose
    # classic Mac line ends are lines here too: not one 1.8 KB "minified" line, and a
    # marker past the first lines is not in the head
    cr = b"def f(x):\r    return x\r\r" * 80 + b"# do not edit the table below\r"
    assert len(cr) > 1024 and check_content(cr, rules) is None
    assert check_content(b"var a=1;" * 500, rules) == MINIFIED
    assert check_content(b"def f():\n    return 1\n" * 100, rules) is None


def test_missing_source_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        walk_sources(tmp_path / "nope", FileRules())


def test_odd_entries_are_skipped_with_their_reason_not_fatal(tmp_path, monkeypatch):
    """Names that are not UTF-8, named pipes (reading one blocks forever), folders that
    cannot be listed and the index's own output folder are each named with a reason;
    the rest of the tree is kept."""
    root = tmp_path / "src"
    (root / "locked").mkdir(parents=True)
    (root / "ok.py").write_text("def f(): pass\n")
    (root / "locked" / "l.py").write_text("def g(): pass\n")
    bad = os.fsencode(root) + b"/bad\xffname.py"
    with open(bad, "w") as fh:
        fh.write("def h(): pass\n")
    os.mkdir(os.fsencode(root) + b"/dir\xfe")
    os.mkfifo(root / "pipe.py")
    (root / "out" / "index").mkdir(parents=True)
    (root / "out" / "index" / "x.py").write_text("def i(): pass\n")

    real_scandir = os.scandir

    def scandir(path="."):  # root may list every folder: refuse one as a user would be
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    keep, skipped = walk_sources(root, FileRules(), exclude=root / "out")
    reasons = {s.path: s.reason for s in skipped}
    assert [f.path for f in keep] == ["ok.py"]
    assert reasons["bad\\xffname.py"] == BAD_NAME and reasons["dir\\xfe/"] == BAD_NAME
    assert reasons["pipe.py"] == NOT_REGULAR
    assert reasons["out/"] == OUTPUT
    assert reasons["locked/"] == f"{UNREADABLE}: PermissionError: Permission denied"
    assert len(reasons) == 5


# ------------------------------------------------------------------ bad rules files


def _bad_lines(skipped):
    return {(s.path, s.line, s.text, s.reason) for s in skipped if s.line is not None}


def test_black_invalid_gitignore_line_is_skipped_and_named(tmp_path):
    """psf/black ships `tests/data/invalid_gitignore_tests/.gitignore` holding `!` alone
    (and the same in a nested folder): pathspec raises GitIgnorePatternError for it, git
    ignores the line. The line is named with its file and number; the tree is walked."""
    black = tmp_path / "black"
    for case in ("invalid_gitignore_tests", "invalid_nested_gitignore_tests/a"):
        folder = black / "tests" / "data" / case
        folder.mkdir(parents=True)
        (folder / ".gitignore").write_bytes(b"!\n")  # black's exact bytes
        (folder / "a.py").write_bytes(b"")
    (black / "tests/data/invalid_gitignore_tests/pyproject.toml").write_text(
        "# Empty configuration file; used in tests to avoid interference from Black's own config.\n"
    )
    (black / "src").mkdir()
    (black / "src" / "black.py").write_text("def main(): pass\n")
    keep, skipped = walk_sources(black, FileRules())
    assert [f.path for f in keep] == [
        "src/black.py",
        "tests/data/invalid_gitignore_tests/a.py",
        "tests/data/invalid_nested_gitignore_tests/a/a.py",
    ]
    assert _bad_lines(skipped) == {
        ("tests/data/invalid_gitignore_tests/.gitignore", 1, "!", INVALID_PATTERN),
        ("tests/data/invalid_nested_gitignore_tests/a/.gitignore", 1, "!", INVALID_PATTERN),
    }


# Line by line: the number, the bytes, what happens to it
_RULES = [
    (1, b"\xef\xbb\xbfbom.py", "applied"),  # git drops a UTF-8 byte order mark first
    (2, b"!", INVALID_PATTERN),
    (3, b"# a comment", "not a pattern"),
    (4, b"", "not a pattern"),
    (5, b"foo\\", INVALID_PATTERN),  # a trailing backslash
    (6, b"a[", INVALID_PATTERN),  # an unclosed range
    (7, b"/", INVALID_PATTERN),
    (8, b"caf\xe9.py", NOT_UTF8_LINE),  # Latin-1
    (9, b"crlf.py\r", "applied"),  # git drops the \r before \n
    (10, b"[z-a].py", INVALID_PATTERN),  # a reversed range: pathspec's regex fails
    (11, b"ign/", "applied"),
    (12, b"   ", "not a pattern"),
]


def _rules_tree(root):
    (root / "sub").mkdir(parents=True)
    (root / ".gitignore").write_bytes(b"\n".join(raw for _, raw, _ in _RULES) + b"\n")
    (root / "sub" / ".gitignore").write_bytes(b"!\ninner2.py\n")
    for rel in ("bom.py", "crlf.py", "keep.py", "foo.py", "a.py", "ign/x.py", "sub/inner.py",
                "sub/inner2.py"):  # fmt: skip
        (root / rel).parent.mkdir(exist_ok=True)
        (root / rel).write_text("x = 1\n")


def test_each_bad_gitignore_line_is_named_and_the_others_apply(tmp_path):
    _rules_tree(tmp_path)
    keep, skipped = walk_sources(tmp_path, FileRules())
    assert {f.path for f in keep} == {"keep.py", "foo.py", "a.py", "sub/inner.py"}
    ignored = {s.path for s in skipped if s.reason == IGNORED}
    assert ignored == {"bom.py", "crlf.py", "ign/", "sub/inner2.py"}
    named = {(n, text, reason) for path, n, text, reason in _bad_lines(skipped)}
    expected = {(n, raw.decode("utf-8", "backslashreplace"), why) for n, raw, why in _RULES}
    assert named == {x for x in expected if x[2] in (INVALID_PATTERN, NOT_UTF8_LINE)} | {
        (1, "!", INVALID_PATTERN)  # sub/.gitignore's
    }
    assert "caf\\xe9.py" in {text for _, text, _ in named}  # shown with its byte escaped
    spec, bad = parse_gitignore(b"*.py\r\n!keep.py\r\n")  # CRLF throughout
    assert bad == [] and spec.match_file("x.py") and not spec.match_file("keep.py")


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_the_walk_keeps_what_git_keeps_despite_bad_lines(tmp_path):
    """`git ls-files --others --exclude-standard` on the same tree lists exactly the
    files the walk keeps (the reversed range aside: git matches `z.py` with `[z-a].py`,
    no file here is named so)."""
    _rules_tree(tmp_path)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    listed = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard"],
        cwd=tmp_path, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    keep, _ = walk_sources(tmp_path, FileRules())
    assert {f.path for f in keep} == {p for p in listed if p.endswith(".py")}


def test_a_gitignore_that_is_not_rules_is_named_not_fatal(tmp_path, monkeypatch):
    """Binary bytes, a socket (open() fails even for root), a link to itself, one over
    git's size limit: each is named with its reason, its rules not applied, the rest of
    the tree walked. A folder named .gitignore is a folder (git reads no rules from it and
    lists its files), walked as one."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / ".gitignore").write_bytes(b"*.py\n\x00\x01\x02\xff\n")
    (tmp_path / "sock").mkdir()
    monkeypatch.chdir(tmp_path / "sock")  # a short relative path: AF_UNIX names are short
    server = socket.socket(socket.AF_UNIX)
    server.bind(".gitignore")
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / ".gitignore").symlink_to(".gitignore")
    (tmp_path / "huge").mkdir()
    with open(tmp_path / "huge" / ".gitignore", "wb") as fh:
        fh.truncate(MAX_IGNORE_BYTES + 1)  # sparse: no disk used
    (tmp_path / "dir" / ".gitignore").mkdir(parents=True)
    for folder in ("bin", "sock", "loop", "huge", "dir", "dir/.gitignore"):
        (tmp_path / folder / "a.py").write_text("x = 1\n")
    try:
        keep, skipped = walk_sources(tmp_path, FileRules())
    finally:
        server.close()
    assert [f.path for f in keep] == [
        "bin/a.py", "dir/.gitignore/a.py", "dir/a.py", "huge/a.py", "loop/a.py", "sock/a.py"
    ]  # fmt: skip
    reasons = {s.path: s.reason for s in skipped}
    assert reasons["bin/.gitignore"] == BINARY + RULES_NOT_APPLIED
    assert reasons["sock/.gitignore"] == (
        f"{UNREADABLE}: OSError: No such device or address{RULES_NOT_APPLIED}"
    )
    assert reasons["loop/.gitignore"] == SYMLINK + RULES_NOT_APPLIED
    assert reasons["huge/.gitignore"] == OVERSIZE + RULES_NOT_APPLIED
    assert len(reasons) == 4


def test_link_loops_and_deep_trees_end(tmp_path, monkeypatch):
    """Links to themselves, to their folder and to an ancestor are named, never
    followed; a tree deeper than Python's recursion limit is walked to its bottom."""
    (tmp_path / "self").symlink_to("self")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "here").symlink_to(".")
    (tmp_path / "a" / "up").symlink_to("..")
    monkeypatch.chdir(tmp_path)  # relative paths: the absolute one could pass PATH_MAX
    deep = "d"
    os.mkdir(deep)
    for _ in range(1100):  # Python 3.11's os.walk (and os.makedirs) recurse per level
        deep += "/d"
        os.mkdir(deep)
    with open(deep + "/bottom.py", "w") as fh:
        fh.write("x = 1\n")
    try:
        keep, skipped = walk_sources(tmp_path, FileRules())
    finally:  # removed here: pytest's clean-up (shutil.rmtree) recurses per level too
        os.remove(deep + "/bottom.py")
        while deep:
            os.rmdir(deep)
            deep = deep.rpartition("/")[0]
    assert [f.path for f in keep] == ["d" + "/d" * 1100 + "/bottom.py"]
    assert {s.path: s.reason for s in skipped} == {
        "self": SYMLINK, "a/here/": SYMLINK, "a/up/": SYMLINK
    }  # fmt: skip
