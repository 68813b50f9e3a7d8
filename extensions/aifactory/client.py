"""Ask about one's allocation: from the allocations service in a hub session, or from Slurm.

Both clients return the same answers (the service's JSON, computed by `aifactory.allocations`),
so the widgets and the CLI work the same in a notebook and on a login node.
"""

from __future__ import annotations

import getpass
import os

import requests

from . import allocations, names, slurm
from .allocations import Snapshot, Viewer


USER_NAME_RE = names.SITE_USER_RE
NEEDS_HUB = ("Courses are known to the hub: run this in a hub session (or set "
             "AIFACTORY_ALLOCATIONS_URL and JUPYTERHUB_API_TOKEN).")


class AllocationsError(RuntimeError):
    """The answer could not be had; the message is for people."""


class ServiceClient:
    """The hub's allocations service, with this session's JupyterHub token."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 10):
        self.url = (url or os.environ["AIFACTORY_ALLOCATIONS_URL"]).rstrip("/") + "/api/"
        self.token = token or os.environ["JUPYTERHUB_API_TOKEN"]
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {self.token}"

    def _call(self, method: str, path: str, **params) -> dict:
        try:
            r = self.session.request(method, self.url + path, timeout=self.timeout,
                                     params={k: v for k, v in params.items() if v is not None})
        except requests.RequestException:
            raise AllocationsError("the allocations service is unreachable") from None
        try:
            body = r.json()
        except ValueError:
            body = {}
        if r.status_code >= 400:
            raise AllocationsError(body.get("error") or f"the allocations service answered "
                                                       f"{r.status_code}")
        return body

    def budgets(self, account: str | None = None) -> dict:
        return self._call("GET", "budgets", account=account)

    def jobs(self, user: str | None = None) -> dict:
        return self._call("GET", "jobs", user=user)

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"jobs/{job_id}")

    def gpus(self) -> dict:
        return self._call("GET", "gpus")

    def cancel(self, job_id: str) -> dict:
        return self._call("DELETE", f"jobs/{job_id}")

    def courses(self) -> dict:
        return self._call("GET", "courses")

    def course(self, name: str) -> dict:
        return self._call("GET", f"courses/{name}")

    def course_session(self, name: str, user: str, action: str) -> str:
        """Start or stop a participant's course session (the service checks and acts);
        what happened, in words."""
        if not USER_NAME_RE.match(user):
            raise AllocationsError(f"'{user[:40]}' is not a user name.")
        method = {"start": "POST", "stop": "DELETE"}[action]
        return self._call(method, f"courses/{name}/sessions/{user}")["done"]


def course_targets(answer: dict, action: str) -> list[str]:
    """Whom "start all" / "stop all" concerns in a course view: those not yet in a session,
    or those in one."""
    wanted = ("not started", "stopped") if action == "start" else ("running", "pending")
    return [p["user"] for p in answer["participants"] if p["state"] in wanted]


class DirectClient:
    """Outside a hub (a terminal on a login node): ask Slurm directly, as this Unix user."""

    def __init__(self, user: str | None = None):
        name = user or getpass.getuser()
        self.viewer = Viewer(name, admin=name == "root")

    def _answer(self, compute, *args):
        try:  # only the parts the answer reads (allocations.reads)
            return compute(self.viewer, Snapshot.take(compute.parts), *args)
        except allocations.AccessError as e:
            raise AllocationsError(str(e)) from None

    def budgets(self, account: str | None = None) -> dict:
        return self._answer(allocations.budgets, {}, account)

    def jobs(self, user: str | None = None) -> dict:
        return self._answer(allocations.jobs, user)

    def job(self, job_id: str) -> dict:
        return self._answer(allocations.job, job_id)

    def gpus(self) -> dict:
        return self._answer(allocations.gpus)

    def courses(self) -> dict:
        raise AllocationsError(NEEDS_HUB)

    def course(self, name: str) -> dict:
        raise AllocationsError(NEEDS_HUB)

    def course_session(self, name: str, user: str, action: str) -> str:
        raise AllocationsError(NEEDS_HUB)

    def cancel(self, job_id: str) -> dict:
        try:  # as this process's user: Slurm refuses other people's jobs
            slurm.cancel(job_id)
        except (slurm.SlurmError, ValueError) as e:
            raise AllocationsError(str(e)) from None
        return {"job_id": job_id, "cancelled": True}


def remaining(account: str, billing, client=None) -> float | None:
    """What project `account` has left in the site's unit (None: no limit): from the
    allocations service in a hub session, else from Slurm (one sshare)."""
    client = client or default_client()
    if isinstance(client, ServiceClient):
        return client.budgets(account)["projects"][0]["remaining"]
    budget = slurm.budgets(billing.tres).get(account)
    if budget is None:  # not a project of Slurm's, or its totals are its coordinators' only
        raise AllocationsError(allocations.private_totals(account))
    return None if budget.remaining_min is None else budget.remaining_min / 60


def default_client():
    """The service when this runs in a hub session, Slurm directly otherwise."""
    if os.environ.get("AIFACTORY_ALLOCATIONS_URL") and os.environ.get("JUPYTERHUB_API_TOKEN"):
        return ServiceClient()
    return DirectClient()
