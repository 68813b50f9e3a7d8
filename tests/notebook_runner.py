"""Execute one notebook top to bottom, as a session's kernel would: run by tests/test_notebooks.py
as a demo user inside a Slurm job (`srun ... python notebook_runner.py NOTEBOOK OUT`).

Writes the executed notebook to OUT, also when a cell fails (up to the failing cell), and
prints two JSON lines: {"job_id"} when it starts, {"job_id", "node", "seconds", "error"}
when it ends. Exit status 0 when every cell
ran, 1 when one failed.
"""

import json
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

CELL_TIMEOUT_S = 300


def main(notebook: str, out: str) -> int:
    path = Path(notebook).resolve()
    nb = nbformat.read(path, as_version=4)
    # The kernel inherits this process's environment: the job's SLURM_* and CUDA_VISIBLE_DEVICES.
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    print(json.dumps({"job_id": os.environ.get("SLURM_JOB_ID")}), flush=True)
    began = time.monotonic()
    error = None
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
        error = f"{type(e).__name__}: {e}"
    seconds = round(time.monotonic() - began, 1)
    nbformat.write(nb, out)
    print(json.dumps({"job_id": os.environ.get("SLURM_JOB_ID"),
                      "node": os.environ.get("SLURMD_NODENAME"),
                      "seconds": seconds, "error": error}), flush=True)
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
