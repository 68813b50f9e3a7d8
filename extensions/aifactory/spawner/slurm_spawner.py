"""The hub's spawner: each notebook session is a Slurm job on a compute node.

Built on batchspawner's SlurmSpawner for its state handling, with these differences:

- What the person asks for comes from profiles in the site description (`hub_config/site.yaml`)
  and is checked by `request.resolve` (and against the project's budget) before anything is
  submitted, from the form, a spawn URL and the REST API alike.
- Slurm is called through `aifactory.slurm` (argv lists, as the user, no shell, no sudo), and
  job states come from one shared, cached `squeue` for all sessions (`snapshot.VIEW`).
- While pending, progress says why in plain words, with Slurm's code; a reason that waiting
  cannot cure (the budget is used up) ends the start at once with that sentence.
- A session whose job Slurm cannot be asked about is "unknown", never dropped; it is
  dropped when Slurm says the job ended, and the reason is kept for the home page.
- Sessions idle longer than their profile allows are stopped and their job cancelled.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shlex
import shutil
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

import batchspawner
from batchspawner.batchspawner import JobStatus
from jupyterhub.user import User
from traitlets import Float, Unicode, default, observe

from .. import course_rules, courses, dask_tls
from .. import site_description as site_module
from ..billing import WeightsError, parse_weights
from .. import slurm
from ..availability import held_nodes, usable_reservations
from ..snapshot import VIEW
from . import callback  # noqa: F401  (closes batchspawner's port-callback hole)
from . import certs
from . import status as states
from .form import render
from .status import SUBMITTED, Status, session_status
from ..report import clock, time_left
from ..site_description import profile_name
from .request import (RequestError, SessionRequest, check_budget, check_modules, check_nodes,
                      environment_lines, resolve, sbatch_directives)


class StartError(RuntimeError):
    """The session cannot start; the message is for the person (shown on the pending page)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.jupyterhub_message = message


class SlurmSpawner(batchspawner.SlurmSpawner):
    """A notebook session as a Slurm job, chosen from the site's profiles."""

    site_path = Unicode(str(site_module.DEFAULT_PATH),
                        help="The site description with partitions and profiles.").tag(config=True)
    venv = Unicode("/opt/aifactory/venv",
                   help="The environment (readable by every user) the job runs from.").tag(config=True)
    queue_max_age = Float(5.0, help="Seconds a shared squeue answer may be reused when polling "
                                    "running sessions.").tag(config=True)
    startup_max_age = Float(0.5, help="The same while sessions start (one shared squeue for "
                                      "all starting sessions, at most this often).").tag(config=True)
    # Reading the shared snapshot is free; Slurm is asked at most every startup_max_age.
    startup_poll_interval = Float(0.25, help="Seconds between looks at a starting session's "
                                             "job (in the shared view).").tag(config=True)
    end_warning_seconds = Float(300, help="Slurm signals the session this long before its "
                                          "walltime ends.").tag(config=True)

    # Kept in the hub's database with the spawner's state.
    job_end_time = 0
    last_end = ""
    session_state = SUBMITTED  # for the pending page (spawner.status)
    session_request: SessionRequest | None = None
    material_source = ""  # the course material's folder, for this start
    material_dest = ""    # ... copied to this folder of the home (the course's name)
    _submitted_at = 0.0
    _port_known: asyncio.Event | None = None  # set once the server reports its port
    # The session's certificate and key (internal_ssl), brought into the job in its environment
    _session_pems: dict[str, str] = {}
    # The TRESBillingWeights the last request was priced with (None: Slurm's could not be read)
    _partition_weights: str | None = ""

    @property
    def site(self) -> site_module.Site:
        return site_module.load_cached(self.site_path)

    # --- the form -------------------------------------------------------------------------

    async def _user_access(self) -> tuple[slurm.Associations, dict]:
        access = await VIEW.associations(self.user.name).get(60)
        reservations = usable_reservations(await VIEW.reservations.get(60), self.user.name,
                                           access.accounts)
        return access, reservations

    async def _options_form(self, spawner=None) -> str:
        site = self.site
        access, reservations, availability, budgets = slurm.Associations([], "", {}), {}, [], {}
        reservations_all, weights = {}, {}
        unreachable = ""
        try:
            access, reservations = await self._user_access()
            reservations_all = VIEW.reservations.last or {}
            availability = await VIEW.availability(set(reservations))
            budgets = await VIEW.budgets(site.billing.tres).get(30)
            weights = await self._weights()
        except slurm.SlurmError as e:
            unreachable = str(e)
        groups = self.hub_groups()
        profiles = site.profiles_for(groups)
        notes = {}
        for course in site.courses:
            if course.participants in groups:
                notes[course.profile] = course_rules.window(course, reservations_all)
        open_now = [slug for slug, n in notes.items() if n["state"] == "open"]
        # During a course its participants start in the course's profile unless they choose.
        selected = (profile_name(self.user_options)
                    or (open_now[0] if open_now else site.default_profile.slug))
        return render(site, profiles=profiles, course_notes=notes,
                      selected=selected, accounts=access.accounts,
                      default_account=access.default_account,
                      qos=sorted({q for qs in access.qos.values() for q in qs}),
                      reservations=sorted(reservations), availability=availability,
                      budgets=budgets,
                      budgets_age=VIEW.budgets(site.billing.tres).age() if budgets else None,
                      weights=weights, unreachable=unreachable)

    async def _weights(self) -> dict[str, str]:
        """Each partition's TRESBillingWeights, asked only where the site bills in units."""
        if self.site.billing.by_gpu:
            return {}
        return {name: p.billing_weights for name, p in (await VIEW.partitions.get(300)).items()}

    @default("options_form")
    def _options_form_default(self):
        return self._options_form

    @default("apply_user_options")
    def _apply_user_options_default(self):
        # start() checks and applies user_options itself (resolve_request), with a sentence
        # for the person when it refuses; this hook only tells JupyterHub they are handled.
        return lambda spawner, user_options: None

    async def resolve_request(self, options: dict) -> SessionRequest:
        """Check options (from a form, a URL or the API) and the budget; RequestError if not."""
        try:
            access = await VIEW.associations(self.user.name).get(60)
            budgets = await VIEW.budgets(self.site.billing.tres).get(5)
            weights = await self._weights()
            reservations = await VIEW.reservations.get(60)
        except slurm.SlurmUnreachable:
            raise RequestError("The scheduler is unreachable right now; please try again "
                               "in a minute.") from None
        except slurm.SlurmError as e:
            raise RequestError(f"Slurm did not give what the check needs ({e}); nothing was "
                               "submitted. Please try again, or tell the site.") from None
        request = resolve(self.site, options or {}, user=self.user.name,
                          accounts=access.accounts, default_account=access.default_account,
                          reservations=reservations, qos=access.qos, groups=self.hub_groups())
        # Off the hub's event loop: a module tree on a hung file system must not stall it.
        await asyncio.to_thread(check_modules, self.site, request, os.path.exists)
        self._partition_weights = weights.get(request.partition, "")
        try:
            parse_weights(self._partition_weights)
        except WeightsError as e:  # Slurm's own setting: it still enforces the budget
            self.log.warning("No budget check before the start: %s", e)
            self._partition_weights = None
        else:
            check_budget(request, budgets, self.site.billing, self._partition_weights)
        # The nodes as the form showed them a moment ago (no extra RPC per start); a refusal
        # is made only on a fresh answer. When the nodes are not known, Slurm decides.
        nodes, reservations = VIEW.nodes.last, VIEW.reservations.last
        if nodes is None or reservations is None:
            return request
        held = held_nodes(reservations, usable_reservations(reservations, self.user.name,
                                                            access.accounts), nodes=nodes)
        try:
            check_nodes(request, nodes, reservations, held)
        except RequestError:
            try:
                nodes = await VIEW.nodes.get(0)
            except slurm.SlurmError:
                return request
            check_nodes(request, nodes, reservations, held)
        return request

    def hub_groups(self) -> set[str]:
        return {g.name for g in self.user.groups}

    async def options_from_form(self, formdata):
        return (await self.resolve_request(formdata)).to_options()

    async def options_from_query(self, query_data):
        # JupyterHub 6 passes spawn-link options named opt-NAME as NAME; 5 passes them as they
        # are. Take the opt- ones alone when there are any, as JupyterHub 6 does.
        prefixed = {k[4:]: v for k, v in query_data.items() if k.startswith("opt-")}
        options = prefixed or query_data
        # Only a course's link starts at once (a participant's one click, on the course's
        # budget); any other shows the form, filled from the link, with its cost.
        profile = self.site.profile(profile_name(options))
        if set(options) != {"profile"} or profile is None or not profile.course:
            await self.options_from_form(options)  # a bad link says what is wrong first
            raise StartError("This link asks for a session: check its settings and the cost "
                             "below, then press Start.")
        return await self.options_from_form(options)

    def _check_requester(self, request: SessionRequest) -> None:
        """Someone starting another user's session (not an admin, not a service) may start
        only a course session, for a participant of a course they teach."""
        requester = getattr(getattr(self, "handler", None), "current_user", None)
        if not isinstance(requester, User) or requester.name == self.user.name or requester.admin:
            return
        if not course_rules.may_start_for(self.site, {g.name for g in requester.groups},
                                     self.hub_groups(), request.profile):
            raise StartError(f"{requester.name} may not start a '{request.profile}' session "
                             f"for {self.user.name}.")

    # --- the session's certificate (internal_ssl) ----------------------------------------------

    async def create_certs(self):
        """The session's certificate names the user's own origin (<user>.<hub host>): the proxy
        checks an upstream's certificate against the Host of the request it forwards, so it
        sends alice's requests only to a server holding alice's certificate, and never to
        another user's process that took the port after her server died. The node names are
        for the hub's own check that the server is up."""
        try:
            nodes = sorted(node.name for node in await VIEW.nodes.get(300))
        except slurm.SlurmError:
            raise StartError("The scheduler is unreachable right now; your session was not "
                             "submitted. Please try again in a minute.") from None
        own = [f"DNS:{urlparse(self.user.host).hostname}"] if self.user.host else []
        self.ssl_alt_names = [*own, *(f"DNS:{name}" for name in nodes)]
        return await super().create_certs()

    async def move_certs(self, paths):
        """Read into the job's environment (aifactory.spawner.certs), which no Slurm command
        shows; the hub keeps no copy of the session's key."""
        self._session_pems = {name: Path(paths[name]).read_text()
                              for name in ("keyfile", "certfile", "cafile")}
        shutil.rmtree(Path(paths["keyfile"]).parent, ignore_errors=True)
        return {name: f"(in job {name})" for name in paths}

    # --- the job ----------------------------------------------------------------------------

    def job_script(self, request: SessionRequest) -> str:
        """The batch script; every value in it was checked by `request.resolve`."""
        home = pwd.getpwnam(self.user.name).pw_dir
        lines = [
            "#!/bin/bash",
            f"#SBATCH --job-name=jupyterhub-{self.user.name}",
            *sbatch_directives(request),
            f"#SBATCH --chdir={home}",
            f"#SBATCH --output={home}/.jupyterhub-slurm-%j.log",
            f"#SBATCH --comment={slurm.SESSION_TAG}:{request.profile}",
            "#SBATCH --export=ALL",
            f"#SBATCH --signal=B:USR2@{int(self.end_warning_seconds)}",
        ]
        # Not batchspawner-singleuser: the server binds a free port itself and reports it once
        # it holds it (aifactory.session), so no other process can take it first.
        command = [*self.cmd, *self.get_args(), "--ServerApp.port=0"]
        if "/" not in command[0]:
            # The shared venv's, by its path, and deaf to PYTHONPATH (-E): the environment's
            # modules put their own Python and packages first for the kernels (which inherit
            # the environment), not for the server.
            command[:1] = [f"{self.venv}/bin/python", "-E", f"{self.venv}/bin/{command[0]}"]
        # The same PATH whether sbatch ran through sudo (its secure_path) or not; sudo's own
        # variables do not reach the session's programs.
        lines += [*certs.unexport_lines(self._session_pems),  # before any program starts
                  f"export PATH={shlex.quote(self.venv)}/bin:/usr/local/bin:/usr/bin:/bin",
                  'unset "${!SUDO_@}"']
        lines += [
            "umask 077",  # what the session writes is its user's alone
            # Dask spills into a folder of this job's own, not a predictable /tmp name.
            *slurm.private_scratch_lines('"${TMPDIR:-/tmp}"', "aifactory"),
            # The user's Dask identity (mutual TLS); its settings only once it exists.
            "if python -P -m aifactory.dask_tls; then",
            *(f"  export {k}={shlex.quote(v)}" for k, v in dask_tls.environment(home).items()),
            "fi",
            *certs.job_lines(self._session_pems),  # from the job's environment
        ]
        if self.material_source:
            # As the participant: their own edits are kept (aifactory.material).
            lines.append(f"python -P -m aifactory.material {shlex.quote(self.material_source)} "
                         f"{shlex.quote(home + '/' + self.material_dest)} "
                         "|| echo 'course material not copied'")
        lines += self.environment_lines(request)
        lines += [
            'echo "notebook session $SLURM_JOB_ID on $SLURMD_NODENAME, GPUs: ${CUDA_VISIBLE_DEVICES:-none}"',
            # Slurm's warning before the walltime ends; the server keeps running until then.
            "trap 'echo \"$(date +%T) this session reaches its time limit in "
            f"{int(self.end_warning_seconds) // 60} minutes\"' USR2",
            " ".join(shlex.quote(part) for part in command) + " &",
            "server=$!",
            'while kill -0 "$server" 2>/dev/null; do wait "$server"; done',
        ]
        return "\n".join(lines) + "\n"

    def environment_lines(self, request: SessionRequest) -> list[str]:
        return environment_lines(self.site, request)

    async def submit_batch_script(self):
        env = self.get_env()
        env["AIFACTORY_PROFILE"] = self.session_request.profile
        env["AIFACTORY_REPORT_PORT"] = "1"  # once it listens (aifactory.session)
        for name in certs.ENV.values():  # the job script writes them and sets these (certs.job_lines)
            env.pop(name, None)
        # What sbatch hands to the job (--export=ALL): the session's own variables, the same
        # ones whether the hub is root or runs sbatch through sudo (whose env_keep lets only
        # these through); PATH is the script's. SLURM_UMASK makes the job's log the user's
        # alone (through sudo, the sudoers umask does).
        env = {k: v for k, v in env.items() if slurm.session_env_kept(k)}
        env.update(PATH="/usr/sbin:/usr/bin:/sbin:/bin", SLURM_UMASK="0077")
        env.update(certs.environment(self._session_pems))
        self.job_id = await slurm.submit_async(self.job_script(self.session_request),
                                               user=self.user.name, env=env)
        # slurmctld knows the job once sbatch has answered: a queue fetch begun after this
        # moment has it (one begun while sbatch ran may not, and would read as "ended").
        self._submitted_at = time.time()
        cost = ("cost not known" if self._partition_weights is None else
                self.session_request.describe_cost(self.site.billing, self._partition_weights))
        self.log.info("Submitted notebook job %s for %s (%s)", self.job_id, self.user.name, cost)
        return self.job_id

    async def _job(self, max_age: float) -> slurm.Job | None:
        """This session's job from the shared view; SlurmUnreachable if Slurm is away."""
        # Only a snapshot taken after the submission can say the job is not there.
        job = (await VIEW.queue.get(max_age, newer_than=self._submitted_at)).get(self.job_id)
        if job is not None and job.user != self.user.name:
            # A stored job id that is not this user's (a restored or edited state): never
            # route to it, never act on it.
            self.log.warning("Job %s belongs to %s, not %s: ignored", self.job_id, job.user,
                             self.user.name)
            return None
        return job

    async def _end_reason(self) -> str:
        """Why the job ended, in words, from the queue or else from accounting."""
        job = (VIEW.queue.last or {}).get(self.job_id)
        state, ended = (job.state, job.end_time) if job else ("", 0)
        if not state:
            try:
                records = await asyncio.to_thread(slurm.accounting_jobs, job_ids=[self.job_id])
                record = next((r for r in records if r.job_id == self.job_id), None)
                if record:
                    state, ended = record.state, record.end_time
            except slurm.SlurmError:
                pass
        words = slurm.END_STATES.get(state, "ended")
        at = datetime.fromtimestamp(ended or time.time()).strftime("%Y-%m-%d %H:%M")
        return f"Your last session (job {self.job_id}) {words} at {at} (Slurm: {state or 'gone'})."

    async def _status(self, max_age: float) -> Status:
        """The session's state now, from the shared view (`max_age` s at most)."""
        try:
            job = await self._job(max_age)
        except slurm.SlurmError as e:
            self.log.warning("Slurm did not answer about job %s: %s", self.job_id, e)
            return session_status(None, None, time.time())
        self.job_status = f"{job.state} {job.nodes}".strip() if job else ""
        if job and job.running and job.end_time:
            self.job_end_time = job.end_time
        gpu_type = self.session_request.gpu_type if self.session_request else ""
        return session_status(job, VIEW.queue.last or {}, time.time(), gpu_type)

    async def query_job_status(self, max_age: float | None = None):
        """batchspawner's question (poll, stop): the state as its JobStatus."""
        if not self.job_id:
            self.job_status = ""
            return JobStatus.NOTFOUND
        state = (await self._status(self.queue_max_age if max_age is None else max_age)).state
        return {states.UNKNOWN: JobStatus.UNKNOWN, states.PENDING: JobStatus.PENDING,
                states.RUNNING: JobStatus.RUNNING}.get(state, JobStatus.NOTFOUND)

    async def start(self):
        self.session_state = SUBMITTED  # not the last session's, while the request is checked
        self.session_request = await self.resolve_request(self.user_options)
        self._check_requester(self.session_request)
        # Kept as resolved: the cull, the home page and the service read these, not the raw body.
        self.user_options = self.session_request.to_options()
        if self.orm_spawner is not None:
            self.orm_spawner.user_options = self.user_options
        profile = self.site.profile(self.session_request.profile)
        course = self.site.course(profile.course) if profile and profile.course else None
        self.material_source = ""
        if course and course.material:
            try:
                self.material_source = await courses.material_folder(course)
            except RuntimeError as e:  # the session starts without it, and says why
                self.log.warning("%s", e)
            self.material_dest = course.name
        self.ip = self.traits()["ip"].default_value
        self.port = 0
        self._port_known = asyncio.Event()
        if self.server:
            self.server.port = self.port
        self.job_end_time, self.last_end = 0, ""
        try:
            await self.submit_batch_script()
        except slurm.SlurmUnreachable:
            raise StartError("The scheduler is unreachable right now; your session was not "
                             "submitted. Please try again in a minute.") from None
        except slurm.SlurmError as e:
            raise StartError(f"Slurm refused the session: {e}") from None
        while not self.session_state.settled:
            self.session_state = await self._status(self.startup_max_age)
            if self.session_state.give_up:
                reason = await self._end_reason() if self.session_state.state == states.ENDED else ""
                await self.cancel_batch_job()
                self.clear_state()
                raise StartError(f"{self.session_state.message} {reason}".strip())
            if not self.session_state.settled:
                await asyncio.sleep(self.startup_poll_interval)
        self.ip = self.state_gethost()
        await self._port_known.wait()
        self.log.info("Notebook job %s running at %s:%s", self.job_id, self.ip, self.port)
        return self.ip, self.port

    @observe("port")
    def _port_reported(self, change):
        """The port callback sets the port: the start goes on at that moment, not at a poll."""
        if change.new and self._port_known is not None:
            self._port_known.set()

    async def progress(self):
        sent = ""
        while True:
            now = self.session_state
            if now.message != sent:
                sent = now.message
                yield {"message": sent}
            if now.settled:
                return
            await asyncio.sleep(1)

    async def poll(self):
        if not self.job_id:
            return 0  # no job: nothing runs
        status = await self.query_job_status()
        if status in (JobStatus.PENDING, JobStatus.UNKNOWN):
            return None
        if status == JobStatus.RUNNING:
            return await self._cull_if_idle()
        self.last_end = await self._end_reason()
        self.clear_state()
        return 1

    async def _cull_if_idle(self):
        profile = self.site.profile(profile_name(self.user_options))
        idle_minutes = profile.idle_minutes if profile else None
        last = self.orm_spawner.last_activity if self.orm_spawner else None
        if not idle_minutes or last is None:
            return None
        idle = (datetime.utcnow() - last.replace(tzinfo=None)).total_seconds()
        if idle < idle_minutes * 60:
            return None
        self.log.info("Stopping %s's session after %.0f idle minutes", self.user.name, idle / 60)
        await self.cancel_batch_job()
        self.last_end = (f"Your last session (job {self.job_id}) was stopped after "
                         f"{idle_minutes:g} minutes without activity, to free its GPUs.")
        self.clear_state()
        return 0

    async def cancel_batch_job(self):
        if self.job_id:
            self.log.info("Cancelling notebook job %s", self.job_id)
            try:  # as the user: Slurm itself refuses a job id that is not theirs
                await slurm.cancel_async(self.job_id, user=self.user.name)
            except slurm.JobGone:
                pass
            except slurm.SlurmUnreachable:
                raise  # the stop fails and can be tried again; nothing is forgotten
            except slurm.SlurmError as e:
                self.log.warning("Job %s of %s not cancelled: %s", self.job_id,
                                 self.user.name, e)

    async def cancel_dask_jobs(self):
        """The session's Dask worker jobs end with it, pending or running."""
        tag = f"{slurm.DASK_TAG}:{self.job_id}:"
        try:
            queue = await VIEW.queue.get(0)
        except slurm.SlurmError:
            return  # nothing known now; the workers' watcher and death timeout remain
        for job in queue.values():
            if (job.user == self.user.name and job.comment.startswith(tag)
                    and job.alive):
                self.log.info("Cancelling %s's Dask job %s", self.user.name, job.job_id)
                try:
                    await slurm.cancel_async(job.job_id, user=self.user.name)
                except slurm.SlurmError:
                    pass

    async def stop(self, now=False):
        if self.job_id:
            await self.cancel_dask_jobs()
        await self.cancel_batch_job()
        if now:
            return
        for _ in range(20):
            if await self.query_job_status(self.startup_max_age) not in (
                    JobStatus.RUNNING, JobStatus.UNKNOWN, JobStatus.PENDING):
                return
            await asyncio.sleep(1)

    # --- state kept across hub restarts --------------------------------------------------------

    def get_state(self):
        state = super().get_state()
        if self.job_end_time:
            state["job_end_time"] = self.job_end_time
        if self.last_end:
            state["last_end"] = self.last_end
        return state

    def load_state(self, state):
        super().load_state(state)
        self.job_end_time = state.get("job_end_time", 0)
        self.last_end = state.get("last_end", "")

    def clear_state(self):
        last_end = self.last_end
        super().clear_state()
        self.job_end_time = 0
        self.last_end = last_end  # survives the end of the session, for the home page

    def my_courses(self) -> list[dict]:
        """The courses this user takes or teaches, for the home page: window and spawn link."""
        groups, reservations = self.hub_groups(), VIEW.reservations.last
        if reservations is None:  # not asked since the hub started: ask now, for next time
            asyncio.ensure_future(VIEW.reservations.get(60)).add_done_callback(
                lambda f: f.exception())
        return [course_rules.summary(course, role, reservations, base_url=self.hub.base_url)
                for course in self.site.courses if (role := course_rules.role(course, groups))]

    def environment_name(self) -> str:
        """The display name of the session's software environment ("" for none)."""
        chosen = (self.user_options or {}).get(f"option_{site_module.ENVIRONMENT_OPTION}", "")
        environment = self.site.environment(chosen) if isinstance(chosen, str) else None
        return environment.display_name if environment else ""

    def session_info(self) -> dict:
        """For the home page: where the session runs and how long it has left."""
        info = {"last_end": self.last_end, "courses": self.my_courses()}
        if self.job_id and self.job_end_time:
            left = self.job_end_time - time.time()
            info.update(job_id=self.job_id, node=self.ip, ends_at=clock(self.job_end_time),
                        time_left=time_left(left),
                        profile=profile_name(self.user_options),
                        environment=self.environment_name())
        return info
