"""Courses' rules: who stands how to a course, who may start what for whom, the rights a
course gives in the hub, and its time window from its reservation. Pure: computed from the
site description and Slurm's reservations handed in (the hub, the service and the spawner
call it; `courses` does the hub's I/O for courses).
"""

from __future__ import annotations

import datetime as dt
import time

from .site_description import Course, Site


def instructor_scopes(course: Course) -> list[str]:
    """What instructors hold in the hub themselves: seeing their participants' activity.
    Starting and stopping course sessions goes through the allocations service, which checks
    that it is the course's session (a hub scope cannot say which server)."""
    return [f"read:users:activity!group={course.participants}"]


def service_scopes(site: Site) -> list[str]:
    """The allocations service's rights for courses: participants' servers (it acts for
    instructors after its own checks) and the course groups (kept as the Unix groups)."""
    scopes = []
    for c in site.courses:
        scopes += [f"servers!group={c.participants}", f"groups!group={c.participants}",
                   f"groups!group={c.instructors}"]
    return scopes


def hub_roles(site: Site) -> list[dict]:
    """JupyterHub `load_roles`: one role per course, held by its instructors' group."""
    return [{"name": f"instructor-{c.name}", "description": f"Instructors of {c.display_name}",
             "groups": [c.instructors], "scopes": instructor_scopes(c)} for c in site.courses]


def session_token_scopes(site: Site) -> list[str]:
    """Scopes a session token asks for beyond the basics. The hub grants each only to users
    who hold it already (instructors), so other people's tokens get none of these."""
    return [s for c in site.courses for s in instructor_scopes(c)]


def may_start_for(site: Site, requester_groups, user_groups, profile: str) -> bool:
    """May someone (not an admin) start `profile` for another user? Only an instructor, only
    their course's profile, only for that course's participants."""
    course = next((c for c in site.courses if c.profile == profile), None)
    return (course is not None and course.instructors in set(requester_groups)
            and course.participants in set(user_groups))


def role(course: Course, groups, admin: bool = False) -> str | None:
    """How someone stands to a course: admin, instructor, participant, or not at all."""
    if admin:
        return "admin"
    if course.instructors in groups:
        return "instructor"
    if course.participants in groups:
        return "participant"
    return None


def summary(course: Course, role: str, reservations: dict | None, now: float | None = None,
            base_url: str = "/hub/") -> dict:
    """A course in someone's list of courses: their role, its window, its spawn link
    (window "" when the reservations are not known yet)."""
    w = (window(course, reservations, now) if reservations is not None
         else {"state": "", "text": ""})
    return {"name": course.name, "display_name": course.display_name, "role": role,
            "account": course.account, "reservation": course.reservation,
            "window": w["state"], "window_text": w["text"],
            "spawn_url": course.spawn_url(base_url)}


def window(course: Course, reservations: dict, now: float | None = None) -> dict:
    """The course's time window from its reservation: open, not yet open, or over."""
    now = now or time.time()
    res = reservations.get(course.reservation)
    if res is None:
        return {"state": "closed", "starts": None, "ends": None, "time_left_s": None,
                "text": f"{course.display_name} has no reservation now (it has ended or is "
                        "not made yet)."}
    starts, ends = res.start, res.end
    if res.active(now):
        left = max(0, int(ends - now)) if ends else None
        return {"state": "open", "starts": starts, "ends": ends, "time_left_s": left,
                "text": f"Open until {_when(ends, now)}." if ends else "Open."}
    return {"state": "not yet", "starts": starts, "ends": ends, "time_left_s": None,
            "text": f"{course.display_name} opens at {_when(starts, now)}; you can start a "
                    "session in it then."}


def _when(epoch: float | None, now: float) -> str:
    if not epoch:
        return "a time not known yet"
    at = dt.datetime.fromtimestamp(epoch).strftime("%a %d %b %Y %H:%M")
    ahead = epoch - now
    if ahead >= 2 * 86400:
        return f"{at} (in {ahead / 86400:.0f} days)"
    if ahead >= 3600:
        return f"{at} (in {ahead / 3600:.0f} h)"
    return f"{at} (in {max(ahead, 0) / 60:.0f} min)"
