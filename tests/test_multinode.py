"""Multi-node placement on one machine (issue 7): `ray.cluster_utils.Cluster` nodes.

The same scenario (`multinode_scenario.py`) runs twice, each in a subprocess of its own
(Ray allows one cluster connection per process, and the session holds its local Ray):

- on three nodes of 1 CPU each (the head and two workers), where a training worker
  (`cpus_per_worker=1`) or an embedding actor (1 CPU: what `plan_pool` gives two actors
  on 3 CPUs) fills a node, so the two of each can only land on two different nodes;
  the third node's CPU is what the Ray Data read and tokenise tasks run on;
- on one node with the same 3 CPUs.

The multi-node run keeps its Ray Train checkpoints in a bucket of a local S3 server (moto,
conftest.py) rather than on disk, as a cluster without a shared disk must: each worker
uploads its own checkpoint shards, and the driver downloads the best one to export it. The
nodes are told the endpoint by environment (AWS_ENDPOINT_URL), as a user tells theirs.

Both train the tiny random BERT on the hand-made corpus of tests/train (2 workers x 1
thread, ZeRO-2, 6 steps, validated at 0, 3 and 6) and embed a code split with 2 actors. The
runs must see the same batches and give the same losses and metrics, and both runs'
embeddings must equal the single-process ones.

Each subprocess gets a private RAY_TMPDIR: `Cluster` records its address in
`<tmp>/ray/ray_current_cluster`, which a plain `ray.init()` anywhere on the machine
would otherwise join while the test runs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import make_codes, s3_client, s3_env, write_split

import r2ps
from r2ps.config import to_dict
from r2ps.data.schema import PAIR_SCHEMA, split_pairs
from r2ps.mining.index import read_embeddings
from r2ps.models.dual import DualEncoder
from r2ps.train.loop import DS_DIR, HF_DIR, STATE_FILE

pytestmark = [pytest.mark.slow, pytest.mark.ray]

TESTS = Path(__file__).resolve().parent
SCENARIO = TESTS / "multinode_scenario.py"
TIMEOUT_S = 420  # per scenario; about 1-2 min each on an idle 2-core machine
TOL = 1e-4


def training_tests():
    """tests/train/test_training.py (the hand-made corpus, the small config), imported
    under the name pytest gives it, so it is not loaded twice in a whole-suite run."""
    if "test_training" in sys.modules:
        return sys.modules["test_training"]
    spec = importlib.util.spec_from_file_location(
        "test_training", TESTS / "train" / "test_training.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["test_training"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def inputs(tiny_bert_dir, tmp_path_factory) -> dict:
    tt = training_tests()
    root = tmp_path_factory.mktemp("multinode")
    corpus = root / "corpus"
    for split, rows in tt.handmade_pairs().items():
        split_pairs(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)).write(corpus / split)
    codes = make_codes(40)
    return {
        "root": root,
        "corpus": corpus,
        "model": tiny_bert_dir,
        "codes": codes,
        "codes_dir": write_split(root / "codes", codes),  # several row groups
        "small_config": tt.small_config,
    }


def run_scenario(
    inputs: dict, name: str, worker_nodes: int, storage: str = "", env: dict | None = None
) -> dict:
    """Run multinode_scenario.py in a subprocess; its JSON result.

    `storage`: where Ray Train keeps checkpoints (default: `<out>/ray_results`); `env`:
    more environment for the subprocess and so for every node of its cluster.
    """
    out = inputs["root"] / name
    out.mkdir()
    cfg = inputs["small_config"](
        inputs["corpus"],
        inputs["model"],
        out,
        "multinode",
        max_steps=6,
        eval_every_steps=3,
        cpus_per_worker=1.0,  # a worker fills a 1-CPU node
        zero_stage=2,  # optimizer state sharded: each rank saves (and uploads) its own part
    )
    if storage:
        cfg = dataclasses.replace(cfg, storage=storage)
    spec = {
        "worker_nodes": worker_nodes,
        "train": to_dict(cfg),
        "embed": {
            "model": str(inputs["model"]),
            "codes": str(inputs["codes_dir"]),
            "out": str(out / "embed"),
            "actors": 2,
            "threads": 1,
            "block_rows": 8,
            "batch_size": 4,
        },
        "records": str(out / "records"),
        "result": str(out / "result.json"),
    }
    (out / "spec.json").write_text(json.dumps(spec, indent=1))
    ray_tmp = tempfile.mkdtemp(prefix="r2ps_mn_", dir="/tmp")  # short: Ray's socket paths
    env = {
        **os.environ,
        "RAY_TMPDIR": ray_tmp,
        # the r2ps this test imported, also in the subprocess and its Ray workers
        "PYTHONPATH": os.pathsep.join(
            [str(Path(r2ps.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
        "HF_HUB_OFFLINE": "1",
        **(env or {}),
    }
    env.pop("RAY_ADDRESS", None)
    log = out / "scenario.log"
    try:
        with open(log, "w") as f:
            proc = subprocess.Popen(
                [sys.executable, str(SCENARIO), str(out / "spec.json")],
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its Ray nodes too: one group to stop on a timeout
            )
            try:
                rc = proc.wait(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)  # the scenario stops its cluster
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                rc = f"timeout after {TIMEOUT_S} s"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
    assert rc == 0, f"{name} scenario failed ({rc}); log {log}:\n{tail}"
    result = json.loads((out / "result.json").read_text())
    result["embeddings_dir"] = str(out / "embed" / "embeddings")
    return result


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    """A bucket on the local S3 server for the multi-node run's checkpoints."""
    s3_client(s3_server).create_bucket(Bucket="multinode")
    return "s3://multinode"


@pytest.fixture(scope="module")
def runs(inputs, bucket, s3_server) -> dict[str, dict]:
    return {
        "multi": run_scenario(
            inputs,
            "multi",
            worker_nodes=2,
            storage=f"{bucket}/ray_results",
            env=s3_env(s3_server),
        ),
        "single": run_scenario(inputs, "single", worker_nodes=0),
    }


def bucket_keys(s3_server: str, bucket: str) -> list[str]:
    pages = (
        s3_client(s3_server)
        .get_paginator("list_objects_v2")
        .paginate(Bucket=bucket.removeprefix("s3://"))
    )
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_the_clusters_have_the_planned_nodes(runs):
    assert sorted(runs["multi"]["nodes"].values()) == ["mn_head", "mn_worker1", "mn_worker2"]
    assert list(runs["single"]["nodes"].values()) == ["mn_head"]
    assert runs["multi"]["embed"]["manifest"]["nodes"] == 3
    assert runs["single"]["embed"]["manifest"]["nodes"] == 1


def test_training_workers_land_on_different_nodes(runs):
    multi, single = runs["multi"], runs["single"]
    assert multi["train"]["models_built"] == single["train"]["models_built"] == 2  # no restart
    nodes = multi["train"]["worker_nodes"]
    assert sorted(nodes) == ["0", "1"]
    assert nodes["0"] != nodes["1"], multi["nodes"]
    assert set(nodes.values()) <= set(multi["nodes"])
    assert len(set(single["train"]["worker_nodes"].values())) == 1


def test_embedding_actors_land_on_different_nodes(runs):
    multi, single = runs["multi"], runs["single"]
    actors = multi["embed"]["actor_nodes"]
    assert len(actors) == 2 and len(set(actors)) == 2, (actors, multi["nodes"])
    assert multi["embed"]["manifest"]["actors"] == 2
    rows = multi["embed"]["rows_by_node"]  # which actors got work is up to Ray Data
    assert set(rows) <= set(actors) and sum(rows.values()) == 40
    assert len(set(single["embed"]["actor_nodes"])) == 1


def test_training_equals_the_single_node_run(runs):
    multi, single = runs["multi"]["train"], runs["single"]["train"]
    # The same rows in the same batches on each rank (the cause, should losses differ).
    # Why they are: the 242 pairs leave the tokenise stage as one block (its batch is 512
    # rows), which the equal streaming split cuts in row order, 121 rows per rank, and
    # each rank's local shuffle is seeded. With several tokenised blocks (> 512 pairs) the
    # split's locality hints (Ray Train's default) would give a worker the blocks made on
    # its own node, so which rank sees which rows would depend on placement.
    assert multi["batches"] == single["batches"]
    assert sorted(multi["losses"]) == ["0", "1"]
    for rank in ("0", "1"):
        steps_m, loss_m = zip(*multi["losses"][rank], strict=True)
        steps_s, loss_s = zip(*single["losses"][rank], strict=True)
        assert steps_m == steps_s == tuple(range(6))
        np.testing.assert_allclose(loss_m, loss_s, rtol=0, atol=TOL)
    # validation at steps 0, 3 and 6, every metric (gloo's 2-rank sums do not depend on
    # placement: the runs give bit-identical numbers; TOL only spares a future change)
    assert len(multi["evals"]) == len(single["evals"]) == 3
    for m, s in zip(multi["evals"], single["evals"], strict=True):
        assert m.keys() == s.keys()
        for k in m:
            assert abs(m[k] - s[k]) <= TOL, (k, m, s)
    best_m, best_s = multi["best_metrics"], single["best_metrics"]
    assert best_m["step"] == best_s["step"]
    assert abs(best_m["valid_mrr"] - best_s["valid_mrr"]) <= TOL
    last_m = max(multi["history"], key=lambda h: h["step"])
    last_s = max(single["history"], key=lambda h: h["step"])
    assert last_m["step"] == last_s["step"] == 6
    assert abs(last_m["train_loss"] - last_s["train_loss"]) <= TOL
    assert abs(last_m["valid_mrr"] - last_s["valid_mrr"]) <= TOL


def test_the_multinode_checkpoints_are_in_the_bucket_not_on_disk(runs, inputs, bucket, s3_server):
    """Each kept checkpoint (num_to_keep=2) is in the bucket with both ranks' ZeRO-2
    optimizer shards (each uploaded by its own worker, from its own node) and rank 0's
    export."""
    keys = bucket_keys(s3_server, bucket)
    checkpoints: dict[str, list[str]] = {}
    for key in keys:
        parts = key.split("/")  # ray_results/<run>/<checkpoint_...>/<file...>
        if len(parts) > 3 and parts[1] == "multinode" and parts[2].startswith("checkpoint_"):
            checkpoints.setdefault(parts[2], []).append("/".join(parts[3:]))
    assert len(checkpoints) == 2, keys
    for name, files in checkpoints.items():
        assert f"{HF_DIR}/config.json" in files and STATE_FILE in files, (name, files)
        ranks = {re.search(r"zero_pp_rank_(\d+)_", f)[1] for f in files if "zero_pp_rank_" in f}
        assert ranks == {"0", "1"}, (name, files)
        assert any(f.startswith(f"{DS_DIR}/") for f in files), (name, files)
    train = runs["multi"]["train"]
    assert train["best_checkpoint"].startswith("multinode/ray_results/multinode/checkpoint_")
    assert not (inputs["root"] / "multi" / "ray_results").exists()
    # the driver downloaded the best one to export it
    assert (Path(train["exported_model"]) / "config.json").exists()


def test_embeddings_equal_the_single_process_ones(runs, inputs):
    table = inputs["codes"]
    want = DualEncoder.from_pretrained(inputs["model"]).embed_codes(table["code"].to_pylist())
    for name, result in runs.items():
        ids, emb = read_embeddings(result["embeddings_dir"])
        assert ids == table["code_id"].to_pylist(), name
        np.testing.assert_allclose(emb, want, atol=1e-5, err_msg=name)
