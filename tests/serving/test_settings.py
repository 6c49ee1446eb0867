"""The Serve cascade endpoint: settings, input checks, pair batching, and the live app.

The live tests run the real app (serve/app.py) under `serve.run` on the session's local
Ray, with tiny BERT models and a handmade code store + flat index, and talk to it over
HTTP on 127.0.0.1. Serve is shut down at the end of the module.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
import torch
from conftest import serve_deployments
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r2ps.config import ConfigError
from r2ps.mining.embed import EmbedConfig, max_code_len
from r2ps.mining.index import CodeIndex, IndexConfig
from r2ps.models.cross import CrossEncoder
from r2ps.models.dual import DualEncoder
from r2ps.models.encoder import model_fingerprint
from r2ps.models.onnx_export import export_onnx
from r2ps.search.cascade import rerank
from r2ps.serving.api import (
    RequestError,
    parse_search_request,
    read_limited_body,
    search_request_schema,
)
from r2ps.serving.replicas import count_pairs, pair_chunks, replica_threads
from r2ps.serving.settings import ServeConfig, resolve_model

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `serve.app` lives at the repository root
    sys.path.insert(0, str(REPO))

CODES = [
    "def read_json(path):\n    with open(path) as f:\n        return json.load(f)",
    "def write_csv(rows, path):\n    with open(path, 'w') as f:\n        csv.writer(f).writerows(rows)",
    "def add(a, b):\n    return a + b",
    "def reverse_string(s):\n    return s[::-1]",
    "def fetch_url(url):\n    return urllib.request.urlopen(url).read()",
    "def sort_dict_by_value(d):\n    return dict(sorted(d.items(), key=lambda kv: kv[1]))",
    "def flatten(nested):\n    return [x for sub in nested for x in sub]",
    "def is_prime(n):\n    return n > 1 and all(n % i for i in range(2, int(n ** 0.5) + 1))",
]


# --- settings and pure pieces -------------------------------------------------------


def test_settings_from_yaml_then_env(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("alpha: 0.25\nranker_timeout_s: 3\nindex:\n  kind: hnsw\n")
    env = {"R2PS_SERVE_CONFIG": str(path), "R2PS_RANKER_TIMEOUT_S": "1.5", "R2PS_LOG_LEVEL": "X"}
    cfg = ServeConfig.from_env(env)
    assert (cfg.alpha, cfg.ranker_timeout_s, cfg.index.kind) == (0.25, 1.5, "hnsw")
    assert ServeConfig.from_env({"R2PS_INDEX__NPROBE": "4"}).index.nprobe == 4
    with pytest.raises(ConfigError, match="ranker_pair_budget"):
        ServeConfig.from_env({"R2PS_RANKER_PAIR_BUDGET": "many"})
    with pytest.raises(ConfigError, match="alpha"):
        ServeConfig(alpha=2.0)
    with pytest.raises(ConfigError, match="request_timeout_s"):
        ServeConfig(request_timeout_s=0)
    assert ServeConfig().alpha is None  # unset: the ranker's trained weight (served below)
    with pytest.raises(ConfigError, match="rerank_k"):
        ServeConfig(rerank_k=-1)


def test_only_a_model_r2ps_trained_is_reported_trained(tmp_path, tiny_bert_dir):
    """The bundled MiniLM named by its path (jobs/index.py without --model) is not trained,
    nor is a plain HF folder used as a ranker (it gets a fresh head); a saved one is."""
    from r2ps.models.encoder import default_model_path

    bundled = default_model_path()
    assert resolve_model(bundled, "retriever") == (bundled, False)
    assert resolve_model(str(tiny_bert_dir), "retriever") == (str(tiny_bert_dir), True)
    assert resolve_model(str(tiny_bert_dir), "ranker") == (str(tiny_bert_dir), False)
    CrossEncoder.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path / "ranker")
    assert resolve_model(str(tmp_path / "ranker"), "ranker") == (str(tmp_path / "ranker"), True)
    assert resolve_model(str(tmp_path / "missing"), "ranker") == (bundled, False)


def test_an_untrained_ranker_is_not_used_by_default(tmp_path, tiny_bert_dir):
    """A ranker r2ps did not train has no relevance signal and costs 20-35x the retriever's
    latency: the default rerank_k becomes 0 and the reason is served; a trained ranker, a
    URI (checked by the replica) and rerank_k 0 keep their settings."""
    trained = tmp_path / "ranker"
    CrossEncoder.from_pretrained(tiny_bert_dir).save_pretrained(trained)
    for untrained in (str(tmp_path / "missing"), str(tiny_bert_dir), ""):
        cfg = ServeConfig(ranker=untrained, rerank_k=10).without_untrained_ranker()
        assert cfg.rerank_k == 0, untrained
        assert cfg.served_reason.startswith("retriever alone: no trained ranker at "), untrained
    for kept in (
        ServeConfig(ranker=str(trained), rerank_k=10, served_reason="chosen on valid"),
        ServeConfig(ranker="s3://bucket/ranker", rerank_k=5),
        ServeConfig(ranker=str(tmp_path / "missing"), rerank_k=0, served_reason="as set"),
    ):
        assert kept.without_untrained_ranker() == kept


def test_no_settings_serve_the_newest_serve_yaml_under_runs(tmp_path, monkeypatch):
    """`serve run serve.app:cascade` with no settings serves what was built last."""
    monkeypatch.chdir(tmp_path)
    for name, alpha, mtime in (("old", 0.1, 1_000), ("new/pipeline", 0.7, 2_000)):
        path = tmp_path / "runs" / name / "serve.yaml"
        path.parent.mkdir(parents=True)
        path.write_text(f"alpha: {alpha}\n")
        os.utime(path, (mtime, mtime))
    assert ServeConfig.from_env({}).alpha == 0.7
    assert ServeConfig.from_env({"R2PS_SERVE_CONFIG": "runs/old/serve.yaml"}).alpha == 0.1


def test_nothing_to_serve_names_the_command_that_builds_it(tmp_path):
    """With nothing built, importing the app (what `serve run` does) fails at once with the
    commands that build something to serve, not later inside a replica."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("R2PS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])

    def python(code: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    run = python("import serve.app")
    assert run.returncode != 0
    assert "nothing to serve" in run.stderr and "make demo" in run.stderr, run.stderr[-2000:]
    assert "jobs/index.py" in run.stderr
    # the deployments and build_app import anywhere: composing or benchmarking the endpoint
    # with settings of one's own needs nothing built under runs/
    run = python("from serve.deployments import build_app")
    assert run.returncode == 0, run.stderr[-2000:]


def test_pair_chunks_cut_a_request_at_the_budget():
    assert pair_chunks(0, 4) == []
    assert [(s.start, s.stop) for s in pair_chunks(10, 4)] == [(0, 4), (4, 8), (8, 10)]
    assert [(s.start, s.stop) for s in pair_chunks(4, 4)] == [(0, 4)]
    with pytest.raises(ValueError, match="budget"):
        pair_chunks(3, 0)


def test_batch_size_counts_pairs_not_requests():
    assert count_pairs([("q1", ["a", "b", "c"]), ("q2", ["d"])]) == 4
    assert count_pairs([]) == 0


def test_request_parsing_names_what_is_wrong():
    req = parse_search_request(b'{"query": "read a file"}', max_query_chars=50)
    assert (req.top_k, req.rerank_k) == (10, None)  # None: the server's rerank_k
    cases = {
        b'{"query": "  "}': "empty or only whitespace",
        b'{"query": "ok", "top_k": "3"}': "top_k",
        b'{"query": "ok", "top_k": 101}': "top_k",
        b'{"query": "ok", "bogus": 1}': "bogus",
        b'{"query": "' + b"x" * 51 + b'"}': "at most 50",
        b"{not json": "json",
    }
    for body, needle in cases.items():
        with pytest.raises(RequestError) as err:
            parse_search_request(body, max_query_chars=50)
        assert err.value.status == 422
        assert needle.lower() in str(err.value.detail).lower(), (body, err.value.detail)


def test_body_limit_checks_header_and_stream():
    async def stream(parts):
        for p in parts:
            yield p

    assert asyncio.run(read_limited_body(stream([b"ab", b"cd"]), 4, None)) == b"abcd"
    for parts, header in (([b"abcde"], "5"), ([b"abc", b"de"], None)):
        with pytest.raises(RequestError) as err:
            asyncio.run(read_limited_body(stream(parts), 4, header))
        assert err.value.status == 413


def test_bytes_that_are_not_utf8_or_json_cannot_write_get_a_422_never_a_500():
    # The 422 once echoed the input and failed to serialise the very bytes it reported.
    from starlette.responses import JSONResponse

    bodies = {
        b'{"query": "\xff\xfe"}': "byte 0xff at offset 11",
        b'{"\xff": 1}': "not valid utf-8",
        b"\xff\xfe": "not valid utf-8",
        b'{"query": 1e400}': "valid string",  # inf: JSON cannot write it back
        b'{"query": "ok", "top_k": 1e400}': "top_k",
        b'{"query": "\\ud800"}': "json",  # a lone surrogate
    }
    for body, needle in bodies.items():
        with pytest.raises(RequestError) as err:
            parse_search_request(body, max_query_chars=50)
        assert err.value.status == 422
        rendered = JSONResponse(err.value.detail, status_code=422).body.decode()
        assert needle in rendered.lower(), (body, rendered)


def test_the_body_limit_fits_every_request_the_document_allows():
    from r2ps.search.filters import LANGUAGES
    from r2ps.serving.settings import MAX_GLOB_CHARS, MAX_GLOBS

    with pytest.raises(ConfigError, match="max_body_bytes"):
        ServeConfig(max_query_chars=2000, max_body_bytes=32768)
    cfg = ServeConfig()
    glob = "\U0001f600" * MAX_GLOB_CHARS
    longest = {
        "query": "\U0001f600" * cfg.max_query_chars,
        "top_k": 100,
        "rerank_k": 100,
        "retrieval": "hybrid",
        "language": list(LANGUAGES),
        "path": [glob] * MAX_GLOBS,
        "exclude": [glob] * MAX_GLOBS,
    }
    parse_search_request(json.dumps(longest).encode(), cfg.max_query_chars)  # allowed
    assert len(json.dumps(longest).encode()) <= cfg.max_body_bytes


def _schema_accepts(schema: dict, body: dict) -> bool:
    return not list(jsonschema.Draft202012Validator(schema).iter_errors(body))


def _server_accepts(body: dict, max_query_chars: int) -> bool:
    try:
        parse_search_request(json.dumps(body).encode(), max_query_chars)
    except RequestError:
        return False
    return True


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    query=st.text(
        st.characters(codec="utf-8", categories=["Zs", "Cc", "Cf", "Zl", "Zp", "Ll"]), max_size=12
    ),
    top_k=st.one_of(st.integers(-5, 120), st.floats(allow_nan=False, allow_infinity=False)),
)
def test_the_openapi_schema_states_exactly_what_the_server_enforces(query, top_k):
    # A client generated from /openapi.json must know every rule on `query` (not blank,
    # length bounds) and on the numbers: schema-valid <=> accepted, for any input.
    schema = search_request_schema(max_query_chars=8)
    body = {"query": query, "top_k": top_k}
    assert _schema_accepts(schema, body) == _server_accepts(body, 8), body


def test_requests_generated_from_the_served_document_are_accepted_iff_valid():
    # schemathesis reads the document the app serves for /search: every request it calls
    # valid is accepted, every one it calls invalid is refused with a 422 (no Ray here;
    # test_fuzz_search_from_the_openapi_document does the same over HTTP).
    import schemathesis

    from r2ps.serving.api import search_body_openapi

    responses = {"200": {"description": "ok"}}
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "r2ps", "version": "0"},
        "paths": {"/search": {"post": {**search_body_openapi(200), "responses": responses}}},
    }
    search = schemathesis.openapi.from_dict(doc)["/search"]["POST"]

    def body(case) -> bytes:
        return case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()

    once = settings(
        max_examples=100, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip

    @once
    @given(search.as_strategy(schemathesis.GenerationMode.POSITIVE))
    def valid(case):
        parse_search_request(body(case), 200)

    @once
    @given(search.as_strategy(schemathesis.GenerationMode.NEGATIVE))
    def invalid(case):
        with pytest.raises(RequestError) as err:
            parse_search_request(body(case), 200)
        assert err.value.status == 422

    valid()
    invalid()


def test_the_schema_names_the_query_rules():
    query = search_request_schema(max_query_chars=42)["properties"]["query"]
    assert (query["minLength"], query["maxLength"]) == (1, 42)
    for blank in ["", " ", "\x1c\x1d\x1e\x1f", "\x85\xa0\u3000\u2028", "\t\n\r\x0b\x0c"]:
        assert not _schema_accepts(search_request_schema(42), {"query": blank})
    assert _schema_accepts(search_request_schema(42), {"query": "\ufeff"})  # not Python space


# --- the live app ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_bert_dir):
    """A tiny retriever, a tiny residual ranker with a saved (seeded) head, codes and a
    flat index."""
    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    ranker_dir = root / "ranker"
    CrossEncoder.from_pretrained(tiny_bert_dir, residual=True).save_pretrained(ranker_dir)
    codes_dir = root / "codes"
    codes_dir.mkdir()
    ids = [f"c{i}" for i in range(len(CODES))]
    pq.write_table(
        pa.table(
            {
                "code_id": ids,
                "code": CODES,
                "language": ["python"] * len(CODES),
                "source": ["handmade"] * len(CODES),
            }
        ),
        codes_dir / "codes.parquet",
    )
    # The manifest carries what ensure_index checks (model, corpus, truncation length),
    # so the Retriever loads this index instead of embedding the codes again.
    model = str(Path(tiny_bert_dir).resolve())
    code_len = max_code_len(EmbedConfig(model=model, codes=str(codes_dir)), model)
    dual = DualEncoder.from_pretrained(model, max_code_len=code_len)
    manifest = {
        "model_fingerprint": model_fingerprint(model),
        "model_path": model,
        "max_code_len": code_len,
    }
    index = CodeIndex.build(dual.embed_codes(CODES), ids, IndexConfig(), manifest)
    index.save(root / "embed" / "index")
    return {"retriever": tiny_bert_dir, "ranker": ranker_dir, "codes": codes_dir, "root": root}


def _settings(models, **over) -> ServeConfig:
    base = {
        "retriever": str(models["retriever"]),
        "ranker": str(models["ranker"]),
        "codes": str(models["codes"]),
        "embed_out": str(models["root"] / "embed"),
        "max_query_chars": 200,
        "max_body_bytes": 32768,  # the longest query and globs, every character escaped
        "ranker_pair_budget": 8,
        "ranker_batch_wait_s": 0.1,
        "ranker_timeout_s": 30.0,
        "retriever_cpus": 0.1,
        "ranker_cpus": 0.1,
        "ingress_cpus": 0.1,
        "ranker_gpus": 0.0,
        "ranker_min_replicas": 1,
        "ranker_max_replicas": 1,
    }
    return ServeConfig(**{**base, **over})


@pytest.fixture(scope="module")
def live(ray_local, models):
    """Two apps: `main` (the real cascade) and `faulty` (a ranker that fails or stalls)."""
    from ray import serve

    build_app = serve_deployments().build_app

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    class FaultyRanker:
        """Raises for most queries; stalls past the timeout for queries containing 'slow'."""

        def __init__(self, cfg: ServeConfig) -> None:
            pass

        async def score(self, query: str, codes: list[str]) -> list[float]:
            if "slow" in query:
                await asyncio.sleep(10)
            raise RuntimeError("ranker is broken")

        def ready(self) -> dict:
            return {}

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(_settings(models)), name="main", route_prefix="/")
    # the same models through ONNX Runtime (the export job's output beside each model)
    export_onnx(models["retriever"])
    export_onnx(models["ranker"])
    serve.run(build_app(_settings(models, backend="onnx")), name="onnx", route_prefix="/onnx")
    # the faulty app serves the retriever alone by default, as when no ranker beat it
    faulty = _settings(models, ranker_timeout_s=1.0, rerank_k=0, served_reason=ALONE)
    serve.run(build_app(faulty, ranker=FaultyRanker), name="faulty", route_prefix="/faulty")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


ALONE = "retriever alone: no ranker above the retriever on valid"


def _search(url, **body):
    return requests.post(f"{url}/search", json=body, timeout=60)


def test_repo_retrieval_on_a_corpus_is_refused_as_the_requests_fault(live):
    # the corpus's units have no paths: the repository signals cannot rank them
    r = _search(live, query="read a file", top_k=3, retrieval="repo")
    assert r.status_code == 422 and "retrieval 'repo'" in r.json()["detail"], r.text
    ready = requests.get(f"{live}/readyz", timeout=30).json()["retriever"]
    assert ready["retrieval"] == "dense" and "signals" not in ready
    assert _search(live, query="read a file", top_k=3, retrieval="hybrid").status_code == 200


def test_a_real_query_gets_the_cascade_ranking(live, models):
    code = CODES[3]
    r = _search(live, query=code, top_k=5, rerank_k=0)
    assert r.status_code == 200, r.text
    plain = r.json()
    assert plain["reranked"] is False and plain["degraded_reason"] is None
    # The query is the code's own text: the retriever puts it first with cosine ~1.
    assert plain["results"][0]["code_id"] == "c3"
    assert plain["results"][0]["retriever_score"] == pytest.approx(1.0, abs=1e-4)
    assert [h["retriever_rank"] for h in plain["results"]] == [1, 2, 3, 4, 5]

    r = _search(live, query=code, top_k=6, rerank_k=4)
    body = r.json()
    assert r.status_code == 200 and body["reranked"] is True and body["reranked_count"] == 4
    assert set(body["timings_ms"]) == {"retrieve", "rerank", "total"}
    hits = body["results"]
    assert len(hits) == 6
    # The first 4 are the retriever's top 4 in ranker order, scored as the model scores them.
    top4 = sorted(hits[:4], key=lambda h: h["retriever_rank"])
    assert [h["retriever_rank"] for h in top4] == [1, 2, 3, 4]
    ranker = CrossEncoder.from_pretrained(models["ranker"])
    local = ranker.score_pairs([code] * 4, [h["code"] for h in top4])
    served = np.array([h["ranker_score"] for h in top4])
    np.testing.assert_allclose(served, local, atol=1e-4)
    order, fused = rerank(np.array([h["retriever_score"] for h in top4]), served)
    assert [h["code_id"] for h in hits[:4]] == [top4[i]["code_id"] for i in order]
    assert [h["retriever_rank"] for h in hits[4:]] == [5, 6]
    assert all(h["ranker_score"] is None for h in hits[4:])


def test_every_bad_input_gets_a_4xx_with_a_message(live):
    bad = {
        "empty query": ({"query": ""}, 422, "whitespace"),
        "blank query": ({"query": " \n\t "}, 422, "whitespace"),
        "long query": ({"query": "x" * 201}, 422, "at most 200"),
        "query not a string": ({"query": 5}, 422, "query"),
        "top_k a string": ({"query": "ok", "top_k": "10"}, 422, "top_k"),
        "top_k too big": ({"query": "ok", "top_k": 101}, 422, "top_k"),
        "rerank_k negative": ({"query": "ok", "rerank_k": -1}, 422, "rerank_k"),
        "unknown field": ({"query": "ok", "k": 3}, 422, "extra"),
        "no query": ({}, 422, "query"),
        "not an object": ([], 422, "object"),
    }
    for name, (body, status, needle) in bad.items():
        r = requests.post(f"{live}/search", json=body, timeout=30)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert needle in r.text.lower(), (name, r.text)
    r = requests.post(f"{live}/search", data=b"{not json", timeout=30)
    assert r.status_code == 422 and "json" in r.text.lower()
    big = b'{"query": "' + b"y" * 40_000 + b'"}'  # over max_body_bytes (32768)
    r = requests.post(f"{live}/search", data=big, timeout=30)
    assert r.status_code == 413 and "limit" in r.text
    r = requests.post(f"{live}/search", data=iter([big[:1000], big[1000:]]), timeout=30)
    assert r.status_code == 413, "a chunked body (no Content-Length) is capped too"
    assert requests.get(f"{live}/healthz", timeout=30).json()["status"] == "ok"


def test_health_readiness_and_openapi(live, models):
    # The handmade index was fresh, so the Retriever loaded it instead of re-embedding.
    assert not (models["root"] / "embed" / "embeddings").exists()
    ready = requests.get(f"{live}/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert ready.json()["retriever"]["codes"] == len(CODES)
    spec = requests.get(f"{live}/openapi.json", timeout=30).json()
    schema = spec["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"]
    assert set(schema["schema"]["properties"]) == {
        *("query", "top_k", "rerank_k", "retrieval"),
        *("language", "path", "exclude"),  # the filters (r2ps.search.filters)
    }
    query = schema["schema"]["properties"]["query"]  # this server's own limits
    assert (query["minLength"], query["maxLength"]) == (1, 200) and "pattern" in query
    assert requests.get(f"{live}/docs", timeout=30).status_code == 200
    assert ready.json()["cascade"] == {  # no alpha setting: the residual ranker's 0.5
        "rerank_k": 10,
        "alpha": 0.5,
        "alpha_from": "the ranker's training",
        "reranking": True,
        "reason": "",
    }


def test_an_unset_alpha_fuses_with_the_weight_the_ranker_was_trained_for(live):
    """A residual ranker's scores are corrections of the retriever's: served alone
    (alpha 0, the old default) they would order by noise. Unset, alpha is its 0.5, on the
    torch and the ONNX replicas alike."""
    for app in (live, f"{live}/onnx"):
        hits = _search(app, query=CODES[1], top_k=5, rerank_k=5).json()["results"]
        for hit in hits:
            want = 0.5 * hit["retriever_score"] + 0.5 * np.tanh(hit["ranker_score"])
            assert hit["score"] == pytest.approx(want, abs=1e-5), app


def test_the_served_rerank_k_applies_when_a_request_names_none(live):
    """rerank_k comes from the settings the pipeline chose on valid; 0 (the retriever
    alone) is reported by /readyz and never calls the ranker."""
    alone = f"{live}/faulty"
    ready = requests.get(f"{alone}/readyz", timeout=30).json()
    assert ready["cascade"] == {
        "rerank_k": 0,
        "alpha": None,  # the stand-in ranker reports no trained weight
        "alpha_from": "the ranker's training",
        "reranking": False,
        "reason": ALONE,
    }
    body = _search(alone, query=CODES[2], top_k=3).json()
    assert body["reranked"] is False and body["degraded_reason"] is None  # not degraded
    assert body["reranked_count"] == 0
    body = _search(live, query=CODES[2], top_k=3).json()
    assert body["reranked"] is True and body["reranked_count"] == min(10, len(CODES))


def test_readiness_reports_backend_threads_and_warm_up(live):
    for url, backend in ((live, "torch"), (f"{live}/onnx", "onnx")):
        state = requests.get(f"{url}/readyz", timeout=30).json()
        for role in ("retriever", "ranker"):
            runtime = state[role]
            assert runtime["backend"] == backend, (role, runtime)
            # 0.1 reserved CPUs: one thread, not as many as the machine has
            assert runtime["threads"] == 1 and runtime["reserved_cpus"] == 0.1
            assert runtime["warmup_ms"] > 0, "warmed up before it reported ready"


def test_the_onnx_app_answers_as_the_torch_one(live):
    query = {"query": "sort a list of numbers", "top_k": 4, "rerank_k": 4}
    torch_hits = _search(live, **query).json()["results"]
    onnx_hits = _search(f"{live}/onnx", **query).json()["results"]
    assert [h["code_id"] for h in onnx_hits] == [h["code_id"] for h in torch_hits]
    for a, b in zip(onnx_hits, torch_hits, strict=True):
        assert a["retriever_score"] == pytest.approx(b["retriever_score"], abs=1e-5)
        assert a["ranker_score"] == pytest.approx(b["ranker_score"], abs=1e-4)


def test_replica_threads_and_backend_setting():
    assert replica_threads(0, 0.5) == 1 and replica_threads(0, 2.0) == 2
    assert replica_threads(3, 0.5) == 3
    with pytest.raises(ConfigError, match="backend"):
        ServeConfig(backend="tensorrt")


def test_a_failing_or_stalled_ranker_degrades_to_the_retriever(live):
    url = f"{live}/faulty"
    before = requests.get(f"{url}/healthz", timeout=30).json()["degraded"]
    r = _search(url, query=CODES[2], top_k=3, rerank_k=3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["reranked"] is False and body["degraded_reason"] == "error"
    assert body["results"][0]["code_id"] == "c2"
    assert [h["retriever_rank"] for h in body["results"]] == [1, 2, 3]
    start = time.perf_counter()
    r = _search(url, query="slow " + CODES[2], top_k=3, rerank_k=3)
    assert r.status_code == 200 and r.json()["degraded_reason"] == "timeout"
    assert time.perf_counter() - start < 8, "the answer must not wait for the stalled ranker"
    counts = requests.get(f"{url}/healthz", timeout=30).json()
    assert counts["degraded"] == before + 2
    assert counts["degraded_by_reason"] == {"error": 1, "timeout": 1}


def _replica_pid(handle, other_than: int | None = None, within_s: float = 90.0) -> int:
    """The process id of the replica behind `handle` (one replica), once it is not
    `other_than`: a killed replica's successor, as soon as Serve has started it."""
    from ray.exceptions import RayActorError

    end = time.monotonic() + within_s
    while True:
        try:
            pid = handle.ready.remote().result(timeout_s=max(1.0, end - time.monotonic()))["pid"]
            if pid != other_than:
                return pid
        except (RayActorError, TimeoutError):
            pass  # the handle met the dead replica before Serve replaced it
        assert time.monotonic() < end, f"no replica other than pid {other_than} in {within_s} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_replica_killed_under_load_costs_latency_never_an_answer(live, models):
    """4 clients over loopback while the ranker's replica process and then the retriever's
    is SIGKILLed with calls in flight on it: each such call is asked again of the replica
    Serve starts in its place, so every request gets a 200, reranked (issue 27: before,
    the retriever's in-flight requests got 503s and the ranker's lost their reranking)."""
    import signal
    import threading

    from ray import serve

    # Each stage holds a request ~0.5 s (its batch wait; 4 requests' 32 pairs stay under the
    # pair budget), so a call is seen in flight well before it ends and the kill finds it.
    cfg = _settings(
        models, retriever_batch_wait_s=0.5, ranker_batch_wait_s=0.5, ranker_pair_budget=64
    )
    serve.run(serve_deployments().build_app(cfg), name="killed", route_prefix="/killed")
    url = f"{live}/killed"
    stop = threading.Event()
    answers: list[tuple[int | None, dict | str, float]] = []  # status, body or error, seconds

    def client(i: int) -> None:
        n = 0
        while not stop.is_set():
            start = time.perf_counter()
            try:
                r = _search(url, query=CODES[(i + n) % len(CODES)], top_k=3)
                body = r.json() if r.status_code == 200 else r.text
                answers.append((r.status_code, body, time.perf_counter() - start))
            except requests.RequestException as e:
                answers.append((None, repr(e), time.perf_counter() - start))
            n += 1

    def counts() -> dict:
        return requests.get(f"{url}/healthz", timeout=30).json()

    def kill_in_flight(name: str) -> bool:
        """SIGKILL `name`'s replica while the ingress awaits a call to it and wait for the
        replica Serve starts in its place, until a killed call was asked again (one may end
        between the look and the kill): whether one was, in 3 kills."""
        handle = serve.get_deployment_handle(name, app_name="killed")
        before = counts()["retried_by_deployment"].get(name, 0)
        for _ in range(3):
            pid = _replica_pid(handle)
            end = time.monotonic() + 30
            while counts()["in_flight"].get(name, 0) == 0:
                assert time.monotonic() < end, f"no call in flight to {name} in 30 s"
                time.sleep(0.02)
            os.kill(pid, signal.SIGKILL)
            _replica_pid(handle, other_than=pid)
            time.sleep(2.0)  # the load flows through the new replica again
            if counts()["retried_by_deployment"].get(name, 0) > before:
                return True
        return False

    clients = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
    try:
        for thread in clients:
            thread.start()
        time.sleep(2.0)
        asked_again = {name: kill_in_flight(name) for name in ("Ranker", "Retriever")}
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=90)
        serve.delete("killed")
    failed = [(status, body) for status, body, _ in answers if status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed: {failed[:3]}"
    degraded = [body["degraded_reason"] for _, body, _ in answers if not body["reranked"]]
    assert not degraded, f"{len(degraded)} of {len(answers)} answers not reranked: {degraded}"
    assert all(asked_again.values()), f"no killed call was asked again: {asked_again}"
    slowest = max(seconds for _, _, seconds in answers)
    print(f"{len(answers)} requests, 0 failed, all reranked; slowest {slowest:.1f} s")


def test_ranker_batches_pairs_from_several_requests(live, models):
    from ray import serve

    handle = serve.get_deployment_handle("Ranker", app_name="main")
    codes = [CODES[:3], CODES[3:6], CODES[5:8], CODES]  # 3 + 3 + 3 + 8 pairs, budget 8
    responses = [handle.score.remote(f"query {i}", c) for i, c in enumerate(codes)]
    scores = [r.result(timeout_s=60) for r in responses]
    ranker = CrossEncoder.from_pretrained(models["ranker"])
    for i, (c, s) in enumerate(zip(codes, scores, strict=True)):
        np.testing.assert_allclose(s, ranker.score_pairs([f"query {i}"] * len(c), c), atol=1e-4)
    batches = handle.stats.remote().result(timeout_s=30)["batches"]
    assert all(sum(b) <= 8 for b in batches), batches
    assert any(len(b) > 1 for b in batches), f"no batch held pairs of two requests: {batches}"


@pytest.mark.parametrize(
    ("setting", "cluster_gpus", "want"), [(-1, True, 1), (-1, False, 0), (0.5, False, 0.5)]
)
def test_ranker_gpus_follow_the_cluster_unless_set(
    monkeypatch, models, setting, cluster_gpus, want
):
    """Ranker replicas ask for a GPU when the cluster has GPUs (detected where the app is
    built, the cluster's resources), never the Retriever; `ranker_gpus` >= 0 overrides."""
    app_module = serve_deployments()

    monkeypatch.setattr(app_module, "cluster_has_gpus", lambda: cluster_gpus)
    ingress = app_module.build_app(ServeConfig(ranker_gpus=setting))._bound_deployment
    options = {
        arg._bound_deployment.name: arg._bound_deployment.ray_actor_options
        for arg in ingress.init_args
        if hasattr(arg, "_bound_deployment")  # the bound Retriever and Ranker
    }
    assert options["Ranker"]["num_gpus"] == want
    assert options["Retriever"]["num_gpus"] == 0


def test_replicas_stage_uri_settings_for_their_life(tmp_path, monkeypatch):
    """ServeConfig paths may be URIs (the pipeline's --out s3://...): each replica reads a
    copy on its own node, kept while it lives."""
    import contextlib

    from r2ps.serving.replicas import staged_config

    monkeypatch.setenv("R2PS_STAGING_DIR", str(tmp_path / "staging"))
    bucket = tmp_path / "bucket"
    for name in ("retriever", "ranker", "mined"):
        (bucket / name).mkdir(parents=True)
        (bucket / name / "config.json").write_text("{}")
    local_codes = tmp_path / "codes"
    cfg = ServeConfig(
        retriever=(bucket / "retriever").as_uri(),
        ranker=(bucket / "ranker").as_uri(),
        codes=str(local_codes),  # a local path is left as it is
        embed_out=(bucket / "mined").as_uri(),
    )
    with contextlib.ExitStack() as stack:
        local = staged_config(cfg, stack)
        assert local.codes == str(local_codes)
        for name in ("retriever", "ranker", "embed_out"):
            path = Path(getattr(local, name))
            assert path.is_relative_to(tmp_path / "staging") and (path / "config.json").exists()
    assert not Path(local.retriever).exists()  # the replica's copy goes with it


def test_code_store_keeps_locations_when_the_codes_have_them(tmp_path):
    from r2ps.search.store import load_code_store

    table = {
        "code_id": ["u1", "u2"],
        "code": ["def a():\n    pass", "func B() {}"],
        "language": ["python", "go"],
        "source": ["a.py", "b/b.go"],
    }
    pq.write_table(pa.table(table), tmp_path / "plain.parquet")
    assert load_code_store(str(tmp_path / "plain.parquet")).location("u1") == {}
    located = {**table, "path": ["a.py", "b/b.go"], "start_line": [3, 10], "end_line": [4, 10]}
    located["symbol"] = ["a", "B"]
    pq.write_table(pa.table(located), tmp_path / "located.parquet")
    store = load_code_store(str(tmp_path / "located.parquet"))
    assert store.location("u2") == {
        "path": "b/b.go",
        "start_line": 10,
        "end_line": 10,
        "symbol": "B",
    }


def test_retrieval_setting_and_request_field_are_checked():
    with pytest.raises(ConfigError, match="retrieval"):
        ServeConfig(retrieval="sparse")
    assert parse_search_request(b'{"query": "q", "retrieval": "hybrid"}', 100).retrieval == "hybrid"
    with pytest.raises(RequestError) as err:
        parse_search_request(b'{"query": "q", "retrieval": "bm25"}', 100)
    assert err.value.status == 422 and "retrieval" in str(err.value.detail)


# --- fuzzing the live endpoint from its own OpenAPI document ------------------------

FUZZ_EXAMPLES = 25  # per mode; the run stops sending once FUZZ_SECONDS have passed
FUZZ_SECONDS = 60.0


def _fuzz(strategy, send, check) -> int:
    """Send up to FUZZ_EXAMPLES generated requests (at most FUZZ_SECONDS); returns how many."""
    stop, sent = time.monotonic() + FUZZ_SECONDS, []

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        derandomize=True,  # the same examples every run
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(example):
        if time.monotonic() > stop:
            return
        response = send(example)
        sent.append(response.status_code)
        check(example, response)

    run()
    return len(sent)


def test_fuzz_search_from_the_openapi_document(live):
    # Every request the document allows is answered (200); every one it does not is a
    # 4xx; any bytes at all get no 5xx.
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{live}/openapi.json", timeout=30)
    search = schema["/search"]["POST"]

    def valid(case, r):
        assert r.status_code == 200, (case.body, r.status_code, r.text)
        # the codes are Python and in no file: a language filter without python, or a
        # path filter, leaves none of them (filters apply before the top-k cut)
        body = case.body
        passing = len(CODES)
        if "python" not in (body.get("language") or ["python"]) or body.get("path"):
            passing = 0
        assert len(r.json()["results"]) == min(body.get("top_k", 10), passing)

    def invalid(case, r):
        assert 400 <= r.status_code < 500, (case.body, r.status_code, r.text)

    def call(case):
        return case.call(base_url=live, timeout=60)

    modes = schemathesis.GenerationMode
    assert _fuzz(search.as_strategy(modes.POSITIVE), call, valid) >= 5
    assert _fuzz(search.as_strategy(modes.NEGATIVE), call, invalid) >= 5

    def raw(body):
        headers = {"content-type": "application/json"}
        return requests.post(f"{live}/search", data=body, headers=headers, timeout=60)

    def no_5xx(body, r):
        assert r.status_code < 500, (body, r.status_code, r.text)

    near_json = st.builds(
        lambda a, b: b'{"query": "' + a + b'"' + b, st.binary(max_size=40), st.binary(max_size=8)
    )
    assert _fuzz(st.one_of(st.binary(max_size=200), near_json), raw, no_5xx) >= 5
    assert raw(b'{"query": "\xff\xfe"}').status_code == 422
