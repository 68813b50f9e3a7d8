"""What the JupyterLab extension shows, computed from the allocations service's answers (pure).

The session server (aifactory.lab.handlers) calls these with the service's `jobs`, `budgets`
and `gpus` answers; the browser only displays what they return, so the status bar, the side
panel, the widgets and `aifactory jobs` show the same numbers.
"""

from __future__ import annotations

import datetime as dt

from ..slurm import END_STATES

# Minutes before the walltime at which JupyterLab warns (each once per page).
WARN_AT_MIN = (15, 5)


def _epoch(iso: str | None) -> float | None:
    return dt.datetime.fromisoformat(iso).timestamp() if iso else None


def duration(seconds: float) -> str:
    """Time left in words a status bar can hold: "1 h 05 min", "12 min", "40 s"."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def amount(value: float | None, unit: str) -> str:
    if value is None:
        return "no limit"
    return f"{value:,.1f} {unit}"


def status(session_job_id: str, jobs: dict, budgets: dict, gpus: dict, now: float) -> dict:
    """The session, its project's budget, the person's other jobs and the free GPUs."""
    active = jobs.get("active", [])
    session = next((j for j in active if j["job_id"] == session_job_id), None)
    others = [j for j in active if j["job_id"] != session_job_id]
    end = _epoch(session.get("end_time")) if session else None
    account = session["account"] if session else None
    project = next((p for p in budgets.get("projects", []) if p["account"] == account), None)
    running = sum(1 for j in others if j["state"] == "RUNNING")
    waiting = sum(1 for j in others if j["state"] == "PENDING")
    left = max(0, end - now) if end else None
    warnings = list(dict.fromkeys(w for a in (jobs, budgets, gpus) for w in a.get("warnings", [])))
    parts = []
    if left is not None:
        parts.append(f"{duration(left)} left")
    if project:
        parts.append(f"{account}: {amount(project.get('remaining'), project['unit'])} left")
    parts.append(f"jobs: {running} running, {waiting} waiting")
    return {
        "now": now,
        "as_of": min((a["as_of"] for a in (jobs, budgets, gpus) if a.get("as_of")), default=None),
        "session": None if session is None else {
            "job_id": session_job_id, "account": account, "state": session["state"],
            "end_time": session.get("end_time"), "time_left_s": None if left is None else int(left),
            "gpus": session.get("gpus", 0), "gpu_type": session.get("gpu_type") or "",
            "partition": session.get("partition"), "reservation": session.get("reservation")},
        "budget": None if project is None else {
            "account": account, "remaining": project.get("remaining"),
            "granted": project.get("granted"), "unit": project["unit"],
            "text": amount(project.get("remaining"), project["unit"])},
        "counts": {"running": running, "waiting": waiting},
        "jobs": others,
        "recent": jobs.get("recent", [])[:10],
        "projects": budgets.get("projects", []),
        "gpus": gpus.get("partitions", []),
        "text": " · ".join(parts),
        "warn_at_min": list(WARN_AT_MIN),
        "warnings": warnings,
        "unreachable": next((w for w in warnings if "unreachable" in w), None),
    }


def unreachable(message: str, now: float) -> dict:
    """What the extension gets when the service did not answer: a sentence, no numbers."""
    return {"now": now, "as_of": None, "session": None, "budget": None, "counts": None,
            "jobs": [], "recent": [], "projects": [], "gpus": [], "warnings": [message],
            "text": "scheduler unreachable", "warn_at_min": list(WARN_AT_MIN),
            "unreachable": message}


def ending(job_id: str, state: str | None, end_time: float | None, now: float) -> dict:
    """Why the session's job is ending, told to the open tabs before its server stops.
    `state`: the job's base state as Slurm gave it when the server was signalled (None when
    Slurm did not answer)."""
    if state in END_STATES:
        why = END_STATES[state]
    elif end_time is not None and now >= end_time - 90:
        why, state = END_STATES["TIMEOUT"], "TIMEOUT"
    else:
        why = "was stopped"
    return {"job_id": job_id, "state": state, "at": now,
            "short": f"This session (Slurm job {job_id}) {why}.",  # a notification's length
            "text": f"This session (Slurm job {job_id}) {why}; its server has stopped. Your "
                    f"files are kept in your home; start a new session from the hub."}
