"""The r2ps search endpoint: Retriever + Ranker deployments behind a Cascade ingress.

    serve run serve.app:cascade                      # from the repository root
    R2PS_SERVE_CONFIG=my.yaml serve run serve.app:cascade
    R2PS_RANKER=runs/x/ranker R2PS_ALPHA=0.3 serve run serve.app:cascade
    serve deploy serve/config.yaml                   # written by `serve build`

Settings: R2PS_SERVE_CONFIG (a serve.yaml), else the newest runs/**/serve.yaml (what
`make demo` or `jobs/index.py` wrote last), then R2PS_* variables (r2ps.serving.ServeConfig).
With nothing to serve the import fails at once, naming the commands that build something.
The deployments themselves: serve/deployments.py.
"""

from r2ps.serving import ServeConfig
from serve.deployments import build_app


def _in_a_replica() -> bool:
    """Whether this import runs inside a Serve replica (an actor), where the driver's
    working directory and settings may not hold: the check is the driver's."""
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


_settings = ServeConfig.from_env()
if not _in_a_replica():
    _settings.check_inputs()  # fail at `serve run`, naming what to build, not in a replica
cascade = build_app(_settings)
