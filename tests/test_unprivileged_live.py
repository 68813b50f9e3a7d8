"""Our services without root, attacked from their own accounts.

With the hub's, the allocations service's or the proxy's account taken over, what can an
attacker do? The tests run as that account what they would try: sudo as root or another
system account, another command, other arguments, an environment that changes what runs or
what sbatch submits; submit jobs of its own; read people's files and the other services'
secrets; change what the hub runs.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import submit, wait_until

from aifactory import slurm
from aifactory.cluster import hub, services, unprivileged

ACCOUNT = unprivileged.SERVICE_USER
HUB_ACCOUNT = unprivileged.HUB_USER
PROXY_ACCOUNT = unprivileged.PROXY_USER
SCANCEL = "/usr/bin/scancel"
SBATCH = "/usr/bin/sbatch"
JOB_SCRIPT = "#!/bin/bash\n#SBATCH -A proj-climate -p cpu -t 5 --output=/dev/null\nsleep 300\n"


def as_account(account: str, *command: str, env: dict | None = None,
               input: str | None = None) -> subprocess.CompletedProcess:
    prefix = ["env", *(f"{k}={v}" for k, v in env.items())] if env else []
    return subprocess.run(["runuser", "-u", account, "--", *prefix, *command], input=input,
                          capture_output=True, text=True, cwd="/tmp", timeout=60)


def as_service(*command: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return as_account(ACCOUNT, *command, env=env)


def as_hub(*command: str, env: dict | None = None, input: str | None = None):
    return as_account(HUB_ACCOUNT, *command, env=env, input=input)


@pytest.fixture
def reachable():
    """A folder every account reaches, with a planted command first on PATH: pytest's own
    lies under root's 0700 folder, where a planted command would be skipped for that alone."""
    folder = Path(tempfile.mkdtemp(prefix="aif-planted-", dir="/tmp"))
    folder.chmod(0o1777)  # the accounts leave their marker here; bin/ stays root's
    (folder / "bin").mkdir(mode=0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def plant(folder: Path, command: str) -> Path:
    """`command` in folder/bin, which only touches a marker; the marker's path."""
    marker = folder / f"ran-{command}"
    (folder / "bin" / command).write_text(f"#!/bin/sh\n/usr/bin/touch {marker}\n")
    (folder / "bin" / command).chmod(0o755)
    return marker


def cancel_quietly(job_id: str) -> None:
    try:
        slurm.cancel(job_id)
    except slurm.SlurmError:
        pass


@pytest.fixture
def alices_job(live_cluster):
    job = submit("alice", "-A", "proj-climate", "-p", "cpu", "-t", "5", script="sleep 300")
    yield job
    try:
        slurm.cancel(job)
    except slurm.SlurmError:
        pass


@pytest.mark.parametrize("service,account", [
    (services.ALLOCATIONS, ACCOUNT), (services.HUB, HUB_ACCOUNT),
    (services.PROXY, PROXY_ACCOUNT), (services.PROMETHEUS, "prometheus")])
def test_each_service_runs_as_its_own_account(live_cluster, service, account):
    uid = Path(f"/proc/{service.pid()}").stat().st_uid
    assert pwd.getpwnam(account).pw_uid == uid and uid != 0


def test_ps_shows_no_root_process_of_the_hub_the_proxy_the_service_or_the_idp(live_cluster):
    rows = subprocess.run(["ps", "-eo", "uid=,args="], capture_output=True, text=True).stdout
    ours = [r for r in rows.splitlines()
            if any(w in r for w in ("jupyterhub", "configurable-http-proxy", "aifactory.service",
                                    "idp.mjs", "/usr/bin/prometheus"))
            and "ps -eo" not in r]
    assert len(ours) >= 5, rows
    root = [r for r in ours if r.split()[0] == "0"]
    assert not root, root


def sudo_rules(account: str) -> str:
    listed = as_account(account, "sudo", "-n", "-l")
    assert listed.returncode == 0, listed.stderr
    rules = listed.stdout.split("may run the following commands on")[1].splitlines()[1:]
    return " ".join(r.strip() for r in rules if r.strip())


def test_sudo_lists_exactly_one_rule_scancel_of_a_job_id_as_a_person(live_cluster):
    assert sudo_rules(ACCOUNT) == (f"(%aifactory-users, !root, %!sudo) NOPASSWD: {SCANCEL} "
                                   f"{unprivileged.JOB_ID}")


def test_the_hubs_sudo_lists_exactly_sbatch_parsable_and_scancel_as_a_person(live_cluster):
    assert sudo_rules(HUB_ACCOUNT) == (f"(%aifactory-users, !root, %!sudo) NOPASSWD: {SBATCH} "
                                       f"--parsable, {SCANCEL} {unprivileged.JOB_ID}")


def test_the_proxy_has_no_sudo(live_cluster):
    listed = as_account(PROXY_ACCOUNT, "sudo", "-n", "-l")
    assert listed.returncode != 0 and "may run" not in listed.stdout


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


@pytest.mark.parametrize("attempt,refusal", [
    (["-u", "root", SBATCH, "--parsable"], "password is required"),
    (["-u", "slurm", SBATCH, "--parsable"], "password is required"),
    (["-u", ACCOUNT, SBATCH, "--parsable"], "password is required"),
    (["-u", "postgres", SCANCEL, "1"], "password is required"),
    (["-u", "alice", SBATCH, "--parsable", "--wrap", "id"], "password is required"),
    (["-u", "alice", SBATCH, "--wrap", "id"], "password is required"),
    (["-u", "alice", SBATCH, "--parsable", "-p", "gpu"], "password is required"),
    (["-u", "alice", SBATCH, "--parsable", "/tmp/script.sh"], "password is required"),
    (["-u", "alice", SBATCH], "password is required"),
    (["-u", "alice", "/usr/bin/srun", "id"], "password is required"),
    (["-u", "alice", "/usr/bin/salloc", "--parsable"], "password is required"),
    (["-u", "alice", "/bin/sh", "-c", "id"], "password is required"),
    (["-u", "alice", SCANCEL, "--user=alice"], "password is required"),
    (["-u", "alice", SCANCEL, "1", "--signal=KILL"], "password is required"),
    (["-E", "-u", "alice", SBATCH, "--parsable"], "not allowed to preserve the environment"),
    (["--preserve-env=SBATCH_PARTITION", "-u", "alice", SBATCH, "--parsable"], "not allowed to set"),
    (["-u", "alice", "LD_PRELOAD=/tmp/x.so", SBATCH, "--parsable"], "not allowed to set"),
    (["-u", "alice", "BASH_ENV=/tmp/x", SBATCH, "--parsable"], "not allowed to set"),
    (["-u", "alice", "SLURM_CONF=/tmp/slurm.conf", SBATCH, "--parsable"], "not allowed to set"),
    (["-u", "alice", "SBATCH_EXPORT=ALL", SBATCH, "--parsable"], "not allowed to set"),
    (["-u", "alice", "PATH=/tmp", SBATCH, "--parsable"], "not allowed to set"),
])
def test_the_hubs_sudo_refuses_everything_else(live_cluster, attempt, refusal):
    tried = as_hub("sudo", "-n", *attempt, input="",
                   env={"SLURM_CONF": "/tmp/slurm.conf", "SBATCH_PARTITION": "gpu"})
    assert tried.returncode != 0 and refusal in tried.stderr, (attempt, tried.stderr)


def test_nobody_who_may_sudo_is_a_person_to_the_hubs_rules(live_cluster):
    """A member of the users group who is also in `sudo` (an admin with an account of their
    own): the hub may not run sbatch as them (what it submits could sudo with their password
    typed in a notebook)."""
    name = "aif-sudoer"
    subprocess.run(["useradd", "--no-create-home", "-G", "aifactory-users,sudo", name], check=True)
    try:
        tried = as_hub("sudo", "-n", "-u", name, SBATCH, "--parsable", input="")
        assert tried.returncode != 0 and "password is required" in tried.stderr, tried.stderr
        ordinary = as_hub("sudo", "-n", "-u", "alice", SBATCH, "--parsable", input="")
        assert "Batch script is empty" in ordinary.stderr, ordinary.stderr  # sudo let it run
    finally:
        subprocess.run(["userdel", name], check=True)


def test_the_hubs_environment_neither_reaches_sbatch_nor_changes_the_job(live_cluster, reachable):
    """sbatch takes options from SBATCH_* variables over the script's own: none gets through;
    only the session's own variables (JUPYTERHUB_*, AIFACTORY_*) reach the job."""
    marker = plant(reachable, "sbatch")
    assert as_hub("sbatch", env={"PATH": f"{reachable}/bin"}).returncode == 0 and marker.exists()
    marker.unlink()
    env = {"PATH": f"{reachable}/bin:/usr/bin:/bin", "SLURM_CONF": "/nonexistent/slurm.conf",
           "SBATCH_PARTITION": "gpu", "SBATCH_ACCOUNT": "proj-genomics", "SBATCH_TIMELIMIT": "1",
           "SBATCH_EXPORT": "NONE", "LD_PRELOAD": "/nonexistent.so",
           "JUPYTERHUB_API_URL": "http://10.77.0.1:8081/hub/api", "BASH_ENV": "/tmp/x"}
    output = reachable / "alices"
    output.mkdir()
    os.chown(output, pwd.getpwnam("alice").pw_uid, -1)
    seen = output / "env"
    script = JOB_SCRIPT.replace("--output=/dev/null", f"--output={seen}").replace(
        "sleep 300", "env; sleep 300")
    tried = as_hub("sudo", "-n", "-u", "alice", "sbatch", "--parsable", env=env, input=script)
    assert tried.returncode == 0, tried.stderr
    job_id = tried.stdout.strip().split(";")[0]
    try:
        assert not marker.exists()
        job = slurm.job(job_id)
        assert (job.user, job.account, job.partition) == ("alice", "proj-climate", "cpu")
        assert job.time_limit_min == 5
        wait_until(lambda: seen.exists() and "SLURM_JOB_ID" in seen.read_text(), 60,
                   what="the job's environment")
        got = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
        assert got["JUPYTERHUB_API_URL"] == env["JUPYTERHUB_API_URL"]
        assert not set(got) & {"LD_PRELOAD", "BASH_ENV"}, sorted(got)
        assert got.get("SLURM_CONF") != env["SLURM_CONF"]  # slurmd sets its own
        assert not any(n.startswith("SBATCH_") for n in got), sorted(got)
        # Created private: sudo's umask for the hub reaches Slurm (SLURM_UMASK).
        assert stat.S_IMODE(seen.stat().st_mode) == 0o600
    finally:
        cancel_quietly(job_id)


def test_the_hub_submits_no_job_of_its_own_and_sees_every_job(live_cluster, alices_job):
    own = as_hub(SBATCH, "-p", "cpu", "-t", "1", "--wrap", "id")
    assert own.returncode != 0 and "AssocMaxSubmitJobLimit" in own.stderr
    seen = as_hub("/usr/bin/squeue", "-h", "-o", "%i %u")
    assert f"{alices_job} alice" in seen.stdout
    assert slurm.admin_level(HUB_ACCOUNT) == "Operator"
    tried = as_hub("sudo", "-n", "-u", "dave", SCANCEL, alices_job)
    assert tried.returncode != 0 and "Access/permission denied" in tried.stderr


def test_the_environment_does_not_reach_the_command_nor_choose_it(live_cluster, alices_job,
                                                                   reachable):
    # A scancel of its own, first on PATH, and a Slurm config of its own.
    marker = plant(reachable, "scancel")
    assert as_service("scancel", "--version", env={"PATH": f"{reachable}/bin"}).returncode == 0
    assert marker.exists(), "the planted scancel is what the account itself would run"
    marker.unlink()
    env = {"PATH": f"{reachable}/bin:/usr/bin:/bin", "SLURM_CONF": "/nonexistent/slurm.conf",
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
                 "/etc/aifactory/hub/proxy-auth-token", "/etc/aifactory/proxy/public.key",
                 "/etc/aifactory/tls/hub.key", "/var/lib/aifactory/demo-passwords.json",
                 "/etc/slurm/slurmdbd.conf", "/etc/munge/munge.key"):
        tried = as_service("cat", path)
        assert tried.returncode != 0 and not tried.stdout, path
    # What it is given, it may read and not change.
    given = Path("/etc/aifactory/allocations")
    assert as_service("cat", str(given / "metrics-token")).returncode == 0
    assert as_service("sh", "-c", f": >> {given / 'metrics-token'}").returncode != 0


ROOTS_SECRETS = ("/var/lib/aifactory/secrets", "/var/lib/aifactory/hub-secrets",
                 "/etc/aifactory/tls/hub.key", "/var/lib/aifactory/demo-passwords.json",
                 "/var/lib/aifactory/ca", "/etc/slurm/slurmdbd.conf", "/etc/munge/munge.key",
                 "/var/lib/aifactory/idp", "/etc/aifactory/accounts-by-sub.yaml")


def test_the_hubs_account_reads_no_persons_files_nor_the_other_services_secrets(live_cluster):
    for path in ("/home/alice", "/home/dave/.bashrc", *ROOTS_SECRETS,
                 "/etc/aifactory/allocations/allocations-service.key",
                 "/etc/aifactory/prometheus/prometheus.key", "/etc/aifactory/proxy/public.key",
                 "/var/lib/aifactory/allocations", "/var/lib/aifactory/prometheus"):
        tried = as_hub("cat", path)
        assert tried.returncode != 0 and not tried.stdout, path
    # Its own secrets it reads and cannot change; what it runs (its config, the code) neither.
    given = Path("/etc/aifactory/hub")
    assert as_hub("cat", str(given / "proxy-auth-token")).returncode == 0
    import aifactory
    for path in (given / "proxy-auth-token", Path("/etc/aifactory/hub_config/jupyterhub_config.py"),
                 Path("/etc/aifactory/hub_config/site.yaml"),
                 Path(aifactory.__file__).parent / "spawner/slurm_spawner.py",
                 Path("/etc/sudoers.d/aifactory")):
        assert as_hub("sh", "-c", f": >> {path}").returncode != 0, path
    for folder in ("/etc/aifactory/hub_config", Path(aifactory.__file__).parent, "/etc/sudoers.d"):
        assert as_hub("touch", f"{folder}/planted").returncode != 0, folder


def test_the_proxys_account_reads_its_certificates_and_nothing_of_the_hub(live_cluster):
    assert as_account(PROXY_ACCOUNT, "cat", "/etc/aifactory/proxy/public.key").returncode == 0
    for path in ("/home/alice", *ROOTS_SECRETS, "/etc/aifactory/hub/proxy-auth-token",
                 "/etc/aifactory/hub/hub-database-password", "/var/lib/aifactory/hub/internal-ssl"):
        tried = as_account(PROXY_ACCOUNT, "cat", path)
        assert tried.returncode != 0 and not tried.stdout, path
    assert as_account(PROXY_ACCOUNT, "sh", "-c",
                      ": >> /etc/aifactory/proxy/public.key").returncode != 0
