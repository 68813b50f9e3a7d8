"""What a notebook does with GPUCluster, run by the tests as a demo user (`python -c`).

    python -c "$(cat dask_driver.py)" MODE [ARGS]    prints one JSON line per result

Modes:
  workers   2 jobs x 4 GPUs: where each worker runs and which GPU it has, a GPU-resource task,
            the worker jobs as Slurm sees them, then run_ddp with gloo; closes the cluster
  hold N    scale to N jobs of 4 GPUs, print the tag and the scheduler's address, then wait
            (to be killed, or stopped)
  budget    GPUCluster on proj-tiny, scale beyond its budget: prints the refusal
  fail      run_ddp where rank 1 raises: the error, and how long until it came
"""

import getpass
import json
import os
import sys
import time


def say(**fields):
    print(json.dumps(fields), flush=True)


def train(steps):
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # same start on every rank; DDP keeps them the same
    model = DDP(torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    true_w = torch.arange(8, dtype=torch.float32).unsqueeze(1) / 8
    losses = []
    for _ in range(steps):
        x = torch.randn(64, 8, generator=gen)
        loss = torch.nn.functional.mse_loss(model(x), x @ true_w)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    params = [p.detach().flatten().tolist() for p in model.module.parameters()]
    return {"rank": rank, "world": world, "losses": losses, "params": params,
            "env": {k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE",
                                               "MASTER_ADDR", "MASTER_PORT")},
            "node": os.environ.get("SLURMD_NODENAME")}


def fail_on_rank_1():
    import torch
    import torch.distributed as dist
    if dist.get_rank() == 1:
        raise ValueError("bad batch on rank 1")
    dist.all_reduce(torch.ones(1))  # waits for rank 1 forever
    return "unreachable"


def where(dask_worker=None):
    scratch = os.environ.get("DASK_TEMPORARY_DIRECTORY", "")
    info = os.stat(scratch) if scratch else None
    return {"node": os.environ.get("SLURMD_NODENAME"),
            "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "inherited": sorted(k for k in os.environ if k.startswith(("SBATCH_",))),
            "scratch": scratch, "scratch_mode": oct(info.st_mode & 0o777) if info else "",
            "scratch_uid": info.st_uid if info else -1,
            "local_directory": dask_worker.local_directory if dask_worker else ""}


def main(mode, *args):
    from distributed import Client

    from aifactory import slurm
    from aifactory.dask import BudgetExceeded, GPUCluster
    from aifactory.torch import run_ddp

    if mode == "budget":
        cluster = GPUCluster(gpus_per_job=4, walltime="01:00:00", account="proj-tiny")
        try:
            cluster.scale(jobs=1)
            say(refused=None)
        except BudgetExceeded as e:
            say(refused=str(e), tag=cluster.tag)
        cluster.close()
        return

    if mode == "fail":  # rank 1 of 2 fails while rank 0 waits for it in a collective
        cluster = GPUCluster(gpus_per_job=2, walltime="00:10:00")
        cluster.scale(jobs=1)
        client = Client(cluster)
        client.wait_for_workers(2, timeout=240)
        began = time.monotonic()
        try:
            run_ddp(client, fail_on_rank_1)
            say(error=None)
        except Exception as e:
            say(error=f"{type(e).__name__}: {e}", seconds=time.monotonic() - began)
        say(after=client.submit(where, pure=False).result())  # the workers are usable again
        client.close()
        cluster.close()
        return

    if mode == "hold":
        cluster = GPUCluster(gpus_per_job=4, walltime="00:10:00")
        cluster.scale(jobs=int(args[0]))
        say(tag=cluster.tag, address=cluster.scheduler_address)
        while True:
            time.sleep(60)

    cluster = GPUCluster(gpus_per_job=4, walltime="00:10:00")
    cluster.scale(jobs=2)
    client = Client(cluster)
    client.wait_for_workers(8, timeout=240)
    say(workers=list(client.run(where).values()))
    say(gpu_task=client.submit(where, resources={"GPU": 1}, pure=False).result())
    jobs = [j for j in slurm.jobs(user=getpass.getuser()) if j.comment == cluster.tag]
    say(jobs=[{"id": j.job_id, "name": j.name, "partition": j.partition, "gpus": j.gpus,
               "account": j.account} for j in jobs], tag=cluster.tag,
        dashboard=cluster.dashboard_link)
    say(ddp=run_ddp(client, train, 30))
    client.close()
    cluster.close()
    say(closed=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
