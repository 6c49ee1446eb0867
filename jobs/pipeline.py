"""The main job: every stage of r2ps in one Ray job, from source files to a served cascade.

    python jobs/pipeline.py                # demo preset (< 30 min on 2 CPUs) into runs/demo/pipeline
    python jobs/pipeline.py --preset full --out runs/full --cosqa ../shared/data/cosqa
    ray job submit --working-dir . -- python jobs/pipeline.py --out /shared/r2ps retriever.num_workers=4
    python jobs/pipeline.py --preset full --out s3://bucket/r2ps     # each stage uploaded when done

Stages: corpus -> sample (the mining pool) -> retriever -> mine (index + PS negatives)
-> ranker_ps, ranker_rr -> evaluate. Sections take overrides of that stage's job settings:
corpus.*, sample.*, retriever.*, mine.*, ranker.* (both rankers), evaluate.*. Running the
same command again skips every stage that is up to date, so after a crash it resumes at
the stage that failed; a changed setting reruns its stage and those after it. A URI --out
is worked on in a local mirror and each finished stage is uploaded at once (r2ps.pipeline.run,
docs/STORAGE.md); --cosqa stays a local folder. Every setting, and every
input from outside --out (CoSQA, corpus.roots, corpus.pairs, a starting model), is checked
before Ray starts: a bad one stops the job at once (exit 2, naming it).
"""

from __future__ import annotations

import sys

import _require_r2ps  # noqa: F401  (first: says how to run jobs when r2ps is missing)
import ray

from r2ps.config import parse_config
from r2ps.log import setup_logging
from r2ps.pipeline.config import PipelineConfig, build_stages
from r2ps.pipeline.run import format_summary, run_pipeline


def main(argv: list[str] | None = None) -> int:
    # build_stages: every stage's settings and outside inputs, checked before Ray starts
    cfg = parse_config(PipelineConfig, argv, description=__doc__, check=build_stages)
    setup_logging()
    ray.init(ignore_reinit_error=True)  # joins a running cluster when there is one
    print(format_summary(run_pipeline(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
