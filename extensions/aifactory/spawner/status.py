"""A session's state, as a pure function of its job as Slurm reports it (the spawner feeds it).

    session_status(job, queue, now, gpu_type) -> Status(state, message, give_up)

- SUBMITTING: before the job exists ("Submitting the job.").
- UNKNOWN: Slurm did not answer (`queue` is None); the session waits, never dropped.
- PENDING: queued, with why in words, Slurm's code, the place in the queue and Slurm's
  estimated start; a reason that waiting cannot cure (a spent budget) gives up at once.
- RUNNING: the job runs; the server is starting on its node.
- ENDED: the job is gone or ended; a start gives up.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..availability import queue_position
from ..report import clock
from ..slurm import HOPELESS_REASONS, Job, explain_reason

SUBMITTING, UNKNOWN, PENDING, RUNNING, ENDED = ("submitting", "unknown", "pending", "running",
                                                "ended")


@dataclass(frozen=True)
class Status:
    state: str
    message: str  # for the person, on the pending page
    give_up: bool = False  # the start ends now, with `message`

    @property
    def settled(self) -> bool:
        """The pending page has nothing more to wait for."""
        return self.state in (RUNNING, ENDED) or self.give_up


SUBMITTED = Status(SUBMITTING, "Submitting the job.")


def session_status(job: Job | None, queue: dict[str, Job] | None, now: float,
           gpu_type: str = "") -> Status:
    """The state of a session whose job is `job` in `queue` (None: Slurm did not answer)."""
    if queue is None:
        return Status(UNKNOWN, "Scheduler unreachable; still waiting for the job.")
    if job is None or not job.alive:
        return Status(ENDED, "The session's job ended before it started.", give_up=True)
    if job.running:
        return Status(RUNNING, f"Running on {job.nodes}; waiting for JupyterLab to start.")
    if job.reason in HOPELESS_REASONS:
        return Status(PENDING, f"Your session cannot start: {explain_reason(job.reason)} "
                               f"(Slurm: {job.reason}).", give_up=True)
    parts = [f"Waiting in the queue: {explain_reason(job.reason, gpu_type)} (Slurm: {job.reason})",
             f"position {queue_position(job, queue)} in {job.partition}"]
    if job.start_time and job.start_time > now:
        parts.append(f"Slurm's estimated start {clock(job.start_time)}")
    return Status(PENDING, "; ".join(parts) + ".")
