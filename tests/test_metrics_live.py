"""Prometheus on the live system: it reads the hub's and the service's metrics, and nobody
else does (dave, with his own token, his own password guesses, on the same machine)."""

from __future__ import annotations

import subprocess

import pytest
import requests
from conftest import DEMO_CA, HUB, SERVICE, wait_until

from aifactory.cluster import hub, prometheus, services

SERVICE_DIRECT = f"http://10.77.0.1:{hub.SERVICE_PORT}/services/allocations/metrics"


def operator() -> tuple[str, str]:
    return prometheus.OPERATOR, prometheus.OPERATOR_PASSWORD.read_text().strip()


def query(expr: str) -> list[dict]:
    r = requests.get(f"{prometheus.URL}/api/v1/query", params={"query": expr}, auth=operator(),
                     timeout=10)
    r.raise_for_status()
    return r.json()["data"]["result"]


FETCH = """
import base64, ssl, sys, urllib.error, urllib.request
url, header, basic, ca = sys.argv[1:5]
request = urllib.request.Request(url)
if header:
    name, _, value = header.partition(": ")
    request.add_header(name, value)
if basic:
    request.add_header("Authorization", "Basic " + base64.b64encode(basic.encode()).decode())
try:
    with urllib.request.urlopen(request, timeout=20,
                                context=ssl.create_default_context(cafile=ca)) as r:
        code, body = r.status, r.read()
except urllib.error.HTTPError as e:
    code, body = e.code, e.read()
sys.stdout.write(f"{code}\\n" + body.decode("utf-8", "replace"))
"""


def fetch_as(user: str, url: str, header: str = "", basic: str = "") -> tuple[int, str]:
    """An HTTP request made by `user` in a login-node terminal (the system's CAs): (status,
    body)."""
    out = subprocess.run(["runuser", "-u", user, "--", "/opt/aifactory/venv/bin/python", "-I",
                          "-c", FETCH, url, header, basic, str(DEMO_CA)], capture_output=True,
                         text=True,
                         cwd="/tmp", timeout=60)
    assert out.returncode == 0, out.stderr
    code, _, body = out.stdout.partition("\n")
    return int(code), body


def test_prometheus_reads_the_hub_and_the_service_as_its_own_user(live_cluster):
    wait_until(lambda: {t["labels"]["job"]: t["health"] for t in requests.get(
        f"{prometheus.URL}/api/v1/targets", auth=operator(), timeout=10).json()["data"][
        "activeTargets"]} == {"jupyterhub": "up", "allocations": "up"}, 60,
        what="both targets to be scraped")
    assert {r["metric"]["daemon"]: r["value"][1] for r in query("aifactory_slurm_up")} == {
        "slurmctld": "1", "slurmdbd": "1"}
    # JupyterHub's own metrics, and the service's budgets in the site's unit.
    assert query('jupyterhub_total_users{job="jupyterhub"}')
    climate = query('aifactory_budget_granted{account="proj-climate"}')
    assert climate and float(climate[0]["value"][1]) > 0
    assert query("aifactory_slurm_command_seconds_count")
    owner = subprocess.run(["ps", "-o", "user=", "-p", str(services.PROMETHEUS.pid())],
                           capture_output=True, text=True).stdout.strip()
    assert owner == "prometheus"


@pytest.fixture
def daves_token(hub_client) -> str:
    return hub_client("dave").token()


def test_a_persons_token_password_or_shell_does_not_read_the_metrics(live_cluster, daves_token):
    auth = f"Authorization: token {daves_token}"
    bearer = f"Authorization: Bearer {daves_token}"
    # The hub's metrics need read:metrics, which only Prometheus's token (and admins) have.
    code, _ = fetch_as("dave", f"{HUB}/hub/metrics", auth)
    assert code == 403
    code, _ = fetch_as("dave", f"{HUB}/hub/metrics")
    assert code in (401, 403)
    # The service's, through the proxy and straight at its port (where nodes reach it).
    for url in (SERVICE + "metrics", SERVICE_DIRECT):
        for header in (bearer, auth, "X-Nothing: 1"):
            code, body = fetch_as("dave", url, header)
            assert code == 403 and "aifactory_budget" not in body, (url, header, code)
    # Prometheus itself: the loopback is this machine's, where dave has a shell.
    for basic in ("", "operator:operator", f"dave:{daves_token}"):
        code, body = fetch_as("dave", f"{prometheus.URL}/api/v1/query?query=up", basic=basic)
        assert code == 401 and "success" not in body, basic
    # Nor the files that hold the token and the password's hash.
    for path in (prometheus.METRICS_TOKEN, prometheus.ETC / "web.yml", hub.METRICS_TOKEN,
                 prometheus.OPERATOR_PASSWORD, prometheus.ETC / "prometheus.key"):
        read = subprocess.run(["runuser", "-u", "dave", "--", "cat", str(path)],
                              capture_output=True, text=True)
        assert read.returncode != 0 and not read.stdout, path
    listed = subprocess.run(["runuser", "-u", "dave", "--", "ls", str(prometheus.DATA)],
                            capture_output=True, text=True)
    assert listed.returncode != 0 and not listed.stdout  # its stored metrics
    # Prometheus itself cannot change what it is told (its password, targets, rules).
    for name in ("web.yml", "prometheus.yml", "alerts.yml"):
        changed = subprocess.run(["runuser", "-u", "prometheus", "--", "sh", "-c",
                                  f": >> {prometheus.ETC / name}"], capture_output=True)
        assert changed.returncode != 0, name
    # With the token, Prometheus's scrape works (what was refused was dave, not the URL).
    token = hub.METRICS_TOKEN.read_text().strip()
    r = requests.get(SERVICE + "metrics", headers={"Authorization": f"Bearer {token}"},
                     timeout=10)
    assert r.status_code == 200 and "aifactory_slurm_up" in r.text
