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
from typing import Callable, Generic, TypeVar

from . import slurm
from .availability import GpuAvailability, gpu_availability, held_nodes

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


VIEW = SlurmView()
