"""Pure rules about what is free and for whom: GPUs per partition, reservations a person may
use, nodes held from them, a pending job's place in the queue. From Slurm's answers as
aifactory.slurm models them; nothing here asks Slurm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .slurm import COMPETING_REASONS, Job, Node, Reservation, expand_nodes


@dataclass(frozen=True)
class GpuAvailability:
    partition: str
    gpu_type: str
    total: int
    free: int  # on usable nodes not held by a reservation you cannot use
    down: int  # on nodes that take no new job (down, drained, not responding, ...)


def gpu_availability(nodes: list[Node], reserved_nodes: set[str]) -> list[GpuAvailability]:
    rows: dict[tuple[str, str], list[int]] = {}
    for node in nodes:
        used = node.gpus(used=True)
        for gpu_type, count in node.gpus().items():
            for partition in node.partitions:
                row = rows.setdefault((partition, gpu_type), [0, 0, 0])
                row[0] += count
                if not node.usable:
                    row[2] += count
                elif node.name not in reserved_nodes:
                    row[1] += max(count - used.get(gpu_type, 0), 0)
    return [GpuAvailability(p, t, *v) for (p, t), v in sorted(rows.items())]


def only_unusable_nodes(nodes: list[Node], partition: str, gpu_type: str, gpus: int,
                        allowed: set[str] | None = None) -> list[Node]:
    """The nodes of `partition` that could hold `gpus` GPUs of `gpu_type` ("" any), among
    `allowed` if given, when every one of them takes no jobs now; else []."""
    def fits(node: Node) -> bool:
        have = node.gpus()
        count = have.get(gpu_type, 0) if gpu_type else sum(have.values())
        return partition in node.partitions and count >= gpus and (
            allowed is None or node.name in allowed)

    candidates = [n for n in nodes if fits(n)]
    return candidates if candidates and not any(n.usable for n in candidates) else []


def usable_reservations(reservations: Mapping[str, Reservation], user: str,
                        accounts: list[str]) -> dict[str, Reservation]:
    """Reservations `user` may run in: named for them or for one of their accounts."""
    return {name: r for name, r in reservations.items() if r.admits(user, accounts)}


def held_nodes(reservations: Mapping[str, Reservation], usable: set[str] | Mapping,
               now: float | None = None, nodes: list[Node] = ()) -> set[str]:
    """Nodes held now by active reservations other than the `usable` ones; with `nodes`, also
    those Slurm marks reserved by a reservation the asker cannot see (PrivateData)."""
    held, covered = set(), set()
    for name, r in reservations.items():
        if r.active(now):
            covered |= expand_nodes(r.nodes)
            if name not in usable:
                held |= expand_nodes(r.nodes)
    return held | {n.name for n in nodes if n.reserved and n.name not in covered}


def queue_position(job: Job, jobs: dict[str, Job]) -> int:
    """1 + the pending jobs competing for the same partition that Slurm ranks first.

    Jobs held back by their own limits (a spent budget, a dependency) are not ahead
    of anyone: Slurm passes over them."""
    return 1 + sum(1 for j in jobs.values() if j.pending
                   and j.reason in COMPETING_REASONS
                   and j.partition == job.partition and j.reservation == job.reservation
                   and j.job_id != job.job_id
                   and (j.priority, -int(j.job_id)) > (job.priority, -int(job.job_id)))
