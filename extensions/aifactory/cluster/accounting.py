"""Apply the demo description to Slurm accounting and to Unix, idempotently.

Adds and updates; never deletes. The demo file gives budgets in GPU-hours; they are held as
GrpTRESMins=gres/gpu=<minutes>, or where the site bills in units as GrpTRESMins=billing=
<GPU-hours x units_per_gpu_hour x 60> (the other TRES's limit is cleared).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import shutil
from pathlib import Path

from .. import courses, slurm
from ..billing import Billing
from .demo import Demo
from .system import STATE_DIR, sh, write_if_changed

PASSWORDS = STATE_DIR / "demo-passwords.json"


def ensure_cluster(demo: Demo) -> None:
    """The cluster must be known to slurmdbd before slurmctld registers with it."""
    clusters = {r["cluster"] for r in slurm.sacctmgr_list("cluster", fields=["Cluster"])}
    if demo.cluster not in clusters:
        slurm.sacctmgr("add", "cluster", demo.cluster)


def budget_limit(gpu_hours: int, billing: Billing) -> tuple[str, str]:
    """(GrpTRESMins as sacctmgr lists it, as it is set: clearing the other TRES)."""
    if billing.by_gpu:
        limit = f"gres/gpu={gpu_hours * 60}"
        return limit, f"{limit},billing=-1"
    limit = f"billing={round(gpu_hours * billing.units_per_gpu_hour * 60)}"
    return limit, f"gres/gpu=-1,{limit}"


def apply_accounts(demo: Demo, billing: Billing = Billing()) -> None:
    """Accounts, budgets, users, coordinators. Needs slurmctld registered (it creates the
    gres/gpu TRES in the database that budgets refer to)."""

    existing = {r["account"]: r for r in slurm.sacctmgr_list(
        "account", fields=["Account", "Descr", "Org"])}
    limits = {r["account"]: r["grptresmins"] for r in slurm.sacctmgr_list(
        "association", f"cluster={demo.cluster}", "user=", fields=["Account", "User", "GrpTRESMins"])
        if not r["user"]}
    for a in demo.accounts:
        if a.name not in existing:
            slurm.sacctmgr("add", "account", a.name, f"Cluster={demo.cluster}",
                           f"Description={a.description}", f"Organization={a.kind}")
        elif ((existing[a.name]["descr"], existing[a.name]["org"])
              != (a.description.lower(), a.kind)):  # sacctmgr keeps descriptions lower-case
            slurm.sacctmgr("modify", "account", "where", f"name={a.name}", "set",
                           f"Description={a.description}", f"Organization={a.kind}")
        listed, setting = budget_limit(a.gpu_hours, billing)
        if limits.get(a.name) != listed:
            slurm.sacctmgr("modify", "account", "where", f"name={a.name}",
                           f"cluster={demo.cluster}", "set", f"GrpTRESMins={setting}")

    associations = {(r["account"], r["user"]) for r in slurm.sacctmgr_list(
        "association", f"cluster={demo.cluster}", fields=["Account", "User"]) if r["user"]}
    users = {r["user"]: r for r in slurm.sacctmgr_list(
        "user", "withcoord", fields=["User", "DefaultAccount", "Coordinators"])}
    for u in demo.users:
        mine = [a.name for a in demo.accounts if u.name in a.users]
        if u.name not in users:
            slurm.sacctmgr("add", "user", u.name, f"Cluster={demo.cluster}",
                           f"DefaultAccount={u.default_account}", f"Account={','.join(mine)}")
            continue
        missing = [a for a in mine if (a, u.name) not in associations]
        if missing:
            slurm.sacctmgr("add", "user", u.name, f"Cluster={demo.cluster}",
                           f"Account={','.join(missing)}")
        if users[u.name]["defaultaccount"] != u.default_account:
            slurm.sacctmgr("modify", "user", "where", f"name={u.name}", "set",
                           f"DefaultAccount={u.default_account}")

    for a in demo.accounts:
        for c in a.coordinators:
            have = users.get(c, {}).get("coordinators", "").split(",")
            if a.name not in have:
                slurm.sacctmgr("add", "coordinator", f"Account={a.name}", f"Names={c}")


def apply_reservations(demo: Demo) -> None:
    current = slurm.reservations()
    for r in demo.reservations:
        if r.name in current:
            continue
        start = f"now+{r.starts_in_days}days" if r.starts_in_days else "now"
        slurm.scontrol("create", "reservation", f"ReservationName={r.name}", f"StartTime={start}",
                       f"Duration={r.days}-00:00:00", f"Nodes={','.join(r.nodes)}",
                       f"Accounts={r.account}", "Flags=IGNORE_JOBS")


def _passwords() -> dict[str, str]:
    try:
        return json.loads(PASSWORDS.read_text())
    except (OSError, ValueError):
        return {}


def apply_unix_users(demo: Demo) -> dict[str, str]:
    """Create the login group and the demo users; returns {user: password}."""
    try:
        grp.getgrnam(demo.login_group)
    except KeyError:
        sh("groupadd", demo.login_group)
    passwords = _passwords()
    for u in demo.users:
        try:
            pwd.getpwnam(u.name)
        except KeyError:
            sh("useradd", "--create-home", "--shell", "/bin/bash", "--groups",
               demo.login_group, u.name)
            passwords.pop(u.name, None)
        # A home is its user's alone (useradd follows login.defs, often 0755).
        os.chmod(pwd.getpwnam(u.name).pw_dir, 0o700)
        if u.name not in [m for m in grp.getgrnam(demo.login_group).gr_mem]:
            sh("usermod", "--append", "--groups", demo.login_group, u.name)
        if u.name not in passwords:
            passwords[u.name] = secrets.token_urlsafe(9)
            sh("chpasswd", input=f"{u.name}:{passwords[u.name]}\n")
    write_if_changed(PASSWORDS, json.dumps(passwords, indent=1, sort_keys=True) + "\n", 0o600)
    return {u.name: passwords[u.name] for u in demo.users}


def apply_unix_groups(demo: Demo) -> None:
    """The demo's groups with exactly the members listed (the hub reads course groups here)."""
    for name, members in demo.groups.items():
        try:
            have = sorted(grp.getgrnam(name).gr_mem)
        except KeyError:
            sh("groupadd", name)
            have = []
        if have != sorted(members):
            sh("gpasswd", "--members", ",".join(members), name)


def install_material(demo: Demo, site, checkout: Path) -> None:
    """Copy the demo's course material from the checkout to the folders its courses name."""
    for course_name, folder in demo.material.items():
        # check_inputs made sure each course exists and has a material folder
        source, target = checkout / folder, Path(site.course(course_name).material)
        if not source.is_dir():
            continue  # an installed hub_config without its checkout: keep what is there
        staging = target.with_name(target.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging, ignore=shutil.ignore_patterns(
            ".ipynb_checkpoints", "__pycache__"))
        courses.publish(staging, target)
        target.parent.chmod(0o755)


def fake_gpu_devices(count: int) -> None:
    """Device files Slurm hands out as GPUs (character device 1:3, like /dev/null)."""
    for i in range(count):
        dev = Path(f"/dev/fakegpu{i}")
        if not dev.exists():
            sh("mknod", "-m", "666", str(dev), "c", "1", "3")
