"""Serving a source-tree index: hits carry path/lines/symbol/language, the hybrid first
stage is BM25 + dense by RRF, the repo one (the index's own) is the search core's, and
/readyz names it with its signals; the search page at GET / works in a real headless
Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium)."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
import torch
import yaml
from conftest import make_source_repo, serve_deployments

from r2ps.mining.index import CodeIndex
from r2ps.models.backends import load_retriever
from r2ps.models.cross import CrossEncoder
from r2ps.repo.config import RepoIndexConfig
from r2ps.repo.indexer import index_repo
from r2ps.repo.units import CODES
from r2ps.search.bm25 import BM25
from r2ps.search.filters import GLOB_PATTERN, LANGUAGES, Filters
from r2ps.search.fusion import rrf
from r2ps.search.searcher import Searcher
from r2ps.serving.settings import ServeConfig

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `serve.app` lives at the repository root
    sys.path.insert(0, str(REPO))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("page")
    src = make_source_repo(root / "repo")
    out = root / "index"
    index_repo(RepoIndexConfig(source=str(src), out=str(out), model=str(tiny_bert_dir)))
    torch.manual_seed(0)
    CrossEncoder.from_pretrained(tiny_bert_dir).save_pretrained(root / "ranker")
    return {"src": src, "out": out, "ranker": root / "ranker", "model": tiny_bert_dir}


@pytest.fixture(scope="module")
def live(ray_local, indexed):
    """The real app (serve/app.py) on the settings jobs/index.py wrote, small resources."""
    from ray import serve

    settings = yaml.safe_load((indexed["out"] / "serve.yaml").read_text())
    build_app = serve_deployments().build_app
    settings.update(
        ranker=str(indexed["ranker"]),
        retriever_cpus=0.1,
        ranker_cpus=0.1,
        ingress_cpus=0.1,
        ranker_gpus=0.0,
        ranker_min_replicas=1,
        ranker_max_replicas=1,
        ranker_timeout_s=30.0,
    )
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(ServeConfig.from_mapping(settings)), name="repo", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def _search(url, **body):
    r = requests.post(f"{url}/search", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_hits_carry_path_lines_symbol_and_language(live, indexed):
    codes = pq.read_table(indexed["out"] / CODES).to_pylist()
    target = next(c for c in codes if c["symbol"] == "Shapes.circleArea")
    body = _search(live, query=target["code"], top_k=5, rerank_k=0)
    hit = body["results"][0]
    assert body["retrieval"] == "repo"  # what jobs/index.py's serve.yaml names
    assert {k: hit[k] for k in ("path", "start_line", "end_line", "symbol", "language")} == {
        "path": "java/src/geo/Shapes.java",
        "start_line": target["start_line"],
        "end_line": target["end_line"],
        "symbol": "Shapes.circleArea",
        "language": "java",
    }
    lines = (indexed["src"] / hit["path"]).read_text().split("\n")
    assert "\n".join(lines[hit["start_line"] - 1 : hit["end_line"]]) == hit["code"]


def test_hybrid_is_bm25_and_dense_fused_by_rrf(live, indexed):
    query = "circle area radius"
    body = _search(live, query=query, top_k=8, rerank_k=0, retrieval="hybrid")
    assert body["retrieval"] == "hybrid"
    # the same fusion computed here from the saved index and the same model
    index = CodeIndex.load(indexed["out"] / "index")
    units = {c["code_id"]: c for c in pq.read_table(indexed["out"] / CODES).to_pylist()}
    model = load_retriever(indexed["model"], RepoIndexConfig().backend, threads=1).model
    n = len(index)
    _, dense = index.search(model.embed_queries([query]), min(100, n))
    # BM25's document of a unit: its path, symbol and code
    documents = [" ".join(units[i][f] for f in ("path", "symbol", "code")) for i in index.code_ids]
    lexical, lex_scores = BM25(documents).top_k(query, min(100, n))
    ids, scores = rrf([dense[0], lexical[lex_scores > 0]], k=60, top=8)
    assert [h["code_id"] for h in body["results"]] == [index.code_ids[i] for i in ids]
    np.testing.assert_allclose([h["retriever_score"] for h in body["results"]], scores, rtol=1e-6)
    r = requests.post(f"{live}/search", json={"query": "x", "retrieval": "sparse"}, timeout=30)
    assert r.status_code == 422 and "retrieval" in r.text


def test_repo_is_served_as_the_search_core_ranks_it(live, indexed):
    searcher = Searcher.open(indexed["out"])  # serve.yaml's own first stage: repo
    for query in ("Circle", "area of a circle"):
        body = _search(live, query=query, top_k=8, rerank_k=0)
        want = searcher.search(query, 8)
        assert body["retrieval"] == "repo"
        assert [h["code_id"] for h in body["results"]] == [h.code_id for h in want]
        np.testing.assert_allclose(
            [h["retriever_score"] for h in body["results"]], [h.score for h in want], rtol=1e-5
        )
    ready = requests.get(f"{live}/readyz", timeout=30).json()["retriever"]
    assert ready["retrieval"] == "repo" and ready["signals"]["enabled"] is True
    assert ready["signals"]["test_factor"] == 0.3 and ready["blend_alpha"] == 0.5
    doc = requests.get(f"{live}/openapi.json", timeout=30).json()
    body = doc["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"]
    (retrieval, _) = body["schema"]["properties"]["retrieval"]["anyOf"]
    assert retrieval["enum"] == ["dense", "hybrid", "repo"]


def test_filters_apply_before_the_top_k_cut(live, indexed):
    # the served answer is the search core's over the same index, filtered first
    searcher = Searcher.open(indexed["out"])
    filters = Filters(language=["go", "java"], exclude=["**/broken.*"])
    body = _search(live, query="area of a circle", top_k=6, rerank_k=0, **filters.to_dict())
    want = searcher.search("area of a circle", 6, filters=filters)
    assert [h["code_id"] for h in body["results"]] == [h.code_id for h in want]
    assert {h["language"] for h in body["results"]} == {"go", "java"}
    assert not any("broken" in h["path"] for h in body["results"])
    # reranked too: the ranker only reorders what passed
    body = _search(live, query="area of a circle", top_k=6, rerank_k=6, **filters.to_dict())
    assert {h["code_id"] for h in body["results"]} == {h.code_id for h in want}
    # fewer pass than top_k: fewer come back, never another file's units
    units = pq.read_table(indexed["out"] / CODES).to_pylist()
    in_file = {u["code_id"] for u in units if u["path"] == "python/pkg/shapes.py"}
    body = _search(live, query="circle", top_k=100, rerank_k=0, path=["/python/pkg/shapes.py"])
    assert {h["code_id"] for h in body["results"]} == in_file and len(in_file) < 100
    for bad, loc in [
        ({"exclude": ["ok/**", "[ab].py"]}, ["exclude", 1]),
        ({"language": ["go", "rust"]}, ["language", 1]),
        ({"path": []}, ["path"]),
    ]:
        r = requests.post(f"{live}/search", json={"query": "x", **bad}, timeout=30)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc, r.text


def test_the_document_states_the_filters(live):
    doc = requests.get(f"{live}/openapi.json", timeout=30).json()
    body = doc["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"]
    fields = body["schema"]["properties"]
    (language, _) = fields["language"]["anyOf"]
    assert language["items"]["enum"] == list(LANGUAGES)
    for name in ("path", "exclude"):
        (globs, _) = fields[name]["anyOf"]
        assert globs["items"]["pattern"] == GLOB_PATTERN and globs["maxItems"] >= 1
        assert "gitignore" in fields[name]["description"]


def test_the_command_asks_a_running_server(live, indexed):
    import json
    import subprocess

    r2ps = Path(sys.executable).with_name("r2ps")
    args = ["search", "area of a circle", "--url", live, "--lang", "java", "-k", "3"]
    done = subprocess.run([str(r2ps), *args, "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    served = _search(live, query="area of a circle", top_k=3, language=["java"])
    hits = json.loads(done.stdout)["hits"]
    assert [h["code_id"] for h in hits] == [h["code_id"] for h in served["results"]]
    assert [h["score"] for h in hits] == [h["score"] for h in served["results"]]
    bad = subprocess.run([str(r2ps), *args, "--exclude", "!x"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--exclude" in bad.stderr  # refused before it is sent
    none = subprocess.run(
        [str(r2ps), *args, "--path", "nowhere/**"], capture_output=True, text=True, timeout=300
    )
    assert (none.returncode, none.stdout) == (1, "")


def _browser():
    """(chromium, chromedriver) paths, or pytest.skip saying what is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    chromium = next(
        (
            shutil.which(n)
            for n in ("chromium", "chromium-browser", "google-chrome")
            if shutil.which(n)
        ),
        None,
    )
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip(
            "no headless browser here: the search-page test needs Debian's chromium and "
            "chromium-driver (`make test` installs them where apt-get runs as root)"
        )
    return chromium, driver


def test_search_page_in_headless_chromium(live, tmp_path):
    chromium, driver_path = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1200,1400",
    ):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.get(f"{live}/")
        assert "r2ps code search" in browser.title
        box = browser.find_element(By.ID, "q")
        box.send_keys("area of a circle")
        Select(browser.find_element(By.ID, "top_k")).select_by_visible_text("20")
        Select(browser.find_element(By.ID, "rerank_k")).select_by_visible_text("10")
        browser.find_element(By.ID, "go").click()
        WebDriverWait(browser, 60).until(ec.presence_of_element_located((By.CSS_SELECTOR, ".hit")))
        WebDriverWait(browser, 10).until(
            lambda b: "results in" in b.find_element(By.ID, "status").text
        )
        hits = browser.find_elements(By.CSS_SELECTOR, ".hit")
        assert len(hits) == 20
        locations = [h.find_element(By.CSS_SELECTOR, ".loc").text for h in hits]
        # path:start-end of a real unit, as the API gave it
        api = _search(live, query="area of a circle", top_k=20, rerank_k=10)
        want = [f"{h['path']}:{h['start_line']}" for h in api["results"]]
        assert [loc.split("-")[0] for loc in locations] == want
        # hits 11-20 were not rescored by the ranker: each is marked
        badges = [len(h.find_elements(By.CSS_SELECTOR, ".badge")) for h in hits]
        assert badges == [0] * 10 + [1] * 10
        # the code is highlighted and numbered from the hit's first line
        first = hits[0]
        assert first.find_elements(By.CSS_SELECTOR, "code .k")
        assert first.find_element(By.CSS_SELECTOR, ".ln").text == str(
            api["results"][0]["start_line"]
        )
        assert "#q=area%20of%20a%20circle" in browser.current_url
        shot = Path(os.environ.get("R2PS_PAGE_SCREENSHOT", tmp_path / "search-page.png"))
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        # a bad request shows the server's message
        box.clear()
        box.send_keys("x" * 2100)
        browser.find_element(By.ID, "go").click()
        WebDriverWait(browser, 30).until(lambda b: "422" in b.find_element(By.ID, "status").text)
        # a filter from its box: Java's units only (the page lowercases languages)
        box.clear()
        box.send_keys("area of a circle")
        browser.find_element(By.ID, "language").send_keys("Java")
        browser.find_element(By.ID, "go").click()
        WebDriverWait(browser, 30).until(
            lambda b: "results in" in b.find_element(By.ID, "status").text
        )
        languages = {h.text for h in browser.find_elements(By.CSS_SELECTOR, ".hit .lang")}
        assert languages == {"java"}
    finally:
        browser.quit()
