"""A workshop start: N participants start their course session at the same moment.

Run as root on the local cluster (`./aif cluster up` first):

    /opt/aifactory/venv/bin/python benchmarks/workshop.py [--participants 30] [--rounds 1]

The workshop is set up as a site would: a Slurm account for the course (`course-bench`, the
participants bench01..benchN added to it), a reservation for it (`bench-workshop`: N cores of
cpu01 on the cpu partition, for that account alone) and a session of 1 CPU, 1 GB, 1 h.
Two temporary hubs run beside the demo hub, on their own ports (8500, 8600) and databases:

- "stock": batchspawner 1.3's SlurmSpawner as shipped, as in spawn.py, given the reservation
  (`req_reservation`) and the account (`req_options = "--account=..."`: its Slurm job script
  has no account line) and the same session size.
- "ours": aifactory's SlurmSpawner with a temporary site description: the site's partitions and
  profiles, a course profile `course-bench` and a `courses` entry (account, reservation, hub
  groups, material folder); the participants are in the hub group `bench-participants`, and
  each start request is only {"profile": "course-bench"}: the course fills in the rest.
  The course material (one small notebook) is copied into each participant's ~/bench; the
  stock side copies the same folder in its job's prologue, so both do the same work.

Measured per side: the time from the N start requests (sent at once) until all N servers are
ready, and slurmctld RPCs from `sdiag` (reset just before, read just after), in total and those
asking about jobs. Rounds alternate which side goes first. Before the rounds, the RPCs of an
idle period are counted: the demo hub and its allocations service ask Slurm on their own, and
those requests are in both sides' counts.

`--courses no` writes the course profile without the `courses` entry (for an aifactory whose
site schema has none; `auto`, the default, asks the installed package).

Setup is idempotent (users, account and associations are created once and kept). Servers,
jobs, the reservation, the temporary hubs and the copied material are removed at the end,
also when the run fails or is stopped (SIGINT, SIGTERM). Do not run it beside `./aif test`:
the test suite cancels every job in the queue when it starts; the run then stops with that
sentence instead of waiting for servers that will not come.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from aifactory import site_description as site_module
from aifactory import slurm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from spawn import REPO, BenchHub, ensure_users, job_info  # noqa: E402

ACCOUNT = "course-bench"
RESERVATION = "bench-workshop"
COURSE = "bench"
PROFILE = "course-bench"
PARTICIPANTS_GROUP = "bench-participants"
INSTRUCTORS_GROUP = "bench-instructors"
PORTS = {"stock": 8500, "ours": 8600}
LIVE = slurm.JOB_ALIVE_STATES | slurm.JOB_ALIVE_FLAGS  # sacct's State column

STOCK = """
c.JupyterHub.spawner_class = "batchspawner.SlurmSpawner"
c.SlurmSpawner.batchspawner_singleuser_cmd = "{venv}/bin/batchspawner-singleuser"
c.Spawner.cmd = ["{venv}/bin/jupyterhub-singleuser"]
c.SlurmSpawner.req_partition = "cpu"
c.SlurmSpawner.req_nprocs = "1"
c.SlurmSpawner.req_memory = "1G"
c.SlurmSpawner.req_runtime = "01:00:00"
c.SlurmSpawner.req_reservation = "%(reservation)s"
c.SlurmSpawner.req_options = "--account=%(account)s"
c.SlurmSpawner.req_prologue = %(prologue)s
"""

OURS = """
c.JupyterHub.spawner_class = "aifactory.spawner.SlurmSpawner"
c.SlurmSpawner.site_path = "%(site_path)s"
c.SlurmSpawner.venv = "{venv}"
c.JupyterHub.load_groups = %(groups)s
%(roles)s
"""
# Only the profile: the course sets account, reservation, partition and size.
OUR_OPTIONS = {"profile": PROFILE}

NOTEBOOK = {"cells": [{"cell_type": "markdown", "metadata": {},
                       "source": ["# Bench workshop\n", "Exercise 1."]}],
            "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def log(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


def braces(text: str) -> str:
    """Escape text for BenchHub's str.format of the spawner config."""
    return text.replace("{", "{{").replace("}", "}}")


# --- setup ------------------------------------------------------------------------------------

def ensure_account(users: list[str]) -> None:
    """The course's Slurm account, with the participants in it (created once, kept)."""
    if not slurm.sacctmgr_list("account", ACCOUNT, fields=["Account"]):
        slurm.sacctmgr("add", "account", ACCOUNT, "Description=bench workshop (benchmarks)",
                       "Organization=aifactory", "Parent=root")
    have = {r["user"] for r in slurm.sacctmgr_list("association", f"account={ACCOUNT}",
                                                   fields=["User"])}
    missing = [u for u in users if u not in have]
    if missing:
        slurm.sacctmgr("add", "user", ",".join(missing), f"Account={ACCOUNT}")


def live_jobs(users: list[str]) -> list[slurm.Job]:
    wanted = set(users)
    return [j for j in slurm.jobs() if j.user in wanted and j.alive]


def cancel_jobs(users: list[str], timeout: float = 120) -> None:
    """Cancel the participants' jobs and wait until Slurm has let go of them."""
    deadline = time.monotonic() + timeout
    while jobs := live_jobs(users):
        for job in jobs:
            if not job.completing:
                try:
                    slurm.cancel(job.job_id)
                except slurm.SlurmError:
                    pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs still there after {timeout:.0f} s: "
                               + ", ".join(f"{j.job_id} {j.state}" for j in jobs))
        time.sleep(1)


def delete_reservation() -> None:
    for _ in range(30):
        if RESERVATION not in slurm.reservations():
            return
        try:
            slurm.scontrol("delete", f"ReservationName={RESERVATION}")
            return
        except slurm.SlurmError as e:  # busy while a job in it is still completing
            last = e
            time.sleep(1)
    raise RuntimeError(f"reservation {RESERVATION} could not be deleted: {last}")


def create_reservation(cores: int) -> None:
    """N cores of cpu01 for the course account, from now, for an hour (longer than a run)."""
    delete_reservation()  # a previous run's, if it was killed before its clean-up
    slurm.scontrol("create", f"ReservationName={RESERVATION}", f"Accounts={ACCOUNT}",
                   "StartTime=now", "Duration=60", "PartitionName=cpu", "Nodes=cpu01",
                   f"CoreCnt={cores}")


def installed_site_knows_courses(workdir: Path) -> bool:
    """Does the installed aifactory (what the hub imports) accept `courses` in site.yaml?"""
    probe = workdir / "probe.yaml"
    write_site(probe, "/nonexistent", with_course=True)
    try:
        site_module.load(probe)
    except site_module.SiteError as e:
        if "courses" in str(e):
            return False
        raise
    finally:
        probe.unlink()
    return True


def write_site(path: Path, material: str, with_course: bool) -> None:
    """The site's partitions and everyone's profiles, the course profile, the course."""
    site = yaml.safe_load((REPO / "hub_config" / "site.yaml").read_text())
    course_profiles = {c.get("profile") for c in site.get("courses") or []}
    profiles = [p for p in site["profiles"] if p.get("slug") not in course_profiles]
    profiles.append({
        "display_name": "Bench workshop", "slug": PROFILE,
        "description": "The bench workshop: 1 CPU in the course reservation.",
        "slurm": {"partition": "cpu", "gpus": 0, "cpus": 1, "memory_gb": 1,
                  "walltime": "01:00:00", "account": ACCOUNT, "reservation": RESERVATION},
        "fixed": ["account", "reservation", "partition"],
    })
    data = {"partitions": site["partitions"], "profiles": profiles}
    if "billing" in site:
        data["billing"] = site["billing"]
    if with_course:
        data["courses"] = [{
            "name": COURSE, "display_name": "Bench workshop", "account": ACCOUNT,
            "reservation": RESERVATION, "participants": PARTICIPANTS_GROUP,
            "instructors": INSTRUCTORS_GROUP, "profile": PROFILE, "material": material,
        }]
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def make_material(workdir: Path) -> Path:
    """A course folder every participant can read (the job copies it as the participant)."""
    folder = workdir / "material"
    folder.mkdir()
    (folder / "exercise1.ipynb").write_text(json.dumps(NOTEBOOK, indent=1))
    for p in (workdir, folder):
        p.chmod(0o755)
    (folder / "exercise1.ipynb").chmod(0o644)
    return folder


def hub_configs(workdir: Path, users: list[str], material: Path, with_course: bool):
    site_path = workdir / "site.yaml"
    write_site(site_path, str(material), with_course)
    site_module.load(site_path)  # fail here, with the site's sentence, not in the hub's log
    groups = {PARTICIPANTS_GROUP: {"users": users}, INSTRUCTORS_GROUP: {"users": []}}
    roles = ""
    if with_course:  # as hub_config/jupyterhub_config.py: the instructors' role
        roles = ("from aifactory import course_rules as _courses, site_description as _site\n"
                 "c.JupyterHub.load_roles = list(c.JupyterHub.load_roles) + "
                 f"_courses.hub_roles(_site.load({str(site_path)!r}))")
    # The same copy as the course material's, done by the job before the server starts.
    prologue = f"mkdir -p ~/{COURSE} && cp -rn {material}/. ~/{COURSE}/"
    # BenchHub fills in {venv} and {repo}: every other brace must reach the config as it is.
    ours = OURS % {"site_path": braces(str(site_path)), "groups": braces(repr(groups)),
                   "roles": braces(roles)}
    stock = STOCK % {"reservation": RESERVATION, "account": ACCOUNT,
                     "prologue": braces(repr(prologue))}
    return stock, ours


def ended_jobs(users: list[str], since: float) -> list[str]:
    """The participants' jobs that ended since `since` (epoch), from accounting: `sacct` asks
    slurmdbd, not slurmctld, so watching does not change the RPC counts."""
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since))
    out = slurm.run(["sacct", "-X", "-n", "-P", "-u", ",".join(users), "-S", start,
                     "-o", "JobID,User,State,End"])
    rows = [line.split("|") for line in out.splitlines() if line.count("|") == 3]
    # -S also lists jobs that were still running at `start`: the previous side's, if any.
    return [f"{job} {user} {state}" for job, user, state, end in rows
            if state.split()[0] not in LIVE and end >= start]


class WorkshopHub(BenchHub):
    """BenchHub, registered in `hubs` as soon as its process exists (so it is always closed).

    While `watch_since` is set, waiting for the servers also fails at once when one of the
    jobs ended (stock batchspawner would wait for a dead job's server until its timeout):
    on a shared test cluster someone may cancel every job (the test suite does at its start).
    """

    watch_since = 0.0
    _watched = 0.0

    def __init__(self, name, port, spawner_config, options, hubs: dict):
        try:
            super().__init__(name, port, spawner_config, options)
        finally:
            if hasattr(self, "proc"):
                hubs[name] = self

    def ready(self, users: list[str]) -> int:
        if self.watch_since and time.monotonic() - self._watched > 5:
            self._watched = time.monotonic()
            ended = ended_jobs(users, self.watch_since)
            if ended:
                raise RuntimeError(f"[{self.name}] session jobs ended before all servers were "
                                   f"ready (cancelled by someone else?): {', '.join(ended[:5])}")
        return super().ready(users)


# --- measuring --------------------------------------------------------------------------------

def check_sessions(name: str, users: list[str], material: bool) -> None:
    """All N jobs run in the reservation, charged to the course, with the material copied."""
    jobs = live_jobs(users)
    wrong = [j for j in jobs if not j.running or j.account != ACCOUNT
             or j.reservation != RESERVATION or j.partition != "cpu"]
    if len(jobs) != len(users) or wrong:
        raise RuntimeError(f"[{name}] expected {len(users)} running jobs in {RESERVATION} on "
                           f"{ACCOUNT}; found " + ", ".join(
                               f"{j.job_id} {j.user} {j.state} {j.account} {j.reservation or '-'}"
                               for j in jobs))
    home = lambda user: Path(os.path.expanduser(f"~{user}"))  # noqa: E731
    missing = [u for u in users
               if material and not (home(u) / COURSE / "exercise1.ipynb").is_file()]
    if missing:
        raise RuntimeError(f"[{name}] course material missing for {', '.join(missing)}")


def measure(name: str, hub: WorkshopHub, users: list[str],
            material: bool) -> tuple[float, dict[str, int]]:
    remove_material(users)
    others = [j for j in slurm.jobs() if j.user not in set(users) and j.alive]
    if others:
        log(f"[{name}] note: {len(others)} other jobs in the queue "
            f"({', '.join(sorted({j.user for j in others}))}); the RPC counts include theirs")
    slurm.run(["sdiag", "--reset"])
    hub.watch_since = time.time()
    try:
        elapsed = hub.start_all(users)
    finally:
        hub.watch_since = 0.0
    rpcs = slurm.rpc_counts()
    check_sessions(name, users, material)
    hub.stop_all(users)
    cancel_jobs(users)  # also wait out COMPLETING, so the next side finds the cores free
    log(f"[{name}] {len(users)} ready in {elapsed:.1f} s, {sum(rpcs.values())} RPCs, "
        f"{job_info(rpcs)} job-info")
    return elapsed, rpcs


def background(seconds: float) -> float:
    """slurmctld RPCs per second with nothing of ours running (demo hub, service, ...)."""
    slurm.run(["sdiag", "--reset"])
    time.sleep(seconds)
    return sum(slurm.rpc_counts().values()) / seconds


def remove_material(users: list[str]) -> None:
    for user in users:
        shutil.rmtree(Path(os.path.expanduser(f"~{user}")) / COURSE, ignore_errors=True)


# --- the run ----------------------------------------------------------------------------------

def _terminated(signum, frame):
    raise SystemExit(f"stopped by signal {signum}; cleaning up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--courses", choices=("auto", "yes", "no"), default="auto",
                        help="write the site's `courses` entry: auto = when the installed "
                             "aifactory accepts it (default); yes = required")
    args = parser.parse_args()
    if not 1 <= args.participants <= 60:
        parser.error("--participants must be 1..60 (cpu01 has 64 cores)")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGHUP, _terminated)

    t_run = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="aif-bench-workshop-"))
    users = ensure_users(args.participants)
    ensure_account(users)
    knows = installed_site_knows_courses(workdir)
    if args.courses == "yes" and not knows:
        raise SystemExit("the installed aifactory's site.yaml schema has no `courses` yet "
                         "(reinstall with ./aif cluster up)")
    with_course = knows and args.courses != "no"
    log(f"{args.participants} participants; site `courses` entry: "
        f"{'yes' if with_course else 'no (profile only)'}")
    material = make_material(workdir)
    stock_config, ours_config = hub_configs(workdir, users, material, with_course)

    hubs: dict[str, WorkshopHub] = {}
    results: dict[str, list[tuple[float, dict[str, int]]]] = {"stock": [], "ours": []}
    try:
        cancel_jobs(users)  # a killed run's leftovers
        create_reservation(args.participants)
        idle_rate = background(10)
        WorkshopHub("stock", PORTS["stock"], stock_config, None, hubs)
        WorkshopHub("ours", PORTS["ours"], ours_config, OUR_OPTIONS, hubs)
        log("hubs up")
        for i in range(args.rounds):
            # Alternate who goes first, so neither always follows the other's clean-up.
            for name in (("stock", "ours") if i % 2 == 0 else ("ours", "stock")):
                # Ours copies the material only through the course entry.
                material_copied = name == "stock" or with_course
                results[name].append(measure(name, hubs[name], users, material_copied))
    finally:
        for name, hub in hubs.items():
            try:
                hub.stop_all(users)
            except BaseException as e:  # BenchHub gives up with SystemExit
                log(f"[{name}] stopping servers: {e}")
            hub.close()
        try:
            cancel_jobs(users)
        finally:
            delete_reservation()
            remove_material(users)
            shutil.rmtree(workdir, ignore_errors=True)
        log(f"cleaned up (servers, jobs, reservation {RESERVATION}, temporary hubs)")

    n = args.participants
    print(f"\nworkshop: {n} participants start at once in reservation {RESERVATION}, "
          f"account {ACCOUNT}, 1 CPU / 1 GB each; {args.rounds} round(s); "
          f"courses entry {'used' if with_course else 'NOT used'}")
    print(f"background (demo hub and services, counted in both sides): "
          f"{idle_rate:.2f} slurmctld RPCs/s")
    summary = {}
    for name, runs in results.items():
        times = [t for t, _ in runs]
        totals = [sum(r.values()) for _, r in runs]
        infos = [job_info(r) for _, r in runs]
        summary[name] = (statistics.median(times), statistics.median(totals),
                         statistics.median(infos))
        t, total, info = summary[name]
        print(f"  {name:6} all ready in {t:6.1f} s; slurmctld RPCs {total:6.0f} "
              f"(background about {idle_rate * t:.0f} of them); job-info RPCs {info:5.0f}")
        if len(runs) > 1:
            print("         rounds (s / RPCs / job-info): " + ", ".join(
                f"{t:.1f} / {s} / {j}" for t, s, j in zip(times, totals, infos)))
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(runs[-1][1].items()) if v)
        print(f"         ({'last round: ' if len(runs) > 1 else ''}{kinds})")
    (t_o, s_o, j_o), (t_s, s_s, j_s) = summary["ours"], summary["stock"]
    medians = " (medians)" if args.rounds > 1 else ""
    print(f"  ours / stock{medians}: all-ready time {t_o / t_s:.2f}; "
          f"RPCs {s_o / max(s_s, 1):.3f}; job-info RPCs {j_o / max(j_s, 1):.3f}")
    print(f"  (whole run {time.monotonic() - t_run:.0f} s)")


if __name__ == "__main__":
    main()
