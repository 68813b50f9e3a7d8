"""The system accounts our services run as instead of root (bring-up, root).

Today the allocations service: a system user of its own, Slurm's AdminLevel Operator (the
least level that shows it every job, usage and reservation past PrivateData, and lets it
cancel for an admin), no job of its own (MaxSubmitJobs=0), and one sudo rule: `scancel JOBID`
as a person of the site's users group, so that Slurm checks the job is theirs. The hub still
runs as root (it submits each person's session as them).
"""

from __future__ import annotations

import grp
import pwd
import shutil
import subprocess
from pathlib import Path

from .. import slurm
from .system import ClusterError, ensure_system_user, write_if_changed

SERVICE_USER = "aifactory-allocations"
SUDOERS = Path("/etc/sudoers.d/aifactory")
SYSTEM_UID_MAX = 999  # Debian's: below 1000 are system accounts
# Slurm's job ids as the service sends them (names.JOB_OR_TASK_ID_RE), for sudo's regex.
JOB_ID = r"^[0-9]{1,12}(_[0-9]{1,12})?$"


def sudoers(people_group: str, scancel: str) -> str:
    """The rules: what each service account may run, as whom. No SETENV (so no -E and no
    VAR=value), env_reset with nothing kept, commands from a fixed PATH."""
    return "\n".join([
        "# Written by `aifactory cluster up` (aifactory.cluster.unprivileged); checked with "
        "visudo.",
        "# The allocations service cancels a person's job as that person (Slurm checks it "
        "is theirs).",
        f"Defaults:{SERVICE_USER} env_reset, !setenv, "
        'secure_path="/usr/sbin:/usr/bin:/sbin:/bin"',
        f"Runas_Alias AIFACTORY_PEOPLE = %{people_group}, !root",
        f"{SERVICE_USER} ALL = (AIFACTORY_PEOPLE) NOPASSWD: {scancel} {JOB_ID}",
        ""])


def ensure_slurm_operator(name: str) -> None:
    """AdminLevel Operator under the root account, and no job of its own."""
    rows = slurm.sacctmgr_list("association", f"user={name}", fields=["Account", "MaxSubmit"])
    if not rows:
        slurm.sacctmgr("add", "user", name, "account=root", "MaxSubmitJobs=0")
    elif any(r["maxsubmit"] != "0" for r in rows):
        slurm.sacctmgr("modify", "user", "where", f"name={name}", "set", "MaxSubmitJobs=0")
    if slurm.admin_level(name) != "Operator":
        slurm.sacctmgr("modify", "user", "where", f"name={name}", "set", "AdminLevel=Operator")


def check_people_group(group: str) -> None:
    """Sudo lets our services act as the group's members: never root or a system account."""
    members = grp.getgrnam(group).gr_mem
    system = sorted(m for m in members if pwd.getpwnam(m).pw_uid <= SYSTEM_UID_MAX)
    if system:
        raise ClusterError(f"The users group {group} holds system accounts ({', '.join(system)}); "
                           "aifactory's services may act as its members, so take them out.")


def install_sudoers(people_group: str) -> bool:
    scancel = shutil.which(slurm.command_path("scancel"))
    if scancel is None:
        raise ClusterError("scancel is not installed.")
    text = sudoers(people_group, scancel)
    if SUDOERS.exists() and SUDOERS.read_text() == text:
        return False
    candidate = SUDOERS.with_name(".aifactory.new")  # sudo skips names with a dot
    write_if_changed(candidate, text, 0o440)
    checked = subprocess.run(["visudo", "-c", "-q", "-f", str(candidate)], capture_output=True,
                             text=True)
    if checked.returncode != 0:
        candidate.unlink()
        raise ClusterError("visudo refuses aifactory's sudo rules: "
                           + (checked.stderr or checked.stdout).strip())
    candidate.replace(SUDOERS)
    return True


def ensure(people_group: str) -> None:
    ensure_system_user(SERVICE_USER)
    check_people_group(people_group)
    ensure_slurm_operator(SERVICE_USER)
    install_sudoers(people_group)


def install_for(user: str, folder: Path, files: dict[str, str]) -> None:
    """Files a service reads and cannot change: root's, its group's to read (0440), in a
    folder of the same (0750)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.chown(folder, "root", user)
    folder.chmod(0o750)
    for name, text in files.items():
        path = folder / name
        write_if_changed(path, text, 0o400)
        shutil.chown(path, "root", user)
        path.chmod(0o440)
