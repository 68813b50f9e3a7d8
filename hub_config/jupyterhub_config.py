# JupyterHub configuration of the aifactory hub.
#
# `aifactory cluster up` installs this directory as /etc/aifactory/hub_config and starts the hub
# as root from /var/lib/aifactory/hub with the AIFACTORY_* variables below set. On a real site,
# set them (or replace them with your own values) in the hub's service unit.
import os
import re
from pathlib import Path
from urllib.parse import urlparse

from aifactory import course_rules, courses, site_description

c = get_config()  # noqa: F821
here = Path(__file__).resolve().parent

# The public face: the proxy on the login node, serving https with the site's certificate (the
# demo's comes from its own CA; a site uses its own wildcard certificate); plain http only
# redirects to it (aifactory.cluster.hub.proxy_command).
# Each user's server has a browser origin of its own, https://<user>.<host> (and the service
# https://allocations--service.<host>): a page served by one user's server cannot read the
# hub's pages, or another user's, in someone else's browser. In the demo the host is
# hub.localhost, since browsers (and libnss-myhostname) resolve *.localhost to the loopback; a
# site names its own host, with wildcard DNS.
public_url = os.environ.get("AIFACTORY_PUBLIC_URL", "https://hub.localhost:8443")
c.JupyterHub.subdomain_host = public_url
https = public_url.startswith("https://")
public_port = urlparse(public_url).port or (443 if https else 80)
c.JupyterHub.bind_url = f"{'https' if https else 'http'}://127.0.0.1:{public_port}"
# The proxy is a service of its own (aifactory.cluster.hub starts it; a site, its unit): a
# hub restart leaves people's connections to their sessions open. The hub reaches its API with
# the token both read from AIFACTORY_PROXY_TOKEN_FILE.
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = "https://127.0.0.1:8001"
c.ConfigurableHTTPProxy.auth_token = Path(os.environ["AIFACTORY_PROXY_TOKEN_FILE"]).read_text().strip()
# Over https, cookies are __Host- ones that a user's server cannot set from its subdomain
# (cookie tossing); plain http cannot have them (README).
c.JupyterHub.cookie_host_prefix_enabled = https
# Compute nodes call the hub API (the server's port callback, activity): bind it where they
# can reach it, on the login node's cluster-network address.
hub_ip = os.environ.get("AIFACTORY_HUB_CONNECT_IP", "127.0.0.1")
c.JupyterHub.hub_bind_url = f"https://{hub_ip}:8081"
c.JupyterHub.hub_connect_ip = hub_ip

state = "/var/lib/aifactory/hub"
# Certificates between the hub, its proxy, the service and the sessions (JupyterHub's
# internal_ssl, CAs made by the hub in its state folder): each side shows its own and checks
# the other's. A session's server answers only the proxy and the hub; the proxy forwards a
# person's requests only to a server with that person's certificate (aifactory.spawner.certs
# brings it into the job); sessions reach the hub's API only with theirs.
c.JupyterHub.internal_ssl = True
c.JupyterHub.internal_certs_location = f"{state}/internal-ssl"
# The proxy checks the hub's certificate against the Host it forwards, and the hub's pages
# answer on users' subdomains too (to say that they are not the hub's own): name them all.
public_host = urlparse(public_url).hostname
c.JupyterHub.trusted_alt_names = [f"IP:{hub_ip}", f"DNS:{public_host}", f"DNS:*.{public_host}"]


def _forget_certificates_without(names, folder):
    """The hub makes its certificates once, when they are missing: after the names change
    (a new host, an older install), start over with new CAs. Sessions started before need a
    restart then; their certificates came from the old CAs."""
    cert = Path(folder, "hub-internal", "hub-internal.crt")
    if not cert.exists():
        return
    from cryptography import x509
    with cert.open("rb") as f:
        san = x509.load_pem_x509_certificate(f.read()).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
    have = {f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)}
    if not {n for n in names if n.startswith("DNS:")} <= have:
        import shutil
        shutil.rmtree(folder)


_forget_certificates_without(c.JupyterHub.trusted_alt_names, c.JupyterHub.internal_certs_location)
# The hub's database: PostgreSQL on the login node (aifactory.cluster.hub_database), with
# the password in AIFACTORY_HUB_DB_PASSWORD_FILE; without one, SQLite (one laptop).
if db_password_file := os.environ.get("AIFACTORY_HUB_DB_PASSWORD_FILE"):
    db_host = os.environ.get("AIFACTORY_HUB_DB_HOST", "127.0.0.1")
    c.JupyterHub.db_url = (f"postgresql+psycopg://jupyterhub:"
                           f"{Path(db_password_file).read_text().strip()}@{db_host}:5432/jupyterhub")
else:
    c.JupyterHub.db_url = f"sqlite:///{state}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{state}/jupyterhub_cookie_secret"
c.JupyterHub.template_paths = [str(here / "templates")]

# Login: through the site's OpenID Connect provider ("oidc": SRAM, MyAccessID; the demo runs
# one of its own), or with Unix passwords ("pam") for a site without one. Either way only on
# the hub's own host, only members of the login group, and the admins are a group's members.
login = os.environ.get("AIFACTORY_LOGIN", "pam")
login_group = os.environ.get("AIFACTORY_LOGIN_GROUP", "aifactory-users")
admin_group = os.environ.get("AIFACTORY_ADMIN_GROUP", "aifactory-admins")
if login == "oidc":
    issuer = os.environ["AIFACTORY_OIDC_ISSUER"]
    # Which of the IdP's clients this hub is: "sram" (a uid claim names the Unix account) or
    # "myaccessid" (an opaque sub; the site's provisioning maps it to an account).
    shape = os.environ.get("AIFACTORY_OIDC_CLIENT", "sram")
    hub_secrets = Path(os.environ["AIFACTORY_OIDC_SECRETS"])
    os.environ["JUPYTERHUB_CRYPT_KEY"] = (hub_secrets / "crypt-key").read_text().strip()
    c.JupyterHub.authenticator_class = "aifactory.login.FederatedAuthenticator"
    auth = c.FederatedAuthenticator
    auth.login_service = {"sram": "SURF Research Access (demo)",
                          "myaccessid": "MyAccessID (demo)"}[shape]
    auth.client_id = f"aifactory-{shape}"
    auth.client_secret = (hub_secrets / f"aifactory-{shape}.secret").read_text().strip()
    auth.oauth_callback_url = f"{public_url}/hub/oauth_callback"
    auth.issuer = issuer
    auth.authorize_url = f"{issuer}/auth"
    auth.token_url = f"{issuer}/token"
    auth.userdata_url = f"{issuer}/me"
    auth.jwks_url = f"{issuer}/jwks"
    auth.end_session_url = f"{issuer}/session/end"
    auth.post_logout_url = f"{public_url}/hub/login"
    auth.scope = ["openid", "offline_access", "entitlements",
                  *(["uid", "email"] if shape == "sram" else [])]
    auth.username_claim = "uid" if shape == "sram" else "sub"
    auth.accounts_file = os.environ.get("AIFACTORY_OIDC_ACCOUNTS", "/etc/aifactory/accounts-by-sub.yaml")
    auth.entitlement_pattern = (
        "^" + re.escape(os.environ["AIFACTORY_OIDC_ENTITLEMENT_PREFIX"])
        + r"(?P<group>[a-z][a-z0-9_-]*)\Z")
    auth.apply_url = os.environ.get("AIFACTORY_APPLY_URL", f"{public_url}/hub/apply")
    if os.environ.get("AIFACTORY_TLS_CA"):  # the CA of the IdP's certificate, if not public
        auth.http_request_kwargs = {"ca_certs": os.environ["AIFACTORY_TLS_CA"]}
    auth.people_group = login_group  # the account must be a person's (and the IdP let them in)
    auth.allowed_groups = {login_group}
    auth.admin_groups = {admin_group}
    # Tokens kept encrypted; refreshed before each spawn and when a login is older than this.
    auth.enable_auth_state = True
    auth.refresh_pre_spawn = True
    auth.auth_refresh_age = 120
    # A login the IdP no longer vouches for ends for API tokens too (the widgets', the CLI's).
    auth.auth_refresh_strict = True
else:
    c.JupyterHub.authenticator_class = "aifactory.login.HubHostPAMAuthenticator"
    c.PAMAuthenticator.allowed_groups = {login_group}
    c.PAMAuthenticator.open_sessions = False
    # Hub admins are the members of this Unix group, as of their last login.
    c.PAMAuthenticator.admin_groups = {admin_group}

# Each session is a Slurm job on a compute node, chosen from the profiles in site.yaml.
c.JupyterHub.spawner_class = "aifactory.spawner.SlurmSpawner"
c.SlurmSpawner.site_path = str(here / "site.yaml")
c.SlurmSpawner.venv = os.environ.get("AIFACTORY_VENV", "/opt/aifactory/venv")
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 600  # a session may wait in the queue; the page says why
c.Spawner.http_timeout = 120
c.Spawner.poll_interval = 30
# Sessions are Slurm jobs: they outlive a hub restart, and the hub finds them again.
c.JupyterHub.cleanup_servers = False

# The allocations service: one cached view of Slurm (budgets, jobs, GPUs) for the widgets and
# the CLI. It listens where compute nodes reach it; the proxy serves it to browsers too. It
# runs apart from the hub (aifactory.cluster.hub; a site, its unit) with the token in
# AIFACTORY_ALLOCATIONS_TOKEN_FILE, which is also its OAuth client's secret.
allocations_url = f"http://{hub_ip}:8090"
c.JupyterHub.services = [{
    "name": "allocations",
    "url": allocations_url,
    "api_token": Path(os.environ["AIFACTORY_ALLOCATIONS_TOKEN_FILE"]).read_text().strip(),
    "oauth_no_confirm": True,
    "display": False,
}]
# Prometheus (aifactory.cluster.prometheus) reads /hub/metrics with this token
# (authenticate_prometheus: besides it, only admins, whose role has read:metrics).
metrics_token_file = os.environ.get("AIFACTORY_METRICS_TOKEN_FILE")
c.JupyterHub.authenticate_prometheus = True
if metrics_token_file:
    c.JupyterHub.services.append({"name": "prometheus",
                                  "api_token": Path(metrics_token_file).read_text().strip(),
                                  "display": False})
# Courses (site.yaml `courses`): with an IdP their hub groups come from its entitlements at
# each login and refresh; with PAM from the Unix groups of the same names, read when the hub
# starts, and the allocations service keeps them equal (removals included).
# Instructors start and stop course sessions through the service (aifactory.courses).
the_site = site_description.load(here / "site.yaml")
if login != "oidc":  # the authenticator manages groups then
    c.JupyterHub.load_groups = courses.hub_groups(the_site)
c.JupyterHub.load_roles = [*course_rules.hub_roles(the_site),
    # Every user may ask the service (it shows each only what is theirs).
    {"name": "user", "scopes": ["self", "access:services!service=allocations"]},
    # The service learns who is an admin and who is in which group; for courses it starts and
    # stops participants' sessions (for instructors, after its checks) and keeps the groups.
    {"name": "allocations-service", "services": ["allocations"],
     "scopes": ["list:users", "read:users", "read:groups", "read:servers",
                *course_rules.service_scopes(the_site)]},
    *([{"name": "metrics", "services": ["prometheus"], "scopes": ["read:metrics"]}]
      if metrics_token_file else []),
]
# A session's own token reaches the service too, so widgets in the notebook can use it; an
# instructor's also carries their course role (the hub grants nobody scopes they lack).
c.Spawner.server_token_scopes = ["users:activity!user", "access:servers!server",
                                 "access:services!service=allocations",
                                 *course_rules.session_token_scopes(the_site)]
c.Spawner.environment = {"AIFACTORY_ALLOCATIONS_URL": f"{allocations_url}/services/allocations/",
                         # GPUCluster reads its defaults from the site description.
                         "AIFACTORY_SITE": str(here / "site.yaml")}
if os.environ.get("AIFACTORY_SLURM_BIN"):  # Slurm under a site's own prefix: kernels too
    c.Spawner.environment["AIFACTORY_SLURM_BIN"] = os.environ["AIFACTORY_SLURM_BIN"]
