"""What a person may see of their allocation, computed from one snapshot of Slurm.

The allocations service computes these answers from its cache for everyone; the CLI and the
widgets outside a hub compute them from a snapshot they take themselves. Either way the
answers are plain dicts (the API's JSON), so the API, the widgets and the CLI show the same
numbers. Budgets are in the site's unit (`unit`: GPU-hours on gres/gpu, or the site's
billing unit on `billing`, see aifactory.billing), each amount also in GPU-hours (`*_gpu_h`):

- granted: the project's GrpTRESMins on the site's TRES;
- used: spent this budget period, as Slurm enforces the budget (slurm.parse_sshare);
- held: what running jobs are about to spend (remaining walltime x TRES, TRESRunMins);
- remaining = granted - used - held;
- burn rate: per day over the last 7 days (from the job records), and from it the
  projected exhaustion date and what will go unused when the budget period ends.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from . import course_rules
from . import site_description as site_module
from . import slurm
from .billing import Billing
from .budget import BURN_WINDOW_DAYS, amounts, project_budget
from .budget import iso as _iso
from .budget import rounded as _round
from .snapshot import Cached
from .availability import gpu_availability, held_nodes, usable_reservations

RECENT_JOBS = 20

# Where each part of a snapshot comes from, as the answers name it.
SOURCES = {
    "queue": "slurmctld (squeue)",
    "nodes": "slurmctld (scontrol show nodes, or sinfo on 22.05)",
    "reservations": "slurmctld (scontrol show reservation)",
    "shares": "slurmctld (sshare)",
    "members": "slurmdbd (sacctmgr associations)",
    "coordinators": "slurmdbd (sacctmgr coordinators)",
    "history": "slurmdbd (sacct)",
    "period": "slurmctld (PriorityUsageResetPeriod)",
}
FETCH = {
    "queue": lambda: {j.job_id: j for j in slurm.jobs()},
    "nodes": slurm.nodes,
    "reservations": slurm.reservations,
    "shares": lambda: slurm.shares(site_billing().tres),
    "members": slurm.all_associations,
    "coordinators": slurm.coordinators,
    "history": lambda: slurm.job_history(int(time.time()) - BURN_WINDOW_DAYS * 86400),
    "period": slurm.usage_reset_period,
}


def site_billing() -> Billing:
    """How the site accounts (site.yaml `billing`); GPU-hours where there is no site file
    (a wrong one is an error: its budgets would be read on the wrong TRES)."""
    try:
        return site_module.load_cached().billing
    except OSError:
        return Billing()


class AccessError(Exception):
    """A request the viewer may not make (403) or about something that does not exist (404)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Snapshot:
    """Slurm's answers, each with the time it was fetched and the error of its last refresh."""
    parts: dict[str, object] = field(default_factory=dict)
    as_of: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def __getattr__(self, name):
        try:
            return self.parts[name]
        except KeyError:
            raise AttributeError(name) from None

    @classmethod
    def of(cls, cached: dict[str, Cached]) -> "Snapshot":
        """The parts as the caches hold them now (an empty answer where none came yet)."""
        return cls({n: EMPTY[n]() if c.last is None else c.last for n, c in cached.items()},
                   {n: c.as_of for n, c in cached.items() if c.as_of},
                   {n: c.error for n, c in cached.items() if c.error})

    @classmethod
    def take(cls, names=tuple(FETCH)) -> "Snapshot":
        """Ask Slurm directly (outside a hub): one command per part."""
        cached = parts_cache(names)
        for c in cached.values():
            try:
                c.fetch_now()
            except slurm.SlurmError:
                pass  # kept as the part's error
        return cls.of(cached)


def parts_cache(names=tuple(FETCH)) -> dict[str, Cached]:
    """One cache per part of a snapshot."""
    return {name: Cached(FETCH[name], SOURCES[name]) for name in names}


def reads(*parts: str):
    """Declares the parts of a snapshot an answer is computed from: what is asked of Slurm
    for it, and the sources and warnings it carries (`_meta`), from this one list."""
    def mark(compute):
        compute.parts = parts
        return compute
    return mark


EMPTY = {"queue": dict, "nodes": list, "reservations": dict, "shares": list, "members": dict,
         "coordinators": dict, "history": list, "period": lambda: "NONE"}


@dataclass(frozen=True)
class Viewer:
    name: str
    admin: bool = False
    groups: frozenset[str] = frozenset()


def _meta(snap: Snapshot, parts: tuple[str, ...], now: float) -> dict:
    """as_of (the oldest part), the sources, and a warning for each part Slurm did not renew."""
    times = [snap.as_of.get(p, 0) for p in parts]
    oldest = min(times) if all(times) else 0
    warnings = []
    for p in parts:
        if p in snap.errors:
            when = snap.as_of.get(p)
            age = f"numbers from {_iso(when)} ({now - when:.0f} s ago)" if when else "no numbers yet"
            warnings.append(f"{snap.errors[p]} ({SOURCES[p]}); showing {age}")
    return {"as_of": _iso(oldest), "age_s": round(now - oldest, 1) if oldest else None,
            "source": [SOURCES[p] for p in parts], "warnings": warnings}


# --- budgets ----------------------------------------------------------------------------

def roles(viewer: Viewer, snap: Snapshot, coordinator_groups: dict) -> dict[str, str]:
    """{account: "admin" | "coordinator" | "member"} for the projects `viewer` may see."""
    accounts = {b.account for b in snap.shares if not b.user}
    result = {}
    for account in sorted(accounts):
        if viewer.admin:
            result[account] = "admin"
        elif (viewer.name in snap.coordinators.get(account, [])
              or viewer.groups & set(coordinator_groups.get(account, ()))):
            result[account] = "coordinator"
        elif account in snap.members.get(viewer.name, []):
            result[account] = "member"
    return result


@reads("shares", "members", "coordinators", "history", "period")
def budgets(viewer: Viewer, snap: Snapshot, coordinator_groups: dict | None = None,
            account: str | None = None, now: float | None = None,
            billing: Billing | None = None) -> dict:
    """The projects `viewer` may see; per-user usage where they coordinate (or are admin).
    `billing`: the site's (read from site.yaml when not given), as `snap.shares` were read."""
    now = now or time.time()
    billing = billing or site_billing()
    visible = roles(viewer, snap, coordinator_groups or {})
    # Slurm with PrivateData=usage shows a plain member only their own share, not the
    # project's line: asked as them (outside the hub), its totals are not known.
    with_totals = {b.account for b in snap.shares if not b.user}
    own_share = {b.account for b in snap.shares if b.user == viewer.name}
    hidden = sorted(own_share - with_totals)
    if account is not None:
        if account in hidden:
            raise AccessError(403, private_totals(account))
        if account not in {b.account for b in snap.shares}:
            raise AccessError(404, f"There is no project '{account}'.")
        if account not in visible:
            raise AccessError(403, f"You are not a member of project '{account}'.")
        visible = {account: visible[account]}
    projects = []
    for row in snap.shares:
        if row.user or row.account not in visible:
            continue
        project = project_budget(row, snap.history, snap.period, now, billing)
        project["role"] = visible[row.account]
        if project["role"] in ("admin", "coordinator"):
            project["users"] = [{"user": u.user, **amounts(billing, used=u.used_min / 60,
                                                            held=u.held_min / 60)}
                                for u in snap.shares if u.account == row.account and u.user]
        projects.append(project)
    meta = _meta(snap, budgets.parts, now)
    meta["warnings"] += [private_totals(a) for a in hidden if account is None]
    return {**meta, "user": viewer.name, "projects": projects}


def private_totals(account: str) -> str:
    return (f"Slurm shows the totals of project {account} only to its coordinators "
            "(PrivateData=usage): run this in a hub session, where the allocations service "
            "answers, or set AIFACTORY_ALLOCATIONS_URL and JUPYTERHUB_API_TOKEN (a token from "
            "the hub's token page).")


# --- jobs -------------------------------------------------------------------------------

def kind_of(comment: str) -> str:
    if comment.startswith(slurm.SESSION_TAG):
        return "notebook session"
    if comment.startswith(slurm.DASK_TAG):
        return "Dask workers"
    if comment.startswith(slurm.NOTEBOOK_TAG):
        return "notebook job"
    return "batch job"


def job_row(job: slurm.Job, now: float) -> dict:
    gpu_type = job.gpu_type
    running = job.running
    return {
        "job_id": job.job_id, "name": job.name, "user": job.user, "account": job.account,
        "partition": job.partition, "state": job.state, "kind": kind_of(job.comment),
        "ending": job.completing and not running,
        "reason": job.reason if job.pending else None,
        "reason_text": slurm.explain_reason(job.reason, gpu_type) if job.pending
        else None,
        "estimated_start": _iso(job.start_time) if job.pending else None,
        "start_time": _iso(job.start_time) if running else None,
        "end_time": _iso(job.end_time) if running else None,
        "elapsed_s": int(now - job.start_time) if running and job.start_time else 0,
        "time_left_s": max(0, int(job.end_time - now)) if running and job.end_time else None,
        "gpus": job.gpus, "gpu_type": gpu_type, "nodes": job.nodes,
        "reservation": job.reservation or None,
        "gpu_h_so_far": _round(job.gpus * (now - job.start_time) / 3600)
        if running and job.start_time else 0.0,
        "array_job_id": job.array_job_id or None, "array_task_id": job.array_task_id,
    }


def past_job_row(job: slurm.PastJob) -> dict:
    return {
        "job_id": job.job_id, "name": job.name, "user": job.user, "account": job.account,
        "partition": job.partition, "state": job.state, "kind": kind_of(job.comment),
        "state_text": slurm.END_STATES.get(job.state, job.state.lower()),
        "end_time": _iso(job.end_time), "elapsed_s": job.elapsed_s, "gpus": job.gpus,
        "gpu_h": _round(job.gpus * job.elapsed_s / 3600),
        # Efficiency: CPU time used of CPU time held, and walltime used of walltime asked.
        "cpu_efficiency_percent": round(100 * job.cpu_time_s / (job.elapsed_s * job.cpus), 1)
        if job.elapsed_s and job.cpus else None,
        "walltime_used_percent": round(100 * job.elapsed_s / (job.time_limit_min * 60), 1)
        if job.time_limit_min and job.time_limit_min != slurm.UNLIMITED else None,
        "array_job_id": job.array_job_id or None, "array_task_id": job.array_task_id,
    }


@reads("queue", "history")
def jobs(viewer: Viewer, snap: Snapshot, user: str | None = None,
         now: float | None = None) -> dict:
    """`user`'s active jobs and recent finished ones (only admins may name someone else)."""
    now = now or time.time()
    user = user or viewer.name
    if user != viewer.name and not viewer.admin:
        raise AccessError(403, "You may see only your own jobs.")
    active = sorted((j for j in snap.queue.values()
                     if j.user == user and j.alive), key=lambda j: int(j.job_id))
    ended = sorted((j for j in snap.history if j.user == user and j.end_time
                    and not j.alive), key=lambda j: -j.end_time)
    return {**_meta(snap, jobs.parts, now), "user": user,
            "active": [job_row(j, now) for j in active],
            "recent": [past_job_row(j) for j in ended[:RECENT_JOBS]]}


@reads("queue")
def job(viewer: Viewer, snap: Snapshot, job_id: str, now: float | None = None) -> dict:
    """One active job of the viewer's (admins: anyone's)."""
    now = now or time.time()
    found = snap.queue.get(job_id)
    if found is None or not found.alive:
        raise AccessError(404, f"There is no active job {job_id}.")
    if found.user != viewer.name and not viewer.admin:
        # Same answer as for a job that does not exist: do not tell who runs what.
        raise AccessError(404, f"There is no active job {job_id}.")
    return {**_meta(snap, job.parts, now), "job": job_row(found, now)}


# --- GPUs -------------------------------------------------------------------------------

@reads("nodes", "reservations", "members")
def gpus(viewer: Viewer, snap: Snapshot, now: float | None = None) -> dict:
    """Free and total GPUs per partition and type (free for this viewer), and nodes down."""
    now = now or time.time()
    mine = usable_reservations(snap.reservations, viewer.name, snap.members.get(viewer.name, []))
    held = held_nodes(snap.reservations, mine, nodes=snap.nodes)
    down = [{"node": n.name, "state": "+".join((n.state,) + n.flags), "condition": n.condition,
             "reason": n.reason, "since": _iso(n.reason_time)}
            for n in snap.nodes if not n.usable]
    return {**_meta(snap, gpus.parts, now),
            "partitions": [asdict(a) for a in gpu_availability(snap.nodes, held)],
            "nodes_down": down}


# --- courses ----------------------------------------------------------------------------

@reads("reservations")
def courses_list(viewer: Viewer, snap: Snapshot, site_courses, now: float | None = None,
                 hub_url: str = "/hub/") -> dict:
    """The courses `viewer` teaches or takes: window and spawn link (under `hub_url`)."""
    now = now or time.time()
    rows = []
    for c in site_courses:
        if role := course_rules.role(c, viewer.groups, viewer.admin):
            rows.append(course_rules.summary(c, role, snap.reservations, now, hub_url))
    return {**_meta(snap, courses_list.parts, now), "user": viewer.name, "courses": rows}


def participant_row(name: str, model: dict | None, snap: Snapshot, course, now: float,
                    billing: Billing = Billing()) -> dict:
    """One participant: session state (from the hub and Slurm), GPU-hours, last activity."""
    model = model or {}
    server = (model.get("servers") or {}).get("")
    had_course_session = bool(server) and (server.get("user_options") or {}).get(
        "profile") == course.profile
    if server and server.get("stopped"):
        server = None

    def course_session(j) -> bool:
        return (j.user == name and j.account == course.account
                and j.comment.startswith(slurm.SESSION_TAG))

    sessions = sorted((j for j in snap.queue.values()
                       if course_session(j) and j.alive),
                      key=lambda j: int(j.job_id))
    job = sessions[-1] if sessions else None
    if server and server.get("ready"):
        state = "running"
    elif server and server.get("pending") == "stop":
        state = "stopping"
    elif (server and server.get("pending")) or (job and job.pending):
        state = "pending"
    elif had_course_session or any(course_session(j) for j in snap.history):
        state = "stopped"
    else:
        state = "not started"
    usage = next((u for u in snap.shares if u.account == course.account and u.user == name), None)
    row = {"user": name, "state": state, "job_id": job.job_id if job else None,
           "node": job.nodes if job and job.nodes else None,
           "reason": None, "reason_text": None, "estimated_start": None,
           **amounts(billing, used=usage.used_min / 60 if usage else 0.0,
                     held=usage.held_min / 60 if usage else 0.0),
           "last_activity": model.get("last_activity"),
           "in_hub": bool(model)}
    if job and job.pending:
        info = job_row(job, now)
        row.update(reason=info["reason"], reason_text=info["reason_text"],
                   estimated_start=info["estimated_start"])
    return row


@reads("queue", "shares", "reservations", "history", "period")
def course(viewer: Viewer, snap: Snapshot, c, participants: list[str],
           hub_users: dict[str, dict], now: float | None = None,
           billing: Billing | None = None, hub_url: str = "/hub/") -> dict:
    """The instructor's view of course `c`: participants, the window, the course budget, the
    spawn link (under `hub_url`)."""
    now = now or time.time()
    billing = billing or site_billing()
    if course_rules.role(c, viewer.groups, viewer.admin) not in ("admin", "instructor"):
        raise AccessError(403, f"You do not teach {c.display_name}.")
    window = course_rules.window(c, snap.reservations, now)
    budget_row = next((b for b in snap.shares if b.account == c.account and not b.user), None)
    rows = [participant_row(name, hub_users.get(name), snap, c, now, billing)
            for name in sorted(participants)]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return {**_meta(snap, course.parts, now),
            "course": c.name, "display_name": c.display_name, "account": c.account,
            "reservation": c.reservation, "profile": c.profile,
            "spawn_url": c.spawn_url(hub_url),
            "window": window["state"], "window_text": window["text"],
            "window_start": _iso(window["starts"]), "window_end": _iso(window["ends"]),
            "time_left_s": window["time_left_s"],
            "unit": billing.unit,
            "budget": project_budget(budget_row, snap.history, snap.period, now, billing)
            if budget_row else None,
            "counts": counts, "participants": rows}
