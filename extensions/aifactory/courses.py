"""Courses in the hub, its I/O: the course groups from Unix groups, and git material.

A course (site.yaml `courses`) names two hub groups. The hub config loads them from the Unix
groups of the same names (a site's LDAP or course enrolment), and the allocations service
keeps them equal to those groups while it runs. Instructors start and stop their
participants' course sessions through the service, which checks the course, the participant
and the session's profile, then acts with its own token; in the hub itself they hold no
right over other people's servers.
"""

from __future__ import annotations

import asyncio
import grp
import shutil
import subprocess
import time
from pathlib import Path

from .site_description import Course, Site


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


def publish(staging: Path, target: Path) -> None:
    """Make the folder `staging` readable by everyone and put it in place of `target`."""
    for p in [staging, *staging.rglob("*")]:
        if not p.is_symlink():
            p.chmod(0o755 if p.is_dir() else 0o644)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


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
