"""A notebook job's folder, written and read the same way by the person's side
(aifactory.notebook_jobs.jobs, in their session or terminal) and by the run inside the job
(aifactory.notebook_jobs.runner): files appear whole (written beside, then renamed) and 0600."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".write-", suffix=".tmp")  # 0600
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    """The file's object, or None when it is missing or not (yet) JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
