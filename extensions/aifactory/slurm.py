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
import math
import os
import pwd
import re
import shutil
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from . import names

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

JOB_ID_RE = names.JOB_OR_TASK_ID_RE


class SlurmError(RuntimeError):
    """Slurm answered and said no. The message is Slurm's own last line of error output."""


class SlurmUnreachable(SlurmError):
    """The scheduler (slurmctld) or the accounting daemon (slurmdbd) did not answer."""


class JobGone(SlurmError):
    """The job is no longer there to act on (it ended, or slurmctld forgot it)."""


_GONE_PATTERNS = ("already completing or completed", "Invalid job id")


# --- where the commands are, and which Slurm answers -------------------------------------

def _bin_dir() -> str:
    """Sites install Slurm under their own prefix: AIFACTORY_SLURM_BIN names that folder
    (empty: the commands are found on PATH)."""
    return os.environ.get("AIFACTORY_SLURM_BIN", "")


def command_path(name: str) -> str:
    """The program to run for Slurm command `name` (sbatch, squeue, ...)."""
    folder = _bin_dir()
    return os.path.join(folder, name) if folder else name


_VERSION: dict[str, tuple[int, int]] = {}


def parse_version(text: str) -> tuple[int, int]:
    """(24, 11) from `sinfo --version` ("slurm 24.11.5", "slurm-wlm 22.05.8")."""
    m = re.search(r"(\d+)\.(\d+)", text)
    if not m:
        raise SlurmError(f"sinfo: cannot read the Slurm version from {text.strip()!r}")
    return int(m.group(1)), int(m.group(2))


def version() -> tuple[int, int]:
    """The Slurm release of the commands we run, asked once per process (no RPC)."""
    key = _bin_dir()
    if key not in _VERSION:
        _VERSION[key] = parse_version(run(["sinfo", "--version"]))
    return _VERSION[key]


def json_everywhere() -> bool:
    """Since 23.02 scontrol and sacctmgr answer in JSON too (22.05: squeue, sinfo, sacct only)."""
    return version() >= (23, 2)


# --- Slurm's numbers and words, in every shape from 22.05 to 25.11 -------------------------

UNLIMITED = math.inf  # a limit Slurm calls INFINITE / UNLIMITED; "not set" is None, never 0

# 22.05 writes "not set" and "infinite" as Slurm's NO_VAL and INFINITE integers (32 or 64
# bits); 23.02+ as {"set", "infinite", "number"}, where the number is always a plain number.
_NO_VAL = {0xFFFFFFFE, 0xFFFFFFFFFFFFFFFE}
_INFINITE = {0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF}


def number(value) -> float | int | None:
    """A Slurm number: None when not set, UNLIMITED when infinite, else the number."""
    if isinstance(value, dict):
        if value.get("infinite"):
            return UNLIMITED
        if not value.get("set", True):
            return None
        value = value.get("number")
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if value in _NO_VAL:
        return None
    if value in _INFINITE:
        return UNLIMITED
    return value


def count(value) -> int:
    """A Slurm number as a plain count: 0 when not set or unlimited."""
    n = number(value)
    return int(n) if n is not None and n != UNLIMITED else 0


def timestamp(value) -> int | None:
    """Epoch seconds, or None where Slurm has no time (0, not set, infinite)."""
    n = number(value)
    return int(n) if n and n != UNLIMITED else None


def _text(value) -> str:
    return value if isinstance(value, str) else ""


def _words(value) -> list[str]:
    """A state as 22.05 ("idle", "RUNNING") or 23.02+ (["IDLE", "DRAIN"]) writes it."""
    if isinstance(value, str):
        value = value.replace("+", " ").split()
    return [str(v).upper() for v in value or []]


# Job states (a base state plus flags; 22.05 prints a flag in place of the base state).
JOB_BASE_STATES = {"PENDING", "RUNNING", "SUSPENDED", "COMPLETED", "CANCELLED", "FAILED",
                   "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY"}
JOB_ALIVE_STATES = {"PENDING", "RUNNING", "SUSPENDED"}
# Flags of a job that is still on its way in or out: it holds or will hold nodes.
JOB_ALIVE_FLAGS = {"COMPLETING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                   "RESIZING", "STAGE_OUT", "SIGNALING", "POWER_UP_NODE", "UPDATE_DB"}

# Node states: the base state and the flags that make a node unusable for new jobs.
NODE_UNUSABLE_STATES = {"DOWN", "ERROR", "FUTURE", "UNKNOWN"}
# (Powered-down and rebooting nodes are not among them: Slurm brings those up for a job.)
NODE_UNUSABLE_FLAGS = {"DRAIN", "DRAINING", "DRAINED", "NOT_RESPONDING", "FAIL", "MAINTENANCE",
                       "INVALID", "INVALID_REG"}


def _split_state(words: list[str], base_states: set[str]) -> tuple[str, tuple[str, ...]]:
    base = next((w for w in words if w in base_states), "")
    flags = tuple(w for w in words if w != base)
    return base or (flags[0] if flags else ""), flags


@dataclass(frozen=True)
class Job:
    """A job as slurmctld reports it (squeue --json or slurmrestd, any version)."""
    job_id: str
    name: str
    user: str
    account: str
    partition: str
    state: str  # base state: PENDING, RUNNING, COMPLETED, ... (22.05: a flag such as COMPLETING)
    reason: str  # Slurm's reason code, e.g. Resources, AssocGrpGRESMinutes; "None" if none
    nodes: str  # node list, "" while pending
    gres: str = ""  # what it asked per node, as Slurm wrote it ("gres:gpu:2", "gres/gpu:h100:4")
    reservation: str = ""
    gpus: int = 0  # allocated (running) or requested (pending), all nodes together
    time_limit_min: float | None = None  # None: not set; UNLIMITED: no limit
    submit_time: int | None = None
    start_time: int | None = None  # for a pending job: Slurm's estimate, None if none yet
    end_time: int | None = None
    priority: int = 0
    comment: str = ""  # our tag, e.g. "aifactory-session:h100-1"
    flags: tuple[str, ...] = ()  # state flags: COMPLETING, CONFIGURING, REQUEUED, ...
    gpu_types: tuple[tuple[str, int], ...] = ()  # (("h100", 4),); "" for untyped GPUs
    billing: int = 0  # its billing TRES, allocated (running) or requested (pending)
    array_job_id: str = ""  # an array task's (or a pending array's) array job; "" if none
    array_task_id: int | None = None  # None: not a task, or the array's pending rest

    @property
    def pending(self) -> bool:
        return self.state == "PENDING"

    @property
    def starting(self) -> bool:
        """Allocated, but its nodes are still being set up (prolog, boot)."""
        return "CONFIGURING" in self.flags

    @property
    def completing(self) -> bool:
        return "COMPLETING" in self.flags

    @property
    def running(self) -> bool:
        """Running on its nodes. 22.05 says only "COMPLETING" while a job ends (no base state):
        that counts as running, as it did; 23.02+ says how it ended, and it runs no more."""
        return bool(self.nodes) and not self.starting and self.state in ("RUNNING", "COMPLETING")

    @property
    def alive(self) -> bool:
        """Still in the queue or on nodes: pending, starting, running, suspended, completing."""
        return self.state in JOB_ALIVE_STATES or bool(JOB_ALIVE_FLAGS & set(self.flags))

    @property
    def gpu_type(self) -> str:
        return self.gpu_types[0][0] if self.gpu_types else ""


@dataclass(frozen=True)
class Node:
    name: str
    state: str  # base state: IDLE, MIXED, ALLOCATED, DOWN, ...
    address: str
    partitions: tuple[str, ...] = field(default_factory=tuple)
    gres: str = ""  # e.g. "gpu:h100:4"
    gres_used: str = ""  # e.g. "gpu:h100:2(IDX:0-1)"
    flags: tuple[str, ...] = field(default_factory=tuple)  # e.g. ("DRAIN",), ("RESERVED",)
    reason: str = ""  # why an admin took it out, e.g. "disk failure"
    reason_time: int | None = None  # since when
    reason_user: str = ""
    cpus: int = 0
    memory_mb: int = 0  # RealMemory

    def gpus(self, used: bool = False) -> dict[str, int]:
        """GPUs by type on this node (all, or in use)."""
        return parse_gres_gpus(self.gres_used if used else self.gres)

    @property
    def problems(self) -> tuple[str, ...]:
        """Slurm's words that make this node take no new job (empty when it is usable)."""
        found = tuple(f for f in self.flags if f in NODE_UNUSABLE_FLAGS)
        return ((self.state,) if self.state in NODE_UNUSABLE_STATES else ()) + found

    @property
    def usable(self) -> bool:
        return not self.problems

    @property
    def reserved(self) -> bool:
        """In a reservation now, whether or not the asker may see it (PrivateData)."""
        return "RESERVED" in self.flags or self.state == "RESERVED"

    @property
    def condition(self) -> str:
        """The node's trouble in words ("drained", "down, not responding"), "" if none."""
        words = [NODE_PROBLEM_WORDS.get(p, p.lower().replace("_", " ")) for p in self.problems]
        if "DRAIN" in self.problems and self.state in ("ALLOCATED", "MIXED"):
            words[words.index("drained")] = "draining"  # its running jobs may finish
        return ", ".join(dict.fromkeys(words))


NODE_PROBLEM_WORDS = {
    "DOWN": "down", "ERROR": "in error", "FUTURE": "not in service yet",
    "UNKNOWN": "not registered", "DRAIN": "drained", "DRAINING": "draining",
    "DRAINED": "drained", "NOT_RESPONDING": "not responding", "FAIL": "failing",
    "MAINTENANCE": "in maintenance", "INVALID": "misconfigured", "INVALID_REG": "misconfigured",
}


@dataclass(frozen=True)
class Reservation:
    name: str
    start: int | None
    end: int | None
    nodes: str  # node list as Slurm writes it ("gpu[01-02]")
    users: tuple[str, ...] = ()
    accounts: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    partition: str = ""

    def active(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return (self.start or 0) <= now and (self.end is None or now < self.end)

    def admits(self, user: str, accounts) -> bool:
        """True if `user`, or one of their `accounts`, may run in it."""
        return user in self.users or bool(set(self.accounts) & set(accounts))


@dataclass(frozen=True)
class Partition:
    name: str
    nodes: str
    max_time_min: float | None  # UNLIMITED or None (not set) or minutes
    default_time_min: float | None
    billing_weights: str = ""  # TRESBillingWeights, e.g. "CPU=0.1,Mem=0.25G,GRES/gpu=2.0"
    up: bool = True



# The variables a session's sbatch passes on to its job through sudo (the hub's sudoers
# env_keep; each ends in * or is a whole name): the token and URLs JupyterHub gives the server,
# aifactory's own, the language.
SESSION_ENV_KEPT = ("JUPYTERHUB_*", "AIFACTORY_*", "LANG")


def session_env_kept(name: str) -> bool:
    return any(name.startswith(k[:-1]) if k.endswith("*") else name == k
               for k in SESSION_ENV_KEPT)


def _as_user(argv: list[str], user: str | None, env: dict | None) -> tuple[list[str], dict]:
    """The command line and Popen arguments that run `argv` as `user`: directly where this
    process is root, through sudo where it is a service's own account (whose sudo rules,
    aifactory.cluster.unprivileged, say which commands as whom; sudo resets the environment,
    so `env` does not reach the command then)."""
    program = command_path(argv[0])
    if user is None or os.geteuid() == 0:
        return [program, *argv[1:]], _user_kwargs(user, env)
    found = shutil.which(program)
    if found is None:
        raise FileNotFoundError(program)
    return ["sudo", "-n", "-u", user, "--", found, *argv[1:]], {"env": env}


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
    if argv[0] == "scancel" and any(p in message for p in _GONE_PATTERNS):
        raise JobGone(f"{argv[0]}: {last}")
    raise SlurmError(f"{argv[0]}: {last}")


@dataclass
class CommandCount:
    """What one Slurm command cost this process so far (the operators' metrics)."""
    calls: int = 0
    seconds: float = 0.0
    unreachable: int = 0  # the daemon did not answer (or not in time)
    refused: int = 0  # it answered no


COMMANDS: dict[str, CommandCount] = {}
_COMMANDS_LOCK = threading.Lock()  # the service runs commands from several threads


@contextmanager
def _counted(command: str):
    started = time.monotonic()
    outcome = ""
    try:
        yield
    except SlurmUnreachable:
        outcome = "unreachable"
        raise
    except SlurmError:
        outcome = "refused"
        raise
    finally:
        with _COMMANDS_LOCK:
            count = COMMANDS.setdefault(command, CommandCount())
            count.calls += 1
            count.seconds += time.monotonic() - started
            if outcome:
                setattr(count, outcome, getattr(count, outcome) + 1)


def command_counts() -> dict[str, CommandCount]:
    """A consistent copy of COMMANDS (calls and seconds from the same moment)."""
    with _COMMANDS_LOCK:
        return {name: CommandCount(**vars(count)) for name, count in COMMANDS.items()}


def run(argv: list[str], *, input: str | None = None, user: str | None = None,
        env: dict | None = None, timeout: float = DEFAULT_TIMEOUT,
        with_stderr: bool = False) -> str:
    """Run a Slurm command (argv list) and return its stdout (and stderr after it, for the
    commands that answer there: `sbatch --test-only`)."""
    with _counted(argv[0]):
        return _run(argv, input=input, user=user, env=env, timeout=timeout,
                    with_stderr=with_stderr)


def _run(argv, *, input, user, env, timeout, with_stderr=False) -> str:
    try:
        command, kwargs = _as_user(argv, user, env)
        proc = subprocess.run(command, input=input, capture_output=True, text=True,
                              timeout=timeout, **kwargs)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]}: Slurm's command is not installed here "
                         f"(looked in {_bin_dir() or 'PATH'})") from None
    except subprocess.TimeoutExpired:
        raise SlurmUnreachable(f"{argv[0]}: scheduler unreachable (no answer in {timeout:.0f} s)")
    out = _check(argv, proc.returncode, proc.stdout, proc.stderr)
    return out + proc.stderr if with_stderr else out


async def run_async(argv: list[str], *, input: str | None = None, user: str | None = None,
                    env: dict | None = None, timeout: float = DEFAULT_TIMEOUT) -> str:
    """`run` for asyncio code (the hub): the event loop keeps serving while Slurm answers."""
    with _counted(argv[0]):
        return await _run_async(argv, input=input, user=user, env=env, timeout=timeout)


async def _run_async(argv, *, input, user, env, timeout) -> str:
    try:
        command, kwargs = _as_user(argv, user, env)
        proc = await asyncio.create_subprocess_exec(
            *command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            **kwargs)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]}: Slurm's command is not installed here "
                         f"(looked in {_bin_dir() or 'PATH'})") from None
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


def private_scratch_lines(parent: str, name: str) -> list[str]:
    """Job script lines making $AIFACTORY_SCRATCH, a folder of the job's own under the shell
    word `parent` (mktemp -d: 0700, a name nobody can take first), removed when the job ends
    (a cancel sends TERM, which the EXIT trap then follows); Dask spills there."""
    return [f'AIFACTORY_SCRATCH="$(mktemp -d {parent}/{name}-"$SLURM_JOB_ID".XXXXXX)" || exit 1',
            """trap 'rm -rf "$AIFACTORY_SCRATCH"' EXIT""",
            "trap 'exit 143' TERM",
            'export DASK_TEMPORARY_DIRECTORY="$AIFACTORY_SCRATCH"']


def _check_job_id(job_id: str) -> str:
    if not JOB_ID_RE.match(str(job_id)):
        raise ValueError(f"not a Slurm job id: {job_id!r}")
    return str(job_id)


def cancel(job_id: str, *, user: str | None = None) -> None:
    run(["scancel", _check_job_id(job_id)], user=user)


async def cancel_async(job_id: str, *, user: str | None = None) -> None:
    await run_async(["scancel", _check_job_id(job_id)], user=user)


def parse_gres_gpus(gres: str) -> dict[str, int]:
    """{"h100": 4} from "gpu:h100:4", "gpu:h100:2(IDX:0-1)", "gres/gpu:h100:4", "gres:gpu:2" or
    "gres/gpu:h100=4"; untyped GPUs count as ""."""
    result: dict[str, int] = {}
    for part in _split_top(gres or "", "("):
        part = part.split("(")[0].strip()
        for prefix in ("gres/", "gres:"):
            part = part.removeprefix(prefix)
        fields = part.replace("=", ":").split(":")
        if fields[0] != "gpu" or len(fields) < 2 or not fields[-1].isdigit():
            continue
        kind = fields[1] if len(fields) == 3 else ""
        result[kind] = result.get(kind, 0) + int(fields[-1])
    return result


def _split_top(text: str, opening: str = "[") -> list[str]:
    """Split at commas that are not inside brackets ("gpu[01-02],cpu01", "gpu:a:1(IDX:0,2),x")."""
    closing = {"[": "]", "(": ")"}[opening]
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == opening
        depth -= ch == closing
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def _job_gpus(j: dict, nodes: int) -> tuple[int, dict[str, int]]:
    """GPUs of a job, all nodes together, and by type, from whichever field this Slurm filled."""
    detail: dict[str, int] = {}
    for d in j.get("gres_detail") or []:  # running: what each node gave
        for kind, n in parse_gres_gpus(d).items():
            detail[kind] = detail.get(kind, 0) + n
    per_node = parse_gres_gpus(_text(j.get("tres_per_node")))
    per_job = parse_gres_gpus(_text(j.get("tres_per_job")))
    requested = ({k: v * max(nodes, 1) for k, v in per_node.items()} if per_node else per_job)
    by_type = detail if sum(detail.values()) else requested
    tres = _text(j.get("tres_alloc_str")) or _text(j.get("tres_req_str"))
    total = tres_value(tres, "gres/gpu")
    if total is None:
        total = sum(by_type.values())
    if by_type and not any(by_type):  # only untyped: the TRES string may still name the type
        typed = {k.split(":", 1)[1]: v for k, v in _tres_pairs(tres) if k.startswith("gres/gpu:")}
        by_type = typed or by_type
    return total, by_type


def _job_from_json(j: dict) -> Job:
    state, flags = _split_state(_words(j.get("job_state")), JOB_BASE_STATES)
    nodes = _text(j.get("nodes"))
    gpus, by_type = _job_gpus(j, count(j.get("node_count")) or 1)
    comment = j.get("comment")
    return Job(
        job_id=str(j["job_id"]),
        name=_text(j.get("name")),
        user=_text(j.get("user_name")),
        account=_text(j.get("account")),
        partition=_text(j.get("partition")),
        state=state,
        flags=flags,
        reason=_text(j.get("state_reason")) or "None",
        nodes=nodes,
        gres=_text(j.get("tres_per_node")) or _text(j.get("tres_per_job")),
        reservation=_text(j.get("resv_name")),
        gpus=gpus,
        gpu_types=tuple(sorted((k, n) for k, n in by_type.items() if n)),
        time_limit_min=number(j.get("time_limit")),
        submit_time=timestamp(j.get("submit_time")),
        start_time=timestamp(j.get("start_time")),
        end_time=timestamp(j.get("end_time")),
        priority=count(j.get("priority")),
        comment=_text(comment.get("job")) if isinstance(comment, dict) else _text(comment),
        billing=tres_value(_text(j.get("tres_alloc_str")) or _text(j.get("tres_req_str")),
                           "billing") or 0,
        array_job_id=_array_job_id(j.get("array_job_id")),
        array_task_id=_array_task_id(j.get("array_task_id")),
    )


def _array_job_id(value) -> str:
    n = count(value)  # 0 (22.05) or not set (23.02+): not an array
    return str(n) if n else ""


def _array_task_id(value) -> int | None:
    n = number(value)
    return int(n) if n is not None and n != UNLIMITED else None


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


def parse_jobs_json(text: str) -> list[Job]:
    """Jobs from `squeue --json` or slurmrestd's GET jobs, Slurm 22.05 to 25.11."""
    return [_job_from_json(j) for j in _load_json(text, "squeue").get("jobs", [])]


def _select(found: list[Job], user: str | None, job_ids: list[str] | None) -> list[Job]:
    # Slurm 22.05's `squeue --json` ignores --jobs and --user and returns every job it
    # knows, so the filter is applied here (one RPC either way).
    wanted = {_check_job_id(j) for j in job_ids} if job_ids else None
    return [j for j in found
            if (user is None or j.user == user) and (wanted is None or j.job_id in wanted)]


def jobs(*, user: str | None = None, job_ids: list[str] | None = None,
         timeout: float = DEFAULT_TIMEOUT) -> list[Job]:
    """Jobs slurmctld still knows (pending, running, and recently ended)."""
    return _select(parse_jobs_json(run(["squeue", "--json"], timeout=timeout)), user, job_ids)


def job(job_id: str, timeout: float = DEFAULT_TIMEOUT) -> Job | None:
    """One job as slurmctld sees it, or None once slurmctld has forgotten it."""
    found = jobs(job_ids=[job_id], timeout=timeout)
    return found[0] if found else None


def parse_sacct_json(text: str) -> list[PastJob]:
    """Job records from `sacct --json` or slurmrestd's slurmdb jobs, Slurm 22.05 to 25.11."""
    return [past_job_from_json(j) for j in _load_json(text, "sacct").get("jobs", [])]


def accounting_jobs(*, job_ids: list[str] | None = None, user: str | None = None,
                    all_users: bool = False, timeout: float = DEFAULT_TIMEOUT) -> list[PastJob]:
    """Job records from slurmdbd (sacct --json)."""
    argv = ["sacct", "--json"]
    if job_ids:
        argv += ["--jobs", ",".join(_check_job_id(j) for j in job_ids)]
    if user:
        argv += ["--user", user]
    elif all_users:
        argv += ["--allusers"]
    return parse_sacct_json(run(argv, timeout=timeout))


# --- nodes and the controller -----------------------------------------------------------

def _node_from_json(n: dict) -> Node:
    words = _words(n.get("state")) + _words(n.get("state_flags"))  # 22.05: flags apart
    state, flags = _split_state(words, {"IDLE", "MIXED", "ALLOCATED", "DOWN", "ERROR", "FUTURE",
                                        "UNKNOWN", "COMPLETING"})
    return Node(name=n["name"], state=state, flags=tuple(f for f in flags if f != state),
                address=_text(n.get("address")),
                partitions=tuple(n.get("partitions") or ()),
                gres=_text(n.get("gres")), gres_used=_text(n.get("gres_used")),
                reason=_text(n.get("reason")),
                reason_time=timestamp(n.get("reason_changed_at")),
                reason_user=_text(n.get("reason_set_by_user")),
                cpus=count(n.get("cpus")), memory_mb=count(n.get("real_memory")))


def parse_nodes_json(text: str) -> list[Node]:
    """Nodes from `scontrol show nodes --json` (23.02+), `sinfo --json` (22.05) or slurmrestd."""
    return [_node_from_json(n) for n in _load_json(text, "scontrol").get("nodes", [])]


def nodes() -> list[Node]:
    # From 23.02 `sinfo --json` groups nodes into rows and lists them no more.
    if json_everywhere():
        return parse_nodes_json(run(["scontrol", "show", "nodes", "--json"]))
    return parse_nodes_json(run(["sinfo", "--json"]))


def ping() -> bool:
    """True when slurmctld answers."""
    try:
        out = run(["scontrol", "ping"], timeout=10)
    except SlurmError:
        return False
    return "UP" in out


def scontrol(*args: str) -> str:
    return run(["scontrol", *args])


def _names(value) -> tuple[str, ...]:
    """"bob,carol" / "(null)" / "" -> ("bob", "carol") / () / ()."""
    if not isinstance(value, str) or value in ("(null)", "ALL"):
        return ()
    return tuple(v for v in value.split(",") if v)


def _scontrol_time(value: str) -> int | None:
    """scontrol's local time "2026-11-24T11:54:08" as epoch seconds."""
    try:
        return int(time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%S")))
    except (TypeError, ValueError):
        return None


def _oneliners(text: str, key: str) -> list[dict[str, str]]:
    return [dict(p.split("=", 1) for p in line.split() if "=" in p)
            for line in text.splitlines() if line.startswith(key + "=")]


def parse_reservations_json(text: str) -> list[Reservation]:
    """`scontrol show reservation --json` (23.02+) or slurmrestd's GET reservations."""
    return [Reservation(name=r["name"], start=timestamp(r.get("start_time")),
                        end=timestamp(r.get("end_time")), nodes=_text(r.get("node_list")),
                        users=_names(r.get("users")), accounts=_names(r.get("accounts")),
                        flags=tuple(_words(r.get("flags"))), partition=_text(r.get("partition")))
            for r in _load_json(text, "scontrol").get("reservations", [])]


def parse_reservations_text(text: str) -> list[Reservation]:
    """`scontrol show reservation --oneliner` (every version)."""
    return [Reservation(name=r["ReservationName"], start=_scontrol_time(r.get("StartTime")),
                        end=_scontrol_time(r.get("EndTime")),
                        nodes=",".join(_names(r.get("Nodes"))),
                        users=_names(r.get("Users")), accounts=_names(r.get("Accounts")),
                        flags=tuple(_words(r.get("Flags", "").replace(",", " "))),
                        partition=",".join(_names(r.get("PartitionName"))))
            for r in _oneliners(text, "ReservationName")]


def _scontrol_show(entity: str, parse_json, parse_text) -> list:
    """`scontrol show ENTITY` in the richest shape this Slurm gives (JSON from 23.02)."""
    if json_everywhere():
        return parse_json(run(["scontrol", "show", entity, "--json"]))
    return parse_text(run(["scontrol", "show", entity, "--oneliner"]))


def reservations() -> dict[str, Reservation]:
    """Reservations by name (active and future)."""
    found = _scontrol_show("reservation", parse_reservations_json, parse_reservations_text)
    return {r.name: r for r in found}


def _minutes(text: str | None) -> float | None:
    """scontrol's "2-00:00:00", "01:00:00", "30", "UNLIMITED" as minutes."""
    if not text or text in ("NONE", "(null)"):
        return None
    if text == "UNLIMITED":
        return UNLIMITED
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    h, m, s = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return int(days or 0) * 1440 + h * 60 + m + s / 60


def parse_partitions_json(text: str) -> list[Partition]:
    """`scontrol show partition --json` (23.02+) or slurmrestd's GET partitions."""
    result = []
    for p in _load_json(text, "scontrol").get("partitions", []):
        state = _words((p.get("partition") or {}).get("state")) or ["UP"]
        result.append(Partition(
            name=p["name"], nodes=_text((p.get("nodes") or {}).get("configured")),
            max_time_min=number((p.get("maximums") or {}).get("time")),
            default_time_min=number((p.get("defaults") or {}).get("time")),
            billing_weights=_text((p.get("tres") or {}).get("billing_weights")),
            up=state[0] == "UP"))
    return result


def parse_partitions_text(text: str) -> list[Partition]:
    """`scontrol show partition --oneliner` (every version)."""
    return [Partition(name=p["PartitionName"], nodes=p.get("Nodes", ""),
                      max_time_min=_minutes(p.get("MaxTime")),
                      default_time_min=_minutes(p.get("DefaultTime")),
                      billing_weights=",".join(_names(p.get("TRESBillingWeights"))),
                      up=p.get("State", "UP") == "UP")
            for p in _oneliners(text, "PartitionName")]


def partitions() -> dict[str, Partition]:
    """Partitions by name, with their limits and TRESBillingWeights."""
    found = _scontrol_show("partition", parse_partitions_json, parse_partitions_text)
    return {p.name: p for p in found}


def expand_nodes(nodelist: str) -> set[str]:
    """"gpu[01-02],cpu01" -> {"gpu01", "gpu02", "cpu01"} (the forms Slurm prints here)."""
    names = set()
    for part in _split_top(nodelist):
        if "[" not in part:
            if part and part != "(null)":
                names.add(part)
            continue
        prefix, ranges = part.split("[", 1)
        for r in ranges.rstrip("]").split(","):
            lo, _, hi = r.partition("-")
            for i in range(int(lo), int(hi or lo) + 1):
                names.add(f"{prefix}{i:0{len(lo)}d}")
    return names


def resumable(node: Node) -> bool:
    """A node `scontrol update State=RESUME` brings back (down, drained or failing)."""
    return node.state == "DOWN" or bool({"DRAIN", "FAIL"} & set(node.flags))


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
    """A project's budget in minutes of its TRES (GPU-minutes on gres/gpu, unit-minutes on
    billing), as slurmctld enforces it (from sshare).

    With `user` set, one member's share of the project (no grant of its own)."""
    account: str
    granted_min: int | None  # GrpTRESMins; None: no limit on this account
    used_min: float  # this budget period (see parse_sshare)
    held_min: int  # remaining walltime x TRES of running jobs (TRESRunMins)
    user: str = ""

    @property
    def remaining_min(self) -> float | None:
        if self.granted_min is None:
            return None
        return self.granted_min - self.used_min - self.held_min


SSHARE_FIELDS = "Account,User,RawUsage,GrpTRESMins,TRESRunMins,GrpTRESRaw"


def parse_sshare(text: str, tres: str = "gres/gpu") -> list[Budget]:
    """Account and user rows of `sshare -aP -o Account,User,RawUsage,GrpTRESMins,TRESRunMins
    [,GrpTRESRaw]`, in minutes of `tres`.

    Used is GrpTRESRaw, what the limit counts (whole minutes): on billing, Slurm's whole
    billing number x minutes (RawUsage counts the weighted sum before it is cut). On gres/gpu,
    RawUsage is used where it agrees to the minute, as it is exact to the second: it counts
    GPU-seconds while the partitions bill GPUs only (and not after they billed more)."""
    rows = []
    for line in text.splitlines():
        values = [v.strip() for v in line.split("|")]
        if len(values) not in (5, 6) or values[0] in ("", "Account", "root"):
            continue
        account, user, raw_usage, granted, held = values[:5]
        exact = int(raw_usage or 0) / 60
        counted = (tres_value(values[5], tres) or 0) if len(values) == 6 else None
        used = exact if counted is None or (tres == "gres/gpu"
                                            and counted <= exact < counted + 1) else counted
        rows.append(Budget(account, tres_value(granted, tres), used,
                           tres_value(held, tres) or 0, user))
    return rows


def shares(tres: str = "gres/gpu") -> list[Budget]:
    """Every project's budget and every member's share of it, from slurmctld."""
    return parse_sshare(run(["sshare", "--noheader", "--parsable2", "--all",
                             f"--format={SSHARE_FIELDS}"]), tres)


def budgets(tres: str = "gres/gpu") -> dict[str, Budget]:
    """Budgets of every account on `tres`, from slurmctld's association manager."""
    return {b.account: b for b in shares(tres) if not b.user}


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


def parse_config(text: str) -> dict[str, str]:
    """`scontrol show config` as {key: value} (its "Key = value" lines; "(null)" is "")."""
    found = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            value = value.strip()
            found[key.strip()] = "" if value == "(null)" else value
    return found


def config() -> dict[str, str]:
    """slurmctld's running configuration."""
    return parse_config(run(["scontrol", "show", "config"]))


def usage_reset_period() -> str:
    """PriorityUsageResetPeriod: when budgets start again (QUARTERLY, MONTHLY, NONE, ...)."""
    return (config().get("PriorityUsageResetPeriod") or "NONE").upper()


def admin_level(user: str) -> str:
    """The user's AdminLevel in slurmdbd (None, Operator, Administrator); root is one."""
    if user == "root":
        return "Administrator"
    if not names.SITE_USER_RE.match(user):
        raise SlurmError(f"'{user[:40]}' is not a valid user name")
    rows = sacctmgr_list("user", f"name={user}", fields=["AdminLevel"])
    return rows[0]["adminlevel"] if rows else "None"


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
    start_time: int | None  # None if it never started
    end_time: int | None  # None while running
    elapsed_s: int
    time_limit_min: float | None  # None: not set; UNLIMITED: no limit
    cpu_time_s: float
    nodes: str = ""
    comment: str = ""
    flags: tuple[str, ...] = ()
    billing: int = 0  # the job's billing TRES (what the site's weights make of it)
    array_job_id: str = ""
    array_task_id: int | None = None

    @property
    def alive(self) -> bool:
        return self.state in JOB_ALIVE_STATES or bool(JOB_ALIVE_FLAGS & set(self.flags))


def _allocated(tres: list[dict], kind: str, name: str = "") -> int:
    # 22.05 names plain TRES null, 23.02+ "".
    return sum(count(t.get("count")) for t in tres or []
               if t.get("type") == kind and (t.get("name") or "") == name)


def past_job_from_json(j: dict) -> PastJob:
    t = j.get("time", {})
    total = t.get("total", {}) or {}
    state, flags = _split_state(_words((j.get("state") or {}).get("current")), JOB_BASE_STATES)
    allocated = (j.get("tres") or {}).get("allocated") or []
    comment = j.get("comment", {})
    return PastJob(
        job_id=str(j.get("job_id")), name=_text(j.get("name")), user=_text(j.get("user")),
        account=_text(j.get("account")), partition=_text(j.get("partition")), state=state,
        flags=flags, gpus=_allocated(allocated, "gres", "gpu"), cpus=_allocated(allocated, "cpu"),
        billing=_allocated(allocated, "billing"),
        start_time=timestamp(t.get("start")), end_time=timestamp(t.get("end")),
        elapsed_s=count(t.get("elapsed")), time_limit_min=number(t.get("limit")),
        cpu_time_s=count(total.get("seconds")) + count(total.get("microseconds")) / 1e6,
        nodes=_text(j.get("nodes")),
        comment=_text(comment.get("job")) if isinstance(comment, dict) else _text(comment),
        array_job_id=_array_job_id((j.get("array") or {}).get("job_id")),
        array_task_id=_array_task_id((j.get("array") or {}).get("task_id")))


def job_history(since: int) -> list[PastJob]:
    """Every user's jobs that ran at some point since `since` (epoch seconds), from slurmdbd."""
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since))
    return parse_sacct_json(run(["sacct", "--json", "--allusers", "--allocations", "--starttime",
                                 start, "--endtime", "now"]))


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
    if not names.SITE_USER_RE.match(user):
        raise ValueError(f"not a user name: {user!r}")
    return parse_user_associations(user, run(
        ["sacctmgr", "--noheader", "--parsable2", "list", "user", user, "withassoc",
         "format=User,DefaultAccount,Account,QOS"]))


def _tres_pairs(tres: str) -> list[tuple[str, int]]:
    pairs = []
    for part in (tres or "").split(","):
        key, _, value = part.partition("=")
        if value.isdigit():
            pairs.append((key, int(value)))
    return pairs


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
NOTEBOOK_TAG = "aifactory-notebook"  # + ":" + the notebook job's folder name

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
    "AssocGrpBillingRunMinutes": "your project's budget is taken by its running jobs",
    "AssocMaxJobsLimit": "your project has as many running jobs as it may",
    "QOSMaxGRESPerUser": "you already use as many GPUs as you may",
    "Reservation": "waiting for its reservation to start",
    "InvalidAccount": "the account is not valid for you",
    "JobHeldAdmin": "held by an administrator",
    "JobHeldUser": "held (by you)",
    "JobArrayTaskLimit": "its array already runs as many tasks at once as it may",
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
