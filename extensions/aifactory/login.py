"""The hub's login: Unix passwords (PAM), accepted only on the hub's own host.

With users' servers on subdomains (JupyterHub's subdomain_host), the hub still answers on every
host, so `http://dave.<hub host>/hub/login` shows the real login page on dave's origin. A login
there would set alice's hub cookie where dave's pages run, and they could read her hub pages.
"""

from urllib.parse import urlparse

from jupyterhub.auth import PAMAuthenticator
from tornado import web


class HubHostPAMAuthenticator(PAMAuthenticator):
    """PAMAuthenticator that refuses a login sent to any host but the hub's."""

    def authenticate(self, handler, data):
        hub_url = handler.settings.get("subdomain_host", "")
        if hub_url and handler.request.host.lower() != urlparse(hub_url).netloc.lower():
            self.log.warning("Refused a login on %s, not the hub's host", handler.request.host)
            raise web.HTTPError(403, f"Log in at {hub_url}/hub/login: this address is not "
                                     "the hub's own.")
        return super().authenticate(handler, data)
