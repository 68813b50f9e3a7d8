"""The daemons of the local cluster, each started once and known by its pid file.

`down` stops exactly these pids, nothing found by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .. import slurm
from .system import LOG_DIR, RUN_DIR, ClusterError, as_account, read_pid, sh, stop_pid, wait_for


@dataclass
class Service:
    name: str
    pidfile: Path
    what: str  # plain words for status
    stop_signal: int = signal.SIGTERM  # PostgreSQL's fast shutdown is SIGINT

    def pid(self) -> int | None:
        return read_pid(self.pidfile)

    def running(self) -> bool:
        return self.pid() is not None

    def stop(self) -> bool:
        return stop_pid(self.pidfile, self.name, stop_signal=self.stop_signal)


MUNGE = Service("munge", Path("/run/munge/munged.pid"), "authentication between Slurm daemons")
MARIADB = Service("mariadb", RUN_DIR / "mariadb.pid", "database behind Slurm accounting")
SLURMDBD = Service("slurmdbd", Path("/run/slurmdbd.pid"), "Slurm accounting daemon")
SLURMCTLD = Service("slurmctld", Path("/run/slurmctld.pid"), "Slurm controller (login node)")
PROXY = Service("configurable-http-proxy", RUN_DIR / "proxy.pid",
                "the proxy: https for browsers, outlives a hub restart")
HUB = Service("jupyterhub", RUN_DIR / "jupyterhub.pid", "JupyterHub")
ALLOCATIONS = Service("allocations", RUN_DIR / "allocations.pid",
                      "the allocations service: Slurm's answers for widgets and the CLI")
PROMETHEUS = Service("prometheus", RUN_DIR / "prometheus.pid",
                     "Prometheus: the operators' metrics and alerts (loopback, password)")


def slurmd(node: str) -> Service:
    return Service(f"slurmd-{node}", Path(f"/run/slurmd-{node}.pid"), f"compute node {node}")


def start_munge() -> None:
    if MUNGE.running():
        return
    run_dir = Path("/run/munge")
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "munge", "munge")
    if not Path("/etc/munge/munge.key").exists():
        sh("runuser", "-u", "munge", "--", "/usr/sbin/mungekey", "--create")
    sh("runuser", "-u", "munge", "--", "/usr/sbin/munged")
    wait_for(MUNGE.running, "munged", timeout=10)


def _mariadb_answers() -> bool:
    return sh("mariadb-admin", "--silent", "ping", check=False, timeout=10).returncode == 0


def start_mariadb() -> None:
    if MARIADB.running():
        return
    if _mariadb_answers():
        raise ClusterError("A MariaDB server not started by aifactory is already running; "
                           "stop it first or point slurmdbd at it by hand.")
    run_dir = Path("/run/mysqld")
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "mysql", "mysql")
    if not Path("/var/lib/mysql/mysql").is_dir():
        sh("mariadb-install-db", "--user=mysql", "--datadir=/var/lib/mysql", timeout=120)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    sh("start-stop-daemon", "--start", "--background", "--make-pidfile",
       "--pidfile", str(MARIADB.pidfile), "--exec", "/usr/sbin/mariadbd", "--",
       "--user=mysql", f"--log-error={LOG_DIR / 'mariadb.log'}")
    wait_for(_mariadb_answers, "MariaDB", timeout=60)


def ensure_database(password: str) -> None:
    """The accounting database and its user (idempotent; password kept in step)."""
    if not all(c.isalnum() for c in password):
        raise ClusterError("The database password must be letters and digits only.")
    sql = (
        "CREATE DATABASE IF NOT EXISTS slurm_acct_db;\n"
        f"CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '{password}';\n"
        f"ALTER USER 'slurm'@'localhost' IDENTIFIED BY '{password}';\n"
        "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';\n"
        "FLUSH PRIVILEGES;\n"
    )
    sh("mariadb", input=sql)


def _accounting_answers() -> bool:
    try:
        slurm.run(["sacctmgr", "--noheader", "list", "cluster"], timeout=10)
        return True
    except slurm.SlurmError:
        return False


def start_slurmdbd() -> None:
    if SLURMDBD.running():
        return
    sh("/usr/sbin/slurmdbd")
    wait_for(_accounting_answers, "slurmdbd", timeout=60)


def start_slurmctld() -> None:
    if SLURMCTLD.running():
        return
    sh("/usr/sbin/slurmctld")
    wait_for(slurm.ping, "slurmctld", timeout=60)


def start_slurmd(node: str) -> None:
    service = slurmd(node)
    if service.running():
        return
    Path(f"/var/spool/slurmd/{node}").mkdir(parents=True, exist_ok=True)
    sh("nsenter", f"--net=/var/run/netns/{node}", "/usr/sbin/slurmd", "-N", node)
    wait_for(service.running, f"slurmd on {node}", timeout=30)


def start_process(service: Service, argv: list[str], env: dict, cwd: Path,
                  user: str | None = None) -> None:
    """Start `argv` in the background with its own log (LOG_DIR/<name>.log) and pid file,
    as `user` (its own working folder) where one is named, else as root."""
    cwd.mkdir(parents=True, exist_ok=True)
    os.chmod(cwd, 0o700)
    as_user = {"start_new_session": True}
    if user is not None:
        as_user = as_account(user)  # a session of its own too
        os.chown(cwd, as_user["user"], as_user["group"])
    # The logs name users, jobs and nodes: root and the adm group only.
    LOG_DIR.mkdir(mode=0o750, parents=True, exist_ok=True)
    os.chmod(LOG_DIR, 0o750)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    path = LOG_DIR / f"{service.name}.log"
    log = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640), "ab")
    os.chmod(path, 0o640)
    with log:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, **as_user)
    service.pidfile.write_text(f"{proc.pid}\n")


def stop_hub() -> bool:
    """The hub alone: the proxy and the allocations service keep running."""
    return HUB.stop()
