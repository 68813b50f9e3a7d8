"""Courses in the hub: their groups, the instructors' rights, and who may start what.

A course (site.yaml `courses`) names two hub groups. The hub config loads them from the Unix
groups of the same names (a site's LDAP or course enrolment), and the allocations service
keeps them equal to those groups while it runs. Instructors start and stop their
participants' course sessions through the service, which checks the course, the participant
and the session's profile, then acts with its own token; in the hub itself they hold no
right over other people's servers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import grp
import shutil
import subprocess
import time
from pathlib import Path

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


def hub_groups(site: Site, log=print) -> dict[str, dict]:
    """JupyterHub `load_groups`: each course group with the members of its Unix group."""
    groups = {}
    for course in site.courses:
        for name in (course.participants, course.instructors):
            try:
                members = sorted(grp.getgrnam(name).gr_mem)
            except KeyError:
                log(f"aifactory: course {course.name}: there is no Unix group {name}; "
                    "its hub group starts empty")
                members = []
            groups[name] = {"users": members}
    return groups


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


def publish(staging: Path, target: Path) -> None:
    """Make the folder `staging` readable by everyone and put it in place of `target`."""
    for p in [staging, *staging.rglob("*")]:
        if not p.is_symlink():
            p.chmod(0o755 if p.is_dir() else 0o644)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


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


# Git material is cloned here by the hub (at most every GIT_MAX_AGE s), readable by everyone;
# sessions copy from the clone as their user.
GIT_CACHE = Path("/var/lib/aifactory/courses")
GIT_MAX_AGE = 60.0
_fetched: dict[str, float] = {}
_locks: dict[str, asyncio.Lock] = {}


async def material_folder(course: Course) -> str:
    """The folder participants copy the course material from ("" if none)."""
    if not course.material_is_git:
        return course.material
    target = GIT_CACHE / course.name
    async with _locks.setdefault(course.name, asyncio.Lock()):
        if time.monotonic() - _fetched.get(course.name, -GIT_MAX_AGE) >= GIT_MAX_AGE:
            await asyncio.to_thread(_clone, course, target)
            _fetched[course.name] = time.monotonic()
    return str(target)


def _clone(course: Course, target: Path) -> None:
    staging = target.with_name(target.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.parent.chmod(0o755)
    branch = ["--branch", course.material_ref] if course.material_ref else []
    result = subprocess.run(["git", "clone", "--quiet", "--depth", "1", *branch, "--",
                             course.material, str(staging)],
                            capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "GIT_TERMINAL_PROMPT": "0"})
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        if target.is_dir():
            return  # keep the last good copy; the session starts with it
        raise RuntimeError(f"the material of {course.display_name} could not be fetched "
                           f"({result.stderr.strip()[-200:]})")
    publish(staging, target)
