"""Shared fixtures: one local Ray for the whole session (ray.init costs seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
COSQA_DIR = Path(os.environ.get("R2PS_COSQA", SHARED / "data" / "cosqa"))


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def cosqa_dir() -> Path:
    """The CoSQA evaluation data beside the repo; tests using it skip when it is absent."""
    if not (COSQA_DIR / "code_idx_map.txt").exists():
        pytest.skip(f"CoSQA data not found at {COSQA_DIR}")
    return COSQA_DIR
