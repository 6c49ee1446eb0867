"""Index a source tree for search, incrementally; write the serve.yaml that serves it.

    python jobs/index.py --source . --out runs/self
    python jobs/index.py --source ~/src/project --out runs/project --model runs/demo/pipeline/retriever
    ray job submit --working-dir . -- python jobs/index.py --source /data/repo --out /data/repo-index
    R2PS_SERVE_CONFIG=runs/self/serve.yaml serve run serve.app:cascade   # then open :8000/

Every function, method and class of the Python, Go, Java, JavaScript/TypeScript, PHP and
Ruby files (tree-sitter), .gitignore honoured; vendored, generated, minified, binary and
oversize files skipped, counted and named in <out>/index_summary.json. A second run
re-reads only files that changed and embeds only code it has not embedded yet.
"""

from __future__ import annotations

import sys

import _require_r2ps  # noqa: F401  (first: says how to run jobs when r2ps is missing)

from r2ps.config import ConfigError, parse_config
from r2ps.log import setup_logging
from r2ps.repo.config import RepoIndexConfig
from r2ps.repo.indexer import NothingToIndex, format_summary, index_repo


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(RepoIndexConfig, argv, description=__doc__)
    setup_logging()
    try:
        summary = index_repo(cfg)
    except (ConfigError, NothingToIndex) as e:  # the user's input, not a fault: no traceback
        print(f"index.py: error: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
