"""Budget maths, pure: from a project's line in sshare and its recent job records, what was
granted, used and held, what remains, the burn rate over the last days, when the budget runs
out and what will go unused when Slurm resets usage. Amounts are in the site's unit
(aifactory.billing), each also in GPU-hours."""

from __future__ import annotations

import datetime as dt

from .billing import Billing
from .slurm import Budget, PastJob

BURN_WINDOW_DAYS = 7


def iso(t: float | None) -> str | None:
    if not t:
        return None
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


def period_end(period: str, now: float) -> float | None:
    """When Slurm next resets usage (local time), for PriorityUsageResetPeriod `period`."""
    t = dt.datetime.fromtimestamp(now)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "DAILY":
        end = day + dt.timedelta(days=1)
    elif period == "WEEKLY":  # Slurm resets on Sunday at 00:00
        end = day + dt.timedelta(days=(6 - day.weekday()) or 7)
    elif period in ("MONTHLY", "QUARTERLY", "YEARLY"):
        step = {"MONTHLY": 1, "QUARTERLY": 3, "YEARLY": 12}[period]
        month = (t.month - 1) // step * step + step  # months since January at the next reset
        end = day.replace(year=t.year + month // 12, month=month % 12 + 1, day=1)
    else:
        return None
    return end.timestamp()


def charged_seconds_between(job: PastJob, start: float, end: float, now: float,
                            billing: Billing) -> float:
    """Unit-seconds (GPU-seconds, or billing x seconds) the job ran between start and end."""
    rate = job.gpus if billing.by_gpu else job.billing
    if not job.start_time or not rate:
        return 0.0
    job_end = job.end_time or now
    return max(0.0, min(job_end, end) - max(job.start_time, start)) * rate


def amounts(billing: Billing, **units: float | None) -> dict:
    """{name: units, name_gpu_h: GPU-hours} for amounts in the site's unit."""
    out = {}
    for name, value in units.items():
        out[name] = rounded(value)
        out[f"{name}_gpu_h"] = rounded(billing.gpu_hours(value))
    return out


def project_budget(account: Budget, history: list[PastJob], period: str,
                   now: float, billing: Billing = Billing()) -> dict:
    granted = account.granted_min / 60 if account.granted_min is not None else None
    used, held = account.used_min / 60, account.held_min / 60
    remaining = granted - used - held if granted is not None else None
    window = BURN_WINDOW_DAYS * 86400
    burned = sum(charged_seconds_between(j, now - window, now, now, billing)
                 for j in history if j.account == account.account)
    burn_per_day = burned / 3600 / BURN_WINDOW_DAYS
    end = period_end(period, now)
    exhaustion = unused = None
    if remaining is not None:
        if remaining <= 0:
            exhaustion = now
        elif burn_per_day > 0:
            exhaustion = now + remaining / burn_per_day * 86400
        if end is not None:
            unused = max(0.0, remaining - burn_per_day * (end - now) / 86400)
    if exhaustion is not None and end is not None and exhaustion > end:
        exhaustion = None  # the period ends first
    return {
        "account": account.account, "unit": billing.unit,
        **amounts(billing, granted=granted, used=used, held=held, remaining=remaining,
                  burn_per_day=burn_per_day, unused_at_period_end=unused),
        "percent_used": round((used + held) / granted * 100, 1) if granted else None,
        "exhaustion_date": iso(exhaustion),
        "period_end": iso(end),
    }


def rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
