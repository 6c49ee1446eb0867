"""Export retrievers and rankers to ONNX (fp32 and dynamic int8) beside their weights.

    python jobs/export_onnx.py --models runs/demo/pipeline/retriever --models runs/demo/pipeline/ranker_ps
    python jobs/export_onnx.py --models s3://b/ranker --force

Writes <model>/onnx/model.onnx, model_qint8.onnx and manifest.json (the weights'
fingerprint): what `backend: onnx | onnx-int8` loads in serving and in the embedding job,
refused there when the model has changed since. An export that is up to date is kept.
Every model folder is checked before the first export (exit 2, naming a missing one).
"""

from __future__ import annotations

import json
import sys

import _require_r2ps  # noqa: F401  (first: says how to run jobs when r2ps is missing)

from r2ps.config import check_inputs, parse_config
from r2ps.log import setup_logging
from r2ps.models.onnx_export import ExportConfig, export_all
from r2ps.storage import staged


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ExportConfig, argv, description=__doc__, check=check_inputs)
    setup_logging()
    with staged(cfg, updates=("models",)) as local:  # a URI model gets its export uploaded
        manifests = export_all(local)
    print(json.dumps(manifests, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
