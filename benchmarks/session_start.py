"""Time from "start" to a usable notebook session, against a bare Slurm job as the baseline.

Run as root on the local cluster (`./aif cluster up` first):

    /opt/aifactory/venv/bin/python benchmarks/session_start.py [--rounds 3] [--user alice]

Baseline: `sbatch` of a 1-GPU job as the user, polled with `squeue` until it runs (what a
user does by hand). Ours: log in to the hub through the proxy, start the server, poll the
hub API until the server is ready (job running *and* JupyterLab answering). Then the same
session with a site environment chosen on the form (Lmod loads its modules in the job before
JupyterLab starts), against the default environment. All are measured in the same run, one
after the other in each round; slurmctld RPCs come from `sdiag` (reset before each one).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


from hub_login import HUB, log_in
from hub_login import xsrf as hub_xsrf

from aifactory import slurm



def wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def rpcs_since_reset() -> int:
    return sum(slurm.rpc_counts().values())


def reset_rpcs() -> None:
    slurm.run(["sdiag", "--reset"])


def bare_job(user: str) -> tuple[float, int]:
    reset_rpcs()
    t0 = time.monotonic()
    job_id = slurm.submit("#!/bin/bash\n#SBATCH --gres=gpu:1\n#SBATCH --time=5\nsleep 120\n",
                          user=user)
    wait(lambda: (job := slurm.job(job_id)) is not None and job.running, 120,
         f"job {job_id} to run")
    elapsed, rpcs = time.monotonic() - t0, rpcs_since_reset()
    slurm.cancel(job_id)
    return elapsed, rpcs


def hub_session(user: str, password: str, **form: str) -> tuple[float, int]:
    """Start a session by pressing Start on the form with these fields and wait until the
    hub says it is ready."""
    http = log_in(user, password)
    xsrf = hub_xsrf(http)

    def servers() -> dict:
        return http.get(f"{HUB}/hub/api/user").json()["servers"]

    def stop() -> None:
        http.delete(f"{HUB}/hub/api/users/{user}/server",
                    headers={"X-XSRFToken": xsrf}).raise_for_status()
        wait(lambda: not servers(), 120, "the server to stop")

    if servers():  # measure from a stopped server
        stop()
    reset_rpcs()
    t0 = time.monotonic()
    http.post(f"{HUB}/hub/spawn", data={**form, "_xsrf": xsrf},
              allow_redirects=False).raise_for_status()
    wait(lambda: servers().get("", {}).get("ready"), 300, f"the server ({form}) to be ready")
    elapsed, rpcs = time.monotonic() - t0, rpcs_since_reset()
    stop()
    return elapsed, rpcs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--user", default="alice")
    args = parser.parse_args()
    password = json.load(open("/var/lib/aifactory/demo-passwords.json"))[args.user]

    sessions = {  # the CPU profile, so that no GPU job of another round is waited for
        "hub session, default env": {"profile": "cpu"},
        "hub session, classic-ml env": {"profile": "cpu", "option_environment": "classic-ml"},
    }
    rows = {"bare sbatch (baseline)": [], "aifactory hub session": [],
            **{name: [] for name in sessions}}
    for _ in range(args.rounds):
        rows["bare sbatch (baseline)"].append(bare_job(args.user))
        rows["aifactory hub session"].append(hub_session(args.user, password, profile="h100-1",
                                                         option_walltime="1h"))
        for name, form in sessions.items():
            rows[name].append(hub_session(args.user, password, **form))

    print(f"{'':28} {'median s':>9} {'min s':>7} {'max s':>7} {'RPCs':>6}")
    medians = {}
    for name, results in rows.items():
        times = [t for t, _ in results]
        medians[name] = statistics.median(times)
        print(f"{name:28} {medians[name]:9.2f} {min(times):7.2f} {max(times):7.2f} "
              f"{statistics.median(r for _, r in results):6.0f}")
    base, ours = medians["bare sbatch (baseline)"], medians["aifactory hub session"]
    print(f"ratio hub session / bare job: {ours / base:.2f} "
          f"(the difference is JupyterLab starting and the proxy route)")
    default, chosen = (medians[name] for name in sessions)
    print(f"ratio classic-ml environment / default environment: {chosen / default:.2f} "
          f"(the difference is Lmod loading the modules)")


if __name__ == "__main__":
    main()
