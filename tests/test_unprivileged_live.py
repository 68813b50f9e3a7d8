"""The allocations service without root, attacked from its own account.

With its account taken over, what can an attacker do? The tests run as that account what
they would try: sudo as root or another system account, another command, other arguments, an
environment that changes what runs; submit jobs; read people's files and the hub's secrets.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import submit, wait_until

from aifactory import slurm
from aifactory.cluster import hub, services, unprivileged

ACCOUNT = unprivileged.SERVICE_USER
SCANCEL = "/usr/bin/scancel"


def as_service(*command: str, env: dict | None = None) -> subprocess.CompletedProcess:
    prefix = ["env", *(f"{k}={v}" for k, v in env.items())] if env else []
    return subprocess.run(["runuser", "-u", ACCOUNT, "--", *prefix, *command],
                          capture_output=True, text=True, cwd="/tmp", timeout=60)


@pytest.fixture
def alices_job(live_cluster):
    job = submit("alice", "-A", "proj-climate", "-p", "cpu", "-t", "5", script="sleep 300")
    yield job
    try:
        slurm.cancel(job)
    except slurm.SlurmError:
        pass


def test_the_service_runs_as_its_own_account(live_cluster):
    owner = subprocess.run(["ps", "-o", "user=", "-p", str(services.ALLOCATIONS.pid())],
                           capture_output=True, text=True).stdout.strip()
    assert owner == ACCOUNT
    # ps names a uid's user by up to 8 characters; ask by uid too.
    import pwd
    uid = Path(f"/proc/{services.ALLOCATIONS.pid()}").stat().st_uid
    assert pwd.getpwuid(uid).pw_name == ACCOUNT and uid != 0


def test_sudo_lists_exactly_one_rule_scancel_of_a_job_id_as_a_person(live_cluster):
    listed = as_service("sudo", "-n", "-l")
    assert listed.returncode == 0, listed.stderr
    rules = listed.stdout.split("may run the following commands on")[1].splitlines()[1:]
    rules = " ".join(r.strip() for r in rules if r.strip())
    assert rules == (f"(%aifactory-users, !root) NOPASSWD: {SCANCEL} "
                     f"{unprivileged.JOB_ID}"), rules


@pytest.mark.parametrize("attempt,refusal", [
    (["-u", "root", SCANCEL, "1"], "password is required"),
    (["-u", "slurm", SCANCEL, "1"], "password is required"),
    (["-u", "aifactory-idp", SCANCEL, "1"], "password is required"),
    (["-u", "postgres", SCANCEL, "1"], "password is required"),
    (["-u", "alice", "/usr/bin/sbatch", "--wrap", "id"], "password is required"),
    (["-u", "alice", "/bin/sh", "-c", "id"], "password is required"),
    (["-u", "alice", SCANCEL, "--user=alice"], "password is required"),
    (["-u", "alice", SCANCEL, "1", "--signal=KILL"], "password is required"),
    (["-u", "alice", SCANCEL, "1 2"], "password is required"),
    (["-E", "-u", "alice", SCANCEL, "1"], "not allowed to preserve the environment"),
    (["--preserve-env=SLURM_CONF", "-u", "alice", SCANCEL, "1"], "not allowed to set"),
    (["-u", "alice", "LD_PRELOAD=/tmp/x.so", SCANCEL, "1"], "not allowed to set"),
    (["-u", "alice", "BASH_ENV=/tmp/x", SCANCEL, "1"], "not allowed to set"),
    (["-u", "alice", "SLURM_CONF=/tmp/slurm.conf", SCANCEL, "1"], "not allowed to set"),
    (["-u", "alice", "PATH=/tmp", SCANCEL, "1"], "not allowed to set"),
])
def test_sudo_refuses_everything_else(live_cluster, attempt, refusal):
    tried = as_service("sudo", "-n", *attempt, env={"SLURM_CONF": "/tmp/slurm.conf"})
    assert tried.returncode != 0 and refusal in tried.stderr, (attempt, tried.stderr)


def test_the_environment_does_not_reach_the_command_nor_choose_it(live_cluster, alices_job,
                                                                   tmp_path):
    # A scancel of its own, first on PATH, and a Slurm config of its own.
    planted = tmp_path / "bin"
    planted.mkdir()
    marker = tmp_path / "ran"
    (planted / "scancel").write_text(f"#!/bin/sh\ntouch {marker}\n")
    (planted / "scancel").chmod(0o755)
    tmp_path.chmod(0o755)
    env = {"PATH": f"{planted}:/usr/bin:/bin", "SLURM_CONF": "/nonexistent/slurm.conf",
           "LD_PRELOAD": "/nonexistent.so"}
    tried = as_service("sudo", "-n", "-u", "alice", "scancel", alices_job, env=env)
    assert tried.returncode == 0, tried.stderr  # the real scancel, with the real config
    assert not marker.exists()
    wait_until(lambda: not (j := slurm.job(alices_job)) or not j.running and not j.pending, 30,
               what="alice's job to be cancelled as alice")


def test_as_a_person_only_that_persons_jobs_and_no_job_of_its_own(live_cluster, alices_job):
    tried = as_service("sudo", "-n", "-u", "dave", SCANCEL, alices_job)
    assert tried.returncode != 0 and "Access/permission denied" in tried.stderr
    assert slurm.job(alices_job).state in ("PENDING", "RUNNING")
    own = as_service("/usr/bin/sbatch", "-p", "cpu", "-t", "1", "--wrap", "id")
    assert own.returncode != 0 and "AssocMaxSubmitJobLimit" in own.stderr
    # AdminLevel Operator: every job past PrivateData=jobs, which dave's squeue does not show.
    seen = as_service("/usr/bin/squeue", "-h", "-o", "%i %u")
    assert f"{alices_job} alice" in seen.stdout
    daves = subprocess.run(["runuser", "-u", "dave", "--", "squeue", "-h", "-o", "%i"],
                           capture_output=True, text=True, cwd="/tmp").stdout
    assert alices_job not in daves.split()
    assert slurm.admin_level(ACCOUNT) == "Operator"


def test_no_persons_files_and_none_of_the_hubs_secrets(live_cluster):
    for path in ("/home/alice", "/home/dave/.bashrc", str(hub.PROXY_TOKEN),
                 str(hub.DATABASE_PASSWORD), str(hub.SERVICE_TOKEN),
                 "/var/lib/aifactory/hub-secrets", "/var/lib/aifactory/hub/internal-ssl",
                 "/etc/aifactory/tls/hub.key", "/var/lib/aifactory/demo-passwords.json",
                 "/etc/slurm/slurmdbd.conf", "/etc/munge/munge.key"):
        tried = as_service("cat", path)
        assert tried.returncode != 0 and not tried.stdout, path
    # What it is given, it may read and not change.
    given = Path("/etc/aifactory/allocations")
    assert as_service("cat", str(given / "metrics-token")).returncode == 0
    assert as_service("sh", "-c", f": >> {given / 'metrics-token'}").returncode != 0
