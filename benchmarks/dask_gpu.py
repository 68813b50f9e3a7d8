"""GPUCluster against plain dask-jobqueue SLURMCluster with equivalent settings, one run.

Run as root on the local cluster (`./aif cluster up` first):

    /opt/aifactory/venv/bin/python benchmarks/dask_gpu.py [--rounds 5] [--tasks 5000]

Both get 2 jobs of 4 GPUs (32 CPUs, 240 GB, 10 minutes) on the gpu partition, workers on
the nodes' eth0, the scheduler here on the login node's cluster address:

- "plain": SLURMCluster(processes=4, job_extra_directives=["--gres=gpu:h100:4"], ...): one
  `dask worker --nworkers 4` per job, every worker seeing all four GPUs;
- "ours": GPUCluster(gpus_per_job=4): one worker per GPU, pinned, clean environment, tagged,
  cost checked before the scale, mutual TLS with the user's identity (the default);
- "ours_tcp": the same with security=False, to show what TLS itself costs.

Measured per round (the order alternates): seconds from scale(jobs=2) to 8 workers
connected, and the throughput of many small tasks (client.map of a trivial function; the
median of three batches), with slurmctld RPCs from sdiag.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from dask_jobqueue import SLURMCluster
from distributed import Client

from aifactory import slurm
from aifactory.dask import GPUCluster

SCHEDULER = {"host": "10.77.0.1"}
COMMON = dict(queue="gpu", walltime="00:10:00", interface="eth0", local_directory="/tmp",
              python="/opt/aifactory/venv/bin/python", scheduler_options=SCHEDULER,
              log_directory="/tmp/aif-bench-dask-logs")


def plain() -> SLURMCluster:
    return SLURMCluster(cores=32, processes=4, memory="240GB",
                        job_extra_directives=["--gres=gpu:h100:4"],
                        worker_extra_args=["--resources", "GPU=1"], **COMMON)


def ours() -> GPUCluster:
    return GPUCluster(gpus_per_job=4, cpus_per_gpu=8, memory_gb_per_gpu=60,
                      walltime="00:10:00", scheduler_options=SCHEDULER,
                      log_directory="/tmp/aif-bench-dask-logs")


def ours_tcp() -> GPUCluster:
    return GPUCluster(gpus_per_job=4, cpus_per_gpu=8, memory_gb_per_gpu=60,
                      walltime="00:10:00", scheduler_options=SCHEDULER,
                      log_directory="/tmp/aif-bench-dask-logs", security=False)


def inc(x):
    return x + 1


def measure(make, tasks: int) -> dict:
    slurm.run(["sdiag", "--reset"])
    cluster = make()
    client = Client(cluster)
    try:
        began = time.monotonic()
        cluster.scale(jobs=2)
        client.wait_for_workers(8, timeout=300)
        ready = time.monotonic() - began
        client.gather(client.map(inc, range(100)))  # warm-up
        rates = []
        for _ in range(3):  # this 2-core machine is noisy: the median of three batches
            began = time.monotonic()
            results = client.gather(client.map(inc, range(tasks), pure=False))
            rates.append(tasks / (time.monotonic() - began))
            assert sum(results) == tasks * (tasks + 1) // 2
        throughput = statistics.median(rates)
    finally:
        client.close()
        cluster.close()
    while [j for j in slurm.jobs() if j.alive
           and j.name.startswith(("dask", "dask-worker"))]:
        time.sleep(1)  # the next round starts on free nodes
    return {"ready_s": ready, "tasks_per_s": throughput,
            "rpcs": sum(slurm.rpc_counts().values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=5000)
    args = parser.parse_args()
    os.environ.setdefault("AIFACTORY_SITE", "/etc/aifactory/hub_config/site.yaml")
    results = {"plain": [], "ours": [], "ours_tcp": []}
    for r in range(args.rounds):
        order = [("plain", plain), ("ours", ours), ("ours_tcp", ours_tcp)]
        for name, make in order if r % 2 == 0 else order[::-1]:
            m = measure(make, args.tasks)
            results[name].append(m)
            print(f"round {r + 1} {name:8}: 8 workers in {m['ready_s']:.1f} s, "
                  f"{m['tasks_per_s']:.0f} tasks/s, {m['rpcs']} slurmctld RPCs", flush=True)
    med = {name: {k: statistics.median(m[k] for m in rs) for k in rs[0]}
           for name, rs in results.items()}
    print(f"\nmedian of {args.rounds} rounds, {args.tasks} tasks each")
    print(f"{'':8} {'ready s':>8} {'tasks/s':>8} {'RPCs':>6}")
    for name, m in med.items():
        print(f"{name:8} {m['ready_s']:>8.1f} {m['tasks_per_s']:>8.0f} {m['rpcs']:>6.0f}")
    print(f"throughput ratio ours/plain: {med['ours']['tasks_per_s'] / med['plain']['tasks_per_s']:.3f}"
          f" (goal >= 0.95)")
    print(f"start ratio ours/plain:      {med['ours']['ready_s'] / med['plain']['ready_s']:.3f}"
          f" (goal <= 1)")
    print(f"TLS alone, ours/ours_tcp:    throughput "
          f"{med['ours']['tasks_per_s'] / med['ours_tcp']['tasks_per_s']:.3f}, start "
          f"{med['ours']['ready_s'] / med['ours_tcp']['ready_s']:.3f}")


if __name__ == "__main__":
    main()
