"""Runs in a person's session server, as the person: notebook jobs over HTTP, under
`<server>/aifactory/api/notebook-jobs` (the JupyterLab side, and scripts with a token for this
server). Only the server's own user reaches it (the hub's OAuth); every Slurm command it
runs is the person's own, so Slurm checks it too.

    GET    parameters?notebook=PATH   the notebook's declared parameters
    GET    choices                    the spawn form's profiles, options and accounts
    POST   preview                    {notebook, settings, parameters | rows, at_once}: the
                                      cost, Slurm's start estimate, the script; nothing queued
    POST   .                          the same body: submit (201)
    GET    .                          the person's notebook jobs and their runs' states
    GET    ID                         one of them
    DELETE ID                         stop it, pending or running
"""

from __future__ import annotations

import asyncio
import json
import os

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

# The checks and Slurm's words are imported at the first request, not at the server's start.

BODY_KEYS = {"notebook", "settings", "parameters", "rows", "at_once"}


class _Handler(APIHandler):
    def refuse(self, status: int, message: str) -> None:
        self.set_status(status)
        # "message" as jupyter_server's own errors, "error" as the allocations service's
        self.finish(json.dumps({"error": message, "message": message}))

    async def answer(self, status: int, work, *args, **kwargs) -> None:
        """Run `work` off the event loop (Slurm's commands take their time) and answer: a
        refusal is 400 with its sentence (404 for a job that is not yours, 503 when Slurm
        did not answer), anything else 500 with a sentence, its traceback in the log."""
        from ..spawner.request import RequestError
        from .jobs import NotFound, Unreachable
        try:
            result = await asyncio.to_thread(work, *args, **kwargs)
        except NotFound as e:
            return self.refuse(404, str(e))
        except Unreachable as e:
            return self.refuse(503, str(e))
        except RequestError as e:
            return self.refuse(400, str(e))
        except Exception:
            self.log.exception("aifactory: a notebook-job request failed")
            return self.refuse(500, "The notebook job request failed on the server (its log "
                                    "says why); see your jobs list for what it did.")
        self.set_status(status)
        self.finish(json.dumps(result))

    def body(self) -> dict:
        from ..spawner.request import RequestError
        try:
            body = json.loads(self.request.body or b"{}")
        except (ValueError, RecursionError):
            raise RequestError("The request's body is not JSON.") from None
        if not isinstance(body, dict):
            raise RequestError("The request's body must be an object.")
        unknown = sorted(set(body) - BODY_KEYS)
        if unknown:
            raise RequestError(f"Unknown field '{str(unknown[0])[:40]}'; the fields are "
                               f"{', '.join(sorted(BODY_KEYS))}.")
        return body

    def prepared(self):
        from . import jobs
        body = self.body()
        return jobs.prepare(body.get("notebook", ""), body.get("settings") or {},
                            parameters=body.get("parameters"), rows=body.get("rows"),
                            parallel=body.get("at_once"))


class ParametersHandler(_Handler):
    @web.authenticated
    async def get(self):
        def declared():
            from . import jobs, rules
            home = jobs.Path(os.path.expanduser("~"))
            _, nb = jobs.read_notebook(self.get_query_argument("notebook", ""), home)
            return {"parameters": [{"name": p.name, "type": p.type, "default": p.default}
                                   for p in rules.declared_parameters(nb).values()]}
        await self.answer(200, declared)


class ChoicesHandler(_Handler):
    @web.authenticated
    async def get(self):
        from . import jobs
        await self.answer(200, jobs.choices)


class PreviewHandler(_Handler):
    @web.authenticated
    async def post(self):
        from . import jobs
        await self.answer(200, lambda: jobs.preview(self.prepared()))


class JobsHandler(_Handler):
    @web.authenticated
    async def get(self):
        from . import jobs
        await self.answer(200, jobs.list_jobs)

    @web.authenticated
    async def post(self):
        from . import jobs
        await self.answer(201, lambda: jobs.submit(self.prepared()))


class JobHandler(_Handler):
    @web.authenticated
    async def get(self, job: str):
        from . import jobs

        def one():
            wanted = jobs.find(job)[1]["id"]
            found = [j for j in jobs.list_jobs()["jobs"] if j["id"] == wanted]
            if not found:
                raise jobs.NotFound(f"You have no notebook job {job}.")
            return found[0]
        await self.answer(200, one)

    @web.authenticated
    async def delete(self, job: str):
        from . import jobs
        await self.answer(200, jobs.stop, job)


def routes(base_url: str) -> list[tuple]:
    api = url_path_join(base_url, "aifactory/api/notebook-jobs")
    name = r"([a-z0-9][a-z0-9-]{0,62}|[0-9]+)"
    return [(url_path_join(api, "parameters"), ParametersHandler),
            (url_path_join(api, "choices"), ChoicesHandler),
            (url_path_join(api, "preview"), PreviewHandler),
            (api + "/?", JobsHandler),
            (url_path_join(api, name), JobHandler)]
