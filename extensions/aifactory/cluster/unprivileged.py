"""The system accounts our services run as instead of root (bring-up, root).

- The hub (`aifactory-hub`): Slurm's AdminLevel Operator (the least level that shows it every
  job and usage past PrivateData), no job of its own (MaxSubmitJobs=0), and two sudo rules:
  `sbatch --parsable` (the script on stdin) and `scancel JOBID`, as a person of the site's
  users group, so that each session is that person's job and Slurm checks a cancel is theirs.
- The allocations service (`aifactory-allocations`): the same level, and `scancel JOBID` only.
- The proxy (`aifactory-proxy`): no Slurm, no sudo; it reads its certificates from its folder.
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
HUB_USER = "aifactory-hub"
PROXY_USER = "aifactory-proxy"
SUDOERS = Path("/etc/sudoers.d/aifactory")
SYSTEM_UID_MAX = 999  # Debian's: below 1000 are system accounts
# Slurm's job ids as the service sends them (names.JOB_OR_TASK_ID_RE), for sudo's regex.
JOB_ID = r"^[0-9]{1,12}(_[0-9]{1,12})?$"


def sudoers(people_group: str, sbatch: str, scancel: str) -> str:
    """The rules: what each service account may run, as whom. No SETENV (so no -E, and no
    VAR=value but of a kept variable), env_reset, commands from a fixed PATH. The hub keeps
    only its sessions' own variables (slurm.SESSION_ENV_KEPT: their token and the hub's URLs,
    which sbatch hands to the job, and which Slurm shows nobody, unlike the script), and what
    it submits is created 0077 (sbatch hands its umask to the job's log and files)."""
    defaults = 'env_reset, !setenv, secure_path="/usr/sbin:/usr/bin:/sbin:/bin"'
    kept = " ".join(slurm.SESSION_ENV_KEPT)
    return "\n".join([
        "# Written by `aifactory cluster up` (aifactory.cluster.unprivileged); checked with "
        "visudo.",
        "# The hub submits each person's session as that person; the hub and the allocations",
        "# service cancel a person's job as that person (Slurm checks it is theirs).",
        # Its environment carries the session's TLS key (aifactory.spawner.certs): into no
        # sudo log (a JSON event log records it, an I/O log the script).
        f'Defaults:{HUB_USER} {defaults}, umask=0077, env_keep = "{kept}", '
        "!log_input, !log_output, log_format=sudo",
        f"Defaults:{SERVICE_USER} {defaults}",
        # People only: not root, and nobody who may become root through sudo themselves.
        f"Runas_Alias AIFACTORY_PEOPLE = %{people_group}, !root, !%sudo",
        f"{HUB_USER} ALL = (AIFACTORY_PEOPLE) NOPASSWD: {sbatch} --parsable, "
        f"{scancel} {JOB_ID}",
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
    entry = grp.getgrnam(group)
    members = set(entry.gr_mem) | {p.pw_name for p in pwd.getpwall() if p.pw_gid == entry.gr_gid}
    system = sorted(m for m in members if pwd.getpwnam(m).pw_uid <= SYSTEM_UID_MAX)
    if system:
        raise ClusterError(f"The users group {group} holds system accounts ({', '.join(system)}); "
                           "aifactory's services may act as its members, so take them out.")


def _installed(command: str) -> str:
    found = shutil.which(slurm.command_path(command))
    if found is None:
        raise ClusterError(f"{command} is not installed.")
    return found


def install_sudoers(people_group: str) -> bool:
    text = sudoers(people_group, _installed("sbatch"), _installed("scancel"))
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
    for account in (HUB_USER, SERVICE_USER, PROXY_USER):
        ensure_system_user(account)
    check_people_group(people_group)
    for account in (HUB_USER, SERVICE_USER):
        ensure_slurm_operator(account)
    install_sudoers(people_group)


def install_for(user: str, folder: Path, files: dict[str, str], only: bool = False) -> None:
    """Files a service reads and cannot change: root's, its group's to read (0440), in a
    folder of the same (0750). With `only`, these are all it is given: others there go (a
    client secret of a login it no longer uses)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.chown(folder, "root", user)
    folder.chmod(0o750)
    for name, text in files.items():
        path = folder / name
        write_if_changed(path, text, 0o400)
        shutil.chown(path, "root", user)
        path.chmod(0o440)
    if only:
        for path in folder.iterdir():
            if path.name not in files:
                path.unlink()
