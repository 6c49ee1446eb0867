"""The one logging setup: every job calls `setup_logging()` once, modules use `get_logger`.

One format everywhere keeps a job's log readable when Ray interleaves driver and
worker output.
"""

from __future__ import annotations

import logging
import os

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str | int | None = None) -> None:
    """Configure the root logger; the level comes from the argument or `R2PS_LOG_LEVEL`."""
    level = level or os.environ.get("R2PS_LOG_LEVEL", "INFO")
    logging.basicConfig(level=level, format=_FORMAT, datefmt="%H:%M:%S", force=True)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
