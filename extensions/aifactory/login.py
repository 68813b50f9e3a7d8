"""The hub's login: Unix passwords (PAM), accepted only on the hub's own host and origin.

With users' servers on subdomains (JupyterHub's subdomain_host), the hub still answers on every
host, so `http://dave.<hub host>/hub/login` shows the real login page on dave's origin. A login
there would set alice's hub cookie where dave's pages run, and they could read her hub pages.
And a page of dave's could post his own name and password to the hub's login (login forgery:
alice would then work in dave's session); browsers name the page's origin in such a post.
"""

from urllib.parse import urlparse

from jupyterhub.auth import PAMAuthenticator
from tornado import web

DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_port(netloc: str, scheme: str) -> tuple[str, int]:
    parsed = urlparse(f"{scheme}://{netloc}")
    return (parsed.hostname or "").lower(), parsed.port or DEFAULT_PORTS.get(scheme, 0)


def foreign_login(hub_url: str, host: str, origin: str | None, fetch_site: str | None) -> bool:
    """True when a login post did not come from the hub's own page on the hub's own host."""
    if not hub_url:
        return False
    hub = urlparse(hub_url)
    mine = _host_port(hub.netloc, hub.scheme)
    if _host_port(host, hub.scheme) != mine:
        return True
    if origin is not None:  # browsers send it with every post; other clients may not
        sent = urlparse(origin)
        if sent.scheme != hub.scheme or _host_port(sent.netloc, sent.scheme) != mine:
            return True
    return fetch_site not in (None, "same-origin", "none")


class HubHostPAMAuthenticator(PAMAuthenticator):
    """PAMAuthenticator that refuses a login sent to, or posted from, another origin."""

    def authenticate(self, handler, data):
        hub_url = handler.settings.get("subdomain_host", "")
        headers = handler.request.headers
        if foreign_login(hub_url, handler.request.host, headers.get("Origin"),
                         headers.get("Sec-Fetch-Site")):
            self.log.warning("Refused a login on %s from %s", handler.request.host,
                             headers.get("Origin"))
            raise web.HTTPError(403, f"Log in at {hub_url}/hub/login: this address is not "
                                     "the hub's own.")
        return super().authenticate(handler, data)
