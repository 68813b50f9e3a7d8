"""A Dask worker preload: pin each worker of a multi-GPU job to its own GPU.

dask-jobqueue starts one `dask worker --nworkers N` per job, so all N workers inherit the
job's CUDA_VISIBLE_DEVICES ("0,1,2,3"). Each worker is named `<job>-<i>`; this keeps only
the i-th GPU for worker i, before anything in the worker touches CUDA. One process tree per
job, as dask-jobqueue makes it, so workers start as fast as plain SLURMCluster's.
"""

import os

from . import ssl_fix  # noqa: F401  (TLS reads and writes start from a clean error queue)


def pin(name: str, visible: str) -> str:
    """The GPU list worker `name` keeps out of the job's `visible` ones."""
    gpus = [g for g in visible.split(",") if g]
    if len(gpus) <= 1:
        return visible
    return gpus[int(str(name).rsplit("-", 1)[1])]


def dask_setup(worker):
    os.environ["CUDA_VISIBLE_DEVICES"] = pin(worker.name,
                                             os.environ.get("CUDA_VISIBLE_DEVICES", ""))
