"""A Jupyter server extension for every notebook session (enabled in the shared venv).

- **The port is told to the hub only once it is ours.** The session's job starts
  `jupyterhub-singleuser` on port 0 (the kernel picks a free one) with
  AIFACTORY_REPORT_PORT=1; once the server listens, this extension reports the port it holds
  to the hub's port callback, with the server's own token. Stock batchspawner reports a
  random port first and binds it afterwards: another user on the node could bind it in
  between and receive the victim's route. Nobody can take a port that is already bound.
- **jupyter-server-proxy reaches only the user's own ports, and hands no credentials on.**
  `/user/NAME/proxy/PORT/` would forward to whatever listens on that port of the node, which
  may be another user's process (an old dashboard link whose port someone else took): such a
  page would run with the user's origin and receive their cookies (upstream
  jupyter-server-proxy issue 590). A port whose listener belongs to another user is refused;
  the hub's and Jupyter's cookies, the Authorization and the XSRF header are removed from
  what is forwarded even to the user's own ports.
- **Notebook jobs** (`aifactory.notebook_jobs.handlers`): the person's notebooks as Slurm
  batch jobs and arrays, under `aifactory/api/notebook-jobs`.
- **The JupyterLab extension** (`aifactory.lab`): the session's clock, budget and jobs in
  the status bar and a side panel, under `aifactory/api/session`.
- **Module names stay names.** jupyterlmod runs `$LMOD_CMD python show NAME` through a shell,
  NAME taken from the URL: each argument is quoted first (`_guard_lmod`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex

CREDENTIAL_HEADERS = ("Authorization", "X-XSRFToken", "X-Xsrftoken")


def _jupyter_server_extension_points():
    return [{"module": "aifactory.session"}]


def without_credentials(cookie_header: str) -> str:
    """A Cookie header without the hub's and Jupyter's cookies (an app's own ones stay).
    Several Cookie lines arrive joined by commas."""
    kept = []
    for part in re.split(r"[;,]", cookie_header):
        name = part.split("=", 1)[0].strip().removeprefix("__Host-").removeprefix("__Secure-")
        if not name or name == "_xsrf" or name.startswith(("jupyterhub-", "username-")):
            continue
        kept.append(part.strip())
    return "; ".join(kept)


def listener_uids(port: int, tables: tuple[str, ...] = ("/proc/net/tcp", "/proc/net/tcp6")
                  ) -> set[int]:
    """Who owns the sockets listening on `port` in this network namespace (state 0A)."""
    owners = set()
    for table in tables:
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 7 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                owners.add(int(fields[7]))
    return owners


def _guard_proxy() -> None:
    try:
        from jupyter_server_proxy.handlers import ProxyHandler
    except ImportError:
        return
    from tornado import web

    headers_of, proxy, proxy_open = (ProxyHandler.proxy_request_headers, ProxyHandler.proxy,
                                     ProxyHandler.proxy_open)

    def check_owner(port) -> None:
        others = listener_uids(int(port)) - {os.getuid()}
        if others:
            raise web.HTTPError(403, f"Port {int(port)} on this node belongs to another user; "
                                     "this session's proxy reaches only your own ports.")

    def proxy_request_headers(self):
        headers = headers_of(self)
        for name in CREDENTIAL_HEADERS:
            headers.pop(name, None)
        cookies = without_credentials(headers.pop("Cookie", "") or "")
        if cookies:
            headers["Cookie"] = cookies
        return headers

    async def guarded_proxy(self, host, port, proxied_path):
        check_owner(port)
        return await proxy(self, host, port, proxied_path)

    async def guarded_open(self, host, port, proxied_path):
        check_owner(port)
        return await proxy_open(self, host, port, proxied_path)

    ProxyHandler.proxy_request_headers = proxy_request_headers
    ProxyHandler.proxy = guarded_proxy
    ProxyHandler.proxy_open = guarded_open


def _guard_lmod() -> None:
    """jupyterlmod (the Software Modules sidebar) joins module names from URLs and request
    bodies into a shell line; a link such as /user/NAME/module/modules/x;curl...|sh, opened
    by its user (a GET the hub's XSRF check lets through), would run that command as them.
    Each argument is quoted, so a name is only ever a name."""
    try:
        import module as lmod_api  # jupyterlmod's helper package
    except ImportError:
        return
    run = lmod_api.module
    if getattr(run, "aifactory_quoted", False):
        return

    async def quoted(command, *args):
        return await run(command, *(shlex.quote(str(arg)) for arg in args))

    quoted.aifactory_quoted = True
    lmod_api.module = quoted  # ModuleAPI looks the function up at each call


def bound_port(serverapp) -> int | None:
    """The TCP port the server's HTTP server really listens on (None before it does)."""
    try:
        sockets = serverapp.http_server._sockets
    except AttributeError:  # the HTTP server is made at the end of initialize()
        return None
    for sock in sockets.values():
        address = sock.getsockname()
        if isinstance(address, tuple) and address[1]:
            return address[1]
    return None


async def _report_port(serverapp) -> None:
    from tornado.httpclient import AsyncHTTPClient, HTTPClientError

    from .internal_ssl import hub_ssl_context

    for _ in range(600):  # the loop may run before the server has bound (singleuser's checks)
        if (port := bound_port(serverapp)) is not None:
            break
        await asyncio.sleep(0.1)
    else:
        serverapp.log.error("aifactory: the server never listened; stopping")
        serverapp.io_loop.stop()
        return
    url = os.environ["JUPYTERHUB_API_URL"].rstrip("/") + "/batchspawner"
    headers = {"Authorization": f"token {os.environ['JUPYTERHUB_API_TOKEN']}",
               "Content-Type": "application/json"}
    for wait in (1, 2, 4, 8, 16, 0):  # a hub restart takes some seconds
        try:
            await AsyncHTTPClient().fetch(url, method="POST", headers=headers,
                                          body=json.dumps({"port": port}), request_timeout=20,
                                          ssl_options=hub_ssl_context())
            serverapp.log.info("aifactory: told the hub this session listens on port %s", port)
            return
        except (HTTPClientError, OSError) as e:
            serverapp.log.warning("aifactory: the hub did not take the port (%s)", e)
            await asyncio.sleep(wait)
    serverapp.log.error("aifactory: the hub never took the port; stopping")
    serverapp.io_loop.stop()


def _load_jupyter_server_extension(serverapp) -> None:
    _guard_proxy()
    _guard_lmod()
    from .notebook_jobs import handlers  # notebooks as batch jobs, over the server's API
    serverapp.web_app.add_handlers(".*$", handlers.routes(serverapp.base_url))
    from .lab import handlers as lab  # the JupyterLab extension's status, ending and stop
    lab.setup(serverapp)
    # A session started in a site environment (its modules loaded by the job) opens new
    # notebooks with that environment's Python (aifactory.kernels).
    # Only the modules' Python is looked at here, not the user's environments (no scan of
    # the home at start).
    if os.environ.get("AIFACTORY_ENVIRONMENT"):
        from .kernels import MODULES_KERNEL, modules_kernel
        if modules_kernel() is not None:
            serverapp.kernel_manager.default_kernel_name = MODULES_KERNEL
    # Only the session's own server reports, once: kernels and terminals do not inherit it.
    if os.environ.pop("AIFACTORY_REPORT_PORT", "") == "1":
        from tornado.ioloop import IOLoop

        # Runs once the loop starts, after the server has bound its port.
        IOLoop.current().add_callback(_report_port, serverapp)
