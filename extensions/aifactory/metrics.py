"""What operators watch, as Prometheus metrics (runs in the allocations service).

Computed at each scrape from the service's cache (no Slurm command of its own) and from the
Slurm gateway's counts of the commands this process ran. The alert rules that read them are
hub_config/prometheus/alerts.yml; the service serves them at /services/allocations/metrics to
the holder of the metrics token only.

- aifactory_slurm_up{daemon}: 0 when the latest try of the parts that daemon answers did not
  get through (slurmctld: the queue, nodes, reservations, shares, period; slurmdbd: members,
  coordinators, history).
- aifactory_cache_age_seconds{part}, aifactory_cache_failing{part}: the cache's parts.
- aifactory_sessions{state,profile,partition}: notebook sessions pending and running (a tag
  naming no profile of the site counts as "other"); aifactory_session_longest_pending_seconds.
- aifactory_jobs_pending{reason}: every pending job, by Slurm's reason code.
- aifactory_budget_{granted,used,held,remaining}{account,unit} in the site's unit, and
  aifactory_budget_remaining_ratio{account}: what is left of the grant (0..1).
- aifactory_gpus{partition,gpu_type,state}: total, free (outside reservations), down.
- aifactory_node_drained{node}: 1 for a drained or draining node, else 0; its reason in
  aifactory_node_reason_info{node,reason}.
- aifactory_slurm_command_seconds{command} (a summary: _count, _sum) and
  aifactory_slurm_command_errors_total{command,kind}: kind is unreachable or refused.
"""

from __future__ import annotations

import time
from collections import Counter

from prometheus_client.core import (CollectorRegistry, CounterMetricFamily, GaugeMetricFamily,
                                    Metric, SummaryMetricFamily)
from prometheus_client.exposition import generate_latest

from . import slurm
from .allocations import SOURCES, Snapshot
from .availability import gpu_availability, held_nodes
from .billing import Billing
from .budget import project_budget
from .snapshot import Cached

DRAINED = {"DRAIN", "DRAINING", "DRAINED"}


def daemon_of(part: str) -> str:
    return SOURCES[part].split()[0]  # "slurmctld (squeue)" -> "slurmctld"


def _gauge(name: str, help_text: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, labels=labels)


def cache_families(parts: dict[str, Cached], now: float) -> list[Metric]:
    up = _gauge("aifactory_slurm_up", "1 while the Slurm daemon answered the last try of "
                "each cached part it serves", ["daemon"])
    latest: dict[str, Cached] = {}  # each daemon's part tried last says whether it answers
    for name, part in parts.items():
        daemon = daemon_of(name)
        if daemon not in latest or part.tried > latest[daemon].tried:
            latest[daemon] = part
    for daemon, part in sorted(latest.items()):
        up.add_metric([daemon], 0 if part.unreachable else 1)
    age = _gauge("aifactory_cache_age_seconds", "Age of each part of the cache (since the "
                 "start of the fetch that brought it; +Inf before the first answer)", ["part"])
    failing = _gauge("aifactory_cache_failing", "1 when the last refresh of a part failed",
                     ["part"])
    for name, part in sorted(parts.items()):
        age.add_metric([name], now - part.as_of if part.as_of else float("inf"))
        failing.add_metric([name], 1 if part.error else 0)
    return [up, age, failing]


def queue_families(snap: Snapshot, now: float, profiles: set[str]) -> list[Metric]:
    sessions = _gauge("aifactory_sessions", "Notebook sessions (Slurm jobs tagged as "
                      "sessions) by state, profile and partition",
                      ["state", "profile", "partition"])
    longest = _gauge("aifactory_session_longest_pending_seconds", "How long the longest-"
                     "waiting pending session has waited", ["profile", "partition"])
    pending = _gauge("aifactory_jobs_pending", "Pending jobs of everyone, by Slurm's reason",
                     ["reason"])
    counts: Counter = Counter()
    waits: dict[tuple[str, str], float] = {}
    reasons: Counter = Counter()
    for job in snap.queue.values():
        if job.pending:
            reasons[job.reason] += 1
        if not job.comment.startswith(slurm.SESSION_TAG):
            continue
        # Anyone may tag a job of theirs so: a label holds only the site's own profiles.
        profile = job.comment[len(slurm.SESSION_TAG) + 1:]
        profile = profile if profile in profiles else "other"
        key = (profile, job.partition)
        if job.pending:
            counts[("pending", *key)] += 1
            waited = max(0.0, now - job.submit_time) if job.submit_time else 0.0
            waits[key] = max(waits.get(key, 0.0), waited)
        elif job.running:
            counts[("running", *key)] += 1
    for labels, n in sorted(counts.items()):
        sessions.add_metric(list(labels), n)
    for key, waited in sorted(waits.items()):
        longest.add_metric(list(key), waited)
    for reason, n in sorted(reasons.items()):
        pending.add_metric([reason], n)
    return [sessions, longest, pending]


def budget_families(snap: Snapshot, now: float, billing: Billing) -> list[Metric]:
    amounts = {key: _gauge(f"aifactory_budget_{key}", f"Budget {key} this period, in the "
                           "site's unit", ["account", "unit"])
               for key in ("granted", "used", "held", "remaining")}
    ratio = _gauge("aifactory_budget_remaining_ratio", "What is left of the project's grant "
                   "(remaining / granted)", ["account"])
    for row in snap.shares:
        if row.user:
            continue
        project = project_budget(row, snap.history, snap.period, now, billing)
        if project["granted"] is None:
            continue  # no budget: nothing to run out of
        for key, family in amounts.items():
            family.add_metric([row.account, billing.unit], project[key])
        if project["granted"]:
            ratio.add_metric([row.account], project["remaining"] / project["granted"])
    return [*amounts.values(), ratio]


def node_families(snap: Snapshot) -> list[Metric]:
    gpus = _gauge("aifactory_gpus", "GPUs by partition and type: total, free (on usable "
                  "nodes outside reservations) and down", ["partition", "gpu_type", "state"])
    held = held_nodes(snap.reservations, set(), nodes=snap.nodes)
    for row in gpu_availability(snap.nodes, held):
        for state in ("total", "free", "down"):
            gpus.add_metric([row.partition, row.gpu_type, state], getattr(row, state))
    drained = _gauge("aifactory_node_drained", "1 for a node an admin drained (or that is "
                     "draining)", ["node"])
    # The reason apart: a new reason is a new series, and must not restart the alert's clock.
    reasons = _gauge("aifactory_node_reason_info", "Why an admin took a node out (Slurm's "
                     "Reason), for each node that has one", ["node", "reason"])
    for node in snap.nodes:
        is_drained = bool(DRAINED & set(node.flags)) or node.state in DRAINED
        drained.add_metric([node.name], 1 if is_drained else 0)
        if node.reason:
            reasons.add_metric([node.name, node.reason], 1)
    return [gpus, drained, reasons]


def command_families(commands: dict[str, slurm.CommandCount]) -> list[Metric]:
    seconds = SummaryMetricFamily("aifactory_slurm_command_seconds", "Time spent in each "
                                  "Slurm command this process ran", labels=["command"])
    errors = CounterMetricFamily("aifactory_slurm_command_errors", "Slurm commands that "
                                 "failed: their daemon unreachable, or it refused",
                                 labels=["command", "kind"])
    for command, count in sorted(commands.items()):
        seconds.add_metric([command], count.calls, count.seconds)
        errors.add_metric([command, "unreachable"], count.unreachable)
        errors.add_metric([command, "refused"], count.refused)
    return [seconds, errors]


def families(parts: dict[str, Cached], billing: Billing, profiles: set[str],
             commands: dict[str, slurm.CommandCount], now: float | None = None) -> list[Metric]:
    """Everything, from the cache's `parts`; `profiles`: the site's profile slugs."""
    now = now or time.time()
    snap = Snapshot.of(parts)
    return [*cache_families(parts, now), *queue_families(snap, now, profiles),
            *budget_families(snap, now, billing), *node_families(snap),
            *command_families(commands)]


class _Families:
    def __init__(self, found: list[Metric]):
        self.found = found

    def collect(self):
        return self.found


def exposition(found: list[Metric]) -> bytes:
    """Prometheus's text format of `found`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(found))
    return generate_latest(registry)
