# JupyterHub configuration of the aifactory hub.
#
# `aifactory cluster up` installs this directory as /etc/aifactory/hub_config and starts the hub
# as root from /var/lib/aifactory/hub with the AIFACTORY_* variables below set. On a real site,
# set them (or replace them with your own values) in the hub's service unit.
import os
from pathlib import Path

from aifactory import courses, site_description

c = get_config()  # noqa: F821
here = Path(__file__).resolve().parent

# The public face: the proxy on the login node. A site puts TLS and a real hostname in front.
c.JupyterHub.bind_url = "http://127.0.0.1:8000"
# Each user's server has a browser origin of its own, http://<user>.<host> (and the service
# http://allocations--service.<host>): a page served by one user's server cannot read the hub's
# pages, or another user's, in someone else's browser. In the demo the host is hub.localhost,
# since browsers (and libnss-myhostname) resolve *.localhost to the loopback (a name with a dot,
# so that the hub's domain cookie is kept by every client); a site names its own host, with
# wildcard DNS and a wildcard certificate in front.
public_url = os.environ.get("AIFACTORY_PUBLIC_URL", "http://hub.localhost:8000")
c.JupyterHub.subdomain_host = public_url
# Over https, cookies are __Host- ones that a user's server cannot set from its subdomain
# (cookie tossing); they need https, so the demo's http cannot have them (README).
https = public_url.startswith("https://")
c.JupyterHub.cookie_host_prefix_enabled = https
# Compute nodes call the hub API (the server's port callback, activity): bind it where they
# can reach it, on the login node's cluster-network address.
hub_ip = os.environ.get("AIFACTORY_HUB_CONNECT_IP", "127.0.0.1")
c.JupyterHub.hub_bind_url = f"http://{hub_ip}:8081"
c.JupyterHub.hub_connect_ip = hub_ip

state = "/var/lib/aifactory/hub"
c.JupyterHub.db_url = f"sqlite:///{state}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{state}/jupyterhub_cookie_secret"
c.ConfigurableHTTPProxy.pid_file = f"{state}/jupyterhub-proxy.pid"
c.JupyterHub.template_paths = [str(here / "templates")]

# Login with Unix passwords (PAM), on the hub's own host only; only members of the login group
# may log in.
c.JupyterHub.authenticator_class = "aifactory.login.HubHostPAMAuthenticator"
c.PAMAuthenticator.allowed_groups = {os.environ.get("AIFACTORY_LOGIN_GROUP", "aifactory-users")}
c.PAMAuthenticator.open_sessions = False
# Hub admins are the members of this Unix group, as of their last login.
c.PAMAuthenticator.admin_groups = {os.environ.get("AIFACTORY_ADMIN_GROUP", "aifactory-admins")}

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
# the CLI. It listens where compute nodes reach it; the proxy serves it to browsers too.
allocations_url = f"http://{hub_ip}:8090"
c.JupyterHub.services = [{
    "name": "allocations",
    "url": allocations_url,
    "command": [os.environ.get("AIFACTORY_VENV", "/opt/aifactory/venv") + "/bin/python",
                "-P", "-m", "aifactory.service"],
    "environment": {"AIFACTORY_SITE": str(here / "site.yaml"), "AIFACTORY_PUBLIC_URL": public_url,
                    "JUPYTERHUB_COOKIE_HOST_PREFIX_ENABLED": "1" if https else "0"},
    "oauth_no_confirm": True,
    "display": False,
}]
# Courses (site.yaml `courses`): their hub groups come from the Unix groups of the same names,
# read when the hub starts; the allocations service keeps them equal (removals included).
# Instructors start and stop course sessions through the service (aifactory.courses).
the_site = site_description.load(here / "site.yaml")
c.JupyterHub.load_groups = courses.hub_groups(the_site)
c.JupyterHub.load_roles = [*courses.hub_roles(the_site),
    # Every user may ask the service (it shows each only what is theirs).
    {"name": "user", "scopes": ["self", "access:services!service=allocations"]},
    # The service learns who is an admin and who is in which group; for courses it starts and
    # stops participants' sessions (for instructors, after its checks) and keeps the groups.
    {"name": "allocations-service", "services": ["allocations"],
     "scopes": ["list:users", "read:users", "read:groups", "read:servers",
                *courses.service_scopes(the_site)]},
]
# A session's own token reaches the service too, so widgets in the notebook can use it; an
# instructor's also carries their course role (the hub grants nobody scopes they lack).
c.Spawner.server_token_scopes = ["users:activity!user", "access:servers!server",
                                 "access:services!service=allocations",
                                 *courses.session_token_scopes(the_site)]
c.Spawner.environment = {"AIFACTORY_ALLOCATIONS_URL": f"{allocations_url}/services/allocations/",
                         # GPUCluster reads its defaults from the site description.
                         "AIFACTORY_SITE": str(here / "site.yaml")}
