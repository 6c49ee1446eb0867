"""The r2ps search endpoint: Retriever + Ranker deployments behind a Cascade ingress.

    serve run serve.app:cascade                      # from the repository root
    R2PS_SERVE_CONFIG=my.yaml serve run serve.app:cascade
    R2PS_RANKER=runs/x/ranker R2PS_ALPHA=0.3 serve run serve.app:cascade
    serve deploy serve/config.yaml                   # written by `serve build`

Settings: R2PS_SERVE_CONFIG (a serve.yaml), else the newest runs/**/serve.yaml (what
`make demo` or `jobs/index.py` wrote last), then R2PS_* variables (r2ps.serving.settings.ServeConfig).
With nothing to serve the import fails at once, naming the commands that build something.
The deployments themselves: serve/deployments.py.
"""

from r2ps.serving.settings import ServeConfig
from serve.deployments import build_app

_settings = ServeConfig.from_env()
_settings.check_inputs()  # fail at `serve run`, naming what to build (replicas never import this)
cascade = build_app(_settings.without_untrained_ranker())
