"""Watching notebook jobs: aifactory's list against asking Slurm per job, one run.

Run as root on the local cluster (`./aif cluster up` first):

    /opt/aifactory/venv/bin/python benchmarks/notebook_jobs.py [--jobs 12] [--tabs 10] [--seconds 60]

alice starts a CPU session and submits `--jobs` notebook jobs (a slow notebook: some run on
cpu01, the rest wait), then each mode watches them for `--seconds`, refreshing every 5 s as a
jobs list in JupyterLab does:

- "ours, 1 tab" and "ours, N tabs": GET <her server>/aifactory/api/notebook-jobs (the
  folders, and the allocations service's one shared jobs answer);
- "per job" (the baseline: the public jupyter-scheduler Slurm backend's way, `squeue` for each
  job every 5 s), one tab.

slurmctld RPCs come from `sdiag` (reset before each mode); they include what the allocations
service asks on its own schedule whoever watches, so "ours" with 1 and N tabs should be the
same. Latency is the list's answer time at the client.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tabs import measure  # noqa: E402
from hub_login import HUB, log_in, xsrf  # noqa: E402

from aifactory import slurm  # noqa: E402

PASSWORDS = "/var/lib/aifactory/demo-passwords.json"
REFRESH_S = 5
USER = "alice"


def slow_notebook() -> str:
    import nbformat
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("seconds = 600")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("import time\ntime.sleep(seconds)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    pw = pwd.getpwnam(USER)
    path = Path(pw.pw_dir) / "bench-notebook-jobs.ipynb"
    nbformat.write(nb, str(path))
    os.chown(path, pw.pw_uid, pw.pw_gid)
    return path.name


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--tabs", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()

    password = json.load(open(PASSWORDS))[USER]
    http = log_in(USER, password)
    headers = {"X-XSRFToken": xsrf(http)}
    r = http.post(f"{HUB}/hub/api/users/{USER}/server", headers=headers, json={"profile": "cpu"})
    assert r.status_code in (201, 202, 400), r.text  # 400: already running
    token = http.post(f"{HUB}/hub/api/users/{USER}/tokens", headers=headers,
                      json={"note": "notebook jobs benchmark", "expires_in": 3600}).json()["token"]
    api = f"https://{USER}.hub.localhost:8443/user/{USER}/aifactory/api/notebook-jobs"
    session = requests.Session()
    session.headers["Authorization"] = f"token {token}"
    deadline = time.monotonic() + 120
    while session.get(api, timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "alice's session did not come up"
        time.sleep(1)

    notebook = slow_notebook()
    submitted = []
    try:
        for _ in range(args.jobs):
            r = session.post(api, timeout=60, json={
                "notebook": notebook, "settings": {"profile": "cpu", "cpus": 16,
                                                   "walltime": "00:15:00"}})
            assert r.status_code == 201, r.text
            submitted.append(r.json())
        ids = [j["slurm_job_id"] for j in submitted]
        time.sleep(REFRESH_S * 2)  # the service's next queue answer knows them all

        def ours():
            r = session.get(api, timeout=60)
            assert r.status_code == 200 and len(r.json()["jobs"]) >= len(ids), r.text

        def per_job():
            for job_id in ids:
                slurm.run(["squeue", "--noheader", "--jobs", job_id, "--format", "%T"],
                          user=USER)

        states = [j.state for j in slurm.jobs(user=USER) if j.job_id in ids]
        print(f"{len(ids)} notebook jobs: {states.count('RUNNING')} running, "
              f"{states.count('PENDING')} pending", flush=True)
        rows = [measure("ours", [ours], 1, args.seconds, REFRESH_S),
                measure("ours", [ours], args.tabs, args.seconds, REFRESH_S),
                measure("per job (squeue each)", [per_job], 1, args.seconds, REFRESH_S)]
    finally:
        for job in submitted:
            session.delete(f"{api}/{job['id']}", timeout=60)
        http.delete(f"{HUB}/hub/api/users/{USER}/server", headers=headers)
    one, many, base = rows
    print(f"slurmctld RPCs: ours {args.tabs} tabs / 1 tab = "
          f"{many['slurmctld_rpcs'] / max(one['slurmctld_rpcs'], 1):.2f}; "
          f"ours 1 tab / per job = {one['slurmctld_rpcs'] / max(base['slurmctld_rpcs'], 1):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
