"""Calls to the hub's own API under JupyterHub's internal_ssl (from a session's server, on a
compute node as its user, and from the allocations service)."""

from __future__ import annotations

import os


def hub_ssl_context():
    """This process's certificate (the session's or the service's, as JupyterHub hands them
    out in JUPYTERHUB_SSL_*) and only the hub's CAs trusted; None over plain http."""
    if not os.environ.get("JUPYTERHUB_SSL_CERTFILE"):
        return None
    from jupyterhub.utils import make_ssl_context
    return make_ssl_context(os.environ["JUPYTERHUB_SSL_KEYFILE"],
                            os.environ["JUPYTERHUB_SSL_CERTFILE"],
                            cafile=os.environ["JUPYTERHUB_SSL_CLIENT_CA"])
