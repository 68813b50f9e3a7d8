"""Runs in a person's session server, as the person: what aifactory's JupyterLab extension
asks, under `<server>/aifactory/api/`. Only the server's own user reaches it (the hub's OAuth).

    GET    session          the session's clock, its project's budget, the person's jobs with
                            their pending reasons, free GPUs (aifactory.lab.rules.status)
    GET    session/ending   waits up to 45 s; answers {"ending": null}, or why the session's
                            job is ending as soon as Slurm signals its server
    DELETE jobs/ID          cancel one of the person's jobs (through the allocations service,
                            which runs scancel as them)

Every answer comes from the allocations service's shared cache, fetched at most once per
MAX_AGE_S by this server however many tabs are open: no Slurm command per tab. The only Slurm
command is one `squeue` for the session's own job when Slurm signals the server, to say why.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from .. import names
from . import rules

MAX_AGE_S = 5.0
LONG_POLL_S = 45.0
# Slurm kills the job KillWait after its TERM (10 s in the demo, 30 by default): asking Slurm
# why, telling the tabs and letting the server stop must fit well inside that.
ASK_S = 2.0  # each Slurm command's limit
LEARN_S = 7.0
FAREWELL_S = 1.0  # between telling the open tabs and the server's stop: their answers leave
PARTS = ("jobs", "budgets", "gpus")


class Feed:
    """The service's answers for this session, shared by every tab; one fetch at a time."""

    def __init__(self, client=None, job_id: str | None = None, max_age: float = MAX_AGE_S):
        self._client = client
        self.job_id = job_id if job_id is not None else os.environ.get("SLURM_JOB_ID", "")
        self.max_age = max_age
        self._answer: dict | None = None
        self._taken = 0.0
        self._last_good: dict[str, dict] = {}  # each part's last answer, kept when one fails
        self._lock = asyncio.Lock()
        self.ending: dict | None = None
        self.ended = asyncio.Event()

    @property
    def client(self):
        if self._client is None:
            from ..client import ServiceClient
            self._client = ServiceClient(timeout=8)
        return self._client

    def _fetch(self) -> dict:
        from ..client import AllocationsError
        try:
            client = self.client
        except KeyError:
            return rules.unreachable("This server runs outside a hub session: the allocations "
                                     "service is not known to it.", time.time())
        answers, failed = {}, []
        for part in PARTS:  # a part that fails keeps its last answer (the session's clock)
            try:
                answers[part] = self._last_good[part] = getattr(client, part)()
            except AllocationsError as e:
                failed.append(f"scheduler unreachable: {e}")
                answers[part] = self._last_good.get(part, {})
        if len(failed) == len(PARTS) and not self._last_good:
            return rules.unreachable(failed[0], time.time())
        status = rules.status(self.job_id, answers["jobs"], answers["budgets"],
                              answers["gpus"], time.time())
        if failed:
            status["warnings"] = list(dict.fromkeys(failed + status["warnings"]))
            status["unreachable"] = failed[0]
        return status

    async def status(self) -> dict:
        async with self._lock:  # tabs asking at once share one fetch
            if self._answer is None or time.monotonic() - self._taken > self.max_age:
                self._answer = await asyncio.to_thread(self._fetch)
                self._taken = time.monotonic()
        answer = dict(self._answer)
        session = answer.get("session")
        if session and session.get("end_time"):  # the clock moves between fetches
            end = rules._epoch(session["end_time"])
            answer["session"] = {**session, "time_left_s": max(0, int(end - time.time()))}
        answer["ending"] = self.ending
        return answer

    async def learn_ending(self) -> None:
        """Slurm signalled the server: ask Slurm once for the job's state, tell the tabs."""
        end_time = None
        if self._answer and (self._answer.get("session") or {}).get("end_time"):
            end_time = rules._epoch(self._answer["session"]["end_time"])
        state = await asyncio.to_thread(job_state, self.job_id)
        self.ending = rules.ending(self.job_id, state, end_time, time.time())
        self.ended.set()


def job_state(job_id: str, tries: int = 2) -> str | None:
    """The ending job's state from Slurm, in a few seconds at most (each command is killed
    at ASK_S): one squeue; on Slurm 22.05, which says only COMPLETING then, accounting,
    which may take a moment to hear of the end."""
    from .. import slurm
    if not job_id:
        return None
    try:
        job = slurm.job(job_id, timeout=ASK_S)
        if job is not None and job.state in slurm.END_STATES:
            return job.state
        for attempt in range(tries):
            if attempt:
                time.sleep(0.5)
            past = slurm.accounting_jobs(job_ids=[job_id], timeout=ASK_S)
            found = next((p.state for p in past if p.job_id == job_id
                          and p.state in slurm.END_STATES), None)
            if found:
                return found
    except (slurm.SlurmError, OSError, ValueError):
        pass
    return None


class _Handler(APIHandler):
    # A status bar asking is not the person working: the hub's idle culling must not see it.
    _track_activity = False

    @property
    def feed(self) -> Feed:
        return self.settings["aifactory_feed"]

    def refuse(self, status: int, message: str) -> None:
        self.set_status(status)
        self.finish(json.dumps({"error": message, "message": message}))


class SessionHandler(_Handler):
    @web.authenticated
    async def get(self):
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(await self.feed.status()))


class EndingHandler(_Handler):
    @web.authenticated
    async def get(self):
        try:
            await asyncio.wait_for(self.feed.ended.wait(), LONG_POLL_S)
        except asyncio.TimeoutError:
            pass
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps({"ending": self.feed.ending}))


class JobHandler(_Handler):
    _track_activity = True  # stopping a job is the person at work

    @web.authenticated
    async def delete(self, job_id: str):
        from ..client import AllocationsError
        if not names.JOB_ID_RE.match(job_id):
            return self.refuse(400, "That is not a job id.")
        try:
            done = await asyncio.to_thread(self.feed.client.cancel, job_id)
        except KeyError:
            return self.refuse(503, "This server runs outside a hub session.")
        except AllocationsError as e:
            message = str(e)
            return self.refuse(503 if "unreachable" in message else 400, message)
        self.feed._taken = 0.0  # the next status asks the service again
        self.finish(json.dumps(done))


def watch_for_end(serverapp, feed: Feed) -> None:
    """Wrap the server's SIGTERM handler: Slurm's TERM (scancel, the time limit, preemption)
    first tells the open tabs why, then the server stops as it would have."""
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return
    loop = serverapp.io_loop

    async def farewell(sig, frame):
        try:
            await asyncio.wait_for(feed.learn_ending(), LEARN_S)
            await asyncio.sleep(FAREWELL_S)
        except Exception:  # never keep the server from stopping
            serverapp.log.exception("aifactory: could not learn why the session ends")
        previous(sig, frame)

    def on_term(sig, frame):
        signal.signal(signal.SIGTERM, previous)  # a second TERM stops at once
        loop.add_callback_from_signal(farewell, sig, frame)

    signal.signal(signal.SIGTERM, on_term)


def setup(serverapp) -> None:
    feed = Feed()
    serverapp.web_app.settings["aifactory_feed"] = feed
    api = url_path_join(serverapp.base_url, "aifactory/api")
    serverapp.web_app.add_handlers(".*$", [
        (url_path_join(api, "session"), SessionHandler),
        (url_path_join(api, "session/ending"), EndingHandler),
        (url_path_join(api, "jobs", "([0-9]+)"), JobHandler),
    ])
    if os.environ.get("SLURM_JOB_ID"):
        watch_for_end(serverapp, feed)
