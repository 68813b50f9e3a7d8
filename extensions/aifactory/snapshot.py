"""One cached view of Slurm per process, shared by everyone who asks.

Each kind of answer (the queue, the nodes, the budgets, the reservations, a user's
associations) is fetched by at most one command at a time: callers that arrive while a fetch
is running wait for that same answer, and an answer younger than the caller's `max_age` is
reused. So thirty spawners polling every second cost slurmctld one `squeue` per second, not
thirty. When Slurm does not answer, callers get `SlurmUnreachable`, and the last good answer
stays available (`last`, `as_of`) for those that can show something older.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable, Generic, Mapping, TypeVar

from . import slurm

T = TypeVar("T")


class Cached(Generic[T]):
    def __init__(self, fetch: Callable[[], T]):
        self._fetch = fetch
        self.last: T | None = None
        self.as_of = 0.0  # time.time() of the last good answer
        self._inflight: asyncio.Future | None = None
        self._inflight_started = 0.0

    def age(self) -> float:
        return time.time() - self.as_of if self.as_of else float("inf")

    async def get(self, max_age: float, newer_than: float = 0.0) -> T:
        """An answer at most `max_age` s old, from a fetch begun after `newer_than` (a time.time())."""
        while True:
            if self.last is not None and self.age() <= max_age and self.as_of >= newer_than:
                return self.last
            if self._inflight is None:
                started = time.time()
                self._inflight, self._inflight_started = (
                    asyncio.ensure_future(self._refresh(started)), started)
            if self._inflight_started >= newer_than:
                return await asyncio.shield(self._inflight)
            try:  # a fetch begun too early: let it finish, then fetch again
                await asyncio.shield(self._inflight)
            except slurm.SlurmError:
                pass

    async def _refresh(self, started: float) -> T:
        try:
            value = await asyncio.to_thread(self._fetch)
            # Stamped with the start of the fetch: anything older may be missing from it.
            self.last, self.as_of = value, started
            return value
        finally:
            self._inflight = None


@dataclass(frozen=True)
class GpuAvailability:
    partition: str
    gpu_type: str
    total: int
    free: int  # on usable nodes not held by a reservation you cannot use
    down: int  # on nodes that take no new job (down, drained, not responding, ...)


def gpu_availability(nodes: list[slurm.Node], reserved_nodes: set[str]) -> list[GpuAvailability]:
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


def only_unusable_nodes(nodes: list[slurm.Node], partition: str, gpu_type: str, gpus: int,
                        allowed: set[str] | None = None) -> list[slurm.Node]:
    """The nodes of `partition` that could hold `gpus` GPUs of `gpu_type` ("" any), among
    `allowed` if given, when every one of them takes no jobs now; else []."""
    def fits(node: slurm.Node) -> bool:
        have = node.gpus()
        count = have.get(gpu_type, 0) if gpu_type else sum(have.values())
        return partition in node.partitions and count >= gpus and (
            allowed is None or node.name in allowed)

    candidates = [n for n in nodes if fits(n)]
    return candidates if candidates and not any(n.usable for n in candidates) else []


def unusable_words(nodes: list[slurm.Node]) -> str:
    """"gpu01 drained (disk failure); gpu02 down, not responding"."""
    return "; ".join(f"{n.name} {n.condition}" + (f" ({n.reason})" if n.reason else "")
                     for n in nodes)


def usable_reservations(reservations: Mapping[str, slurm.Reservation], user: str,
                        accounts: list[str]) -> dict[str, slurm.Reservation]:
    """Reservations `user` may run in: named for them or for one of their accounts."""
    return {name: r for name, r in reservations.items() if r.admits(user, accounts)}


def held_nodes(reservations: Mapping[str, slurm.Reservation], usable: set[str] | Mapping,
               now: float | None = None, nodes: list[slurm.Node] = ()) -> set[str]:
    """Nodes held now by active reservations other than the `usable` ones; with `nodes`, also
    those Slurm marks reserved by a reservation the asker cannot see (PrivateData)."""
    held, covered = set(), set()
    for name, r in reservations.items():
        if r.active(now):
            covered |= slurm.expand_nodes(r.nodes)
            if name not in usable:
                held |= slurm.expand_nodes(r.nodes)
    return held | {n.name for n in nodes if n.reserved and n.name not in covered}


class SlurmView:
    """The process-wide view; use `VIEW`."""

    def __init__(self):
        self.queue: Cached[dict[str, slurm.Job]] = Cached(
            lambda: {j.job_id: j for j in slurm.jobs()})
        self.nodes: Cached[list[slurm.Node]] = Cached(slurm.nodes)
        self.reservations: Cached[dict[str, slurm.Reservation]] = Cached(slurm.reservations)
        self.partitions: Cached[dict[str, slurm.Partition]] = Cached(slurm.partitions)
        self._associations: dict[str, Cached[slurm.Associations]] = {}
        self._budgets: dict[str, Cached[dict[str, slurm.Budget]]] = {}

    def budgets(self, tres: str) -> Cached[dict[str, slurm.Budget]]:
        """Budgets in minutes of `tres` (the site's billing TRES)."""
        if tres not in self._budgets:
            self._budgets[tres] = Cached(lambda: slurm.budgets(tres))
        return self._budgets[tres]

    def associations(self, user: str) -> Cached[slurm.Associations]:
        if user not in self._associations:
            self._associations[user] = Cached(lambda: slurm.user_associations(user))
        return self._associations[user]

    async def availability(self, user_reservations: set[str], max_age: float = 10
                           ) -> list[GpuAvailability]:
        nodes = await self.nodes.get(max_age)
        reservations = await self.reservations.get(60)
        return gpu_availability(nodes, held_nodes(reservations, user_reservations,
                                                  nodes=nodes))

    def queue_position(self, job: slurm.Job, jobs: dict[str, slurm.Job]) -> int:
        """1 + the pending jobs competing for the same partition that Slurm ranks first.

        Jobs held back by their own limits (a spent budget, a dependency) are not ahead
        of anyone: Slurm passes over them."""
        return 1 + sum(1 for j in jobs.values() if j.pending
                       and j.reason in slurm.COMPETING_REASONS
                       and j.partition == job.partition and j.reservation == job.reservation
                       and j.job_id != job.job_id
                       and (j.priority, -int(j.job_id)) > (job.priority, -int(job.job_id)))


VIEW = SlurmView()
