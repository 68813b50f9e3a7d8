"""JupyterLab's status bar: slurmctld's load with 200 open status bars against 20, and against
200 tabs each asking Slurm directly; a session's start with the extension against without.

Run as root on the local cluster (`./aif cluster up` first):

    /opt/aifactory/venv/bin/python benchmarks/status_bars.py [--tabs 200] [--seconds 60] [--rounds 3]

Part 1. alice and bob each start a CPU session; the tabs are split between their two servers
and refresh every 15 s (the extension's interval), for `--seconds` per mode:

- "ours", 20 and 200 tabs: GET <server>/aifactory/api/session (the server relays the
  allocations service's shared answers, at most once per 5 s for all its tabs);
- "direct", 200 tabs (the baseline): each refresh asks Slurm itself, as the tab's user, what
  the status bar shows: `squeue --json --jobs <the session's job>` (time left),
  `squeue --json --me` (jobs running and waiting) and `sshare` of the project (its budget).

slurmctld RPCs come from `sdiag` (reset before each mode); they include what the allocations
service asks on its own schedule whoever watches, so "ours" with 20 and 200 tabs should be
the same. Latency is the status answer's time at the client.

Part 2. `--rounds` times each, alternating: alice's session start through the hub (POST the
server → ready) and then JupyterLab in Chromium (page load → launcher shown; with the
extension also → the status bar's first numbers), with the
extension enabled and disabled (`jupyter labextension disable --level=sys_prefix` in the shared
environment; its page_config.json as it was at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tabs import measure  # noqa: E402
from hub_login import DEMO_CA, HUB, log_in, xsrf  # noqa: E402

from aifactory import slurm  # noqa: E402

PASSWORDS = "/var/lib/aifactory/demo-passwords.json"
VENV = Path("/opt/aifactory/venv")
REFRESH_S = 15
USERS = ("alice", "bob")
EXTENSION = "aifactory-jupyterlab"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update"]


def server_url(user: str) -> str:
    return f"https://{user}.hub.localhost:8443/user/{user}/"


class Person:
    def __init__(self, user: str, password: str):
        self.user = user
        self.http = log_in(user, password)
        self.headers = {"X-XSRFToken": xsrf(self.http)}
        self.token = self.http.post(f"{HUB}/hub/api/users/{user}/tokens", headers=self.headers,
                                    json={"note": "status bar benchmark",
                                          "expires_in": 3600}).json()["token"]
        self.api = requests.Session()
        self.api.headers["Authorization"] = f"token {self.token}"

    def start(self, timeout: float = 180) -> float:
        began = time.monotonic()
        r = self.http.post(f"{HUB}/hub/api/users/{self.user}/server", headers=self.headers,
                           json={"profile": "cpu"})
        assert r.status_code in (201, 202), r.text
        while True:
            model = self.http.get(f"{HUB}/hub/api/user", headers=self.headers).json()
            if model["servers"].get("", {}).get("ready"):
                return time.monotonic() - began
            assert time.monotonic() - began < timeout, f"{self.user}'s session did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        self.http.delete(f"{HUB}/hub/api/users/{self.user}/server", headers=self.headers)
        deadline = time.monotonic() + 60
        while self.http.get(f"{HUB}/hub/api/user", headers=self.headers).json()["servers"]:
            assert time.monotonic() < deadline, f"{self.user}'s session did not stop"
            time.sleep(0.5)

    def session_job(self) -> str:
        [job] = [j.job_id for j in slurm.jobs(user=self.user)
                 if j.name == f"jupyterhub-{self.user}" and j.alive]
        return job


def status_bars(people: list[Person], tabs: int, seconds: float) -> list[dict]:
    def ours(person):
        def refresh():
            r = person.api.get(f"{server_url(person.user)}aifactory/api/session", timeout=60)
            assert r.status_code == 200 and r.json()["session"], r.text[:300]
        return refresh

    def direct(person, job_id):
        def refresh():
            slurm.run(["squeue", "--json", "--jobs", job_id], user=person.user)
            slurm.run(["squeue", "--json", "--me"], user=person.user)
            slurm.run(["sshare", "--noheader", "--parsable2", "--accounts", "proj-climate",
                       "--format", "Account,User,RawUsage,GrpTRESMins"], user=person.user)
        return refresh

    jobs = {p.user: p.session_job() for p in people}
    time.sleep(10)  # the service's queue answer knows both sessions
    return [measure("ours", [ours(p) for p in people], tabs // 10, seconds, REFRESH_S),
            measure("ours", [ours(p) for p in people], tabs, seconds, REFRESH_S),
            measure("direct (squeue, squeue, sshare per refresh)",
                    [direct(p, jobs[p.user]) for p in people], tabs, seconds, REFRESH_S)]


def set_extension(enabled: bool) -> None:
    subprocess.run([str(VENV / "bin/jupyter"), "labextension",
                    "enable" if enabled else "disable", "--level=sys_prefix", EXTENSION],
                   check=True, capture_output=True, env={**os.environ, "PATH": f"{VENV}/bin:"
                                                          + os.environ["PATH"]})


def browser_home() -> Path:
    home = Path(tempfile.mkdtemp(prefix="status-bars-"))
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True)
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "demo CA",
                    "-i", DEMO_CA], check=True)
    return home


def lab_load(page, user: str, with_extension: bool) -> tuple[float, float | None]:
    """Seconds from the page load to JupyterLab's launcher, and to the status bar's first
    numbers (with the extension)."""
    began = time.monotonic()
    page.goto(f"{server_url(user)}lab?reset")
    page.wait_for_selector(".jp-Launcher", timeout=120_000)
    launcher = time.monotonic() - began
    if not with_extension:
        return launcher, None
    page.wait_for_function("document.querySelector('#aifactory-status') && document"
                           ".querySelector('#aifactory-status').textContent.includes('left')",
                           timeout=60_000)
    return launcher, time.monotonic() - began


PAGE_CONFIG = VENV / "etc/jupyter/labconfig/page_config.json"


def starts(person: Person, password: str, rounds: int) -> dict:
    from playwright import sync_api as playwright
    results = {True: {"start_s": [], "lab_s": [], "status_bar_s": []},
               False: {"start_s": [], "lab_s": [], "status_bar_s": []}}
    home = browser_home()
    kept = PAGE_CONFIG.read_bytes() if PAGE_CONFIG.exists() else None
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                        args=CHROMIUM_ARGS, env={**os.environ, "HOME": str(home)})
            page = browser.new_page()
            page.goto(f"{HUB}/hub/login")
            page.click("text=Sign in with")
            page.fill("#login", person.user)
            page.fill("#password", password)
            page.click("#submit")
            page.wait_for_url(f"{HUB}/hub/**")
            for _ in range(rounds):
                for enabled in (True, False):
                    set_extension(enabled)
                    results[enabled]["start_s"].append(person.start())
                    launcher, status_bar = lab_load(page, person.user, enabled)
                    results[enabled]["lab_s"].append(launcher)
                    if status_bar is not None:
                        results[enabled]["status_bar_s"].append(status_bar)
                    person.stop()
            browser.close()
    finally:  # the environment's JupyterLab settings as they were (disable also locks)
        if kept is None:
            PAGE_CONFIG.unlink(missing_ok=True)
        else:
            PAGE_CONFIG.write_bytes(kept)
    rows = {}
    for enabled, r in results.items():
        rows[enabled] = {"extension": enabled,
                         "start_s_median": round(statistics.median(r["start_s"]), 2),
                         "lab_s_median": round(statistics.median(r["lab_s"]), 2),
                         "status_bar_s_median": round(statistics.median(r["status_bar_s"]), 2)
                         if r["status_bar_s"] else None,
                         "start_s": [round(x, 2) for x in r["start_s"]],
                         "lab_s": [round(x, 2) for x in r["lab_s"]]}
        print(json.dumps(rows[enabled]), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tabs", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only-starts", action="store_true", help="part 2 alone")
    args = parser.parse_args()
    passwords = json.load(open(PASSWORDS))
    people = [Person(u, passwords[u]) for u in USERS]
    if not args.only_starts:
        try:
            for p in people:
                p.start()
            few, many, direct = status_bars(people, args.tabs, args.seconds)
        finally:
            for p in people:
                p.stop()
    on_off = starts(people[0], passwords[people[0].user], args.rounds)
    if not args.only_starts:
        print(f"slurmctld RPCs: ours {many['tabs']} tabs / {few['tabs']} tabs = "
          f"{many['slurmctld_rpcs'] / max(few['slurmctld_rpcs'], 1):.2f}; "
          f"ours {many['tabs']} tabs / direct {direct['tabs']} tabs = "
          f"{many['slurmctld_rpcs'] / max(direct['slurmctld_rpcs'], 1):.3f} "
          f"(refreshes done: ours {many['refreshes']}, direct {direct['refreshes']})")
    print(f"session start with / without the extension = "
          f"{on_off[True]['start_s_median'] / on_off[False]['start_s_median']:.2f}; "
          f"JupyterLab load with / without = "
          f"{on_off[True]['lab_s_median'] / on_off[False]['lab_s_median']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
