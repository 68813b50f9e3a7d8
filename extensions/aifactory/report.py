"""Allocation answers in words: the CLI's output and the widgets' text form (same numbers)."""

from __future__ import annotations

import datetime as dt

from .billing import number
from .slurm import Node


def gpu_h(x: float | None) -> str:
    """GPU-hours as every view prints them."""
    return "no limit" if x is None else number(x)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text


def clock(epoch: float) -> str:
    """A time today, to the minute, in local time ("unknown" for none)."""
    return dt.datetime.fromtimestamp(epoch).strftime("%H:%M") if epoch else "unknown"


def time_left(seconds: float) -> str:
    """"2 h 05 min", "45 min" (never below zero)."""
    minutes = max(int(seconds // 60), 0)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def when(iso: str | None) -> str:
    """An answer's ISO time in local time, to the minute."""
    if not iso:
        return "-"
    return dt.datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")


def footer(answer: dict) -> list[str]:
    lines = [f"warning: {x}" for x in answer.get("warnings", [])]
    if answer.get("as_of"):
        lines.append(f"as of {when(answer['as_of'])} ({answer['age_s']} s old), from "
                     f"{', '.join(answer['source'])}")
    return lines


def unusable_words(nodes: list[Node]) -> str:
    """"gpu01 drained (disk failure); gpu02 down, not responding"."""
    return "; ".join(f"{n.name} {n.condition}" + (f" ({n.reason})" if n.reason else "")
                     for n in nodes)


GPU_HOURS = "GPU-hours"


def amount(row: dict, key: str, unit: str = GPU_HOURS) -> str:
    """`row[key]` in the site's unit, with GPU-hours beside where the unit is another."""
    if unit == GPU_HOURS or row.get(key) is None:
        return gpu_h(row[f"{key}_gpu_h"])
    return f"{gpu_h(row[key])} ({gpu_h(row[f'{key}_gpu_h'])} GPU-h)"


def project_rows(p: dict) -> list[tuple[str, str, str]]:
    """(label, key, value) for one project's budget."""
    runs_out = when(p["exhaustion_date"]) if p["exhaustion_date"] else (
        "not this period" if p["granted_gpu_h"] else "-")
    unit = p.get("unit", GPU_HOURS)
    short = "GPU-h" if unit == GPU_HOURS else unit
    unused = "-" if p["unused_at_period_end_gpu_h"] is None else amount(
        p, "unused_at_period_end", unit)
    return [
        (f"granted ({short})", "granted", amount(p, "granted", unit)),
        ("used this period", "used", amount(p, "used", unit)),
        ("held by running jobs", "held", amount(p, "held", unit)),
        ("remaining", "remaining", amount(p, "remaining", unit)),
        (f"burn rate, last 7 days ({short}/day)", "burn", amount(p, "burn_per_day", unit)),
        ("runs out at this rate", "runs-out", runs_out),
        ("budget period ends", "period-end", when(p["period_end"])),
        ("unused at period end at this rate", "unused", unused),
    ]


def budgets_text(answer: dict) -> str:
    lines = []
    for p in answer["projects"]:
        lines.append(f"{p['account']} ({p['role']})"
                     + (f": {p['percent_used']} % used or held" if p["granted_gpu_h"] else ""))
        lines += [f"  {label}: {value}" for label, _, value in project_rows(p)]
        unit = p.get("unit", GPU_HOURS)
        lines += [f"    {u['user']}: used {amount(u, 'used', unit)}, held "
                  f"{amount(u, 'held', unit)}" for u in p.get("users", [])]
    return "\n".join(lines) or "You are not a member of any project."


ACTIVE_HEAD = ["job", "name", "kind", "project", "state", "GPUs", "status"]
RECENT_HEAD = ["job", "name", "project", "state", "ran", "GPU-h", "CPU eff.", "walltime used",
               "ended"]


def active_cells(j: dict) -> list[str]:
    if j["reason"] is not None:  # pending: Slurm says why it waits
        status = f"{j['reason_text']} (Slurm: {j['reason']})"
        if j["estimated_start"]:
            status += f"; estimated start {when(j['estimated_start'])}"
    elif j.get("ending"):
        status = f"ending on {j['nodes']} (Slurm: {j['state']}, COMPLETING)"
    else:
        status = (f"running on {j['nodes']}, {duration(j['elapsed_s'])} elapsed, "
                  f"{duration(j['time_left_s'])} left")
    return [j["job_id"], j["name"], j["kind"], j["account"], j["state"], str(j["gpus"]), status]


def recent_cells(j: dict) -> list[str]:
    eff = "-" if j["cpu_efficiency_percent"] is None else f"{j['cpu_efficiency_percent']} %"
    wall = "-" if j["walltime_used_percent"] is None else f"{j['walltime_used_percent']} %"
    return [j["job_id"], j["name"], j["account"], j["state_text"], duration(j["elapsed_s"]),
            gpu_h(j["gpu_h"]), eff, wall, when(j["end_time"])]


def jobs_text(answer: dict) -> str:
    lines = ["pending and running:"]
    lines += ["  " + " | ".join(active_cells(j)) for j in answer["active"]] or ["  none"]
    lines.append("recently ended:")
    lines += ["  " + " | ".join(recent_cells(j)) for j in answer["recent"]] or ["  none"]
    return "\n".join(lines)


def notebook_jobs_text(answer: dict) -> str:
    """`aifactory notebook list`: a line per job, and per run of an array."""
    lines = [f"warning: {answer['warning']}"] if answer.get("warning") else []
    for job in answer["jobs"]:
        runs = job["runs"]
        lines.append(f"{job['id']} | Slurm job {job['slurm_job_id']} | {job['state'].lower()} | "
                     f"{len(runs)} run{'s' if len(runs) != 1 else ''} | {job['folder']}")
        for run in runs:
            detail = run.get("reason_text") or run.get("error") or ""
            if run.get("stopped_in_cell"):
                detail = f"stopped in cell {run['stopped_in_cell']}" + (f"; {detail}" if detail else "")
            values = ", ".join(f"{k}={v!r}" for k, v in run["parameters"].items())
            lines.append(f"  run {run['task']}: {run['state'].lower()}"
                         + (f" ({values})" if values else "") + (f": {detail}" if detail else ""))
    return "\n".join(lines) or "no notebook jobs"


def gpus_text(answer: dict) -> str:
    lines = []
    for p in answer["partitions"]:
        down = f", {p['down']} down" if p["down"] else ""
        lines.append(f"{p['partition']} {p['gpu_type'] or '-'}: {p['free']} free of "
                     f"{p['total']}{down}")
    lines += [f"node unavailable: {node_down_text(n)}" for n in answer["nodes_down"]]
    return "\n".join(lines)


def node_down_text(n: dict) -> str:
    """E.g. "gpu02 drained since 2026-11-24 12:03: disk failure (Slurm: IDLE+DRAIN)"."""
    text = f"{n['node']} {n['condition']}"
    if n.get("since"):
        text += f" since {when(n['since'])}"
    if n.get("reason"):
        text += f": {n['reason']}"
    return f"{text} (Slurm: {n['state']})"


def course_head(unit: str = GPU_HOURS) -> list[str]:
    return ["participant", "session", f"{'GPU-h' if unit == GPU_HOURS else unit} used",
            "last activity"]


def ago(iso: str | None, now: float | None = None) -> str:
    if not iso:
        return "never"
    seconds = (now or dt.datetime.now(dt.timezone.utc).timestamp()) - \
        dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    if seconds < 90:
        return "just now"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def session_words(p: dict) -> str:
    """A participant's session state in words, with Slurm's reason while pending."""
    if p["state"] == "running":
        return f"running on {p['node']}" if p["node"] else "running"
    if p["state"] == "pending" and p["reason_text"]:
        words = f"pending: {p['reason_text']} (Slurm: {p['reason']})"
        if p["estimated_start"]:
            words += f"; estimated start {when(p['estimated_start'])}"
        return words
    return p["state"]


def course_cells(p: dict, unit: str = GPU_HOURS) -> list[str]:
    return [p["user"], session_words(p), amount(p, "used", unit), ago(p["last_activity"])]


def course_summary(answer: dict) -> list[str]:
    lines = [f"{answer['display_name']} (course {answer['course']}; project {answer['account']}, "
             f"reservation {answer['reservation']})", f"  window: {answer['window_text']}"]
    if answer["time_left_s"] is not None:
        lines.append(f"  reservation time left: {duration(answer['time_left_s'])}")
    b, unit = answer["budget"], answer.get("unit", GPU_HOURS)
    if b:
        lines.append(f"  course budget ({unit}): {amount(b, 'used', unit)} used, "
                     f"{amount(b, 'held', unit)} held, {amount(b, 'remaining', unit)} left of "
                     f"{amount(b, 'granted', unit)}")
    counts = ", ".join(f"{n} {state}" for state, n in sorted(answer["counts"].items()))
    lines.append(f"  participants: {counts or 'none'}")
    return lines


def course_text(answer: dict) -> str:
    lines = course_summary(answer)
    unit = answer.get("unit", GPU_HOURS)
    lines += ["  " + " | ".join(course_cells(p, unit)) for p in answer["participants"]]
    return "\n".join(lines)


def courses_text(answer: dict) -> str:
    return "\n".join(f"{c['name']}: {c['display_name']} ({c['role']}); {c['window_text']} "
                     f"Start: {c['spawn_url']}" for c in answer["courses"]) or "You have no courses."
