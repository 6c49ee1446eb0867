"""The main job: every stage of r2ps in one Ray job, from source files to a served cascade.

    python jobs/pipeline.py                                   # demo preset: < 30 min on 2 CPUs
    python jobs/pipeline.py --preset full --out runs/full --cosqa ../shared/data/cosqa
    ray job submit --working-dir . -- python jobs/pipeline.py --out /shared/r2ps retriever.num_workers=4
    python jobs/pipeline.py --preset full --out s3://bucket/r2ps     # each stage uploaded when done

Stages: corpus -> sample (the mining pool) -> retriever -> mine (index + PS negatives)
-> ranker_ps, ranker_rr -> evaluate. Sections take overrides of that stage's job settings:
corpus.*, sample.*, retriever.*, mine.*, ranker.* (both rankers), evaluate.*. Running the
same command again skips every stage that is up to date, so after a crash it resumes at
the stage that failed; a changed setting reruns its stage and those after it. A URI --out
is worked on in a local mirror and each finished stage is uploaded at once (r2ps.pipeline
.run_pipeline; docs/STORAGE.md); --cosqa stays a local folder.
"""

from __future__ import annotations

import sys

import _require_r2ps  # noqa: F401  (first: says how to run jobs when r2ps is missing)
import ray

from r2ps.config import ConfigError, parse_config
from r2ps.log import setup_logging
from r2ps.pipeline import PipelineConfig, build_stages, format_summary, run_pipeline
from r2ps.storage import is_uri


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(PipelineConfig, argv, description=__doc__)
    try:
        if is_uri(cfg.cosqa):
            raise ValueError(f"--cosqa {cfg.cosqa}: a local folder (it is read by every stage)")
        build_stages(cfg)  # settings errors before Ray starts
    except (ConfigError, ValueError) as e:
        print(f"usage: pipeline.py [--help] [options] [section.key=value ...]\nerror: {e}")
        return 2
    setup_logging()
    ray.init(ignore_reinit_error=True)  # joins a running cluster when there is one
    print(format_summary(run_pipeline(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
