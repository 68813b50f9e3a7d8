"""A site's install, without `aif`: the package pip-installed into another prefix, then
`aifactory site install`, as the README's "On a real site" says; a hub of its own, as the
hub's account, starts a session from that prefix, and the session reaches running (its server
reported its port through aifactory.session, which only the installed config turns on).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests
from conftest import REPO, SITE, notebook_jobs, wait_until

from aifactory import slurm
from aifactory.cluster import unprivileged

PREFIX = Path("/opt/aifactory-site/venv")  # another prefix than the demo's /opt/aifactory/venv
HUB_IP = "10.77.0.1"
PORT = 8600  # the test hub's proxy; its API on PORT + 81, the proxy's API on PORT + 1

HUB_CONFIG = """
c = get_config()
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_bind_url = "http://{hub_ip}:{hub_port}"
c.JupyterHub.hub_connect_ip = "{hub_ip}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api}"
c.ConfigurableHTTPProxy.pid_file = "{workdir}/proxy.pid"
c.JupyterHub.db_url = "sqlite:///{workdir}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{workdir}/cookie_secret"
c.JupyterHub.authenticator_class = "null"
c.JupyterHub.cleanup_servers = True
c.JupyterHub.services = [{{"name": "test", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [{{"name": "test", "services": ["test"],
                             "scopes": ["admin:users", "admin:servers", "list:users"]}}]
c.JupyterHub.spawner_class = "aifactory.spawner.SlurmSpawner"
c.SlurmSpawner.site_path = "{site}"
c.SlurmSpawner.venv = "{prefix}"
c.Spawner.start_timeout = 300
c.Spawner.http_timeout = 120
"""


def source_hash() -> str:
    h = hashlib.sha256()
    for path in sorted([REPO / "pyproject.toml", *(REPO / "extensions/aifactory").rglob("*")]):
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(REPO)).encode() + path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def site_prefix(live_cluster):
    """The package installed as a site installs it: pip into a venv of the system Python,
    nothing else (kept between runs; installed again when the source changed)."""
    stamp = PREFIX / ".installed-from"
    want = source_hash()
    if not stamp.exists() or stamp.read_text() != want:
        if not (PREFIX / "bin/python").exists():
            subprocess.run(["/usr/bin/python3", "-m", "venv", str(PREFIX)], check=True)
        # From a copy: pip builds in the source folder, which is the checkout's otherwise.
        with tempfile.TemporaryDirectory() as build:
            source = Path(build, "aifactory")
            shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
                ".git", "tests", "build", "*.egg-info", "__pycache__", "notebooks"))
            pip = subprocess.run([str(PREFIX / "bin/pip"), "install", "-q",
                                  "--disable-pip-version-check", str(source)],
                                 capture_output=True, text=True, timeout=1200)
        assert pip.returncode == 0, pip.stderr[-2000:]
        stamp.write_text(want)
    for folder in (PREFIX.parent, PREFIX):
        folder.chmod(0o755)
    return PREFIX


def test_site_install_writes_what_a_session_needs_at_the_sites_prefix(site_prefix):
    done = subprocess.run([str(site_prefix / "bin/aifactory"), "site", "install"],
                          capture_output=True, text=True, cwd="/", timeout=600)  # npm ci
    assert done.returncode == 0, done.stderr
    assert f"{site_prefix}: the sessions' settings are in place" in done.stdout
    config = site_prefix / "etc/jupyter/jupyter_server_config.json"
    assert '"aifactory.session": true' in config.read_text()
    assert (site_prefix / "etc/dask/aifactory.yaml").exists()
    assert os.access(site_prefix / "bin/aifactory-desktop-session", os.X_OK)
    link = site_prefix / "share/aifactory/pythonpath/aifactory"
    assert str(link.resolve()).startswith(str(site_prefix / "lib"))
    [pth] = site_prefix.glob("lib/python3*/site-packages/aifactory-start.pth")
    assert pth.read_text() == "import aifactory.at_start\n"
    # The Jupyter server of that prefix loads the session extension (as the node will).
    listed = subprocess.run([str(site_prefix / "bin/jupyter"), "server", "extension", "list"],
                            capture_output=True, text=True, cwd="/", timeout=120)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", listed.stdout + listed.stderr)  # its colours
    assert re.search(r"aifactory\.session\s+enabled", plain), plain
    # JupyterLab of that prefix has aifactory's extension, built at the install (prebuilt).
    labs = subprocess.run([str(site_prefix / "bin/jupyter"), "labextension", "list"],
                          capture_output=True, text=True, cwd="/", timeout=120)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", labs.stdout + labs.stderr)
    assert re.search(r"aifactory-jupyterlab v[\d.]+\s+enabled\s+OK", plain), plain
    # Run again: nothing changes.
    again = subprocess.run([str(site_prefix / "bin/aifactory"), "site", "install"],
                           capture_output=True, text=True, cwd="/", timeout=120)
    assert again.returncode == 0 and "(nothing to change)" in again.stdout, again.stdout


def test_site_install_refuses_a_folder_that_is_no_environment(site_prefix, tmp_path):
    done = subprocess.run([str(site_prefix / "bin/aifactory"), "site", "install", "--venv",
                           str(tmp_path)], capture_output=True, text=True, cwd="/")
    assert done.returncode == 2 and "is not a Python environment" in done.stderr
    assert not any(tmp_path.iterdir())


class SiteHub:
    """A hub of the site's prefix, as the hub's account, beside the demo's."""

    def __init__(self, prefix: Path):
        account = pwd.getpwnam(unprivileged.HUB_USER)
        self.workdir = Path(tempfile.mkdtemp(prefix="aif-site-hub-"))
        self.token = secrets.token_hex(16)
        (self.workdir / "jupyterhub_config.py").write_text(HUB_CONFIG.format(
            port=PORT, hub_ip=HUB_IP, hub_port=PORT + 81, proxy_api=PORT + 1,
            workdir=self.workdir, token=self.token, site=SITE, prefix=prefix))
        for path in (self.workdir, self.workdir / "jupyterhub_config.py"):
            os.chown(path, account.pw_uid, account.pw_gid)
        self.api = f"http://127.0.0.1:{PORT}/hub/api"
        self.headers = {"Authorization": f"token {self.token}"}
        env = {"PATH": f"{prefix}/bin:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        self.log = open(self.workdir / "hub.log", "wb")
        self.proc = subprocess.Popen(
            [str(prefix / "bin/jupyterhub"), "-f", "jupyterhub_config.py"], cwd=self.workdir,
            env=env, stdout=self.log, stderr=self.log, user=account.pw_uid,
            group=account.pw_gid, extra_groups=os.getgrouplist(account.pw_name, account.pw_gid))
        wait_until(self.answers, 60, what="the site's hub to answer")

    def answers(self) -> bool:
        assert self.proc.poll() is None, (self.workdir / "hub.log").read_text()[-3000:]
        try:
            return requests.get(self.api + "/", headers=self.headers, timeout=5).ok
        except requests.RequestException:
            return False

    def server(self, user: str) -> dict:
        r = requests.get(f"{self.api}/users/{user}", headers=self.headers, timeout=10)
        return r.json()["servers"].get("", {}) if r.ok else {}

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        pidfile = self.workdir / "proxy.pid"
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), 15)
            except (ValueError, ProcessLookupError):
                pass
        self.log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def test_a_hub_of_the_sites_prefix_starts_a_session_that_reaches_running(site_prefix):
    subprocess.run([str(site_prefix / "bin/aifactory"), "site", "install"], check=True,
                   capture_output=True, cwd="/")
    hub = SiteHub(site_prefix)
    user = "bob"
    try:
        requests.post(f"{hub.api}/users", json={"usernames": [user]}, headers=hub.headers,
                      timeout=10)
        started = requests.post(f"{hub.api}/users/{user}/server", headers=hub.headers,
                                json={"profile": "cpu", "cpus": 1, "memory_gb": 2,
                                      "walltime": "00:30:00"}, timeout=60)
        assert started.status_code in (201, 202), started.text
        wait_until(lambda: hub.server(user).get("ready"), 240, interval=2,
                   what="the session from the site's prefix to be ready")
        [job] = [j for j in notebook_jobs(user) if j.running]
        # The server on the node is the site prefix's own.
        pids = subprocess.run(["pgrep", "-u", user, "-f", "jupyterhub-singleuser"],
                              capture_output=True, text=True).stdout.split()
        commands = [Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                    for p in pids]
        assert any(str(site_prefix / "bin/python") in c for c in commands), commands
        assert slurm.job(job.job_id).user == user
    finally:
        requests.delete(f"{hub.api}/users/{user}/server", headers=hub.headers, timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(j.alive for j in notebook_jobs(user)):
            time.sleep(1)
        hub.close()
