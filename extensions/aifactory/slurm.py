"""The only place that runs Slurm commands.

Everything else in aifactory calls these functions. Commands are argv lists, never shell
strings, so nothing a user types is ever parsed by a shell. Results are dataclasses; failures
are exceptions whose message is a plain sentence:

- `SlurmUnreachable`: slurmctld or slurmdbd did not answer (callers keep their last view).
- `SlurmError`: Slurm answered and refused (bad request, unknown job, ...).

The module imports nothing else of aifactory.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import subprocess
import time
from dataclasses import dataclass, field

DEFAULT_TIMEOUT = 30.0

# Words Slurm's clients print when the daemon they talk to is not there.
_UNREACHABLE_PATTERNS = (
    "Unable to contact slurm controller",
    "Socket timed out",
    "Connection refused",
    "Zero Bytes were transmitted or received",
    "slurmdbd: Connection",
    "Problem talking to the database",
    "Database is busy or waiting for lock",
    "Unable to establish controller machine",
)

JOB_ID_RE = re.compile(r"^[0-9]+(_[0-9]+)?$")


class SlurmError(RuntimeError):
    """Slurm answered and said no. The message is Slurm's own last line of error output."""


class SlurmUnreachable(SlurmError):
    """The scheduler (slurmctld) or the accounting daemon (slurmdbd) did not answer."""


@dataclass(frozen=True)
class Job:
    job_id: str
    name: str
    user: str
    account: str
    partition: str
    state: str  # PENDING, RUNNING, COMPLETED, ...
    reason: str  # Slurm's reason code, e.g. Resources, AssocGrpGRESMinutes; "None" if none
    nodes: str  # node list, "" while pending
    gres: str = ""  # e.g. "gres:gpu:2"
    reservation: str = ""
    gpus: int = 0  # allocated (running) or requested (pending)
    time_limit_min: int = 0
    submit_time: int = 0
    start_time: int = 0  # for a pending job: Slurm's estimate, 0 if none yet
    end_time: int = 0
    priority: int = 0
    comment: str = ""  # our tag, e.g. "aifactory-session:h100-1"


@dataclass(frozen=True)
class Node:
    name: str
    state: str
    address: str
    partitions: tuple[str, ...] = field(default_factory=tuple)
    gres: str = ""  # e.g. "gpu:h100:4"
    gres_used: str = ""  # e.g. "gpu:h100:2(IDX:0-1)"
    flags: tuple[str, ...] = field(default_factory=tuple)  # e.g. ("RESERVED",)
    reason: str = ""  # why an admin took it out, e.g. "disk failure"

    def gpus(self, used: bool = False) -> dict[str, int]:
        """GPUs by type on this node (all, or in use)."""
        return parse_gres_gpus(self.gres_used if used else self.gres)


def _user_kwargs(user: str | None, env: dict | None) -> dict:
    """Popen arguments that run a command as `user` (the caller is root), without a shell."""
    if user is None:
        return {"env": env}
    pw = pwd.getpwnam(user)
    run_env = dict(env) if env is not None else {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    run_env.update(USER=pw.pw_name, LOGNAME=pw.pw_name, HOME=pw.pw_dir)
    return {
        "env": run_env,
        "user": pw.pw_uid,
        "group": pw.pw_gid,
        "extra_groups": os.getgrouplist(pw.pw_name, pw.pw_gid),
        "cwd": pw.pw_dir,
    }


def _check(argv: list[str], returncode: int, out: str, err: str) -> str:
    if returncode == 0:
        return out
    message = err.strip() or out.strip() or f"exit status {returncode}"
    lines = message.splitlines()
    # Slurm often ends with a generic line ("Use keyword 'where'..."); its error line says why.
    last = next((l for l in lines if "error:" in l), lines[-1]).strip()
    if any(p in message for p in _UNREACHABLE_PATTERNS):
        what = "accounting database" if argv[0] in ("sacct", "sacctmgr") else "scheduler"
        raise SlurmUnreachable(f"{argv[0]}: {what} unreachable ({last})")
    raise SlurmError(f"{argv[0]}: {last}")


def run(argv: list[str], *, input: str | None = None, user: str | None = None,
        env: dict | None = None, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Run a Slurm command (argv list) and return its stdout."""
    try:
        proc = subprocess.run(argv, input=input, capture_output=True, text=True,
                              timeout=timeout, **_user_kwargs(user, env))
    except subprocess.TimeoutExpired:
        raise SlurmUnreachable(f"{argv[0]}: scheduler unreachable (no answer in {timeout:.0f} s)")
    return _check(argv, proc.returncode, proc.stdout, proc.stderr)


async def run_async(argv: list[str], *, input: str | None = None, user: str | None = None,
                    env: dict | None = None, timeout: float = DEFAULT_TIMEOUT) -> str:
    """`run` for asyncio code (the hub): the event loop keeps serving while Slurm answers."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        **_user_kwargs(user, env))
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(input.encode() if input is not None else None), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise SlurmUnreachable(f"{argv[0]}: scheduler unreachable (no answer in {timeout:.0f} s)")
    return _check(argv, proc.returncode, out.decode(), err.decode())


# --- jobs -------------------------------------------------------------------------------

def _parse_submit(out: str) -> str:
    job_id = out.strip().splitlines()[-1].split(";")[0] if out.strip() else ""
    if not JOB_ID_RE.match(job_id):
        raise SlurmError(f"sbatch: unexpected answer {out.strip()!r}")
    return job_id


def submit(script: str, *, user: str, env: dict | None = None,
           timeout: float = DEFAULT_TIMEOUT) -> str:
    """Submit a batch script (given on stdin) as `user`; returns the job id."""
    return _parse_submit(run(["sbatch", "--parsable"], input=script, user=user, env=env,
                             timeout=timeout))


async def submit_async(script: str, *, user: str, env: dict | None = None,
                       timeout: float = DEFAULT_TIMEOUT) -> str:
    return _parse_submit(await run_async(["sbatch", "--parsable"], input=script, user=user,
                                         env=env, timeout=timeout))


def _check_job_id(job_id: str) -> str:
    if not JOB_ID_RE.match(str(job_id)):
        raise ValueError(f"not a Slurm job id: {job_id!r}")
    return str(job_id)


def cancel(job_id: str, *, user: str | None = None) -> None:
    run(["scancel", _check_job_id(job_id)], user=user)


async def cancel_async(job_id: str, *, user: str | None = None) -> None:
    await run_async(["scancel", _check_job_id(job_id)], user=user)


def parse_gres_gpus(gres: str) -> dict[str, int]:
    """{"h100": 4} from "gpu:h100:4" or "gpu:h100:2(IDX:0-1)"; untyped GPUs count as ""."""
    result: dict[str, int] = {}
    for part in gres.split(","):
        fields = part.split("(")[0].split(":")
        if fields[0] != "gpu" or len(fields) < 2 or not fields[-1].isdigit():
            continue
        kind = fields[1] if len(fields) == 3 else ""
        result[kind] = result.get(kind, 0) + int(fields[-1])
    return result


def _int(value) -> int:
    return value if isinstance(value, int) else 0


def _job_from_json(j: dict) -> Job:
    gres = j.get("tres_per_node") or ""
    tres = j.get("tres_alloc_str") or j.get("tres_req_str") or ""
    gpus = tres_value(tres, "gres/gpu")
    if gpus is None:
        gpus = sum(parse_gres_gpus(gres.replace("gres:", "")).values())
    return Job(
        job_id=str(j["job_id"]),
        name=j.get("name", ""),
        user=j.get("user_name", ""),
        account=j.get("account", ""),
        partition=j.get("partition", ""),
        state=j.get("job_state", ""),
        reason=j.get("state_reason", ""),
        nodes=j.get("nodes", "") or "",
        gres=gres,
        reservation=j.get("resv_name", "") or "",
        gpus=gpus,
        time_limit_min=_int(j.get("time_limit")),
        submit_time=_int(j.get("submit_time")),
        start_time=_int(j.get("start_time")),
        end_time=_int(j.get("end_time")),
        priority=_int(j.get("priority")),
        comment=j.get("comment", "") or "",
    )


def _load_json(text: str, command: str) -> dict:
    """Parse a `--json` answer. Slurm 22.05 exits 0 when the daemon is down and puts the
    failure in "errors" (with an empty job list): that must never read as "no jobs"."""
    try:
        data = json.loads(text)
    except ValueError:
        raise SlurmError(f"{command}: answer is not JSON") from None
    # sacct reports an empty answer as an error named "Nothing found".
    errors = [e for e in data.get("errors") or []
              if "Nothing found" not in (e.get("description", ""), e.get("error", ""))]
    if errors:
        first = errors[0]
        detail = first.get("description") or first.get("error") or "unknown error"
        raise SlurmUnreachable(f"{command}: scheduler unreachable ({detail})")
    return data


def parse_squeue_json(text: str) -> list[Job]:
    """Jobs from `squeue --json` (Slurm 22.05 shape)."""
    return [_job_from_json(j) for j in _load_json(text, "squeue").get("jobs", [])]


def _select(found: list[Job], user: str | None, job_ids: list[str] | None) -> list[Job]:
    # Slurm 22.05's `squeue --json` ignores --jobs and --user and returns every job it
    # knows, so the filter is applied here (one RPC either way).
    wanted = {_check_job_id(j) for j in job_ids} if job_ids else None
    return [j for j in found
            if (user is None or j.user == user) and (wanted is None or j.job_id in wanted)]


def jobs(*, user: str | None = None, job_ids: list[str] | None = None) -> list[Job]:
    """Jobs slurmctld still knows (pending, running, and recently ended)."""
    return _select(parse_squeue_json(run(["squeue", "--json"])), user, job_ids)


def job(job_id: str) -> Job | None:
    """One job as slurmctld sees it, or None once slurmctld has forgotten it."""
    found = jobs(job_ids=[job_id])
    return found[0] if found else None


def parse_sacct_json(text: str) -> list[dict]:
    """Finished and running jobs from `sacct --json`, as Slurm gives them (dicts)."""
    return _load_json(text, "sacct").get("jobs", [])


def accounting_jobs(*, job_ids: list[str] | None = None, user: str | None = None,
                    all_users: bool = False) -> list[dict]:
    """Job records from slurmdbd (sacct --json)."""
    argv = ["sacct", "--json"]
    if job_ids:
        argv += ["--jobs", ",".join(_check_job_id(j) for j in job_ids)]
    if user:
        argv += ["--user", user]
    elif all_users:
        argv += ["--allusers"]
    return parse_sacct_json(run(argv))


# --- nodes and the controller -----------------------------------------------------------

def parse_sinfo_json(text: str) -> list[Node]:
    result = []
    for n in _load_json(text, "sinfo").get("nodes", []):
        state = n.get("state", "")
        if isinstance(state, list):
            state = "+".join(state)
        result.append(Node(name=n["name"], state=str(state).upper(),
                           address=n.get("address", ""),
                           partitions=tuple(n.get("partitions", []) or ()),
                           gres=n.get("gres", "") or "", gres_used=n.get("gres_used", "") or "",
                           flags=tuple(n.get("state_flags", []) or ()),
                           reason=n.get("reason", "") or ""))
    return result


def nodes() -> list[Node]:
    return parse_sinfo_json(run(["sinfo", "--json"]))


def ping() -> bool:
    """True when slurmctld answers."""
    try:
        out = run(["scontrol", "ping"], timeout=10)
    except SlurmError:
        return False
    return "UP" in out


def scontrol(*args: str) -> str:
    return run(["scontrol", *args])


def show_reservations() -> dict[str, dict[str, str]]:
    """Reservations by name, each as scontrol's key=value pairs."""
    out = run(["scontrol", "show", "reservation", "--oneliner"])
    result = {}
    for line in out.splitlines():
        if not line.startswith("ReservationName="):
            continue
        pairs = dict(p.split("=", 1) for p in line.split() if "=" in p)
        result[pairs["ReservationName"]] = pairs
    return result


def update_node(name: str, **settings: str) -> None:
    run(["scontrol", "update", f"NodeName={name}", *(f"{k}={v}" for k, v in settings.items())])


# --- accounting (sacctmgr has no --json in 22.05: parsable2 instead) --------------------

def sacctmgr(*args: str) -> str:
    """A sacctmgr change, without the confirmation prompt."""
    return run(["sacctmgr", "--immediate", *args])


def sacctmgr_list(entity: str, *conditions: str, fields: list[str]) -> list[dict[str, str]]:
    """`sacctmgr list ENTITY CONDITIONS format=FIELDS` as a list of dicts."""
    out = run(["sacctmgr", "--noheader", "--parsable2", "list", entity, *conditions,
               "format=" + ",".join(fields)])
    rows = []
    for line in out.splitlines():
        values = line.split("|")
        if len(values) == len(fields):
            rows.append({f.lower(): v for f, v in zip(fields, values)})
    return rows


@dataclass(frozen=True)
class Budget:
    """A project's GPU budget in GPU-minutes, as slurmctld enforces it (from sshare).

    With `user` set, one member's share of the project (no grant of its own)."""
    account: str
    granted_min: int | None  # None: no GPU limit on this account
    used_min: float  # this budget period: RawUsage, GPU-seconds as partitions bill GPUs only
    held_min: int  # remaining walltime x GPUs of running jobs (TRESRunMins)
    user: str = ""

    @property
    def remaining_min(self) -> float | None:
        if self.granted_min is None:
            return None
        return self.granted_min - self.used_min - self.held_min


SSHARE_FIELDS = "Account,User,RawUsage,GrpTRESMins,TRESRunMins"


def parse_sshare(text: str) -> list[Budget]:
    """Account and user rows of `sshare -aP -o Account,User,RawUsage,GrpTRESMins,TRESRunMins`."""
    rows = []
    for line in text.splitlines():
        values = [v.strip() for v in line.split("|")]
        if len(values) != 5 or values[0] in ("", "Account", "root"):
            continue
        account, user, raw_usage, granted, held = values
        rows.append(Budget(account, tres_value(granted, "gres/gpu"), int(raw_usage or 0) / 60,
                           tres_value(held, "gres/gpu") or 0, user))
    return rows


def shares() -> list[Budget]:
    """Every project's budget and every member's share of it, from slurmctld."""
    return parse_sshare(run(["sshare", "--noheader", "--parsable2", "--all",
                             f"--format={SSHARE_FIELDS}"]))


def budgets() -> dict[str, Budget]:
    """GPU budgets of every account, from slurmctld's association manager."""
    return {b.account: b for b in shares() if not b.user}


def all_associations() -> dict[str, list[str]]:
    """{user: [accounts]} for every user association, from slurmdbd."""
    members: dict[str, list[str]] = {}
    for row in sacctmgr_list("associations", fields=["User", "Account"]):
        if row["user"]:
            members.setdefault(row["user"], []).append(row["account"])
    return members


def coordinators() -> dict[str, list[str]]:
    """{account: [coordinator users]}, from slurmdbd."""
    return {row["account"]: [c for c in row["coordinators"].split(",") if c]
            for row in sacctmgr_list("account", "withcoord", fields=["Account", "Coordinators"])}


def usage_reset_period() -> str:
    """PriorityUsageResetPeriod: when budgets start again (QUARTERLY, MONTHLY, NONE, ...)."""
    for line in run(["scontrol", "show", "config"]).splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "PriorityUsageResetPeriod":
            return value.strip().upper()
    return "NONE"


@dataclass(frozen=True)
class PastJob:
    """A job as slurmdbd recorded it (running or ended)."""
    job_id: str
    name: str
    user: str
    account: str
    partition: str
    state: str
    gpus: int
    cpus: int
    start_time: int  # 0 if it never started
    end_time: int  # 0 while running
    elapsed_s: int
    time_limit_min: int
    cpu_time_s: float
    nodes: str = ""
    comment: str = ""


def _allocated(tres: list[dict], kind: str, name: str | None = None) -> int:
    return sum(_int(t.get("count")) for t in tres or []
               if t.get("type") == kind and t.get("name") == name)


def past_job_from_json(j: dict) -> PastJob:
    t = j.get("time", {})
    total = t.get("total", {}) or {}
    state = j.get("state", {}).get("current", "")
    allocated = (j.get("tres") or {}).get("allocated") or []
    comment = j.get("comment", {})
    return PastJob(
        job_id=str(j.get("job_id")), name=j.get("name", ""), user=j.get("user", ""),
        account=j.get("account", ""), partition=j.get("partition", ""), state=state,
        gpus=_allocated(allocated, "gres", "gpu"), cpus=_allocated(allocated, "cpu"),
        start_time=_int(t.get("start")), end_time=_int(t.get("end")),
        elapsed_s=_int(t.get("elapsed")), time_limit_min=_int(t.get("limit")),
        cpu_time_s=_int(total.get("seconds")) + _int(total.get("microseconds")) / 1e6,
        nodes=j.get("nodes", "") or "",
        comment=(comment.get("job") or "") if isinstance(comment, dict) else str(comment or ""))


def job_history(since: int) -> list[PastJob]:
    """Every user's jobs that ran at some point since `since` (epoch seconds), from slurmdbd."""
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since))
    out = run(["sacct", "--json", "--allusers", "--allocations", "--starttime", start,
               "--endtime", "now"])
    return [past_job_from_json(j) for j in parse_sacct_json(out)]


@dataclass(frozen=True)
class Associations:
    """What a user may charge: accounts, the default one, and the QOS allowed on each."""
    accounts: list[str]
    default_account: str
    qos: dict[str, list[str]]


def parse_user_associations(user: str, text: str) -> Associations:
    """`sacctmgr -nP list user USER withassoc format=User,DefaultAccount,Account,QOS`."""
    accounts, default, qos = [], "", {}
    for line in text.splitlines():
        name, default_account, account, allowed = (line.split("|") + ["", "", "", ""])[:4]
        if name == user and account:
            default = default_account
            if account not in accounts:
                accounts.append(account)
            qos.setdefault(account, [])
            qos[account] += [q for q in allowed.split(",") if q and q not in qos[account]]
    return Associations(accounts, default, qos)


def user_associations(user: str) -> Associations:
    """The accounts and QOS `user` may use, from slurmdbd."""
    if not re.match(r"^[a-z_][a-z0-9_.-]{0,31}$", user):
        raise ValueError(f"not a user name: {user!r}")
    return parse_user_associations(user, run(
        ["sacctmgr", "--noheader", "--parsable2", "list", "user", user, "withassoc",
         "format=User,DefaultAccount,Account,QOS"]))


def tres_value(tres: str, name: str) -> int | None:
    """The number for `name` in a TRES string like 'cpu=4,gres/gpu=120'."""
    for part in tres.split(","):
        key, _, value = part.partition("=")
        if key == name and value.isdigit():
            return int(value)
    return None


# --- words for people -------------------------------------------------------------------

# Our jobs' --comment tags: "aifactory-session:PROFILE" for notebook sessions,
# "aifactory-dask:NOTEBOOK_JOB_ID:CLUSTER" for Dask workers started from a session.
SESSION_TAG = "aifactory-session"
DASK_TAG = "aifactory-dask"

# Pending reasons in plain words; the Slurm code is always shown beside them for support.
PENDING_REASONS = {
    "Resources": "waiting for free {gpus}",
    "Priority": "other jobs are ahead of yours in the queue",
    "Dependency": "waiting for another job to finish",
    "BeginTime": "waiting for its requested start time",
    "ReqNodeNotAvail": "the nodes it needs are not available (down, drained or reserved)",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows",
    "PartitionTimeLimit": "it asks for more time than the partition allows",
    "AssocGrpGRESMinutes": "your project's GPU budget is used up",
    "AssocGrpGRESRunMinutes": "your project's GPU budget is taken by its running jobs",
    "AssocGrpBillingMinutes": "your project's budget is used up",
    "AssocMaxJobsLimit": "your project has as many running jobs as it may",
    "QOSMaxGRESPerUser": "you already use as many GPUs as you may",
    "Reservation": "waiting for its reservation to start",
    "InvalidAccount": "the account is not valid for you",
    "JobHeldAdmin": "held by an administrator",
    "JobHeldUser": "held (by you)",
    "None": "about to be scheduled",
}
# Pending jobs with these reasons wait for nodes, so they come before later jobs.
COMPETING_REASONS = {"None", "Priority", "Resources", "ReqNodeNotAvail"}

# Reasons that will not go away by waiting: the spawner stops waiting at once.
HOPELESS_REASONS = {"AssocGrpGRESMinutes", "AssocGrpBillingMinutes", "InvalidAccount",
                    "PartitionNodeLimit", "PartitionTimeLimit", "InvalidQOS"}

END_STATES = {
    "COMPLETED": "ended",
    "CANCELLED": "was cancelled",
    "TIMEOUT": "reached its time limit",
    "NODE_FAIL": "ended because its node failed",
    "FAILED": "failed",
    "OUT_OF_MEMORY": "ran out of memory",
    "PREEMPTED": "was preempted",
    "BOOT_FAIL": "could not start its node",
    "DEADLINE": "passed its deadline",
}


def explain_reason(reason: str, gpu_type: str = "") -> str:
    words = PENDING_REASONS.get(reason)
    if words is None:
        return f"waiting ({reason})"
    return words.format(gpus=f"{gpu_type.upper()} GPUs" if gpu_type else "resources")


# --- controller load --------------------------------------------------------------------

_SDIAG_RPC_RE = re.compile(r"^\s+(\w+)\s+\(\s*\d+\)\s+count:(\d+)")


def parse_sdiag_rpcs(text: str) -> dict[str, int]:
    """RPC counts by message type from `sdiag` output."""
    counts, inside = {}, False
    for line in text.splitlines():
        if line.startswith("Remote Procedure Call statistics by message type"):
            inside = True
        elif line.startswith("Remote Procedure Call statistics by user"):
            break
        elif inside and (m := _SDIAG_RPC_RE.match(line)):
            counts[m.group(1)] = int(m.group(2))
    return counts


def rpc_counts() -> dict[str, int]:
    """How many RPCs slurmctld has served since start or the last reset, by type."""
    return parse_sdiag_rpcs(run(["sdiag"]))
