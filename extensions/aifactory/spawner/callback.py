"""batchspawner's port callback, made safe.

Stock batchspawner (`POST /hub/api/batchspawner`) sets *any* spawner attribute the JSON body
names, so a user holding their server's token could set the commands the root hub runs. Ours
accepts only `{"port": 1..65535}`, only from the starting server's own token.
"""

import json

import batchspawner  # noqa: F401  (registers its handler, which is replaced below)
from jupyterhub import apihandlers
from jupyterhub.apihandlers import APIHandler
from tornado import web


class PortCallbackHandler(APIHandler):
    """The single-user server reports the port it listens on; nothing else is accepted."""

    @web.authenticated
    def post(self):
        token = self.get_auth_token()
        user = self.current_user
        spawner = next((s for s in getattr(user, "spawners", {}).values()
                        if token and s.api_token == token), None)
        if spawner is None:
            raise web.HTTPError(403, "This token does not belong to a notebook server.")
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError:
            raise web.HTTPError(400, "The body must be JSON.")
        if not isinstance(body, dict) or set(body) != {"port"}:
            raise web.HTTPError(400, 'The body must be exactly {"port": <number>}.')
        port = body["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise web.HTTPError(400, "port must be a whole number from 1 to 65535.")
        if spawner.pending != "spawn":
            raise web.HTTPError(409, "The server is not starting; its port is already set.")
        spawner.port = port
        self.set_status(201)
        self.finish(json.dumps({"message": "port set"}))


def _close_port_callback_hole() -> None:
    handlers = apihandlers.default_handlers
    handlers[:] = [h for h in handlers if h[0] != r"/api/batchspawner"]
    handlers.append((r"/api/batchspawner", PortCallbackHandler))


_close_port_callback_hole()
