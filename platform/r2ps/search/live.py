"""A searcher that follows its index folder's versions: what a long-lived reader holds (the
MCP server, the Serve app's Retriever replica, anything that keeps a `Searcher` open while
`r2ps index --watch` re-indexes).

    live = LiveSearcher.open("myrepo/.r2ps/index")
    live.search("read a json file")     # from the newest complete version, checked first

Before a search it checks the folder's pointer (`r2ps.search.versions.stamp`: one stat, at
most every `check_every_s`); when a new version was published it loads that one (the query
encoder kept: codes, index and, when the old one had built them, BM25 and the symbol
table) and swaps it in whole, so a search runs on one version from start to end. A search
while the index job writes answers from the last complete version; a version that fails
to load is logged, the one loaded keeps answering, and the next version is tried when it
comes. Other attributes (`index`, `store`, `cfg`, `mode`, `info`, ...) are the current
searcher's, without a check.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from r2ps.log import get_logger
from r2ps.search.searcher import Query, Searcher, SearchHit
from r2ps.search.versions import Version, VersionError, current, stamp

log = get_logger(__name__)

CHECK_EVERY_S = 0.5


class LiveSearcher:
    """A `Searcher` over an index folder, reloaded when a new version is published."""

    def __init__(self, searcher: Searcher, check_every_s: float = CHECK_EVERY_S) -> None:
        self._searcher = searcher
        self.folder = Path(searcher.source_cfg.embed_out)
        self.check_every_s = check_every_s
        self._stamp: object = ()  # never a stamp: the first check reads the pointer
        self._checked = float("-inf")
        self._lock = threading.Lock()
        self.reloads = 0
        self.last_error: str | None = None  # of the last version that failed to load

    @classmethod
    def open(cls, folder: str | Path, **settings: Any) -> LiveSearcher:
        """`Searcher.open(folder, **settings)`, followed."""
        return cls(Searcher.open(folder, **settings))

    @property
    def searcher(self) -> Searcher:
        """The searcher of the version loaded now (no check)."""
        return self._searcher

    @property
    def version(self) -> Version | None:
        return self._searcher.version

    def current(self) -> Searcher:
        """The searcher of the newest version: the pointer checked first (at most every
        `check_every_s`), a new version loaded here. While another thread loads one, the
        version loaded now."""
        if time.monotonic() - self._checked < self.check_every_s:
            return self._searcher
        if not self._lock.acquire(blocking=False):
            return self._searcher
        try:
            self._checked = time.monotonic()
            now = stamp(self.folder)
            if now != self._stamp:
                self._stamp = now
                self._follow()
        finally:
            self._lock.release()
        return self._searcher

    def _follow(self) -> None:
        old = self._searcher
        try:
            published = current(self.folder)
            if published is None or (old.version and published.number == old.version.number):
                return
            start = time.perf_counter()
            new = Searcher.from_config(
                old.source_cfg, model_dir=old.model_dir, loaded=old.loaded, build_index=False
            )
            if old._bm25 is not None:  # built before the swap: no query pays for it
                new.lexical()
            if old._table is not None:
                new.symbols()
        except Exception as e:  # a version removed under us, damaged, of another model
            self.last_error = f"{type(e).__name__}: {e}"
            log.warning("%s: keeping version %s: the new one did not load (%s)", self.folder,
                        old.version and old.version.number, self.last_error)  # fmt: skip
            return
        self._searcher, self.last_error = new, None
        self.reloads += 1
        log.info("%s: version %s loaded (%d codes) in %.2f s", self.folder,
                 new.version and new.version.number, len(new), time.perf_counter() - start)  # fmt: skip

    def search(self, query: str, k: int = 10, retrieval: str | None = None, filters=None):
        """`Searcher.search` on the newest version."""
        return self.current().search(query, k, retrieval, filters)

    def search_many(self, queries: list[Query]) -> list[list[SearchHit]]:
        """`Searcher.search_many` on the newest version."""
        return self.current().search_many(queries)

    def status(self) -> dict[str, Any]:
        """The version served: {version, published, age_seconds} (None each for a folder
        without versions), the version published now, and why a newer one did not load."""
        loaded = self._searcher.version
        try:
            latest = current(self.folder)
        except VersionError:
            latest = None
        out = loaded.to_dict() if loaded else {"version": None, "published": None,
                                               "age_seconds": None}  # fmt: skip
        out["latest_version"] = latest.number if latest else None
        if self.last_error:
            out["reload_error"] = self.last_error
        return out

    def __len__(self) -> int:
        return len(self._searcher)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._searcher, name)
