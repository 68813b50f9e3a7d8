"""Cancel a kernel's Dask jobs when the kernel dies: `python -m aifactory.reaper PID TAG`.

GPUCluster starts this beside the kernel, in its own session, so it outlives a kernel that is
killed (no atexit, no close()). It imports only `aifactory.slurm`: it must not slow down the
workers starting at the same moment.
"""

import getpass
import os
import sys
import time

from . import slurm


def watch(pid: int, tag: str, interval: float = 2.0) -> None:
    """Wait for process `pid` (the kernel) to end, then cancel the jobs tagged `tag`."""
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        except PermissionError:
            pass
        time.sleep(interval)
    for attempt in range(30):  # slurmctld may be away just now: keep trying for a while
        try:
            for job in slurm.jobs(user=getpass.getuser()):
                if job.comment == tag and job.alive and not job.completing:
                    try:
                        slurm.cancel(job.job_id)
                    except slurm.JobGone:
                        pass  # it ended meanwhile
            return
        except slurm.SlurmError:
            time.sleep(10)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])
