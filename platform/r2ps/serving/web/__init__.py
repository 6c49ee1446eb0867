"""The search page served at `GET /`: plain HTML and JavaScript, no build step.

`search.html` is package data (pyproject.toml), read once per process.
"""

from __future__ import annotations

import functools
from importlib import resources


@functools.cache
def search_page() -> str:
    """The page's HTML: a query box over `POST /search`, results with path:line, scores,
    highlighted code and a mark on every answer the ranker did not rescore."""
    return resources.files(__name__).joinpath("search.html").read_text(encoding="utf-8")
