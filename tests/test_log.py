"""Job logs: bars on a terminal, periodic lines elsewhere."""

from __future__ import annotations

import logging
import os
import subprocess
import sys


def _printed(code: str, unset: str) -> list[str]:
    """What `code` prints in a fresh interpreter (stderr a pipe), `unset` not in its env."""
    env = {k: v for k, v in os.environ.items() if k != unset}
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=env,
    )
    return run.stdout.split()


def test_ray_data_and_model_loading_bars_are_off_when_stderr_is_not_a_terminal():
    """A model load's "Loading weights" bar filled make demo's log once per actor."""
    code = (
        "import os\n"
        "import transformers\n"
        "from ray.data import DataContext\n"
        "from r2ps.log import setup_logging\n"
        "setup_logging()\n"
        "print(DataContext.get_current().enable_progress_bars)\n"
        "print(transformers.utils.logging.is_progress_bar_enabled())\n"
        "print(os.environ['HF_HUB_DISABLE_PROGRESS_BARS'])\n"  # what Ray workers inherit
    )
    assert _printed(code, unset="HF_HUB_DISABLE_PROGRESS_BARS") == ["False", "False", "1"]


def test_ray_data_imported_later_has_its_bars_off_and_setup_does_not_import_it():
    """setup_logging leaves Ray Data unimported (a command that never uses Ray pays no
    import) and its bars still start off when it is imported later."""
    code = (
        "import sys\n"
        "from r2ps.log import setup_logging\n"
        "setup_logging()\n"
        "print('ray.data' in sys.modules)\n"
        "from ray.data import DataContext\n"
        "print(DataContext.get_current().enable_progress_bars)\n"
    )
    assert _printed(code, unset="RAY_DATA_DISABLE_PROGRESS_BARS") == ["False", "False"]


def test_progress_logs_periodic_lines_and_a_last_one(caplog, monkeypatch):
    from r2ps import log as log_module

    clock = iter([0.0, 10.0, 40.0, 50.0, 80.0, 90.0]).__next__
    monkeypatch.setattr(log_module.time, "perf_counter", clock)
    progress = log_module.Progress(logging.getLogger("t"), "embedding", 400, "codes", every_s=30)
    with caplog.at_level(logging.INFO):
        for _ in range(4):
            progress.update(100)  # at 10, 40 (a line), 50, 80 (a line)
        progress.close()  # at 90
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("embedding: 200/400 codes (50%), 5.0 codes/s")
    assert "ETA" in lines[0] and "ETA" not in lines[-1]
    assert lines[-1].startswith("embedding: 400/400 codes (100%)")
