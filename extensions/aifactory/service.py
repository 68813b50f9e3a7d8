"""The allocations service: one cached view of Slurm for everyone, over a REST API.

A JupyterHub-managed service (`python -m aifactory.service`). Each part of the snapshot is
refreshed on its own fixed interval, however many people look: requests only read the cache,
so slurmctld's load does not grow with the number of widgets. Authentication is JupyterHub's
(a token with the scope access:services!service=allocations, or the OAuth cookie of a
browser); what each person may see is decided in `aifactory.allocations`.

API, under /services/allocations/api/ (JSON; every answer has as_of, age_s, source, warnings):
  GET    budgets[?account=NAME]  budgets/NAME  projects you belong to (per user if you coordinate)
  GET    jobs[?user=NAME]        your active and recent jobs (another user's: admins only)
  GET    jobs/ID                 one of your active jobs
  DELETE jobs/ID                 cancel one of your jobs (run as you, so Slurm checks it too)
  GET    gpus                    free and total GPUs per partition and type; nodes down
  GET    courses                 the courses you teach or take: window, spawn link
  GET    courses/NAME            a course you teach: participants' sessions, GPU-hours, last
                                 activity; its window and budget
  POST   courses/NAME/sessions/USER    start a participant's course session (instructors)
  DELETE courses/NAME/sessions/USER    stop it; only a session of the course's profile

Instructors hold no right to other people's servers in the hub: the service acts for them,
with its own token, once it has checked who asks (their hub groups, asked afresh), whom (a
participant of that course) and what (the course's session). Course groups follow the IdP's
entitlements (set by the hub at each login and refresh) or, with PAM, the Unix groups of the
same names: the service reconciles those at start and every half minute. Either way a person
removed from a group loses what it gave them.
  GET    health                  age and last error of each part of the cache (no login needed)

Outside the API, /services/allocations/metrics gives Prometheus the operators' metrics
(aifactory.metrics) with the metrics token only (AIFACTORY_METRICS_TOKEN_FILE); no person's
token reads them.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import json
import logging
import os
import re
import signal
import time
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from . import allocations, courses, metrics, names, report, slurm
from . import site_description as site_module
from .allocations import FETCH, AccessError, Snapshot, Viewer
from .internal_ssl import hub_ssl_context
from .site_description import profile_name

log = logging.getLogger("aifactory.service")

# Seconds between refreshes of each part; requests never trigger one.
INTERVALS = {"queue": 5, "nodes": 10, "reservations": 30, "shares": 15, "members": 60,
             "coordinators": 60, "history": 60, "period": 3600}
ACCOUNT_RE, USER_RE = names.SITE_ACCOUNT_RE, names.SITE_USER_RE
JOB_ID_RE, COURSE_RE = names.JOB_ID_RE, names.COURSE_RE
GROUPS_EVERY_S = 30
# Spawn links are whole addresses: participants open them from anywhere (the hub sets this).
PUBLIC_HUB_URL = os.environ.get("AIFACTORY_PUBLIC_URL", "").rstrip("/") + "/hub/"


class Cache:
    """The service's snapshot of Slurm: one `Cached` per part, renewed on a fixed schedule
    in the background (requests never trigger a fetch)."""

    def __init__(self, intervals: dict[str, float] = INTERVALS):
        self.parts = allocations.parts_cache()
        self.intervals = intervals
        self.ready = asyncio.Event()
        self._wakeups = {name: asyncio.Event() for name in self.parts}

    @property
    def snap(self) -> Snapshot:
        return Snapshot.of(self.parts)

    async def refresh(self, name: str) -> None:
        part = self.parts[name]
        failing = bool(part.error)
        await part.refresh()
        if part.error and not failing:
            log.warning("%s: %s", part.source, part.error)
        elif failing and not part.error:
            log.info("%s answers again", part.source)

    def soon(self, name: str) -> None:
        """Refresh `name` now rather than at its next interval (after a change we made)."""
        self._wakeups[name].set()

    async def _loop(self, name: str) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wakeups[name].wait(), self.intervals[name])
            except asyncio.TimeoutError:
                pass
            self._wakeups[name].clear()
            await self.refresh(name)

    async def run(self) -> None:
        await asyncio.gather(*(self.refresh(name) for name in self.parts))
        self.ready.set()
        await asyncio.gather(*(self._loop(name) for name in self.parts))


class JsonErrors(web.RequestHandler):
    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = exc.log_message if isinstance(exc, web.HTTPError) and exc.log_message else (
            self._reason)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "error": message}))


class BaseHandler(HubOAuthenticated, JsonErrors):
    @property
    def cache(self) -> Cache:
        return self.settings["cache"]

    def send(self, answer: dict) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(answer))


class ApiHandler(BaseHandler):
    """Token-authenticated JSON; the viewer is known before any method runs."""

    allowed_arguments: tuple[str, ...] = ()

    async def prepare(self):
        unknown = set(self.request.arguments) - set(self.allowed_arguments)
        if unknown:
            raise web.HTTPError(400, f"Unknown parameter '{sorted(unknown)[0]}'.")
        token = self.hub_auth.get_token(self, in_cookie=False)
        if not token:
            raise web.HTTPError(401, "No token: send 'Authorization: token <your JupyterHub "
                                     "API token>'.")
        model = await self.hub_auth.user_for_token(token, sync=False)
        if not model or model.get("kind", "user") != "user":
            raise web.HTTPError(401, "The token is not valid (wrong, expired or revoked).")
        if not self.hub_auth.check_scopes(self.hub_auth.access_scopes, model):
            raise web.HTTPError(403, "This token may not use the allocations service (it needs "
                                     "the scope access:services!service=allocations).")
        self.viewer = await self.settings["viewers"].get(model["name"])
        await self.cache.ready.wait()

    def argument(self, name: str, pattern: re.Pattern) -> str | None:
        value = self.get_argument(name, None)
        if value is not None and not pattern.match(value):
            raise web.HTTPError(400, f"Parameter '{name}' is not valid.")
        return value

    def answer(self, compute, *args, **kwargs) -> None:
        try:
            self.send(compute(self.viewer, self.cache.snap, *args, **kwargs))
        except AccessError as e:
            raise web.HTTPError(e.status, str(e)) from None


def _path_value(value: str, pattern: re.Pattern, what: str) -> str:
    if not pattern.match(value):
        raise web.HTTPError(400, f"'{value[:40]}' is not a valid {what}.")
    return value


class BudgetsHandler(ApiHandler):
    allowed_arguments = ("account",)

    def get(self, account: str | None = None):
        if account is not None:
            account = _path_value(account, ACCOUNT_RE, "project name")
        else:
            account = self.argument("account", ACCOUNT_RE)
        self.answer(allocations.budgets, site_module.load_cached().coordinator_groups, account)


class JobsHandler(ApiHandler):
    allowed_arguments = ("user",)

    def get(self):
        self.answer(allocations.jobs, self.argument("user", USER_RE))


class JobHandler(ApiHandler):
    def get(self, job_id: str):
        self.answer(allocations.job, _path_value(job_id, JOB_ID_RE, "job id"))

    async def delete(self, job_id: str):
        job_id = _path_value(job_id, JOB_ID_RE, "job id")
        known = self.cache.snap.queue.get(job_id)
        not_yours = web.HTTPError(404, f"There is no active job {job_id} of yours.")
        if known is not None and known.user != self.viewer.name and not self.viewer.admin:
            raise not_yours
        try:
            # As the viewer: Slurm checks the job is theirs too (admins cancel as root).
            await slurm.cancel_async(job_id, user=None if self.viewer.admin else self.viewer.name)
        except slurm.SlurmUnreachable:
            raise web.HTTPError(503, "scheduler unreachable: nothing was cancelled; "
                                     "try again in a minute.") from None
        except slurm.SlurmError:
            raise not_yours from None
        self.cache.soon("queue")
        self.send({"job_id": job_id, "cancelled": True})


class GpusHandler(ApiHandler):
    def get(self):
        self.answer(allocations.gpus)


class CoursesHandler(ApiHandler):
    def get(self):
        self.answer(allocations.courses_list, site_module.load_cached().courses, hub_url=PUBLIC_HUB_URL)


class CourseHandler(ApiHandler):
    async def get(self, name: str):
        name = _path_value(name, COURSE_RE, "course name")
        course = site_module.load_cached().course(name)
        if course is None:
            raise web.HTTPError(404, f"There is no course '{name}'.")
        if not (self.viewer.admin or course.instructors in self.viewer.groups):
            raise web.HTTPError(403, f"You do not teach {course.display_name}.")
        try:
            participants, users = await self.settings["hub"].course_members(course.participants)
        except (HTTPClientError, OSError) as e:
            raise web.HTTPError(503, f"the hub did not answer ({e}); try again") from None
        self.answer(allocations.course, course, participants, users, hub_url=PUBLIC_HUB_URL)


class CourseSessionHandler(ApiHandler):
    """An instructor starts or stops a participant's course session; the service acts."""

    async def _check(self, name: str, user: str):
        name = _path_value(name, COURSE_RE, "course name")
        user = _path_value(user, USER_RE, "user name")
        course = site_module.load_cached().course(name)
        if course is None:
            raise web.HTTPError(404, f"There is no course '{name}'.")
        hub = self.settings["hub"]
        try:  # asked afresh: a removed instructor acts no more
            viewer = await self.settings["viewers"].get(self.viewer.name, max_age=0)
            members = (await hub.get(f"groups/{course.participants}"))["users"]
            model = await hub.get(f"users/{user}") if user in members else {}
        except (HTTPClientError, OSError) as e:
            raise web.HTTPError(503, f"the hub did not answer ({e}); nothing was done") from None
        if not (viewer.admin or course.instructors in viewer.groups):
            raise web.HTTPError(403, f"You do not teach {course.display_name}.")
        if user not in members:
            raise web.HTTPError(403, f"{user} is not a participant of {course.display_name}.")
        server = (model.get("servers") or {}).get("")  # active servers only
        return course, user, server if server and not server.get("stopped") else None

    async def post(self, name: str, user: str):
        course, user, _ = await self._check(name, user)
        done = await self.settings["hub"].server_action("POST", user, {"profile": course.profile})
        log.info("%s started %s's %s session: %s", self.viewer.name, user, course.name, done)
        self.send({"user": user, "done": done})

    async def delete(self, name: str, user: str):
        course, user, server = await self._check(name, user)
        if server is None:
            self.send({"user": user, "done": "not running"})
            return
        if profile_name(server.get("user_options")) != course.profile:
            raise web.HTTPError(403, f"{user}'s session is not their {course.name} course "
                                     f"session; only {user} or an admin may stop it.")
        done = await self.settings["hub"].server_action("DELETE", user)
        log.info("%s stopped %s's %s session: %s", self.viewer.name, user, course.name, done)
        self.send({"user": user, "done": done})


class HealthHandler(BaseHandler):
    def get(self):
        snap, now = self.cache.snap, time.time()
        self.send({name: {"source": allocations.SOURCES[name],
                          "age_s": round(now - snap.as_of[name], 1) if name in snap.as_of else None,
                          "error": snap.errors.get(name)} for name in FETCH})


class MetricsHandler(JsonErrors):
    """Prometheus's scrape, with the metrics token as a bearer token; nobody else's."""

    def get(self):
        token = self.settings["metrics_token"]
        scheme, _, sent = self.request.headers.get("Authorization", "").partition(" ")
        if not token:
            raise web.HTTPError(404, "Metrics are off: the service was given no metrics token.")
        if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(),
                                                                  token.encode()):
            raise web.HTTPError(403, "Metrics are for the site's Prometheus (its token) only.")
        site = site_module.load_cached()
        found = metrics.families(self.settings["cache"].parts, site.billing,
                                 {p.slug for p in site.profiles}, slurm.command_counts())
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(metrics.exposition(found))


def metrics_token() -> str:
    path = os.environ.get("AIFACTORY_METRICS_TOKEN_FILE", "")
    return open(path).read().strip() if path else ""


class PageHandler(BaseHandler):
    """A browser's view (OAuth login through the hub): the viewer's budgets as a table."""

    @web.authenticated
    async def get(self):
        await self.cache.ready.wait()
        viewer = await self.settings["viewers"].get(self.current_user["name"])
        answer = allocations.budgets(viewer, self.cache.snap,
                                     site_module.load_cached().coordinator_groups)
        rows = "".join(
            f"<tr><td>{html.escape(p['account'])}</td>" + "".join(
                f"<td>{html.escape(report.amount(p, key, p['unit']))}</td>"
                for key in ("granted", "used", "held", "remaining")) + "</tr>"
            for p in answer["projects"])
        unit = allocations.site_billing().unit
        warnings = "".join(f"<p><b>{html.escape(w)}</b></p>" for w in answer["warnings"])
        self.finish(f"<!doctype html><title>Allocations</title><h1>{html.escape(unit)} of "
                    f"{html.escape(viewer.name)}</h1>{warnings}<table border=1><tr><th>project"
                    f"<th>granted<th>used<th>held<th>remaining</tr>{rows}</table>"
                    f"<p>as of {answer['as_of']}</p>")


class Hub:
    """The hub's API, with the service's own token (read:users, read:groups, read:servers)."""

    def __init__(self, hub_api: str, token: str, max_age: float = 2):
        self.hub_api, self.token, self.max_age = hub_api.rstrip("/"), token, max_age
        self._users: tuple[float, dict[str, dict]] | None = None
        self.ssl_context = hub_ssl_context()  # the service's certificate under internal_ssl

    async def get(self, path: str):
        response = await AsyncHTTPClient().fetch(
            f"{self.hub_api}/{path}", headers={"Authorization": f"token {self.token}"},
            request_timeout=10, ssl_options=self.ssl_context)
        return json.loads(response.body)

    async def users(self) -> dict[str, dict]:
        """Every hub user's model with their servers, at most `max_age` s old."""
        if self._users and time.monotonic() - self._users[0] < self.max_age:
            return self._users[1]
        users, offset, limit = {}, 0, 200
        while True:
            page = await self.get(f"users?offset={offset}&limit={limit}&include_stopped_servers=1")
            users.update((u["name"], u) for u in page)
            if len(page) < limit:
                break
            offset += limit
        self._users = (time.monotonic(), users)
        return users

    async def course_members(self, group: str) -> tuple[list[str], dict[str, dict]]:
        members = (await self.get(f"groups/{group}"))["users"]
        users = await self.users()
        return members, {name: users[name] for name in members if name in users}

    async def send(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """A change through the hub's API: (status, the answer's JSON)."""
        try:
            response = await AsyncHTTPClient().fetch(
                f"{self.hub_api}/{path}", method=method, request_timeout=30,
                headers={"Authorization": f"token {self.token}"},
                body=None if body is None else json.dumps(body), allow_nonstandard_methods=True,
                ssl_options=self.ssl_context)
        except HTTPClientError as e:
            if e.response is None:
                raise
            response = e.response
        try:
            answer = json.loads(response.body or b"{}")
        except ValueError:
            answer = {}
        return response.code, answer

    async def server_action(self, method: str, user: str, body: dict | None = None) -> str:
        """Start (POST) or stop (DELETE) `user`'s server; what happened, in words."""
        code, answer = await self.send(method, f"users/{user}/server", body)
        self._users = None
        if code in (201, 202, 204):
            return ("started" if code == 201 else "starting") if method == "POST" else (
                "stopping" if code == 202 else "stopped")
        message = answer.get("message") or f"status {code}"
        if code == 400 and "already" in message:
            return "already running" if method == "POST" else "not running"
        raise web.HTTPError(code if code in (400, 403, 404) else 502,
                            f"the hub refused: {message}")

    async def reconcile_groups(self, groups: dict[str, list[str]]) -> None:
        """Make each hub group hold exactly these members (the Unix groups' now)."""
        for name, wanted in groups.items():
            code, group = await self.send("GET", f"groups/{name}")
            if code != 200:  # the hub makes the groups when it starts (load_groups)
                continue
            have = set(group.get("users") or ())
            if gone := sorted(have - set(wanted)):
                await self.send("DELETE", f"groups/{name}/users", {"users": gone})
                log.info("hub group %s: removed %s (not in the Unix group)", name, gone)
            for user in sorted(set(wanted) - have):  # one by one: the hub refuses a whole
                code, answer = await self.send(      # list if one name is not a user yet
                    "POST", f"groups/{name}/users", {"users": [user]})
                if code == 200:
                    log.info("hub group %s: added %s", name, user)


class Viewers:
    """Who a user is to the hub (admin, groups), asked with the service's own token."""

    def __init__(self, hub: Hub, max_age: float = 60):
        self.hub, self.max_age = hub, max_age
        self._known: dict[str, tuple[float, Viewer]] = {}

    async def get(self, name: str, max_age: float | None = None) -> Viewer:
        """Who `name` is; `max_age=0`: asked now, and no older answer is used instead."""
        seen = self._known.get(name)
        if seen and time.monotonic() - seen[0] < (self.max_age if max_age is None else max_age):
            return seen[1]
        try:
            model = await self.hub.get(f"users/{name}")
            viewer = Viewer(name, bool(model.get("admin")), frozenset(model.get("groups") or ()))
        except (HTTPClientError, OSError) as e:
            if max_age == 0:
                raise
            if seen:  # the hub did not answer: keep what we knew
                return seen[1]
            log.warning("cannot look up %s at the hub: %s", name, e)
            viewer = Viewer(name)
        self._known[name] = (time.monotonic(), viewer)
        return viewer


def make_app(cache: Cache, prefix: str) -> web.Application:
    api = prefix + "api/"
    hub = Hub(os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"])
    return web.Application([
        (prefix, PageHandler),
        (prefix + "oauth_callback", HubOAuthCallbackHandler),
        (api + "budgets", BudgetsHandler),
        (api + r"budgets/([^/]+)", BudgetsHandler),
        (api + "jobs", JobsHandler),
        (api + r"jobs/([^/]+)", JobHandler),
        (api + "gpus", GpusHandler),
        (api + "courses", CoursesHandler),
        (api + r"courses/([^/]+)", CourseHandler),
        (api + r"courses/([^/]+)/sessions/([^/]+)", CourseSessionHandler),
        (api + "health", HealthHandler),
        (prefix + "metrics", MetricsHandler),
    ], cache=cache, cookie_secret=os.urandom(32),
        viewers=Viewers(hub), hub=hub, metrics_token=metrics_token())


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s allocations] "
                                                   "%(message)s")
    url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/allocations/")
    # Hold nothing worth a graceful end: leave at once when the hub stops us, so a restarted
    # hub's new service finds the port free (a Slurm call in a thread would delay asyncio's).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: os._exit(0))
    cache = Cache()
    app = make_app(cache, prefix)
    app.listen(url.port, url.hostname)
    log.info("serving %s on %s", prefix, url.geturl())
    if os.environ.get("AIFACTORY_COURSE_GROUPS_FROM", "unix") == "unix":
        # With an IdP, its entitlements set the groups at each login and refresh instead.
        app.settings["groups_task"] = asyncio.create_task(
            keep_course_groups(app.settings["hub"]))
    await cache.run()


async def keep_course_groups(hub: Hub, every_s: float = GROUPS_EVERY_S) -> None:
    """The hub's course groups as the Unix groups are now, at start and every `every_s`."""
    while True:
        try:
            wanted = courses.hub_groups(site_module.load_cached(), log=log.warning)
            await hub.reconcile_groups({name: g["users"] for name, g in wanted.items()})
        except Exception as e:  # noqa: BLE001  (the loop must outlive a hub restart)
            log.warning("course groups not reconciled: %s", e)
        await asyncio.sleep(every_s)


if __name__ == "__main__":
    asyncio.run(main())
