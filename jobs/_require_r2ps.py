"""Imported first by every job: a clear error when this Python cannot import r2ps.

`ray job submit -- python jobs/<job>.py` runs whichever `python` is first on the PATH of
the process that started the Ray head, not the submitter's. A head started as
`.venv/bin/ray start --head` without the venv activated runs jobs with the system Python,
where neither r2ps nor its dependencies are installed.
"""

import importlib.util
import sys

if importlib.util.find_spec("r2ps") is None or importlib.util.find_spec("ray") is None:
    sys.exit(
        f"r2ps is not installed in the Python running this job ({sys.executable}).\n"
        "Ray jobs run with the `python` on the PATH of the process that started the Ray head:\n"
        "start the head with `make ray-head` (or `source .venv/bin/activate && ray start "
        "--head`), or install r2ps into that Python (`pip install -e .[cpu]`)."
    )
