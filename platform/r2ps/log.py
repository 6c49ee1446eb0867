"""The one logging setup: every job calls `setup_logging()` once, modules use `get_logger`.

One format everywhere keeps a job's log readable when Ray interleaves driver and
worker output. Progress is a bar on a terminal and a periodic log line elsewhere
(`ray job submit`, `make demo > log`, CI), where a bar's redraws would fill the log.
"""

from __future__ import annotations

import logging
import os
import sys
import time

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str | int | None = None) -> None:
    """Configure the root logger; the level comes from the argument or `R2PS_LOG_LEVEL`.

    Off a terminal, Ray Data's progress bars are switched off for the datasets this
    process runs (they are redrawn every second, one log line per redraw), and so are the
    Hugging Face bars ("Loading weights" of every model load) here and in the Ray workers
    this process starts (they inherit the variable); r2ps's own stages log `Progress`
    lines instead.
    """
    level = level or os.environ.get("R2PS_LOG_LEVEL", "INFO")
    logging.basicConfig(level=level, format=_FORMAT, datefmt="%H:%M:%S", force=True)
    if not sys.stderr.isatty():
        # read when ray.data is imported; set here rather than importing it (half a
        # second of a command that may never use Ray)
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        if "ray.data" in sys.modules:  # imported already: switch its bars off too
            from ray.data import DataContext

            DataContext.get_current().enable_progress_bars = False
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read at import
        if "transformers" in sys.modules:  # imported already: switch its bars off too
            sys.modules["transformers"].utils.logging.disable_progress_bar()


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


class Progress:
    """Periodic progress lines for a long loop: `done/total unit (pct), rate/s, ETA`.

    A line at most every `every_s` seconds and one at the end (`close`), so a log holds a
    few lines per stage however many items it counts.
    """

    def __init__(
        self, log: logging.Logger, what: str, total: int, unit: str = "", every_s: float = 30.0
    ) -> None:
        self.log, self.what, self.total, self.unit, self.every_s = log, what, total, unit, every_s
        self.done = 0
        self.start = self.last = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            self._line(now)

    def close(self) -> None:
        self._line(time.perf_counter())

    def _line(self, now: float) -> None:
        seconds = max(now - self.start, 1e-9)
        rate = self.done / seconds
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        left = (self.total - self.done) / rate if rate and self.total else 0.0
        eta = f", ETA {left / 60:.1f} min" if self.done < self.total and rate else ""
        self.log.info(
            "%s: %d/%d %s%s, %.1f %s/s, %.0f s%s",
            self.what, self.done, self.total, self.unit, pct, rate, self.unit or "items",
            seconds, eta,
        )  # fmt: skip
