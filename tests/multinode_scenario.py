"""One run of tests/test_multinode.py's scenario, in a process of its own.

Ray allows one cluster connection per process and the test session already holds its
local Ray (conftest.py), so the test runs this script as a subprocess:

    python tests/multinode_scenario.py SPEC.json

SPEC names the number of worker nodes (0: a single-node cluster, the head alone, with
the same CPUs in total), the RetrieverConfig, the embedding inputs and where to write. The
script starts a `ray.cluster_utils.Cluster`, trains the retriever with
`r2ps.train.launch.train` (recording on which node each Ray Train worker built its
model, and every batch and loss), embeds a code split with `r2ps.mining.embed.embed_corpus`
(recording on which node each `CodeEmbedder` actor started), and writes a JSON result.

Every node has 1 CPU (the single node: as many as all of them): a training worker that
reserves 1 CPU, or an embedding actor of 1 CPU, fills a node, so two of them can only
run on two different nodes, whatever Ray's placement strategy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parent / "train"))
from test_training import RecordingTask, append_record, read_records  # noqa: E402

import r2ps.mining.embed  # noqa: E402
from r2ps.config import from_dict  # noqa: E402
from r2ps.mining.embed import EmbedConfig, embed_corpus  # noqa: E402
from r2ps.train.config import RetrieverConfig  # noqa: E402
from r2ps.train.launch import train  # noqa: E402

NODE_CPUS = 1
OBJECT_STORE_BYTES = 150 * 1024**2


def node_id() -> str:
    return ray.get_runtime_context().get_node_id()


# The classes below travel to the Ray workers pickled by value (this script is __main__,
# which they cannot import); their bases, by reference.


@dataclasses.dataclass
class NodeRecordingTask(RecordingTask):
    """RecordingTask that also records each worker's node and the rows of each batch."""

    def build_model(self, cfg):
        append_record(self.log_dir, "node", {"node_id": node_id()})
        return super().build_model(cfg)

    def loss(self, engine, batch, cfg):
        groups = [int(g) for g in batch["group"]]
        append_record(self.log_dir, "batch", {"step": int(engine.global_steps), "groups": groups})
        return super().loss(engine, batch, cfg)


class NodeRecordingEmbedder(r2ps.mining.embed.CodeEmbedder):
    """CodeEmbedder that records its node when it starts and for every block it embeds."""

    log_dir = ""  # set before the dataset is built; travels with the class

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._record({"event": "start"})

    def __call__(self, batch):
        self._record({"event": "block", "rows": batch.num_rows})
        return super().__call__(batch)

    def _record(self, record: dict) -> None:
        with open(Path(self.log_dir) / "embedder.jsonl", "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "node_id": node_id(), **record}) + "\n")


def start_cluster(worker_nodes: int) -> tuple[Cluster, dict[str, str]]:
    """Head + `worker_nodes` nodes of NODE_CPUS each, or one node with all of their CPUs.

    Each node carries a custom resource naming it, only to name nodes in the result.
    """
    common = {"object_store_memory": OBJECT_STORE_BYTES}
    head_cpus = NODE_CPUS if worker_nodes else NODE_CPUS * 3
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            **common,
            "num_cpus": head_cpus,
            "resources": {"mn_head": 1},
            "include_dashboard": False,
        },
    )
    for i in range(worker_nodes):
        cluster.add_node(num_cpus=NODE_CPUS, resources={f"mn_worker{i + 1}": 1}, **common)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=True)
    names = {}
    for node in ray.nodes():
        if node["Alive"]:
            tags = [r for r in node["Resources"] if r.startswith("mn_")]
            names[node["NodeID"]] = tags[0] if tags else "?"
    return cluster, names


def run_training(cfg: RetrieverConfig, records: Path) -> dict:
    records.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    summary = train(cfg, task=NodeRecordingTask(log_dir=str(records)))
    seconds = time.perf_counter() - start
    built = read_records(records, "node")  # one record per model built (per worker start)
    losses: dict[int, list] = {}
    for r in read_records(records, "loss"):
        losses.setdefault(r["rank"], []).append((r["step"], r["loss"]))
    batches: dict[int, list] = {}
    for r in read_records(records, "batch"):
        batches.setdefault(r["rank"], []).append((r["step"], r["groups"]))
    evals = [r["metrics"] for r in read_records(records, "eval") if r["rank"] == 0]
    return {
        "models_built": len(built),
        "worker_nodes": {r["rank"]: r["node_id"] for r in built},
        "losses": {rank: sorted(v) for rank, v in losses.items()},
        "batches": {rank: sorted(v) for rank, v in batches.items()},
        "evals": evals,
        "best_metrics": summary["best_metrics"],
        "best_checkpoint": summary["best_checkpoint"],
        "exported_model": summary["exported_model"],
        "history": summary["history"],
        "seconds": round(seconds, 1),
    }


@contextlib.contextmanager
def recording_embedders():
    """`embed_corpus` with NodeRecordingEmbedder actors in place of CodeEmbedder ones.

    `embedding_dataset` names the actor class by its module global; it is swapped only
    while the lazy dataset is built, so that when the actors start (and the class is
    pickled) `r2ps.mining.embed.CodeEmbedder` is the real class again, which the subclass's
    base then pickles by reference to.
    """
    build = r2ps.mining.embed.embedding_dataset
    original = r2ps.mining.embed.CodeEmbedder

    def swapped(*args, **kwargs):
        r2ps.mining.embed.CodeEmbedder = NodeRecordingEmbedder
        try:
            return build(*args, **kwargs)
        finally:
            r2ps.mining.embed.CodeEmbedder = original

    r2ps.mining.embed.embedding_dataset = swapped
    try:
        yield
    finally:
        r2ps.mining.embed.embedding_dataset = build


def run_embedding(spec: dict, records: Path) -> dict:
    records.mkdir(parents=True, exist_ok=True)
    NodeRecordingEmbedder.log_dir = str(records)
    start = time.perf_counter()
    with recording_embedders():
        manifest = embed_corpus(EmbedConfig(**spec))
    seconds = time.perf_counter() - start
    events = [json.loads(line) for line in (records / "embedder.jsonl").read_text().splitlines()]
    actors = {e["pid"]: e["node_id"] for e in events if e["event"] == "start"}
    rows: dict[str, int] = {}
    for e in events:
        if e["event"] == "block":
            rows[e["node_id"]] = rows.get(e["node_id"], 0) + e["rows"]
    return {
        "actor_nodes": list(actors.values()),
        "rows_by_node": rows,
        "manifest": manifest,
        "seconds": round(seconds, 1),
    }


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    # a SIGTERM (the test's timeout) still runs the atexit hook that stops the nodes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    start = time.perf_counter()
    cluster, names = start_cluster(spec["worker_nodes"])
    result: dict = {"nodes": names, "cluster_start_s": round(time.perf_counter() - start, 1)}
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        cfg = from_dict(RetrieverConfig, spec["train"])
        result["train"] = run_training(cfg, Path(spec["records"]) / "train")
        result["embed"] = run_embedding(spec["embed"], Path(spec["records"]) / "embed")
    finally:
        ray.shutdown()
        cluster.shutdown()
    result["seconds"] = round(time.perf_counter() - start, 1)
    Path(spec["result"]).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
