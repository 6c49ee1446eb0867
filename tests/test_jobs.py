"""The job entry points as a cluster runs them (`python jobs/<job>.py`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
JOBS = sorted(p for p in (REPO / "jobs").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.name)
def test_a_python_without_r2ps_is_told_how_to_start_the_head(job):
    """A head started without the venv runs jobs with a Python lacking r2ps: each job says
    how to start it instead of `No module named 'r2ps'`. `python -S` without PYTHONPATH is
    such a Python: no site-packages."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [sys.executable, "-S", str(job), "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "r2ps is not installed" in run.stderr and "make ray-head" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
