"""Notebook jobs, the person's side: runs as the person, in their session's server (the
REST handlers) or a login node's terminal (`aifactory notebook`). Checks what is asked with
the spawn form's own rules, shows the cost and Slurm's start estimate, submits, lists, stops.

Slurm and the job's folder (`~/aifactory-jobs/<id>/`, the person's alone) are the record:
`job.json` says what was asked, `run-N.json` what each run did, and Slurm's answers (the
allocations service's shared cache in a hub session, one squeue and sacct otherwise) give the
states. No command per job is run to list them.
"""

from __future__ import annotations

import getpass
import grp
import json
import os
import pwd
import re
import secrets
import shutil
import stat
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from .. import client as client_module
from .. import site_description as site_module
from .. import slurm
from ..billing import Billing
from ..spawner.request import (RequestError, SessionRequest, check_modules, environment_lines,
                               resolve)
from . import rules
from .files import read_json, write_json

FOLDER = "aifactory-jobs"
MAX_NOTEBOOK_BYTES = 20 * 1024 * 1024
# What the job's environment keeps of the submitter's: not the session's token, its Slurm
# job's variables or certificate (the job outlives the session).
KEPT = ("HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "AIFACTORY_SLURM_BIN", "SLURM_CONF")
INPUT = "input.ipynb"  # the notebook's copy in the job's folder (never an output's name)


class NotFound(RequestError):
    """No such notebook job of this person's."""


class Unreachable(RequestError):
    """Slurm did not answer: try again."""


@dataclass
class Prepared:
    """A checked notebook job, not yet submitted."""
    user: str
    home: Path
    notebook: Path
    nb: dict
    request: SessionRequest
    rows: list[dict]
    parallel: int
    billing: Billing
    weights: str
    remaining: float | None
    site: site_module.Site = field(repr=False)
    budget_note: str = ""  # why the budget could not be checked (Slurm still holds to it)

    @property
    def tasks(self) -> int:
        return len(self.rows)

    @property
    def name(self) -> str:
        return rules.job_name(self.notebook.stem)

    def script(self, folder: str, job_id: str) -> str:
        venv = str(Path(self.site.dask.get("python") or "/opt/aifactory/venv/bin/python")
                   .parent.parent)
        return rules.job_script(self.request, folder=folder, job_id=job_id, name=self.name,
                                tasks=self.tasks, parallel=self.parallel, venv=venv,
                                environment_lines=environment_lines(self.site, self.request))


def job_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in KEPT}
    env.update(PATH="/usr/local/bin:/usr/bin:/bin", SLURM_UMASK="0077")  # its log: 0600
    return env


def _unix_groups(user: str) -> set[str]:
    pw = pwd.getpwnam(user)
    return {grp.getgrgid(g).gr_name for g in os.getgrouplist(user, pw.pw_gid)}


def read_notebook(path: str | Path, home: Path) -> tuple[Path, dict]:
    """The notebook at `path` (relative paths: from the home, as JupyterLab names them)."""
    if not isinstance(path, (str, Path)) or not str(path) or "\0" in str(path):
        raise RequestError("Name the notebook to run.")
    p = Path(path)
    p = p if p.is_absolute() else home / p
    if p.suffix != ".ipynb":
        raise RequestError(f"{p.name} is not a notebook (.ipynb).")
    try:  # a regular file, read no further than the limit (not a FIFO or /dev/zero)
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise RequestError(f"{p.name} is not a file.")
            data = f.read(MAX_NOTEBOOK_BYTES + 1)
        if len(data) > MAX_NOTEBOOK_BYTES:
            raise RequestError(f"{p.name} is larger than {MAX_NOTEBOOK_BYTES >> 20} MB; clear "
                               "its outputs first.")
        nb = json.loads(data)
    except FileNotFoundError:
        raise RequestError(f"There is no notebook {path}.") from None
    except (OSError, ValueError, RecursionError) as e:
        raise RequestError(f"{p.name} cannot be read as a notebook "
                           f"({getattr(e, 'strerror', None) or e}).") from None
    rules.check_notebook(nb, p.name)
    return p, nb


def prepare(notebook: str | Path, fields: Mapping[str, Any], *,
            parameters: Mapping | None = None, rows: list | None = None,
            parallel: Any = None, user: str | None = None, client=None,
            site: site_module.Site | None = None) -> Prepared:
    """Check everything a notebook job asks for; RequestError with a sentence if not."""
    user = user or getpass.getuser()
    home = Path(pwd.getpwnam(user).pw_dir)
    path, nb = read_notebook(notebook, home)
    declared = rules.declared_parameters(nb)
    if rows is not None and parameters:
        raise RequestError("Give parameters or a table of runs, not both.")
    try:
        site = site or site_module.load_cached()
    except (OSError, site_module.SiteError) as e:
        raise RequestError(f"The site's description cannot be read here ({e}); nothing was "
                           "submitted.") from None
    if not isinstance(fields, Mapping):
        raise RequestError("The job's settings must be names with values.")
    try:
        config = slurm.config()
        checked_rows = (rules.check_rows(declared, rows, rules.max_tasks(config))
                        if rows is not None else [rules.check_row(declared, parameters or {})])
        access = slurm.user_associations(user)
        reservations = slurm.reservations()
        request = resolve(site, fields, user=user, accounts=access.accounts,
                          default_account=access.default_account, reservations=reservations,
                          qos=access.qos, groups=_unix_groups(user))
        rules.check_time_limit(request)
        check_modules(site, request, os.path.exists)
        billing = site.billing
        weights = "" if billing.by_gpu else slurm.partitions()[request.partition].billing_weights
    except slurm.SlurmUnreachable:
        raise Unreachable("The scheduler is unreachable right now; nothing was submitted. "
                          "Please try again in a minute.") from None
    except (slurm.SlurmError, client_module.AllocationsError, KeyError, IndexError) as e:
        raise RequestError(f"Slurm did not give what the check needs ({e}); nothing was "
                           "submitted.") from None
    parallel = rules.check_parallel(parallel, len(checked_rows))
    remaining, note = None, ""
    try:
        remaining = client_module.remaining(request.account, billing, client)
    except (client_module.AllocationsError, slurm.SlurmError, IndexError, KeyError) as e:
        note = (f"The budget could not be checked ({e}); Slurm still holds the job to it "
                "(it waits with the reason that the budget is used up).")
    rules.check_budget(request, len(checked_rows), remaining, billing, weights)
    return Prepared(user, home, path, nb, request, checked_rows, parallel, billing, weights,
                    remaining, site, note)


def choices(user: str | None = None, site: site_module.Site | None = None) -> dict:
    """What the create form offers this person: the spawn form's profiles (their own, course
    profiles only to participants), each one's options and defaults, and their Slurm accounts."""
    user = user or getpass.getuser()
    try:
        site = site or site_module.load_cached()
    except (OSError, site_module.SiteError) as e:
        raise RequestError(f"The site's description cannot be read here ({e}).") from None
    try:
        access = slurm.user_associations(user)
    except slurm.SlurmUnreachable:
        raise Unreachable("The scheduler is unreachable right now; please try again in a "
                          "minute.") from None
    except slurm.SlurmError as e:
        raise RequestError(f"Slurm did not say which projects are yours ({e}).") from None
    profiles = [{
        "slug": p.slug, "display_name": p.display_name, "description": p.description,
        "default": p.default, "gpus": p.slurm.get("gpus", 0),
        "walltime": str(p.slurm.get("walltime", "")), "limits": dict(p.limits),
        "account": p.slurm.get("account") or None,  # a course profile's own
        "fixed": sorted(p.fixed),
        "options": [{"name": o.name, "display_name": o.display_name,
                     "choices": [{"key": c.key, "display_name": c.display_name,
                                  "default": c is o.default_choice()} for c in o.choices]}
                    for o in p.options],
    } for p in site.profiles_for(_unix_groups(user))]
    return {"profiles": profiles, "accounts": list(access.accounts),
            "default_account": access.default_account, "unit": site.billing.unit}


START_RE = re.compile(r"Job \d+ to start at (\S+) using (\d+) processors on nodes (\S+) "
                      r"in partition (\S+)")


def preview(prepared: Prepared) -> dict:
    """What the job will cost, when Slurm would start it (`sbatch --test-only`: nothing is
    queued) and the script that will run."""
    job_id = "preview"
    folder = str(prepared.home / FOLDER / "<this job>")
    script = prepared.script(folder, job_id)
    answer = {
        "notebook": str(prepared.notebook), "runs": prepared.tasks,
        "parallel": prepared.parallel or prepared.tasks,
        "request": prepared.request.to_options(), "rows": prepared.rows,
        "cost": rules.cost(prepared.request, prepared.tasks, prepared.billing, prepared.weights),
        "unit": prepared.billing.unit,
        "cost_text": rules.describe_cost(prepared.request, prepared.tasks, prepared.billing,
                                         prepared.weights),
        "remaining": prepared.remaining, "budget_note": prepared.budget_note or None,
        "script": script, "start": None, "start_text": "",
    }
    try:  # the folder does not exist yet: Slurm's test checks the request, not the paths
        out = slurm.run(["sbatch", "--test-only"], input=script.replace(folder, "/tmp"),
                        env=job_environment(), with_stderr=True)
    except slurm.SlurmError as e:
        answer["start_text"] = f"Slurm gives no start estimate: {e}"
        return answer
    if found := START_RE.search(out):
        when, _, nodes, partition = found.groups()
        answer["start"] = {"time": when, "nodes": nodes, "partition": partition}
        answer["start_text"] = f"Slurm would start it at {when.replace('T', ' ')} on {nodes}."
    else:
        answer["start_text"] = f"Slurm gives no start estimate: {out.strip()[:200]}"
    return answer


def new_job_id(prepared: Prepared) -> str:
    stem = rules.job_name(prepared.notebook.stem)[3:][:30].strip("-") or "notebook"
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def jobs_folder(home: Path) -> Path:
    base = home / FOLDER
    try:
        base.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise RequestError(f"{base} cannot be made ({e.strerror}).") from None
    st = os.lstat(base)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise RequestError(f"{base} is not a folder of yours; move it away to run notebook "
                           "jobs.")
    os.chmod(base, 0o700)
    return base


def submit(prepared: Prepared) -> dict:
    """Make the job's folder (the checked notebook, the rows), submit, and return its record.
    Once Slurm has the job, the folder stays whatever happens: the job needs it."""
    base = jobs_folder(prepared.home)
    for _ in range(5):  # a new name, never another job's folder
        job_id = new_job_id(prepared)
        folder = base / job_id
        try:
            folder.mkdir(mode=0o700)
            break
        except FileExistsError:
            continue
        except OSError as e:
            raise RequestError(f"The job's folder could not be made ({e.strerror}); nothing "
                               "was submitted.") from None
    else:
        raise RequestError("No new name for the job's folder was found; nothing was submitted.")
    kernel = (prepared.nb.get("metadata") or {}).get("kernelspec") or {}
    kernel = kernel.get("name", "") if isinstance(kernel, dict) else ""
    record = {
        "id": job_id, "notebook": INPUT, "source": str(prepared.notebook),
        "name": prepared.name, "rows": prepared.rows, "parallel": prepared.parallel,
        "request": prepared.request.to_options(), "walltime": prepared.request.walltime,
        "kernel": kernel if isinstance(kernel, str)
        and re.fullmatch(r"[A-Za-z0-9._-]{1,64}", kernel) else "",
        "cost": rules.cost(prepared.request, prepared.tasks, prepared.billing, prepared.weights),
        "unit": prepared.billing.unit, "created": time.time(), "slurm_job_id": None,
    }
    try:
        # What was checked and priced, not the file again (it may have changed since).
        write_json(folder / INPUT, prepared.nb)
        write_json(folder / "job.json", record)
    except OSError as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise RequestError(f"The job's folder could not be written ({e.strerror}); nothing "
                           "was submitted.") from None
    try:
        record["slurm_job_id"] = slurm.submit(prepared.script(str(folder), job_id), user=None,
                                              env=job_environment())
    except slurm.SlurmUnreachable:  # it may have the job: keep the folder it would need
        raise Unreachable(f"Slurm did not answer in time, so the job may or may not have been "
                          f"submitted; see `aifactory jobs` in a minute (its folder {folder} "
                          "is kept).") from None
    except slurm.SlurmError as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise RequestError(f"Slurm refused the job: {e}") from None
    try:
        write_json(folder / "job.json", record)
    except OSError as e:  # the job runs without its id in the record; say so, keep it
        raise RequestError(f"Slurm job {record['slurm_job_id']} was submitted, but its record "
                           f"could not be written ({e.strerror}).") from None
    return {**record, "folder": str(folder), "state": "PENDING"}


# --- the list ---------------------------------------------------------------------------

def records(home: Path) -> list[tuple[Path, dict]]:
    """Every notebook job's folder and record, newest first."""
    base = home / FOLDER
    found = []
    if base.is_dir() and not base.is_symlink():
        for folder in base.iterdir():
            if rules.JOB_ID_RE.match(folder.name) and (record := read_json(folder / "job.json")):
                found.append((folder, record))
    return sorted(found, key=lambda f: -f[1].get("created", 0))


def summary(folder: Path, record: dict, active: list[dict], recent: list[dict],
            as_of: float = 0.0) -> dict:
    """One notebook job as the list shows it: each run's state from its own record once it
    has ended, from Slurm's rows while it is queued or running, from accounting otherwise.
    `as_of`: when Slurm's answer was taken; a run it cannot know yet is pending."""
    array = record.get("slurm_job_id")
    tasks = len(record.get("rows") or [{}])

    def mine(row):
        return array and (row["job_id"] == array or row.get("array_job_id") == array)
    live = [r for r in active if mine(r)]
    # not an older job of the same id (ids start again when a cluster loses its state)
    ended = [r for r in recent if mine(r) and _epoch(r.get("end_time")) >= record.get("created", 0)]
    runs = []
    for task in range(tasks):
        run = read_json(folder / f"run-{task}.json") or {}
        slurm_row = next((r for r in live if tasks == 1 or r.get("array_task_id") == task), None)
        past = next((r for r in ended if tasks == 1 or r.get("array_task_id") == task), None)
        if run.get("state") not in (None, "running"):
            state = run["state"].upper()
        elif slurm_row is not None:
            state = slurm_row["state"]
        elif past is not None:
            state = past["state"]
        elif run and as_of < run.get("started", 0):
            state = "RUNNING"  # started after the shared answer was taken
        elif any(r.get("array_task_id") is None for r in live):
            state = "PENDING"  # the part of an array Slurm has not split into tasks yet
        elif as_of < (run.get("started") or record.get("created", 0)):
            # submitted after the shared answer was taken
            state = "RUNNING" if run else "PENDING"
        else:
            state = "ENDED"  # gone from the queue; accounting's record comes within a minute
        output = folder / rules.output_name(task, tasks)
        runs.append({"task": task, "state": state, "parameters": (record.get("rows") or [{}])[task],
                     "output": str(output) if output.exists() else None,
                     "stopped_in_cell": run.get("stopped_in_cell"), "error": run.get("error"),
                     "reason_text": slurm_row.get("reason_text") if slurm_row else None})
    states = [r["state"] for r in runs]
    return {"id": record["id"], "name": record.get("name"), "notebook": record.get("notebook"),
            "source": record.get("source"),  # the notebook it was made from
            "slurm_job_id": array, "folder": str(folder), "created": record.get("created"),
            "request": record.get("request"), "cost": record.get("cost"),
            "unit": record.get("unit"), "runs": runs, "state": overall(states),
            "active": bool(live)}


ALIVE = ("RUNNING", "SUSPENDED", "COMPLETING", "CONFIGURING", "REQUEUED", "PENDING")


def overall(states: list[str]) -> str:
    """A job's state from its runs': the liveliest while any run is alive; completed only
    when all are; else the first run's that was not (failed, timeout, out of memory, ...)."""
    for state in ALIVE:
        if state in states:
            return state
    return next((s for s in states if s != "COMPLETED"), "COMPLETED" if states else "ENDED")


def list_jobs(user: str | None = None, client=None) -> dict:
    """The person's notebook jobs with their runs' states (one answer of Slurm's for all)."""
    user = user or getpass.getuser()
    home = Path(pwd.getpwnam(user).pw_dir)
    found = records(home)
    answer, warnings = shared_answer(client) if found else ({}, [])
    jobs = [summary(folder, record, answer.get("active", []), answer.get("recent", []),
                    _epoch(answer.get("as_of"))) for folder, record in found]
    return {"user": user, "jobs": jobs, "warning": "; ".join(warnings) or None}


def shared_answer(client=None) -> tuple[dict, list[str]]:
    """The person's jobs as Slurm last gave them (the service's shared answer in a session;
    squeue and sacct in a terminal), and its warnings; {} with a warning when unreachable."""
    try:
        answer = (client or client_module.default_client()).jobs()
    except (client_module.AllocationsError, slurm.SlurmError) as e:
        return {}, [f"{e}: the states below are the jobs' own records"]
    return answer, answer.get("warnings") or []


def _epoch(iso: str | None) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp() if iso else 0.0
    except ValueError:
        return 0.0


def find(job: str, user: str | None = None) -> tuple[Path, dict]:
    user = user or getpass.getuser()
    home = Path(pwd.getpwnam(user).pw_dir)
    for folder, record in records(home):
        if job in (record["id"], record.get("slurm_job_id")):
            return folder, record
    raise NotFound(f"You have no notebook job {job}.")


def stop(job: str, user: str | None = None, client=None) -> dict:
    """Cancel a notebook job (all its runs), pending or running; as the person, so Slurm
    checks it is theirs too."""
    folder, record = find(job, user)
    answer, _ = shared_answer(client)
    before = summary(folder, record, answer.get("active", []), [],
                     _epoch(answer.get("as_of")))
    try:
        slurm.cancel(record["slurm_job_id"])
    except slurm.SlurmUnreachable:
        raise Unreachable(f"Slurm did not answer in time; job {record['slurm_job_id']} may not "
                          "have stopped. Please try again.") from None
    except (slurm.SlurmError, ValueError) as e:
        raise RequestError(f"Slurm did not stop job {record['slurm_job_id']}: {e}") from None
    # Runs that were waiting leave no record of their own: this is theirs (one starting
    # meanwhile writes its own, and is stopped too).
    for run in before["runs"]:
        path = folder / f"run-{run['task']}.json"
        if run["state"] == "PENDING" and not path.exists():
            try:
                write_json(path, {"task": run["task"], "state": "cancelled",
                                  "ended": time.time(), "never_started": True})
            except OSError:
                pass  # the list then takes accounting's word for it
    return {"id": record["id"], "slurm_job_id": record["slurm_job_id"], "stopped": True}
