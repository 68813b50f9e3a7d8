"""Fixtures for tests against the live local cluster (brought up by `./aif test`).

Nothing here is mocked: jobs go through slurmctld to slurmd in network namespaces, logins go
through the proxy to the hub and the demo's OpenID provider (a real oidc-provider). When the cluster is not up, tests that need it skip
locally and fail in CI (CI=true).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import json
import os
import pwd
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urljoin

import psycopg
import pytest
import requests

from aifactory import cluster, slurm
from aifactory.allocations import Snapshot

HUB = "https://hub.localhost:8443"
HUB_HTTP = "http://hub.localhost:8000"  # only redirects to HUB
# Each user's server and the service have origins of their own (JupyterHub's subdomain_host).
SERVICE = "https://allocations--service.hub.localhost:8443/services/allocations/"


def user_origin(user: str) -> str:
    return f"https://{user}.hub.localhost:8443"


def user_url(user: str) -> str:
    return f"{user_origin(user)}/user/{user}/"


# Everything a browser reaches is https, with certificates of the demo's own CA: the tests
# trust that CA, and only it (never an unchecked certificate).
DEMO_CA = Path("/etc/aifactory/tls/aifactory-demo-ca.crt")


def _trust_the_demo_ca() -> None:
    """requests (here and in what the tests run, pip as a demo user among them) trusts what
    it trusted before and the demo's CA: one bundle of both, readable by the demo users."""
    if not DEMO_CA.exists():
        return
    import certifi
    before = Path(os.environ.get("REQUESTS_CA_BUNDLE") or certifi.where())
    bundle = Path("/var/lib/aifactory/tests-ca-bundle.pem")  # root's folder, readable
    if before == bundle:
        return
    bundle.write_text(before.read_text().rstrip("\n") + "\n" + DEMO_CA.read_text())
    bundle.chmod(0o644)
    os.environ["REQUESTS_CA_BUNDLE"] = str(bundle)


_trust_the_demo_ca()
ARTIFACTS = Path(__file__).parent / "artifacts"
REPO = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "aifactory"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORDS = Path("/var/lib/aifactory/demo-passwords.json")
# The hub's database is PostgreSQL's (aifactory.cluster.hub_database); root reads its password.
HUB_DB_PASSWORD = "/var/lib/aifactory/secrets/hub-database-password"


def hub_db(sql: str, *params) -> list[tuple]:
    """Rows of the hub's own database, as the hub reads them."""
    password = Path(HUB_DB_PASSWORD).read_text().strip()
    with psycopg.connect(host="127.0.0.1", dbname="jupyterhub", user="jupyterhub",
                         password=password, connect_timeout=10) as db:
        return db.execute(sql, params).fetchall()
IDP = "https://idp.localhost:8010"
IDP_PEOPLE = Path("/var/lib/aifactory/idp/people.json")


def idp_login(http: requests.Session, r: requests.Response, user: str, password: str,
              stop_at: str = "/hub/oauth_callback", follow: bool = True) -> requests.Response:
    """From the hub's redirect to the IdP: the IdP's login form sent, then its redirects
    followed up to the hub's callback, whose answer is returned (or the IdP's refusal);
    with follow=False, the IdP's redirect to the callback, not followed."""
    def next_url(r):
        return urljoin(r.url, r.headers["Location"])

    while r.status_code in (301, 302, 303) and not next_url(r).startswith(IDP + "/interaction"):
        r = http.get(next_url(r), allow_redirects=False)
    if r.status_code not in (301, 302, 303):
        return r  # refused before the IdP (the hub on a foreign host)
    r = http.get(next_url(r), allow_redirects=False)
    action = re.search(r'<form method="post" action="([^"]+)"', r.text)
    assert action, f"no login form at the IdP ({r.status_code}): {r.text[:300]}"
    r = http.post(urljoin(r.url, html.unescape(action.group(1))), allow_redirects=False,
                  data={"login": user, "password": password})
    while r.status_code in (302, 303) and stop_at not in r.headers["Location"]:
        r = http.get(next_url(r), allow_redirects=False)
    if r.status_code not in (302, 303) or not follow:
        return r  # the IdP refused, or the caller takes the callback from here
    return http.get(next_url(r), allow_redirects=False)


@contextlib.contextmanager
def idp_entitlements(user: str, without: list[str]):
    """At the IdP, for the time of the block: `user` without these entitlements (their
    groups' names); the IdP reads its people file again when it changes."""
    original = IDP_PEOPLE.read_text()
    table = json.loads(original)
    person = next(p for p in table["people"] if p["login"] == user)
    person["entitlements"] = [e for e in person["entitlements"]
                              if e.rsplit(":", 1)[1] not in without]
    _write_people(json.dumps(table, indent=1) + "\n")
    try:
        yield
    finally:
        _write_people(original)


def wait_for_the_service_to_see_teaching(token: str, course: str = "dl101") -> None:
    """After an instructor's entitlement came back and they logged in again: the service's
    view of who is who is up to a minute old; later tests (notebook 05) teach at once."""
    from aifactory.client import AllocationsError, ServiceClient
    service = ServiceClient(SERVICE, token)

    def teaches() -> bool:
        try:
            return service.course(course)["course"] == course
        except AllocationsError:
            return False
    wait_until(teaches, 70, interval=3, what=f"the service to see the instructor of {course}")


def _write_people(text: str) -> None:
    stat = IDP_PEOPLE.stat()
    IDP_PEOPLE.write_text(text)
    os.chown(IDP_PEOPLE, stat.st_uid, stat.st_gid)
    # The IdP compares modification times: make sure this write is seen as a change.
    os.utime(IDP_PEOPLE, ns=(time.time_ns(), max(time.time_ns(), stat.st_mtime_ns + 1_000_000)))


def pytest_collection_modifyitems(items):
    """Tests that need the running cluster are `live`: `pytest -m "not live"` is the fast loop.
    Tests marked `slow` restart services (slurmctld, the hub): they run after all the others,
    in their usual order, so that no other test meets a restart."""
    for item in items:
        if "live_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.live)
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)


def _missing(reason: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"the live cluster is required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def live_cluster():
    """The running cluster; every live test depends on this."""
    if os.geteuid() != 0:
        _missing("live tests run as root (they act as the demo users)")
    state = cluster.status()
    if not state["ok"]:
        down = [n for n, s in state["services"].items() if not s["running"]]
        _missing(f"the cluster is not up (not running: {', '.join(down) or 'checks failed'}); "
                 "run ./aif cluster up")
    # Killed without `down`, slurmctld can lose a cancel made in its last seconds, so an
    # earlier run's jobs may come back; the tests expect a queue holding only their own jobs.
    _cancel_every_job()
    # The hub forgets a server whose job ended at its next poll; one it found running when it
    # started is first waited for (http_timeout), and until then its owner cannot start one.
    wait_until(lambda: not hub_servers(), 200, interval=2,
               what="the hub to forget the servers whose jobs ended")
    yield state
    # `down` keeps jobs (sessions outlive it), and their processes outlive a stopped slurmd:
    # the next bed would find this one's servers running as its users.
    try:
        _cancel_every_job()
    except (slurm.SlurmError, AssertionError) as e:  # said, not a failure of the last test
        print(f"\nthe run's jobs were not all cancelled at its end: {e}")


def _cancel_every_job() -> None:
    for job in slurm.jobs():
        if job.alive and not job.completing:
            slurm.cancel(job.job_id)
    wait_until(lambda: not any(j.alive for j in slurm.jobs()), 60, what="an empty queue")


def hub_servers() -> list[str]:
    """The users the hub's database has a server for."""
    return [name for (name,) in hub_db(
        "SELECT users.name FROM spawners JOIN users ON users.id = spawners.user_id"
        " WHERE spawners.server_id IS NOT NULL")]


@pytest.fixture(scope="session")
def passwords(live_cluster) -> dict[str, str]:
    return json.loads(PASSWORDS.read_text())


def alerts_firing(alert: str) -> list[dict]:
    """The live Prometheus's firing alerts of this name (as its operator)."""
    from aifactory.cluster import prometheus
    r = requests.get(f"{prometheus.URL}/api/v1/alerts", timeout=10, auth=(
        prometheus.OPERATOR, prometheus.OPERATOR_PASSWORD.read_text().strip()))
    r.raise_for_status()
    return [a for a in r.json()["data"]["alerts"]
            if a["labels"]["alertname"] == alert and a["state"] == "firing"]


def wait_until(check, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def submit(user: str, *sbatch_args: str, script: str = "sleep 1") -> str:
    """sbatch as `user` with the given options; returns the job id."""
    out = slurm.run(["sbatch", "--parsable", "--output=/dev/null", *sbatch_args, "--wrap", script],
                    user=user)
    return out.strip().split(";")[0]


def as_user(user: str, *command: str, env: dict | None = None) -> str:
    """`command` run by `user` in a login-node terminal (in /tmp, with `env` added); its output."""
    prefix = ["env", *(f"{k}={v}" for k, v in env.items())] if env else []
    out = subprocess.run(["runuser", "-u", user, "--", *prefix, *command], capture_output=True,
                         text=True, cwd="/tmp", timeout=300)
    assert out.returncode == 0, f"{command} as {user}: {out.stderr}"
    return out.stdout


def cli(user: str, *args: str, env: dict | None = None) -> str:
    """`aifactory ...` as `user` on the login node (it asks Slurm directly)."""
    return as_user(user, "/opt/aifactory/venv/bin/aifactory", *args, env=env)


def add_account(name: str, user: str, limit: str, coordinator: bool = False) -> None:
    """A fresh Slurm account of `user`'s with GrpTRESMins `limit` and no usage (one left by a
    killed run is made again); `coordinator`: `user` coordinates it too."""
    try:
        slurm.sacctmgr("delete", "account", name)
    except slurm.SlurmError:
        pass
    slurm.sacctmgr("add", "account", name, "Description=tests", "Organization=tests")
    slurm.sacctmgr("add", "user", user, f"Account={name}")
    slurm.sacctmgr("modify", "account", "where", f"name={name}", "set", f"GrpTRESMins={limit}")
    slurm.sacctmgr("modify", "account", "where", f"name={name}", "set", "RawUsage=0")
    if coordinator:
        slurm.sacctmgr("add", "coordinator", f"account={name}", f"names={user}")


def remove_account(name: str, jobs: list[str]) -> None:
    """Cancel `jobs`, wait until none of the account's jobs lives, and delete the account."""
    for job_id in jobs:
        slurm.cancel(job_id)
    wait_until(lambda: not any(j.account == name and j.alive for j in slurm.jobs()), 60,
               what=f"the jobs of {name} to end")
    slurm.sacctmgr("delete", "account", name)


def job_state(job_id: str) -> slurm.Job | None:
    return slurm.job(job_id)


def sacct_record(job_id: str) -> slurm.PastJob | None:
    records = slurm.accounting_jobs(job_ids=[job_id])
    return next((r for r in records if r.job_id == str(job_id)), None)


class HubClient:
    """A person's browser session with the hub, through the proxy (cookies, xsrf)."""

    def __init__(self, user: str):
        self.user = user
        self.http = requests.Session()

    def xsrf(self) -> str:
        # The hub's and the user's server each set an _xsrf cookie, on their own paths.
        return next((c.value for c in self.http.cookies
                     if c.name == "_xsrf" and c.path.startswith("/hub")), "")

    def login(self, password: str, hub: str = HUB) -> requests.Response:
        """Log in as a browser does: the hub sends us to the IdP, we send the IdP's form,
        the IdP sends us back to the hub's callback. Returns the callback's answer (302 when
        logged in), or the IdP's when it refused (no callback)."""
        r = self.http.get(f"{hub}/hub/oauth_login?next=", allow_redirects=False)
        return idp_login(self.http, r, self.user, password)

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"X-XSRFToken": self.xsrf()}
        return self.http.request(method, f"{HUB}/hub/api{path}", headers=headers, **kwargs)

    def token(self, scopes: list[str] | None = None) -> str:
        """A new API token of this user's (all their scopes, or only `scopes`)."""
        body = {"note": "test", "expires_in": 3600}
        if scopes is not None:
            body["scopes"] = scopes
        r = self.api("POST", f"/users/{self.user}/tokens", json=body)
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def server(self) -> dict:
        r = self.api("GET", "/user")
        r.raise_for_status()
        return r.json()["servers"].get("", {})

    def submit_form(self, **fields) -> requests.Response:
        """Press "Start" on the spawn form with these fields (as a browser posts them)."""
        return self.http.post(f"{HUB}/hub/spawn", data=dict(fields, _xsrf=self.xsrf()),
                              allow_redirects=False)

    def form_error(self, **fields) -> str:
        """The error the form shows for these fields ("" if it accepted them)."""
        r = self.submit_form(**fields)
        if r.status_code == 302:
            return ""
        match = re.search(r'class="spawn-error-msg[^"]*">\s*Error: (.*?)</p>', r.content.decode(), re.S)
        assert match, f"no error message on the form (status {r.status_code})"
        return html.unescape(match.group(1).strip())

    def start(self, timeout: float = 120, profile: str = "h100-1", **fields) -> dict:
        r = self.submit_form(profile=profile, **fields)
        assert r.status_code == 302, f"spawn answered {r.status_code}: {r.text[:300]}"
        return wait_until(lambda: self.server().get("ready") and self.server(), timeout,
                          what=f"{self.user}'s server to be ready")

    def stop(self) -> None:
        r = self.api("DELETE", f"/users/{self.user}/server")
        assert r.status_code in (202, 204), f"stop answered {r.status_code}: {r.text[:300]}"
        wait_until(lambda: not self.server(), 60, what=f"{self.user}'s server to stop")


@pytest.fixture
def hub_client(live_cluster, passwords):
    """Log in as a demo user; stops that user's server afterwards."""
    clients = []

    def make(user: str) -> HubClient:
        client = HubClient(user)
        r = client.login(passwords[user])
        assert r.status_code == 302, f"login of {user} answered {r.status_code}"
        clients.append(client)
        return client

    yield make
    for client in clients:
        try:
            if client.server():
                client.stop()
        except Exception:
            pass


@pytest.fixture
def gpus_taken(live_cluster):
    """Every GPU of gpu01 and gpu02 busy with alice's jobs (gpu03 is the course's)."""
    jobs = []
    try:
        for _ in range(2):
            jobs.append(submit("alice", "--partition=gpu", "--gres=gpu:4", "--time=10",
                               script="sleep 600"))
        wait_until(lambda: all((j := slurm.job(i)) and j.state == "RUNNING" for i in jobs), 30,
                   what="the blocking jobs to run")
        yield jobs
    finally:
        for job_id in jobs:
            slurm.cancel(job_id)


def progress_messages(client: HubClient, until: str, timeout: float = 60) -> list[str]:
    """Read the pending page's event stream until a message contains `until`."""
    seen = []
    with client.http.get(f"{HUB}/hub/api/users/{client.user}/server/progress", stream=True,
                         timeout=timeout) as r:
        for line in r.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                event = json.loads(line[5:])
                seen.append(event.get("message", ""))
                if until in seen[-1] or event.get("failed") or event.get("ready"):
                    break
    return seen


def notebook_jobs(user: str) -> list[slurm.Job]:
    return [j for j in slurm.jobs(user=user) if j.name == f"jupyterhub-{user}"
            and j.alive]


def process_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def notebook_process(user: str, job_id: str | None = None) -> int | None:
    """The pid of `user`'s jupyterhub-singleuser process (found via its environment), of
    that job if one is named."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if "jupyterhub-singleuser" in cmdline and re.search(r"python", cmdline):
                env = process_env(int(proc.name))
                if env.get("JUPYTERHUB_USER") == user and job_id in (None, env.get("SLURM_JOB_ID")):
                    return int(proc.name)
        except (OSError, ValueError):
            continue
    return None


# --- Dask from a notebook, as a demo user (tests/dask_driver.py) ---------------------------

DRIVER = (Path(__file__).parent / "dask_driver.py").read_text()
# The scheme Dask clusters use (mutual TLS on both beds; aifactory.ssl_fix makes it work with
# Debian 13's OpenSSL 3.5).
DASK_SCHEME = "tls"
VENV_PYTHON = "/opt/aifactory/venv/bin/python"
SITE = "/etc/aifactory/hub_config/site.yaml"
# What a notebook job's environment holds that must not reach the worker jobs.
NOTEBOOK_ENV = {"SLURM_JOB_ID": "990001", "SLURM_JOB_ACCOUNT": "proj-climate",
                "SLURM_MEM_PER_NODE": "1024", "SLURM_CPUS_ON_NODE": "1",
                "SBATCH_PARTITION": "cpu", "SBATCH_TIMELIMIT": "1"}


def driver(user: str, *args: str, env: dict | None = None, prefix: tuple = ()) -> subprocess.Popen:
    """The driver as `user` in /tmp, as a notebook kernel would run it."""
    environment = {"PATH": "/opt/aifactory/venv/bin:/usr/bin:/bin", "AIFACTORY_SITE": SITE,
                   "HOME": f"/home/{user}", **(env or {})}
    return subprocess.Popen(["runuser", "-u", user, "--", "env", "-i",
                             *(f"{k}={v}" for k, v in environment.items()),
                             *prefix, VENV_PYTHON, "-c", DRIVER, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/tmp")


def lines(proc: subprocess.Popen, count: int, timeout: float = 300) -> dict:
    """The first `count` JSON lines the driver prints, merged; other lines under "printed"."""
    printed = []
    result = {"printed": printed}
    deadline = time.monotonic() + timeout
    while len(result) < count + 1:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"driver ended: {proc.stderr.read()[-3000:]}")
        if line.startswith("{"):
            result.update(json.loads(line))
        else:  # what the notebook would show
            printed.append(line.strip())
        assert time.monotonic() < deadline, "driver too slow"
    return result


def tagged(tag: str) -> list[slurm.Job]:
    return [j for j in slurm.jobs() if j.comment == tag
            and j.alive]


def aifactory(*args: str) -> subprocess.CompletedProcess:
    """The `aifactory` command as root, with this checkout's hub_config."""
    env = dict(os.environ, AIFACTORY_HUB_CONFIG=str(REPO / "hub_config"))
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, env=env, timeout=600)


# Recorded Slurm answers for the pure tests (tests/data), and a snapshot made of them.
DATA = Path(__file__).parent / "data"
NOW = dt.datetime(2026, 11, 22, 12, 0).timestamp()
DAY = 86400


def past(job_id, account, gpus, start, end, user="alice", state="COMPLETED"):
    return slurm.PastJob(job_id, "train", user, account, "gpu", state, gpus, 8, int(start),
                         int(end), int((end or NOW) - start), 60, 0.0)


def snapshot(**parts) -> Snapshot:
    base = {
        "shares": slurm.parse_sshare((DATA / "sshare-22.05.txt").read_text()),
        "members": {"alice": ["proj-climate"], "bob": ["proj-climate", "proj-tiny"],
                    "student1": ["course-dl101"], "student2": ["course-dl101"],
                    "carol": ["course-dl101"]},
        "coordinators": {"proj-climate": ["alice"], "course-dl101": ["carol"], "proj-tiny": []},
        "history": [], "period": "QUARTERLY", "queue": {}, "nodes": [], "reservations": {},
    }
    base.update(parts)
    return Snapshot(base, {k: NOW - 3 for k in base}, {})


@pytest.fixture
def page(live_cluster, tmp_path):
    """A page of Debian's chromium, driven by Playwright, as a person's browser that trusts
    the demo's CA (in the NSS database of its own home, as a person adds it)."""
    from playwright import sync_api as playwright
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=CHROMIUM_ARGS, env=browser_env(tmp_path))
        yield browser.new_page(viewport={"width": 1280, "height": 900})
        browser.close()


def browser_env(home: Path) -> dict:
    """A home for Chromium whose NSS database trusts the demo's CA (README: certutil)."""
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True, exist_ok=True)
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True,
                   capture_output=True)
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,",
                    "-n", "aifactory demo CA", "-i", str(DEMO_CA)], check=True,
                   capture_output=True)
    return {**os.environ, "HOME": str(home)}


def log_in_browser(page, user: str, password: str, hub: str = HUB, screenshot: str = "") -> None:
    """Log in at `hub` as a person does: "Sign in with ..." on the hub's page, then the IdP's
    own login form (when the hub sent the browser there)."""
    page.goto(f"{hub}/hub/login")
    page.click("text=Sign in with")
    page.wait_for_load_state()
    if not page.url.startswith(IDP):
        return
    page.fill("#login", user)
    page.fill("#password", password)
    if screenshot:
        page.screenshot(path=ARTIFACTS / screenshot)
    page.click("#submit")


# --- notebook jobs (test_notebook_jobs_live.py, test_lab_extension_live.py) -------------

SLOW_CELL = "import time\nfor i in range(int(seconds)):\n    print('tick', i, flush=True)\n    time.sleep(1)"


def write_notebook(user: str, name: str) -> str:
    """A notebook in `user`'s home with a parameters cell; its path from the home."""
    import nbformat
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("tag = 'default'\nlr = 0.001\nseconds = 0")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params,
                nbformat.v4.new_code_cell("import os\nprint(f'tag={tag} lr={lr} "
                                          "gpus={os.environ.get(\"CUDA_VISIBLE_DEVICES\")} "
                                          "user={os.environ[\"USER\"]}')"),
                nbformat.v4.new_code_cell(SLOW_CELL),
                nbformat.v4.new_code_cell("print('the end')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    pw = pwd.getpwnam(user)
    folder = Path(pw.pw_dir) / "nbjobs-test"
    folder.mkdir(exist_ok=True)
    os.chown(folder, pw.pw_uid, pw.pw_gid)
    path = folder / name
    nbformat.write(nb, str(path))
    os.chown(path, pw.pw_uid, pw.pw_gid)
    return f"nbjobs-test/{name}"


class SessionAPI:
    """alice's session server's notebook-job API, with a token of hers."""

    def __init__(self, user: str, token: str):
        self.base = f"{user_url(user)}aifactory/api/notebook-jobs"
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {token}"

    def call(self, method: str, path: str = "", **kwargs) -> requests.Response:
        return self.http.request(method, f"{self.base}/{path}".rstrip("/"), timeout=60, **kwargs)

    def job(self, job_id: str) -> dict:
        r = self.call("GET", job_id)
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, job_id: str, done=lambda j: not j["active"] and all(
                 r["state"] not in ("PENDING", "RUNNING", "ENDED") for r in j["runs"]),
             timeout: float = 180) -> dict:
        return wait_until(lambda: j if done(j := self.job(job_id)) else None, timeout,
                          interval=1, what=f"notebook job {job_id}")
