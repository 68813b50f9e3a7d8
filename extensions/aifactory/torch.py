"""torch DDP across Dask GPU workers: `run_ddp(client, train_fn, *args, **kwargs)`.

`train_fn` runs once per GPU worker (workers with a `GPU` resource; every worker when none
has one) as one DDP rank, with the process group already set up: MASTER_ADDR is rank 0's
host, MASTER_PORT a port found free there, RANK, LOCAL_RANK and WORLD_SIZE are set, and the
backend is `nccl` when CUDA is there and `gloo` otherwise. Returns each rank's result, in
rank order. If one rank fails, every rank's worker is restarted (so none hangs in a
collective) and the error says which rank failed, where.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from datetime import timedelta
from urllib.parse import urlparse

from distributed import as_completed, wait

# After the first failure, how long to wait for the errors it caused on other ranks, so the
# rank that failed first (not one whose peer went away) is named.
_FAILURE_GRACE_S = 3.0


class DDPError(RuntimeError):
    """One rank of a DDP run failed; the others were stopped."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _interface_of(address: str) -> str | None:
    """The network interface that holds `address` on this machine (for gloo and nccl)."""
    import psutil
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address == address for a in addrs):
            return name
    return None


def _rank_main(train_fn, rank, local_rank, world_size, master_addr, master_port, my_addr,
               timeout_s, args, kwargs):
    import torch
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                      LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size))
    if (interface := _interface_of(my_addr)):
        os.environ["GLOO_SOCKET_IFNAME"] = os.environ["NCCL_SOCKET_IFNAME"] = interface
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(0)  # each worker sees only its own GPU
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))
    try:
        return train_fn(*args, **kwargs)
    except Exception as error:
        # When one rank fails, its peers fail a moment later ("connection closed"); the
        # time lets the caller name the rank that failed first.
        error.aifactory_failed_at = time.time()
        raise
    finally:
        dist.destroy_process_group()


def _host(worker_address: str) -> str:
    return urlparse(worker_address).hostname


def ddp_workers(client) -> list[str]:
    """The workers that take part, in rank order: those with a GPU, sorted by host and name."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    gpu = [a for a, w in workers.items() if w.get("resources", {}).get("GPU")]
    chosen = gpu or list(workers)
    return sorted(chosen, key=lambda a: (_host(a), str(workers[a].get("name")), a))


def run_ddp(client, train_fn, *args, timeout_s: float = 600, **kwargs) -> list:
    workers = ddp_workers(client)
    if not workers:
        raise DDPError("There are no Dask workers to train on (scale the cluster first).")
    master = workers[0]
    master_addr = _host(master)
    master_port = client.run(_free_port, workers=[master])[master]
    world = len(workers)
    run_id = uuid.uuid4().hex[:8]
    local_ranks: dict[str, int] = {}
    futures = []
    for rank, worker in enumerate(workers):
        host = _host(worker)
        local_rank = local_ranks.get(host, 0)
        local_ranks[host] = local_rank + 1
        futures.append(client.submit(
            _rank_main, train_fn, rank, local_rank, world, master_addr, master_port, host,
            timeout_s, args, kwargs, workers=[worker], allow_other_workers=False, pure=False,
            key=f"ddp-{run_id}-rank-{rank}"))
    for future in as_completed(futures):
        if future.status == "error":
            break  # the first failure: do not wait for ranks stuck in a collective
    failed = [f for f in futures if f.status == "error"]
    if failed:
        try:
            wait(futures, timeout=_FAILURE_GRACE_S)
        except TimeoutError:
            pass  # ranks still waiting in a collective: they are restarted below
        errors = {rank: f.exception() for rank, f in enumerate(futures) if f.status == "error"}
        rank = min(errors, key=lambda r: (getattr(errors[r], "aifactory_failed_at", 0), r))
        error = errors[rank]
        # The other ranks wait in a collective that will never complete: restart them.
        client.cancel(futures)
        client.restart_workers(workers, raise_for_error=False)
        raise DDPError(f"rank {rank} (on {workers[rank]}) failed: {error!r}; all "
                       f"{world} ranks were stopped") from error
    return client.gather(futures)
