"""The one cache of Slurm's answers, and the process-wide view made of it.

`Cached` holds one kind of answer (the queue, the nodes, the budgets, ...): the last good
answer, when the fetch that brought it began (`as_of`), and the error of the last try
(`error`, "" when it answered). Asked with `get(max_age)`, at most one fetch runs at a time:
callers that arrive meanwhile wait for that same answer, and an answer younger than
`max_age` is reused, so thirty spawners polling every second cost slurmctld one `squeue` per
second, not thirty. `refresh()` is the same fetch for a schedule (the allocations service),
`fetch_now()` the same in the calling thread (the CLI). When Slurm does not answer, `get`
raises `SlurmUnreachable` and the last good answer stays for those that can show something
older. Every user of Slurm's answers goes through this class: the spawner's view (`VIEW`
below), the service's schedule (aifactory.service) and the CLI's snapshot
(allocations.Snapshot.take).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Generic, TypeVar

from . import slurm
from .availability import GpuAvailability, gpu_availability, held_nodes

T = TypeVar("T")
log = logging.getLogger(__name__)


class Cached(Generic[T]):
    def __init__(self, fetch: Callable[[], T], source: str = ""):
        self._fetch = fetch
        self.source = source  # where the answer comes from, in words
        self.last: T | None = None
        self.as_of = 0.0  # time.time() at the start of the fetch of `last`
        self.error = ""  # the last try's error; "" when it answered
        self.unreachable = False  # that error: its daemon did not answer
        self.tried = 0.0  # time.time() at the end of the last try, answered or not
        self._inflight: asyncio.Future | None = None
        self._inflight_started = 0.0

    def age(self) -> float:
        return time.time() - self.as_of if self.as_of else float("inf")

    def fetch_now(self) -> T:
        """Ask now, in this thread; keeps the answer, or the error (and raises it)."""
        started = time.time()
        try:
            value = self._fetch()
        except slurm.SlurmError as e:
            self.error, self.unreachable = str(e), isinstance(e, slurm.SlurmUnreachable)
            self.tried = time.time()
            raise
        except Exception as e:  # an answer we could not read is an error like any other
            log.exception("%s: an answer aifactory could not read", self.source or "Slurm")
            self.error = f"an answer aifactory could not read ({type(e).__name__})"
            self.unreachable, self.tried = False, time.time()
            raise slurm.SlurmError(self.error) from e
        # Stamped with the start of the fetch: anything older may be missing from it.
        self.last, self.as_of, self.error, self.unreachable = value, started, "", False
        self.tried = time.time()
        return value

    async def get(self, max_age: float, newer_than: float = 0.0) -> T:
        """An answer at most `max_age` s old, from a fetch begun after `newer_than` (a time.time())."""
        while True:
            if self.last is not None and self.age() <= max_age and self.as_of >= newer_than:
                return self.last
            if self._inflight is None:
                started = time.time()
                self._inflight, self._inflight_started = (
                    asyncio.ensure_future(self._refresh()), started)
            if self._inflight_started >= newer_than:
                return await asyncio.shield(self._inflight)
            try:  # a fetch begun too early: let it finish, then fetch again
                await asyncio.shield(self._inflight)
            except slurm.SlurmError:
                pass

    async def refresh(self) -> None:
        """A fresh answer now, for a schedule: the error is kept, not raised."""
        try:
            await self.get(0, newer_than=time.time())
        except slurm.SlurmError:
            pass

    async def _refresh(self) -> T:
        try:
            return await asyncio.to_thread(self.fetch_now)
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
