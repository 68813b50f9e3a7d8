"""Bring the local "AI factory in a box" up and down (root).

`up` checks everything it was given first (the demo file, the hub config), and only then
installs, configures and starts, each step safe to repeat. `down` stops what `up` started,
by pid file, and leaves the data (accounting database, Slurm state, homes) in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import string
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .. import courses
from .. import site_description as site_module
from .. import slurm
from ..billing import Billing
from . import (accounting, hub, hub_database, idp, modules, network, prometheus, services,
               tls, unprivileged)
from .demo import Demo, DemoFileError, load
from .system import (ETC_DIR, STATE_DIR, ClusterError, ensure_debs, hand_over, read_pid, secret,
                     sh, stop_pid, wait_for, write_if_changed)

__all__ = ["up", "down", "status", "ClusterError", "DemoFileError"]

DEBIAN_PACKAGES = ["slurmctld", "slurmd", "slurmdbd", "slurm-client", "munge", "git",
                   "mariadb-server", "sudo", "iproute2", "util-linux",
                   "postgresql",  # the hub's database (aifactory.cluster.hub_database)
                   # the operators' metrics and alerts (aifactory.cluster.prometheus);
                   # htpasswd makes the hash of its password
                   "prometheus", "apache2-utils",
                   # the demo's CA in the machine's trust store (aifactory.cluster.tls)
                   "ca-certificates",
                   # *.localhost resolves to the loopback: users' own origins in the demo
                   "libnss-myhostname",
                   # site environments as modules (aifactory.cluster.modules)
                   "lmod"]
# A desktop in the session (jupyter-remote-desktop-proxy): a VNC server and a small XFCE.
DESKTOP_PACKAGES = ["tigervnc-standalone-server", "xfce4-session", "xfwm4", "xfce4-panel",
                    "xfdesktop4", "xfce4-terminal", "thunar", "dbus-x11", "xfonts-base",
                    # SVG images: Debian 13's default wallpaper and many icons
                    "librsvg2-common"]
PROXY_VERSION = "4.6"  # configurable-http-proxy, from the npm registry
VENV = Path(os.environ.get("AIFACTORY_VENV", "/opt/aifactory/venv"))
HUB_HOST, HUB_PORT, HUB_HTTP_PORT = "hub.localhost", 8443, 8000  # http only redirects
HUB_URL = f"https://{HUB_HOST}:{HUB_PORT}"  # users' servers: https://<user>.hub.localhost:8443
HUB_CONFIG_DIR = ETC_DIR / "hub_config"
HUB_WORKDIR = STATE_DIR / "hub"
HUB_SECRETS = ETC_DIR / "hub"  # what the hub reads of root's (hub_secrets)


def default_hub_config() -> Path:
    """The checkout's hub_config/ (./aif names it), else the copy `up` installed."""
    return Path(os.environ.get("AIFACTORY_HUB_CONFIG", HUB_CONFIG_DIR))


@dataclass
class UpReport:
    passwords: dict[str, str]
    seconds: float
    installed: list[str]


def _controller_host() -> str:
    return socket.gethostname().split(".")[0]


def billing_weights(p, billing: Billing) -> str:
    """A partition's TRESBillingWeights: GPUs only for GPU-hours, else the demo's weights
    (none: Slurm bills the job's CPUs)."""
    weights = "GRES/gpu=1.0" if billing.by_gpu else p.billing_weights
    return f" TRESBillingWeights={weights}" if weights else ""


def render_slurm_conf(demo: Demo, template: str, billing: Billing = Billing()) -> str:
    nodes = []
    for n in demo.nodes:
        gres = f" Gres=gpu:{n.gpu_type}:{n.gpus}" if n.gpus else ""
        nodes.append(f"NodeName={n.name} NodeAddr={n.address} NodeHostname={n.name} "
                     f"CPUs={n.cpus} RealMemory={n.memory_mb}{gres} State=UNKNOWN")
    parts = [f"PartitionName={p.name} Nodes={','.join(p.nodes)} MaxTime={p.max_time} "
             f"DefaultTime=01:00:00 State=UP{billing_weights(p, billing)}"
             f"{' Default=YES' if p.default else ''}"
             for p in demo.partitions]
    gpu_types = sorted({n.gpu_type for n in demo.gpu_nodes}) or ["none"]
    return string.Template(template).substitute(
        cluster=demo.cluster, controller_host=_controller_host(),
        controller_address=demo.controller_address,
        gpu_types=",gres/gpu:".join(gpu_types), budget_period=demo.slurm_budget_period,
        nodes="\n".join(nodes), partitions="\n".join(parts))


def course_limits(site) -> dict[str, dict]:
    """Per course account: what its jobs may use (the course profile's limits, else its size)."""
    limits = {}
    for course in site.courses:
        profile = site.profile(course.profile)
        most = {**profile.slurm, **profile.limits}
        limits[course.account] = {
            "reservation": course.reservation, "partition": profile.slurm["partition"],
            "gpus": int(most.get("gpus", 0)), "cpus": int(most["cpus"]),
            "memory_mb": int(most["memory_gb"]) * 1024,
            "minutes": site_module.walltime_minutes(str(most["walltime"]))}
    return limits


def render_job_submit_lua(site, template: str) -> str:
    """slurmctld's job_submit.lua holding the course rules (names are checked Slurm names)."""
    rows = []
    for account, rule in sorted(course_limits(site).items()):
        fields = ", ".join(f"{k} = {json.dumps(v)}" for k, v in rule.items())
        rows.append(f"  [{json.dumps(account)}] = {{{fields}}},")
    return string.Template(template).safe_substitute(courses="\n".join(rows))  # Lua has $


def render_gres_conf(demo: Demo) -> str:
    lines = ["# Generated by `aifactory cluster up`: fake GPUs (device files) per node.",
             "AutoDetect=off"]
    for n in demo.gpu_nodes:
        lines.append(f"NodeName={n.name} Name=gpu Type={n.gpu_type} "
                     f"File=/dev/fakegpu[0-{n.gpus - 1}]")
    return "\n".join(lines) + "\n"


def _db_password() -> str:
    return secret(STATE_DIR / "db-password")


def _tree_hash(*roots: Path) -> str:
    h = hashlib.sha256()
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                h.update(str(p.relative_to(root)).encode())
                h.update(p.read_bytes())
    return h.hexdigest()


def _ensure_proxy() -> bool:
    if shutil.which("configurable-http-proxy"):
        return False
    sh("npm", "install", "--global", "--no-fund", "--no-audit",
       f"configurable-http-proxy@{PROXY_VERSION}", timeout=300)
    if not shutil.which("configurable-http-proxy"):
        raise ClusterError("npm installed configurable-http-proxy but it is not on PATH.")
    return True


def _hub_env(demo: Demo, cert: tls.Pair) -> dict:
    return {**idp.hub_env(HUB_URL),
        "AIFACTORY_PUBLIC_URL": HUB_URL,
        "AIFACTORY_HTTP_PORT": str(HUB_HTTP_PORT),
        "AIFACTORY_TLS_CERT": str(cert.cert),
        "AIFACTORY_TLS_KEY": str(cert.key),
        "AIFACTORY_TLS_CA": str(tls.CA_CERT),
        "PATH": f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "AIFACTORY_VENV": str(VENV),
        "AIFACTORY_HUB_CONNECT_IP": demo.controller_address,
        "AIFACTORY_LOGIN_GROUP": demo.login_group,
        # Its secrets, given to it read-only in its own folder (hub_secrets).
        "AIFACTORY_OIDC_SECRETS": str(HUB_SECRETS),
        "AIFACTORY_OIDC_ACCOUNTS": str(HUB_SECRETS / idp.ACCOUNTS_FILE.name),
        "AIFACTORY_PROXY_TOKEN_FILE": str(HUB_SECRETS / hub.PROXY_TOKEN.name),
        "AIFACTORY_ALLOCATIONS_TOKEN_FILE": str(HUB_SECRETS / hub.SERVICE_TOKEN.name),
        "AIFACTORY_HUB_DB_PASSWORD_FILE": str(HUB_SECRETS / hub.DATABASE_PASSWORD.name),
        "AIFACTORY_METRICS_TOKEN_FILE": str(HUB_SECRETS / hub.METRICS_TOKEN.name),
        **({"AIFACTORY_SLURM_BIN": slurm_bin} if (slurm_bin := os.environ.get(
            "AIFACTORY_SLURM_BIN")) else {}),
    }


def hub_secrets() -> dict[str, str]:
    """What the hub reads of root's (name in HUB_SECRETS: text): the tokens it shares with the
    proxy, the service and Prometheus, its database password, its OIDC client's secrets and
    crypt key, the site's account provisioning."""
    given = {p.name: p.read_text() for p in (hub.PROXY_TOKEN, hub.SERVICE_TOKEN,
                                             hub.DATABASE_PASSWORD, hub.METRICS_TOKEN)}
    given.update((p.name, p.read_text()) for p in sorted(idp.HUB_SECRETS.glob("*")))
    if idp.ACCOUNTS_FILE.exists():
        given[idp.ACCOUNTS_FILE.name] = idp.ACCOUNTS_FILE.read_text()
    return given


def _hub_answers() -> bool:
    return tls.answers(f"{HUB_URL}/hub/api/")


def _nodes_ready(demo: Demo) -> bool:
    try:
        found = {n.name: n for n in slurm.nodes()}
    except slurm.SlurmError:
        return False
    return all(n.name in found and found[n.name].usable for n in demo.nodes)


def _resume_nodes(demo: Demo) -> None:
    """Nodes that were down while slurmctld ran (a `down`/`up` cycle) are put back."""
    for n in slurm.nodes():
        if n.name in {x.name for x in demo.nodes} and slurm.resumable(n):
            try:
                slurm.update_node(n.name, State="RESUME")
            except slurm.SlurmError:
                pass  # it came back by itself meanwhile


def _gpu_tres_known() -> bool:
    try:
        return any(r["type"] == "gres" and r["name"] == "gpu"
                   for r in slurm.sacctmgr_list("tres", fields=["Type", "Name"]))
    except slurm.SlurmError:
        return False


def check_inputs(demo_file: Path, hub_config: Path) -> tuple[Demo, site_module.Site]:
    """Everything `up` was given, checked before anything is changed."""
    if os.geteuid() != 0:
        raise ClusterError("aifactory cluster up must run as root.")
    demo = load(demo_file)
    for needed in ("jupyterhub_config.py", "cluster/slurm.conf.in", "cluster/slurmdbd.conf.in",
                   "cluster/job_submit.lua.in"):
        if not (hub_config / needed).is_file():
            raise ClusterError(f"The hub configuration {hub_config} has no {needed}.")
    try:
        site = site_module.load(hub_config / "site.yaml")
    except site_module.SiteError as e:
        raise ClusterError(str(e)) from None
    for course in demo.material:
        if site.course(course) is None or not site.course(course).material.startswith("/"):
            raise DemoFileError(f"{demo_file}: material: course {course} has no material "
                                "folder in the site description.")
    if not site.billing.by_gpu and not any(p.billing_weights for p in demo.partitions):
        raise DemoFileError(f"{demo_file}: the site bills in {site.billing.unit}, so its "
                            "partitions need billing_weights (TRESBillingWeights).")
    idp.client_shape()  # the hub's client at the IdP, if one was chosen
    if not (VENV / "bin" / "jupyterhub").exists():
        raise ClusterError(f"The shared environment {VENV} is missing; run ./aif first "
                           "(it builds the environment, then calls this command).")
    return demo, site


def up(demo_file: Path | None = None, hub_config: Path | None = None, log=print) -> UpReport:
    started = time.monotonic()
    hub_config = Path(hub_config or default_hub_config())
    demo_file = Path(demo_file or hub_config / "cluster" / "demo.yaml")
    demo, site = check_inputs(demo_file, hub_config)

    # npm comes with some Node.js builds (NodeSource's); Debian's own needs the npm package.
    node = [] if shutil.which("npm") else ["nodejs", "npm"]
    installed = ensure_debs(DEBIAN_PACKAGES + DESKTOP_PACKAGES + node)
    if installed:
        log(f"installed Debian packages: {' '.join(installed)}")
    if _ensure_proxy():
        installed.append("configurable-http-proxy")
        log("installed configurable-http-proxy (npm)")
    # The demo's software environments: a module tree and the venvs it loads.
    installed += [f"environment {name}" for name in modules.ensure_all(hub_config, log=log)]

    network.ensure_network(demo)
    accounting.fake_gpu_devices(max((n.gpus for n in demo.nodes), default=0))

    for d, owner in (("/var/lib/slurm/slurmctld", "slurm"), ("/var/log/slurm", "slurm"),
                     ("/var/spool/slurmd", "root"), (str(STATE_DIR), "root")):
        Path(d).mkdir(parents=True, exist_ok=True)
        shutil.chown(d, owner, owner)
    conf_changed = write_if_changed(
        Path("/etc/slurm/slurm.conf"),
        render_slurm_conf(demo, (hub_config / "cluster/slurm.conf.in").read_text(),
                          site.billing))
    conf_changed |= write_if_changed(Path("/etc/slurm/gres.conf"), render_gres_conf(demo))
    # slurmctld reads it again by itself when it changes.
    write_if_changed(Path("/etc/slurm/job_submit.lua"), render_job_submit_lua(
        site, (hub_config / "cluster/job_submit.lua.in").read_text()))
    if slurm.version() >= (24, 5):
        # slurmd 24.05+ sets up cgroups even with proctrack/linuxproc; there is no cgroup
        # tree of our own in here (22.05 does not know the word "disabled").
        conf_changed |= write_if_changed(Path("/etc/slurm/cgroup.conf"), "CgroupPlugin=disabled\n")
    password = _db_password()
    dbd_changed = write_if_changed(
        Path("/etc/slurm/slurmdbd.conf"),
        string.Template((hub_config / "cluster/slurmdbd.conf.in").read_text())
        .substitute(db_password=password), 0o600, owner="slurm")

    services.start_munge()
    services.start_mariadb()
    services.ensure_database(password)
    if dbd_changed:
        services.SLURMDBD.stop()
    services.start_slurmdbd()
    if conf_changed and services.SLURMCTLD.running():
        log("Slurm configuration changed: restarting slurmctld and slurmd")
        services.SLURMCTLD.stop()
        for n in demo.nodes:
            services.slurmd(n.name).stop()
    accounting.ensure_cluster(demo)
    services.start_slurmctld()
    wait_for(_gpu_tres_known, "slurmctld's registration with slurmdbd", timeout=30)
    # Unix users first: slurmctld maps association user names to uids when they arrive.
    passwords = accounting.apply_unix_users(demo)
    accounting.apply_unix_groups(demo)
    accounting.install_material(demo, site, hub_config.resolve().parent)
    accounting.apply_accounts(demo, site.billing)
    # Our services' own accounts (no root): their Slurm admin level and sudo rules.
    unprivileged.ensure(demo.login_group)
    for n in demo.nodes:
        services.start_slurmd(n.name)
    try:
        wait_for(lambda: _nodes_ready(demo), "the compute nodes", timeout=20, interval=1)
    except ClusterError:
        _resume_nodes(demo)
        wait_for(lambda: _nodes_ready(demo), "the compute nodes", timeout=40, interval=1)
    accounting.apply_reservations(demo)
    # https: the demo's CA, trusted by this machine, and certificates for the names a browser
    # reaches (the hub, each user's and the service's subdomain, the IdP).
    if tls.ensure_ca():
        log(f"made the demo's certificate authority: {tls.CA_CERT} (trust it in your browser)")
    hub_cert = tls.ensure_cert("hub", tls.hub_names(HUB_HOST, [u.name for u in demo.users]))
    idp.ensure_user()  # before its certificate's key, which is the IdP's
    idp_cert = tls.ensure_cert("idp", [idp.IDP_HOST], owner=idp.IDP_USER)
    # Login: the demo's OpenID provider, before the hub that sends people to it.
    if idp.ensure(demo, hub_config, HUB_URL, idp_cert, log=log):
        installed.append("oidc-provider (npm)")

    # The hub runs from an installed copy of hub_config/, restarted when it or the code changes.
    if hub_config.resolve() != HUB_CONFIG_DIR.resolve():
        shutil.copytree(hub_config, HUB_CONFIG_DIR, dirs_exist_ok=True)
    import aifactory
    # ... or when it is to be another of the IdP's clients.
    code = _tree_hash(Path(aifactory.__file__).parent)
    config_version = _tree_hash(HUB_CONFIG_DIR) + idp.client_shape() + code
    _start_the_hub(demo, hub_cert, config_version, code, log)
    return UpReport(passwords=passwords, seconds=time.monotonic() - started, installed=installed)


def _start_the_hub(demo: Demo, cert: tls.Pair, config_version: str, code: str, log) -> None:
    """The proxy, the allocations service and the hub, each (re)started only when what it
    runs with changed. The proxy first (the hub asks it for its routes), then the service (the
    hub waits for the services it knows before it adds its own route), then the hub."""
    front = hub.Front(public_url=HUB_URL, http_port=HUB_HTTP_PORT,
                      hub_ip=demo.controller_address, tls_cert=cert.cert, tls_key=cert.key,
                      certs=HUB_WORKDIR / "internal-ssl", venv=VENV,
                      site=HUB_CONFIG_DIR / "site.yaml", service_dir=ETC_DIR / "allocations",
                      proxy_dir=ETC_DIR / "proxy", hub_dir=HUB_SECRETS, course_groups_from="",
                      slurm_bin=os.environ.get("AIFACTORY_SLURM_BIN", ""))
    hub_user = unprivileged.HUB_USER
    config = HUB_CONFIG_DIR / "jupyterhub_config.py"
    proxy_token, service_token = secret(hub.PROXY_TOKEN), secret(hub.SERVICE_TOKEN)
    secret(hub.METRICS_TOKEN)
    hub_database.start()
    db_password = secret(hub.DATABASE_PASSWORD)
    hub_database.ensure_role_and_database(db_password)
    env = _hub_env(demo, cert)
    # With an IdP its entitlements set the course groups; else the Unix groups.
    front = replace(front, course_groups_from="idp" if env["AIFACTORY_LOGIN"] == "oidc" else "unix")
    _stop_an_older_installs_hub(log)
    # An older install's SQLite state moves into PostgreSQL while root still owns it (later
    # the file would be the hub's account's to plant).
    sqlite_file = HUB_WORKDIR / "jupyterhub.sqlite"
    if (sqlite_file.is_file() and not sqlite_file.is_symlink()
            and sqlite_file.lstat().st_uid == 0):
        hub_database.move_from_sqlite(sqlite_file, hub_database.url(db_password), log)
    # The hub's own folders (its certificate store, its course material clones): what an
    # install that ran it as root left there becomes its account's.
    for folder in (HUB_WORKDIR, courses.GIT_CACHE):
        hand_over(folder, hub_user)
    unprivileged.install_for(hub_user, front.hub_dir, hub_secrets(), only=True)
    hub.make_certificates(config, HUB_WORKDIR, env, front, hub_user)
    prometheus.ensure_files(front, HUB_CONFIG_DIR, hub.HUB_API_PORT)  # the hub reads its token
    proxy_env = {"PATH": env["PATH"], "CONFIGPROXY_AUTH_TOKEN": proxy_token}
    proxy_given = hub.proxy_files(front, hub_user)
    unprivileged.install_for(unprivileged.PROXY_USER, front.proxy_dir, proxy_given, only=True)
    proxy_restarted = hub.ensure(services.PROXY, hub.proxy_command(front), proxy_env,
                                 STATE_DIR / "proxy", tuple(front.proxy_dir / n for n in proxy_given),
                                 user=unprivileged.PROXY_USER, log=log)
    hub.wait_until_listening(services.PROXY, hub.PROXY_API_PORT, "127.0.0.1")
    service_env = hub.service_environment(front, service_token)
    given = hub.service_files(front, hub_user)
    unprivileged.install_for(unprivileged.SERVICE_USER, front.service_dir, given)
    hub.ensure(services.ALLOCATIONS, hub.service_command(front), service_env,
               STATE_DIR / "allocations", tuple(front.service_dir / n for n in given),
               version=code, user=unprivileged.SERVICE_USER, log=log)
    hub.wait_until_listening(services.ALLOCATIONS, hub.SERVICE_PORT, demo.controller_address)

    def upgrade_db() -> None:
        # A no-op on a current schema; the hub refuses to start on an older one (a new
        # JupyterHub, a restored backup).
        sh(str(VENV / "bin/jupyterhub"), "upgrade-db", "-f", str(config), env=env, timeout=300,
           user=hub_user, cwd=HUB_WORKDIR)
    hub.ensure(services.HUB, [str(VENV / "bin/jupyterhub"), "-f", str(config)], env, HUB_WORKDIR,
               files=tuple(sorted(front.hub_dir.glob("*"))),
               version=config_version, before_start=upgrade_db, user=hub_user, log=log,
               restart_for="the proxy started anew" if proxy_restarted else "")
    wait_for(_hub_answers, "JupyterHub", timeout=60)
    prometheus.start(log=log)


LEGACY_PROXY_PID = HUB_WORKDIR / "jupyterhub-proxy.pid"  # the proxy an older hub started itself


def _stop_an_older_installs_hub(log=print) -> bool:
    """Before the proxy ran apart, the hub started it and the service as its children. Its
    pid file lies in what is now the hub's account's folder: only a root-written one counts
    (else that account could have root stop any process)."""
    if (LEGACY_PROXY_PID.is_symlink() or not LEGACY_PROXY_PID.is_file()
            or LEGACY_PROXY_PID.lstat().st_uid != 0 or not read_pid(LEGACY_PROXY_PID)):
        return False
    log("the hub runs its proxy as its child (an older install): stopping both")
    services.HUB.stop()  # it stops its managed service
    stop_pid(LEGACY_PROXY_PID, "configurable-http-proxy")
    return True


def _node_names() -> list[str]:
    try:
        return [n.name for n in load(HUB_CONFIG_DIR / "cluster" / "demo.yaml").nodes]
    except DemoFileError:
        return sorted(p.name[len("slurmd-"):-len(".pid")] for p in Path("/run").glob("slurmd-*.pid"))


def all_services() -> list[services.Service]:
    return ([services.MUNGE, services.MARIADB, services.SLURMDBD, services.SLURMCTLD]
            + [services.slurmd(n) for n in _node_names()]
            + [idp.IDP, hub_database.service(), services.PROXY, services.HUB,
               services.ALLOCATIONS, services.PROMETHEUS])


def down(log=print) -> list[str]:
    """Stop the service, the hub, the proxy, the IdP, the nodes, the controller, accounting,
    the database and munge, each by its pid file."""
    stopped = ["configurable-http-proxy (an older install's)"] if _stop_an_older_installs_hub(
        log=lambda _: None) else []
    for s in reversed(all_services()):
        if s.stop():
            stopped.append(s.name)
    for name in stopped:
        log(f"stopped {name}")
    return stopped


def status() -> dict:
    """What runs and what does not, and whether Slurm and the hub answer."""
    result = {"services": {}, "checks": {}}
    for s in all_services():
        result["services"][s.name] = {"running": s.running(), "pid": s.pid(), "what": s.what}
    result["checks"]["slurmctld answers"] = slurm.ping() if services.SLURMCTLD.running() else False
    try:
        nodes = slurm.nodes() if result["checks"]["slurmctld answers"] else []
    except slurm.SlurmError:
        nodes = []
    result["nodes"] = {n.name: n.condition or n.state.lower() for n in nodes}
    result["checks"]["all nodes up"] = bool(nodes) and all(n.usable for n in nodes)
    result["checks"]["hub answers at " + HUB_URL] = _hub_answers()
    result["ok"] = all(v["running"] for v in result["services"].values()) and all(
        result["checks"].values())
    return result


def status_json() -> str:
    return json.dumps(status(), indent=2)
