"""The MCP server as an agent reaches it: the SDK's own client (`mcp.Client`) over stdio,
against a subprocess `r2ps mcp --index DIR` on a fixture index (the tiny random BERT), and
over streamable HTTP at /mcp on the Serve app; the answers are the search core's. The
answer budget is checked on generated hits (Hypothesis)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests
import torch
import yaml
from conftest import make_source_repo, serve_deployments
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from r2ps.models.cross import CrossEncoder
from r2ps.repo.config import RepoIndexConfig
from r2ps.repo.indexer import announce_run, index_repo
from r2ps.repo.units import CODES
from r2ps.search.filters import LANGUAGES, Filters
from r2ps.search.searcher import Searcher, SearchHit
from r2ps.serving.mcp import (
    BUDGET_CHARS,
    CUT,
    LINE_CHARS,
    MAX_TOP_K,
    MIN_BUDGET_CHARS,
    SNIPPET_LINES,
    Found,
    render_answer,
)
from r2ps.serving.settings import ServeConfig

R2PS = Path(sys.executable).with_name("r2ps")  # the console script `make venv` installs
HEADING = re.compile(
    r"^(?P<where>\S+)  (?P<symbol>\S+)  \((?P<lang>\w+)\)  (?P<score>-?\d+\.\d{4})$"
)
QUERY = "area of a circle"
FILTERS = Filters(language=["go", "python"], exclude=["**/tests/**", "**/*_test.go"])
TEST_FILES = {
    "go/shapes/shapes_test.go": "package shapes\n\nfunc TestArea(t *T) {\n\tArea(nil)\n}\n",
    "python/tests/test_shapes.py": "def test_circle_area():\n    assert area(1) > 3\n",
}
# arguments -> the name the error must start with
BAD = {
    "top_k over the cap": ({"query": "x", "top_k": MAX_TOP_K + 1}, "top_k: "),
    "top_k zero": ({"query": "x", "top_k": 0}, "top_k: "),
    "unknown language": ({"query": "x", "language": ["go", "cobol"]}, "language[1]: "),
    "glob range": ({"query": "x", "path": ["src/[ab].py"]}, "path[0]: "),
    "negated glob": ({"query": "x", "exclude": ["ok/**", "!tests/**"]}, "exclude[1]: "),
    "blank query": ({"query": "  \t"}, "query: "),
    "no query": ({"top_k": 3}, "query: "),
    "first stage": ({"query": "x", "retrieval": "sparse"}, "retrieval: "),
    "misspelt filter": ({"query": "x", "lang": ["go"]}, "lang: unknown argument"),
}


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("mcp")
    src = make_source_repo(root / "repo")
    for path, text in TEST_FILES.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_text(text)
    cfg = RepoIndexConfig(source=str(src), out=str(root / "index"), model=str(tiny_bert_dir))
    summary = index_repo(cfg)
    units = {u["code_id"]: u for u in pq.read_table(root / "index" / CODES).to_pylist()}
    return {"src": src, "out": root / "index", "cfg": cfg, "summary": summary, "units": units}


def _server_env() -> dict[str, str]:
    # the SDK starts a server with a minimal environment: the test's Python path and HF
    # settings are handed on, as an agent's config does with its `env`
    keep = ("HF_HUB_OFFLINE", "HF_HOME", "PYTHONPATH", "TMPDIR")
    return {k: os.environ[k] for k in keep if k in os.environ} | {"HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def stdio(indexed):
    """One `r2ps mcp` session over stdio; every call the tests below check, in turn."""
    if not R2PS.exists():
        pytest.fail(f"{R2PS} is missing: `make venv` (pip install -e .) installs the command")
    out = indexed["out"]
    params = StdioServerParameters(
        command=str(R2PS), args=["mcp", "--index", str(out)], env=_server_env()
    )

    async def session() -> dict:
        async with Client(params) as client:
            call = client.call_tool
            got = {"tools": (await client.list_tools()).tools, "instructions": client.instructions}
            got["search"] = await call("search_code", {"query": QUERY, "top_k": 5})
            got["filtered"] = await call(
                "search_code", {"query": QUERY, "top_k": 8, **FILTERS.to_dict()}
            )
            got["hybrid"] = await call("search_code", {"query": QUERY, "retrieval": "hybrid"})
            got["status"] = await call("index_status", {})
            got["bad"] = {case: await call("search_code", a) for case, (a, _) in BAD.items()}
            with announce_run(out):  # what the index job states while it writes the folder
                got["search_during_run"] = await call("search_code", {"query": QUERY, "top_k": 5})
                got["status_during_run"] = await call("index_status", {})
            # a whole run, after this server loaded the index: it publishes version 2,
            # which the server loads before a search (its pointer checked at most every
            # half second), without a restart
            await asyncio.to_thread(index_repo, indexed["cfg"])
            for _ in range(100):
                got["search_after_run"] = await call("search_code", {"query": QUERY, "top_k": 5})
                got["status_after_run"] = await call("index_status", {})
                if got["status_after_run"].structured_content["served_version"] == 2:
                    break
                await asyncio.sleep(0.1)
            return got

    return asyncio.run(asyncio.wait_for(session(), 300))


def _text(result) -> str:
    (block,) = result.content
    return block.text


def _headings(text: str) -> list[re.Match]:
    return [HEADING.match(line) for line in text.split("\n") if line and line[0] not in " ["]


def _check_answer(result, want: list[SearchHit], units: dict) -> None:
    """`result` holds `want` in order, as text lines and as structured hits, each snippet
    the first lines of its unit's code."""
    assert not result.is_error, _text(result)
    structured = result.structured_content
    assert [h["code_id"] for h in structured["hits"]] == [h.code_id for h in want]
    for hit, want_hit, heading in zip(
        structured["hits"], want, _headings(_text(result)), strict=True
    ):
        unit = units[hit["code_id"]]
        for key in ("path", "start_line", "end_line", "symbol", "language"):
            assert hit[key] == unit[key]
        assert hit["score"] == pytest.approx(want_hit.score, abs=2e-4)
        assert heading is not None
        end = f"-{unit['end_line']}" if unit["end_line"] != unit["start_line"] else ""
        assert heading["where"] == f"{unit['path']}:{unit['start_line']}{end}"  # one line: no end
        assert (heading["symbol"], heading["lang"]) == (unit["symbol"], unit["language"])
        lines = unit["code"].split("\n")
        shown = hit["snippet"].split("\n")
        assert len(shown) == min(len(lines), SNIPPET_LINES)
        assert hit["more_lines"] == len(lines) - len(shown)
        for line, full in zip(shown, lines, strict=False):
            assert line == full or (line.endswith(CUT) and full.startswith(line[:-1]))


def test_tools_are_listed_with_their_arguments_and_the_instructions(stdio):
    tools = {t.name: t for t in stdio["tools"]}
    assert set(tools) == {"search_code", "index_status"}
    schema = tools["search_code"].input_schema
    assert schema["required"] == ["query"]
    assert schema["properties"]["top_k"]["maximum"] == MAX_TOP_K
    assert schema["properties"]["top_k"]["default"] == 10
    assert set(schema["properties"]) == {
        "query",
        "top_k",
        "language",
        "path",
        "exclude",
        "retrieval",
    }
    items = schema["properties"]["language"]["anyOf"][0]["items"]
    assert sorted(items["enum"]) == sorted(LANGUAGES)
    assert "hits" in tools["search_code"].output_schema["properties"]
    assert tools["search_code"].annotations.read_only_hint
    assert "indexing" in tools["index_status"].output_schema["properties"]
    assert "grep" in stdio["instructions"] and "search_code" in stdio["instructions"]


def test_search_code_answers_what_the_search_core_answers(stdio, indexed):
    searcher = Searcher.open(indexed["out"])
    _check_answer(stdio["search"], searcher.search(QUERY, 5), indexed["units"])
    assert stdio["search"].structured_content["retrieval"] == "repo"  # the index's own
    assert stdio["search"].structured_content["note"] is None
    want = searcher.search(QUERY, 10, retrieval="hybrid")
    _check_answer(stdio["hybrid"], want, indexed["units"])
    assert stdio["hybrid"].structured_content["retrieval"] == "hybrid"


def test_filters_apply_before_the_top_k_cut(stdio, indexed):
    want = Searcher.open(indexed["out"]).search(QUERY, 8, filters=FILTERS)
    _check_answer(stdio["filtered"], want, indexed["units"])
    hits = stdio["filtered"].structured_content["hits"]
    assert len(hits) == 8 and {h["language"] for h in hits} <= {"go", "python"}
    assert not any(h["path"].startswith("python/tests/") for h in hits)
    assert not any(h["path"].endswith("_test.go") for h in hits)


def test_index_status_says_what_is_indexed(stdio, indexed):
    status = stdio["status"].structured_content
    summary = indexed["summary"]
    assert status["index"] == str(indexed["out"])
    assert status["root"] == str(indexed["src"].resolve())
    assert status["units"] == summary["units"]["total"] == len(indexed["units"])
    assert status["files"] == summary["files"]["indexed"]
    assert status["by_language"] == summary["units"]["by_language"]
    assert status["model"] == summary["model"]
    assert status["ready"] and not status["indexing"] and status["indexing_since"] is None
    assert 0 <= status["age_seconds"] < 600 and status["last_indexed"].endswith("+00:00")
    assert status["version"] == status["served_version"] == 1


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_argument_is_a_tool_error_naming_it(stdio, case):
    result, (_, name) = stdio["bad"][case], BAD[case]
    assert result.is_error
    assert _text(result).startswith(name), _text(result)
    assert "\n" not in _text(result)


def test_a_search_during_an_index_run_answers_from_the_last_complete_index(stdio):
    during = stdio["search_during_run"]
    assert during.structured_content["hits"] == stdio["search"].structured_content["hits"]
    assert "index run is under way" in during.structured_content["note"]
    assert "index run is under way" in _text(during).split("\n")[-1]
    status = stdio["status_during_run"].structured_content
    assert status["indexing"] and status["indexing_since"].endswith("+00:00")
    # the run ended: its marker is gone, its version is served (the same tree: the same
    # hits), no restart needed
    after = stdio["search_after_run"]
    assert after.structured_content["hits"] == stdio["search"].structured_content["hits"]
    assert after.structured_content["note"] is None
    status = stdio["status_after_run"].structured_content
    assert not status["indexing"] and status["version"] == status["served_version"] == 2


def test_the_run_marker_names_a_live_run_only(indexed, tmp_path):
    from r2ps.repo.indexer import RUNNING, run_under_way

    assert run_under_way(tmp_path) is None
    with announce_run(tmp_path):
        assert run_under_way(tmp_path)["pid"] == os.getpid()
    assert not (tmp_path / RUNNING).exists()
    # a run killed before it could take its marker away: its process is gone
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    record = {"pid": int(dead.stdout), "host": socket.gethostname(), "started": 0.0}
    (tmp_path / RUNNING).write_text(json.dumps(record))
    assert run_under_way(tmp_path) is None


def test_a_folder_without_an_index_is_a_usage_error(tmp_path):
    done = subprocess.run(
        [str(R2PS), "mcp", "--index", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "not an index folder" in done.stderr
    assert done.stdout == ""  # stdout is the protocol's
    done = subprocess.run(
        [str(R2PS), "mcp", "--index", str(tmp_path), "--budget", "100"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2


# --- the budget, on generated hits


def _hit(i: int, code: str) -> SearchHit:
    return SearchHit(f"u{i:04d}", code, "python", "f.py", 1.0 - i / 100, "pkg/f.py", 1,
                     code.count("\n") + 1, f"f{i}")  # fmt: skip


codes = st.text(st.characters(codec="utf-8"), max_size=3000)


@settings(max_examples=60, deadline=None)
@given(
    codes=st.lists(codes, max_size=MAX_TOP_K),
    budget=st.integers(MIN_BUDGET_CHARS, 3 * BUDGET_CHARS),
    note=st.none() | st.text(max_size=300),
)
def test_an_answer_stays_under_its_budget_and_cuts_only_with_a_marker(codes, budget, note):
    hits = [_hit(i, code) for i, code in enumerate(codes)]
    result = render_answer(Found(hits, "dense", note), budget)
    structured = result.structured_content
    text = result.content[0].text
    assert len(text) + len(json.dumps(structured, ensure_ascii=False)) <= budget
    shown = structured["hits"]
    assert [h["code_id"] for h in shown] == [h.code_id for h in hits[: len(shown)]]
    assert structured["hits_left_out"] == len(hits) - len(shown)
    if structured["hits_left_out"]:
        assert f"{structured['hits_left_out']} more hits left out" in text
    for h, hit in zip(shown, hits, strict=False):
        lines = hit.code.split("\n")
        count = len(lines) - h["more_lines"]  # lines shown
        snippet = h["snippet"].split("\n") if count else []
        assert len(snippet) == count and (count or h["snippet"] == "")
        for line, full in zip(snippet, lines, strict=False):
            assert line == full or (
                len(line) == LINE_CHARS and line.endswith(CUT) and full.startswith(line[:-1])
            )
        if h["more_lines"]:
            assert f"{CUT} {h['more_lines']} more lines" in text
    json.dumps(structured)  # whole JSON, never a cut string


# --- streamable HTTP at /mcp on the Serve app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live(ray_local, indexed, tiny_bert_dir, tmp_path_factory):
    """The real app (serve/deployments.py) on the settings the index job wrote."""
    from ray import serve

    ranker = tmp_path_factory.mktemp("ranker")
    torch.manual_seed(0)
    CrossEncoder.from_pretrained(tiny_bert_dir).save_pretrained(ranker)
    settings = yaml.safe_load((indexed["out"] / "serve.yaml").read_text())
    settings.update(
        ranker=str(ranker), retriever_cpus=0.1, ranker_cpus=0.1, ingress_cpus=0.1,
        ranker_gpus=0.0, ranker_min_replicas=1, ranker_max_replicas=1,
    )  # fmt: skip
    build_app = serve_deployments().build_app
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(ServeConfig.from_mapping(settings)), name="mcp", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.mark.ray
def test_streamable_http_on_the_serve_app_answers_as_post_search(live, indexed):
    args = {"query": QUERY, "top_k": 6, **FILTERS.to_dict()}

    async def session():
        async with Client(f"{live}/mcp") as client:
            tools = (await client.list_tools()).tools
            found = await client.call_tool("search_code", args)
            status = await client.call_tool("index_status", {})
            bad = await client.call_tool("search_code", {"query": "x", "path": ["!a"]})
            return tools, found, status, bad

    tools, found, status, bad = asyncio.run(asyncio.wait_for(session(), 120))
    assert {t.name for t in tools} == {"search_code", "index_status"}
    body = requests.post(f"{live}/search", json=args, timeout=60).json()
    want = [SearchHit.from_dict(h) for h in body["results"]]
    _check_answer(found, want, indexed["units"])
    state = status.structured_content
    assert state["ready"] and state["units"] == len(indexed["units"]) and not state["indexing"]
    assert bad.is_error and _text(bad).startswith("path[0]: ")
    # the app's own routes still answer beside the mount
    assert requests.get(f"{live}/healthz", timeout=30).json()["status"] == "ok"
    assert "/search" in requests.get(f"{live}/openapi.json", timeout=30).json()["paths"]
