"""The benchmarks' way into the demo hub: through its OpenID provider, as a browser goes.

Everything is https with the demo's CA: requests trusts it (REQUESTS_CA_BUNDLE), and so does
`ssl_context()` for aiohttp.
"""

from __future__ import annotations

import html
import os
import re
import ssl
from urllib.parse import urljoin

import requests

HUB = "https://hub.localhost:8443"
DEMO_CA = "/etc/aifactory/tls/aifactory-demo-ca.crt"
os.environ["REQUESTS_CA_BUNDLE"] = DEMO_CA


def ssl_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=DEMO_CA)


def log_in(user: str, password: str) -> requests.Session:
    """A session logged in to the hub as `user` (the IdP's form sent with the password)."""
    http = requests.Session()
    page = http.get(f"{HUB}/hub/oauth_login?next=")
    form = re.search(r'<form method="post" action="([^"]+)"', page.text)
    assert form, f"no login form at the IdP ({page.status_code})"
    done = http.post(urljoin(page.url, html.unescape(form.group(1))),
                     data={"login": user, "password": password})
    assert done.url.startswith(HUB) and done.status_code == 200, \
        f"login of {user}: {done.status_code} at {done.url}"
    return http


def xsrf(http: requests.Session) -> str:
    return next(c.value for c in http.cookies if c.name.endswith("_xsrf")
                and c.path.startswith("/hub"))
