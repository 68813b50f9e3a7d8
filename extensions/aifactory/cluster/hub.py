"""The hub's three processes as the demo runs them, each a service of its own: the proxy, the
hub, the allocations service. The proxy and the service are not the hub's children, so a hub
restart (a new config, an upgrade) leaves browsers' connections to their sessions open and
the widgets answering; the hub finds the proxy's routes and its sessions again.

Their commands and environments are pure functions of `Front`, the addresses and files that
`up` decides; a site's systemd units (README) carry the same.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from . import services
from .system import LOG_DIR, STATE_DIR, ClusterError, as_account, read_as, sh, wait_for

SECRETS_DIR = STATE_DIR / "secrets"
PROXY_TOKEN = SECRETS_DIR / "proxy-auth-token"  # the hub's key to the proxy's API
SERVICE_TOKEN = SECRETS_DIR / "allocations-api-token"  # the service's token at the hub
DATABASE_PASSWORD = SECRETS_DIR / "hub-database-password"  # the hub's at PostgreSQL
METRICS_TOKEN = SECRETS_DIR / "metrics-token"  # Prometheus's, at the hub and the service
STAMPS = STATE_DIR / "started-with"  # what each service was last started with
SERVICE_CERT_NAME = "allocations-service"
PROXY_API_PORT = 8001
HUB_API_PORT = 8081
SERVICE_PORT = 8090


@dataclass(frozen=True)
class Front:
    public_url: str  # what browsers reach: the proxy (https://hub.localhost:8443)
    http_port: int  # plain http there only redirects to it
    hub_ip: str  # the hub's API and the service, where compute nodes reach them
    tls_cert: Path  # the proxy's certificate for browsers, and its key
    tls_key: Path
    certs: Path  # the hub's internal_ssl folder (its CAs and the certificates they signed)
    venv: Path
    site: Path  # the installed site.yaml
    service_dir: Path  # what the allocations service reads: its certificate, the CA, a token
    proxy_dir: Path  # what the proxy reads: its certificates and keys
    hub_dir: Path  # the hub's secrets: its tokens, its database password, its OIDC client's
    course_groups_from: str  # "idp" or "unix"
    slurm_bin: str = ""  # Slurm's commands under a site's own prefix (AIFACTORY_SLURM_BIN)

    @property
    def public_host(self) -> str:
        return urlparse(self.public_url).hostname

    @property
    def public_port(self) -> int:
        return urlparse(self.public_url).port or 443

    @property
    def hub_api(self) -> str:
        return f"https://{self.hub_ip}:{HUB_API_PORT}/hub/api"

    @property
    def service_url(self) -> str:
        return f"http://{self.hub_ip}:{SERVICE_PORT}"


# The proxy's files (in its own folder) and where they come from: the browsers' certificate
# (`tls_cert`, `tls_key`), or the hub's internal_ssl folder.
PROXY_FILES = {"public.crt": "tls_cert", "public.key": "tls_key",
               "proxy-api.key": "proxy-api/proxy-api.key",
               "proxy-api.crt": "proxy-api/proxy-api.crt",
               "proxy-api-ca_trust.crt": "proxy-api-ca_trust.crt",
               "proxy-client.key": "proxy-client/proxy-client.key",
               "proxy-client.crt": "proxy-client/proxy-client.crt",
               "proxy-client-ca_trust.crt": "proxy-client-ca_trust.crt"}


def proxy_command(f: Front) -> list[str]:
    """configurable-http-proxy as JupyterHub would start it under internal_ssl: https for
    browsers, host routing (users' subdomains), its API and its requests to sessions with
    the certificates the hub's CAs signed."""
    d = f.proxy_dir
    return ["configurable-http-proxy",
            "--ip", "127.0.0.1", "--port", str(f.public_port),
            "--redirect-port", str(f.http_port), "--redirect-to", str(f.public_port),
            "--api-ip", "127.0.0.1", "--api-port", str(PROXY_API_PORT),
            "--error-target", f"https://{f.hub_ip}:{HUB_API_PORT}/hub/error",
            "--log-level", "info", "--host-routing",
            "--ssl-key", str(d / "public.key"), "--ssl-cert", str(d / "public.crt"),
            "--api-ssl-key", str(d / "proxy-api.key"),
            "--api-ssl-cert", str(d / "proxy-api.crt"),
            "--api-ssl-ca", str(d / "proxy-api-ca_trust.crt"),
            "--api-ssl-request-cert", "--api-ssl-reject-unauthorized",
            "--client-ssl-key", str(d / "proxy-client.key"),
            "--client-ssl-cert", str(d / "proxy-client.crt"),
            "--client-ssl-ca", str(d / "proxy-client-ca_trust.crt"),
            "--client-ssl-request-cert", "--client-ssl-reject-unauthorized"]


def proxy_files(f: Front, hub_user: str) -> dict[str, str]:
    """What the proxy reads, as it is to be given to it (name in proxy_dir: text); the hub's
    own files read with the hub's rights."""
    given = {}
    for name, source in PROXY_FILES.items():
        if source in ("tls_cert", "tls_key"):
            given[name] = Path(getattr(f, source)).read_text()
        else:
            given[name] = read_as(hub_user, f.certs / source)
    return given


def service_command(f: Front) -> list[str]:
    return [str(f.venv / "bin/python"), "-P", "-m", "aifactory.service"]


def service_environment(f: Front, token: str) -> dict[str, str]:
    """What JupyterHub gives a service it starts itself, for one it does not: its token (also
    its OAuth client's secret), where the hub's API and its own URLs are, its certificate."""
    origin = f"https://allocations--service.{f.public_host}:{f.public_port}"
    prefix = "/services/allocations/"
    scopes = '["access:services", "access:services!service=allocations"]'
    d = f.service_dir
    return {
        "PATH": f"{f.venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "JUPYTERHUB_SERVICE_NAME": "allocations",
        "JUPYTERHUB_API_TOKEN": token,
        "JUPYTERHUB_API_URL": f.hub_api,
        "JUPYTERHUB_BASE_URL": "/",
        "JUPYTERHUB_CLIENT_ID": "service-allocations",
        "JUPYTERHUB_HOST": f.public_url,
        "JUPYTERHUB_PUBLIC_HUB_URL": f"{f.public_url}/hub/",
        "JUPYTERHUB_PUBLIC_URL": origin + prefix,
        "JUPYTERHUB_SERVICE_PREFIX": prefix,
        "JUPYTERHUB_SERVICE_URL": f.service_url,
        "JUPYTERHUB_OAUTH_CALLBACK_URL": f"{origin}{prefix}oauth_callback",
        "JUPYTERHUB_OAUTH_SCOPES": scopes,
        "JUPYTERHUB_OAUTH_ACCESS_SCOPES": scopes,
        "JUPYTERHUB_COOKIE_HOST_PREFIX_ENABLED": "1" if f.public_url.startswith("https") else "0",
        "JUPYTERHUB_SSL_KEYFILE": str(d / f"{SERVICE_CERT_NAME}.key"),
        "JUPYTERHUB_SSL_CERTFILE": str(d / f"{SERVICE_CERT_NAME}.crt"),
        "JUPYTERHUB_SSL_CLIENT_CA": str(d / "services-ca_trust.crt"),
        "AIFACTORY_SITE": str(f.site),
        "AIFACTORY_PUBLIC_URL": f.public_url,
        "AIFACTORY_COURSE_GROUPS_FROM": f.course_groups_from,
        "AIFACTORY_METRICS_TOKEN_FILE": str(d / "metrics-token"),
        **({"AIFACTORY_SLURM_BIN": f.slurm_bin} if f.slurm_bin else {}),
    }


# Run as the hub's account in its own certificate store: sign a pair if it is not there yet.
_SIGN = """
import sys
from certipy import CertNotFoundError, Certipy
store_dir, name, ca, *alt_names = sys.argv[1:]
store = Certipy(store_dir=store_dir)
try:
    store.store.get_record(name)
except CertNotFoundError:
    store.create_signed_pair(name, ca, alt_names=alt_names or None)
"""


def make_certificates(config: Path, workdir: Path, env: dict, f: Front, hub_user: str) -> None:
    """The hub's CAs and the proxy's certificates (`jupyterhub --generate-certs`, which makes
    only what is missing, and makes all anew when the config finds their names outdated),
    then the service's, signed by the services' CA; all as the hub's account, whose folder
    it is."""
    made = subprocess.run([str(f.venv / "bin/jupyterhub"), "-f", str(config), "--generate-certs"],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, **as_account(hub_user))
    if made.returncode != 0:
        raise ClusterError("jupyterhub --generate-certs failed: "
                           + (made.stderr.strip().splitlines() or ["no output"])[-1])
    sign(f, hub_user, SERVICE_CERT_NAME, [f"IP:{f.hub_ip}", "DNS:localhost"])


def sign(f: Front, hub_user: str, name: str, alt_names: list[str] = ()) -> None:
    """A certificate `name` signed by the services' CA in the hub's store, if missing."""
    sh(str(f.venv / "bin/python"), "-P", "-c", _SIGN, str(f.certs), name, "services-ca",
       *alt_names, user=hub_user, cwd=Path("/"), timeout=120)


def fingerprint(argv: list[str], env: dict, files: list[Path], version: str = "") -> str:
    """What a process was started with, its files' contents included: a change means restart."""
    h = hashlib.sha256(repr((argv, sorted(env.items()), version)).encode())
    for p in files:
        h.update(p.read_bytes() if p.exists() else b"-")
    return h.hexdigest()


def ensure(service: services.Service, argv: list[str], env: dict, cwd: Path,
           files: tuple[Path, ...] = (), version: str = "", restart_for: str = "",
           before_start=None, user: str | None = None, log=print) -> bool:
    """Start `service`, or restart it when what it runs with (its command, environment, the
    files it reads, the code's `version`) changed, or for the reason `restart_for`. True if
    it was (re)started."""
    # Root's own folder: a service's working folder may be its user's (a planted link).
    STAMPS.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = STAMPS / service.name
    (cwd / f".{service.name}.started-with").unlink(missing_ok=True)  # an older install's
    want = fingerprint(argv, env, list(files), version)
    if service.running():
        if not restart_for and stamp.exists() and stamp.read_text() == want:
            return False
        why = restart_for or "what it runs with changed"
        log(f"{why}: restarting {service.name} (sessions keep running)")
        service.stop()
    if before_start:
        before_start()
    services.start_process(service, argv, env, cwd, user=user)
    stamp.write_text(want)
    os.chmod(stamp, 0o600)
    return True


def service_files(f: Front, hub_user: str) -> dict[str, str]:
    """What the service reads, as it is to be given to it (name in service_dir: text)."""
    cert = f.certs / SERVICE_CERT_NAME
    return {f"{SERVICE_CERT_NAME}.crt": read_as(hub_user, cert / f"{SERVICE_CERT_NAME}.crt"),
            f"{SERVICE_CERT_NAME}.key": read_as(hub_user, cert / f"{SERVICE_CERT_NAME}.key"),
            "services-ca_trust.crt": read_as(hub_user, f.certs / "services-ca_trust.crt"),
            "metrics-token": METRICS_TOKEN.read_text()}


def wait_until_listening(service: services.Service, port: int, host: str) -> None:
    """Until `service` accepts connections on its port; it stopping first is an error."""
    def listens() -> bool:
        if not service.running():
            raise ClusterError(f"{service.name} stopped at its start; see "
                               f"{LOG_DIR}/{service.name}.log")
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex((host, port)) == 0
    wait_for(listens, f"{service.name} on port {port}", timeout=30)
