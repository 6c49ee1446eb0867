"""The `r2ps` command as a user runs it: the console script in a subprocess, `r2ps index`
on a fixture repository (with the tiny random BERT), then `r2ps search` from inside it:
grep-like lines, `--json`, filters, snippets on a terminal, and grep's exit statuses
(0 hits, 1 none, 2 an error). `--url` against a running server: tests/repo/test_search_page.py."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import make_source_repo

from r2ps.search.filters import Filters
from r2ps.search.searcher import Searcher
from r2ps.serving.cli import ray_address

R2PS = Path(sys.executable).with_name("r2ps")  # the console script `make venv` installs
LINE = re.compile(
    r"^(?P<path>\S+):(?P<start>\d+)-(?P<end>\d+)  (?P<symbol>\S+)  \((?P<lang>\w+)\)  -?\d+\.\d{4}$"
)
TEST_FILES = {
    "go/shapes/shapes_test.go": "package shapes\n\nfunc TestArea(t *T) {\n\tArea(nil)\n}\n",
    "python/tests/test_shapes.py": "def test_circle_area():\n    assert area(1) > 3\n",
}


def r2ps(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    if not R2PS.exists():
        pytest.fail(f"{R2PS} is missing: `make venv` (pip install -e .) installs the command")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [str(R2PS), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert_dir) -> Path:
    """A repository indexed by `r2ps index PATH` into its default folder."""
    root = tmp_path_factory.mktemp("cli")
    src = make_source_repo(root / "project")
    for path, text in TEST_FILES.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_text(text)
    done = r2ps("index", str(src), "--model", str(tiny_bert_dir), cwd=root)
    assert done.returncode == 0, done.stderr
    assert "units:" in done.stdout and 'r2ps search "..."' in done.stdout
    return src


@pytest.fixture(scope="module")
def units(project) -> dict[str, dict]:
    return {
        u["code_id"]: u for u in pq.read_table(project / ".r2ps/index/codes.parquet").to_pylist()
    }


def test_index_writes_the_folder_index_that_git_and_the_walk_leave_alone(project, units):
    assert (project / ".r2ps/index/serve.yaml").is_file()
    assert (project / ".r2ps/.gitignore").read_text().splitlines()[-1] == "*"
    assert not any(u["path"].startswith(".r2ps") for u in units.values())
    assert {"go/shapes/shapes_test.go", "python/tests/test_shapes.py"} <= {
        u["path"] for u in units.values()
    }


def test_search_prints_one_grep_like_line_per_hit(project, units):
    # from a subfolder: the nearest .r2ps/index above it is the one searched
    done = r2ps("search", "area of a circle", "-k", "4", cwd=project / "python" / "pkg")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4  # off a terminal: the lines alone, no snippets
    by_place = {(u["path"], u["start_line"], u["end_line"]): u for u in units.values()}
    for line in lines:
        m = LINE.match(line)
        assert m, line
        unit = by_place[(m["path"], int(m["start"]), int(m["end"]))]
        assert (m["symbol"], m["lang"]) == (unit["symbol"], unit["language"])


def test_json_and_filters_answer_as_the_search_core(project):
    args = ["--lang", "go,Python", "--exclude", "**/*_test.go", "--exclude", "tests/", "-k", "50"]
    done = r2ps("search", "area of a circle", "--json", *args, cwd=project)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    # the index's own first stage (r2ps.repo.indexer.REPO_RETRIEVAL: blend + signals)
    assert answer["retrieval"] == "repo" and answer["query"] == "area of a circle"
    hits = answer["hits"]
    assert {h["language"] for h in hits} == {"go", "python"}
    assert not any(h["path"].endswith("_test.go") or "/tests/" in h["path"] for h in hits)
    filters = Filters(language=["go", "python"], exclude=["**/*_test.go", "tests/"])
    want = Searcher.open(project / ".r2ps/index").search("area of a circle", 50, None, filters)
    assert [h["code_id"] for h in hits] == [h.code_id for h in want]
    assert hits[0] == want[0].to_dict()

    # fewer than k pass: fewer come back, never units of other files
    done = r2ps(
        "search",
        "circle",
        "--json",
        "--path",
        "python/tests/**",
        "--retrieval",
        "hybrid",
        cwd=project,
    )
    assert done.returncode == 0, done.stderr
    assert [h["path"] for h in json.loads(done.stdout)["hits"]] == ["python/tests/test_shapes.py"]


def test_exit_status_is_greps(project, tmp_path):
    none = r2ps("search", "circle", "--path", "nowhere/**", cwd=project)
    assert (none.returncode, none.stdout) == (1, "")
    for args, names in [
        (["--exclude", "[ab].py"], "--exclude: '[ab].py'"),
        (["--lang", "rust"], "--lang: unknown language 'rust'"),
        (["--path", "!src/**"], "--path"),
        (["-k", "0"], "-k/--top-k"),
        (["--retrieval", "sparse"], "--retrieval"),
        (["--index", str(tmp_path), "--url", "http://127.0.0.1:9"], "not allowed with"),
        (["--index", str(tmp_path)], "no serve.yaml"),
        (["--url", "http://127.0.0.1:9"], "cannot reach the server"),
    ]:
        done = r2ps("search", "circle", *args, cwd=project)
        assert done.returncode == 2 and names in done.stderr, (args, done.stderr)
    lost = r2ps("search", "circle", cwd=tmp_path)  # no .r2ps/index here or above
    assert lost.returncode == 2 and "r2ps index ." in lost.stderr


def test_a_terminal_gets_each_hit_with_a_snippet(project, units):
    main, replica = pty.openpty()  # stdout is a terminal, as when a person runs it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [str(R2PS), "search", "area of a circle", "-k", "2"],
        cwd=project, env=env, stdout=replica, stderr=subprocess.PIPE,
    )  # fmt: skip
    os.close(replica)
    out = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    os.close(main)
    lines = out.decode().replace("\r\n", "\n").split("\n")
    heads = [i for i, line in enumerate(lines) if LINE.match(line)]
    assert len(heads) == 2
    m = LINE.match(lines[heads[0]])
    unit = next(
        u for u in units.values() if (u["path"], u["start_line"]) == (m["path"], int(m["start"]))
    )
    code = unit["code"].split("\n")
    assert lines[heads[0] + 1 : heads[0] + 1 + min(4, len(code))] == ["    " + c for c in code[:4]]


@pytest.mark.ray
def test_serve_answers_from_any_folder_and_stops_with_its_ray(project):
    """`r2ps serve` from inside the project (not the r2ps checkout): the app over the
    nearest index on a Ray of its own, POST /search with a filter; SIGTERM stops it all."""
    import socket
    import time

    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [str(R2PS), "serve", "--port", str(port)], cwd=project / "go", env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or busy starting
                pass
            time.sleep(2)
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        body = {"query": "area of a circle", "top_k": 3, "language": ["go"]}
        r = requests.post(f"{url}/search", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert [h["language"] for h in r.json()["results"]] == ["go"] * 3
        ps = ["ps", "-o", "pid=", "--ppid", str(proc.pid)]
        ray = [int(p) for p in subprocess.run(ps, capture_output=True, text=True).stdout.split()]
        assert ray  # the Ray it started: GCS, raylet, ...
    finally:
        proc.terminate()  # SIGTERM: Ray's driver handler stops the Ray it started
        proc.wait(timeout=120)
    deadline = time.monotonic() + 60
    while ray and time.monotonic() < deadline:  # none of them outlives the command
        ray = [p for p in ray if Path(f"/proc/{p}").exists()]
        time.sleep(1)
    assert not ray


def test_ray_is_local_unless_named(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address(None) == "local"  # never a cluster running on the machine by chance
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert ray_address(None) == "10.0.0.5:6379"
    assert ray_address("auto") == "auto"
