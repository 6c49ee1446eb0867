"""Train the retriever (dual encoder) or the ranker (cross encoder) on Ray Train + DeepSpeed.

    python jobs/train.py retriever --corpus runs/demo/pipeline/corpus --out runs/demo/retriever [key=value ...]
    ray job submit --working-dir . -- python jobs/train.py retriever --config configs/retriever-gpu.yaml
    python jobs/train.py ranker --negatives runs/demo/pipeline/mined [key=value ...]
    python jobs/train.py ranker negatives_source=in_batch     # the paper's RR baseline

--corpus defaults to what `make demo` built. Every input (the corpus's splits, the
models, the mined negatives and the split they were mined from) is checked before Ray
starts: a missing one stops the job at once (exit 2, naming it). Without a running
cluster this starts a local Ray. Running again with the same
--run-name resumes that run from its latest checkpoint. Paths may be storage URIs
(docs/STORAGE.md); --storage (the checkpoints) goes to Ray Train as it is. Training workers
on other nodes download their own copies of staged inputs (r2ps.storage.on_this_node).
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import _require_r2ps  # noqa: F401  (first: says how to run jobs when r2ps is missing)
import ray

from r2ps.config import check_inputs, parse_config
from r2ps.data.schema import MINE_SUMMARY
from r2ps.log import setup_logging
from r2ps.storage import local_input, source_uri, staged
from r2ps.train.config import RankerConfig, RetrieverConfig, TrainConfig

KINDS = ("retriever", "ranker")
CONFIGS = {"retriever": RetrieverConfig, "ranker": RankerConfig}
OUTPUTS = ("out",)


def parse(argv: list[str]) -> tuple[str, TrainConfig] | None:
    """(kind, settings) from the command line; None (after printing the usage) without a
    kind. Bad settings and missing inputs exit 2, naming them (`parse_config`)."""
    if not argv or argv[0] not in KINDS:
        print(f"usage: train.py {{{','.join(KINDS)}}} [--help] [options] [key=value ...]")
        return None
    kind = argv[0]
    return kind, parse_config(CONFIGS[kind], argv[1:], description=__doc__, check=check)


def check(cfg: TrainConfig) -> None:
    """The settings, then every input path, before Ray starts (raises ValueError)."""
    if isinstance(cfg, RankerConfig):
        from r2ps.train.ranker_data import check_config

        check_config(cfg)
    check_inputs(cfg)


def mined_split(negatives: str) -> str | None:
    """The URI of the split a mining output was made from, when mining staged it from one.

    The ranker reads that split's codes at the path `mine_summary.json` names; a staged
    split has the same path on every run, so staging its URI again puts it back there.
    """
    summary = Path(negatives) / MINE_SUMMARY
    if not negatives or not summary.exists():
        return None
    pairs = json.loads(summary.read_text()).get("pairs") or ""
    return source_uri(pairs) if pairs and not Path(pairs).exists() else None


def main(argv: list[str] | None = None) -> int:
    parsed = parse(list(sys.argv[1:] if argv is None else argv))
    if parsed is None:
        return 2
    kind, cfg = parsed
    setup_logging()
    ray.init(ignore_reinit_error=True)
    from r2ps.train.launch import train

    # settings that are paths: a URI among them is staged through local disk (r2ps.storage)
    with (
        staged(cfg, inputs=cfg.INPUT_PATHS, outputs=OUTPUTS) as local,
        contextlib.ExitStack() as more,
    ):
        if kind == "ranker":
            if uri := mined_split(local.negatives):
                more.enter_context(local_input(uri))
            from r2ps.train.ranker import RankerTask

            summary = train(local, task=RankerTask())
        else:
            summary = train(local)
    summary["exported_model"] = cfg.out
    keys = ("best_checkpoint", "best_metrics", "exported_model", "final_test", "data")
    print(json.dumps({k: summary[k] for k in keys if k in summary}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
