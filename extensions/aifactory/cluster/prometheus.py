"""Prometheus for the operators (bring-up, root; Prometheus itself runs as `prometheus`).

Debian's `prometheus`, on the loopback only, behind a password (its web config's basic
auth): people log in to this machine too, and the metrics name every project's budget. It
scrapes the hub's /hub/metrics (over internal_ssl, with a certificate the services' CA
signed) and the allocations service's /services/allocations/metrics, both with the metrics
token that the hub gives its `prometheus` service the read:metrics scope for. It evaluates
hub_config/prometheus/alerts.yml.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from . import services
from . import hub, unprivileged
from .hub import SECRETS_DIR, SERVICE_PORT, Front, ensure
from .system import (ETC_DIR, STATE_DIR, ClusterError, read_as, secret, sh, wait_for,
                     write_if_changed)

USER = "prometheus"  # Debian's package makes it
ETC = ETC_DIR / "prometheus"
DATA = STATE_DIR / "prometheus"
PORT = 9090
URL = f"http://127.0.0.1:{PORT}"
METRICS_TOKEN = ETC / "metrics-token"  # its copy of hub.METRICS_TOKEN, which it sends
OPERATOR = "operator"  # the one login of Prometheus's web page and API
OPERATOR_PASSWORD = SECRETS_DIR / "prometheus-operator-password"  # root's
CERT_NAME = "prometheus"  # its client certificate at the hub's API (internal_ssl)
SCRAPE_EVERY_S = 10


def config(f: Front, hub_api_port: int, rules: Path) -> dict:
    """prometheus.yml: the hub and the service, each with the metrics token."""
    token = {"type": "Bearer", "credentials_file": str(METRICS_TOKEN)}
    return {
        "global": {"scrape_interval": f"{SCRAPE_EVERY_S}s",
                   "evaluation_interval": f"{SCRAPE_EVERY_S}s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": "jupyterhub", "scheme": "https", "metrics_path": "/hub/metrics",
             "authorization": token,
             "tls_config": {"ca_file": str(ETC / "hub-ca.crt"),
                            "cert_file": str(ETC / f"{CERT_NAME}.crt"),
                            "key_file": str(ETC / f"{CERT_NAME}.key")},
             "static_configs": [{"targets": [f"{f.hub_ip}:{hub_api_port}"]}]},
            {"job_name": "allocations", "metrics_path": "/services/allocations/metrics",
             "authorization": token,
             "static_configs": [{"targets": [f"{f.hub_ip}:{SERVICE_PORT}"]}]},
        ],
    }


def command() -> list[str]:
    return ["/usr/bin/prometheus", f"--config.file={ETC / 'prometheus.yml'}",
            f"--web.config.file={ETC / 'web.yml'}", f"--storage.tsdb.path={DATA}",
            "--storage.tsdb.retention.time=15d", f"--web.listen-address=127.0.0.1:{PORT}"]


def _bcrypt(password: str) -> str:
    """The hash Prometheus's basic auth checks (htpasswd reads the password on stdin)."""
    out = sh("htpasswd", "-niB", "-C", "10", OPERATOR, input=password + "\n").stdout
    return out.strip().split(":", 1)[1]


def _certificate(f: Front) -> None:
    """Prometheus's client certificate at the hub's API, and the CA the hub's is signed by
    (made in the hub's store as the hub, read back with its rights)."""
    hub.sign(f, unprivileged.HUB_USER, CERT_NAME)
    made = f.certs / CERT_NAME
    for source, name in ((made / f"{CERT_NAME}.crt", f"{CERT_NAME}.crt"),
                         (made / f"{CERT_NAME}.key", f"{CERT_NAME}.key"),
                         (f.certs / "services-ca_trust.crt", "hub-ca.crt")):
        _install(ETC / name, read_as(unprivileged.HUB_USER, source))


def _install(path: Path, text: str) -> None:
    """A file Prometheus reads and cannot change."""
    unprivileged.install_for(USER, path.parent, {path.name: text})


def files() -> tuple[Path, ...]:
    return tuple(ETC / n for n in ("prometheus.yml", "web.yml", "alerts.yml", "metrics-token",
                                   f"{CERT_NAME}.crt", "hub-ca.crt"))


def ensure_files(f: Front, hub_config: Path, hub_api_port: int) -> None:
    """Its configuration, the metrics token and the operator's password (before the hub
    starts: the hub reads the token)."""
    if shutil.which("htpasswd") is None:
        raise ClusterError("htpasswd is missing (Debian package apache2-utils).")
    _install(METRICS_TOKEN, secret(hub.METRICS_TOKEN) + "\n")
    password = secret(OPERATOR_PASSWORD)
    web = ETC / "web.yml"
    known = yaml.safe_load(web.read_text()) if web.exists() else None
    hashed = ((known or {}).get("basic_auth_users") or {}).get(OPERATOR, "")
    if not hashed or not _password_matches(password, hashed):
        hashed = _bcrypt(password)
    _install(web, yaml.safe_dump({"basic_auth_users": {OPERATOR: hashed}}))
    _install(ETC / "alerts.yml", (hub_config / "prometheus/alerts.yml").read_text())
    _certificate(f)
    _install(ETC / "prometheus.yml", yaml.safe_dump(
        config(f, hub_api_port, ETC / "alerts.yml"), sort_keys=False))
    checked = subprocess.run(["promtool", "check", "config", str(ETC / "prometheus.yml")],
                             capture_output=True, text=True, timeout=60)
    if checked.returncode != 0:
        raise ClusterError("promtool finds the Prometheus configuration wrong: "
                           + (checked.stdout + checked.stderr).strip().splitlines()[-1])


def _password_matches(password: str, hashed: str) -> bool:
    """htpasswd -v checks a password against a bcrypt hash it is given in a file."""
    scratch = SECRETS_DIR / "prometheus-operator.htpasswd"
    scratch.unlink(missing_ok=True)
    write_if_changed(scratch, f"{OPERATOR}:{hashed}\n", 0o600)
    try:
        return sh("htpasswd", "-vi", str(scratch), OPERATOR, input=password + "\n",
                  check=False).returncode == 0
    finally:
        scratch.unlink()


def start(log=print) -> None:
    if Path("/run/systemd/system").is_dir():
        # Debian's package starts its own unit (every address, no password) where systemd
        # runs; this one replaces it.
        sh("systemctl", "disable", "--now", "prometheus.service", check=False)
    DATA.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.chown(DATA, USER, USER)
    DATA.chmod(0o700)  # every metric, every project's budget
    ensure(services.PROMETHEUS, command(), {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
           DATA, files(), user=USER, log=log)
    wait_for(_ready, "Prometheus", timeout=60)


def _ready() -> bool:
    if not services.PROMETHEUS.running():
        raise ClusterError("Prometheus stopped at its start; see /var/log/aifactory/"
                           "prometheus.log")
    import requests
    try:
        return requests.get(f"{URL}/-/ready", timeout=2,
                            auth=(OPERATOR, OPERATOR_PASSWORD.read_text().strip())).ok
    except requests.RequestException:
        return False
