"""Dask on GPU nodes: one worker per GPU, a clean environment, and no jobs left behind.

    from aifactory.dask import GPUCluster
    cluster = GPUCluster(gpus_per_job=4, walltime="1:00:00")   # site defaults from hub_config
    cluster.scale(jobs=2)                                      # says what it costs first
    client = Client(cluster)

On top of dask-jobqueue's SLURMCluster:

- each job runs one Dask worker per GPU, each with only its own GPU in CUDA_VISIBLE_DEVICES
  and a `GPU` resource of 1; threads and memory are split per GPU; `scale(jobs=)`, `scale(workers=)`
  and `adapt()` count workers as GPUs;
- jobs are submitted through `aifactory.slurm` with the notebook job's SLURM_*/SBATCH_*
  variables removed, named `dask-<notebook job>` and tagged (`--comment`) so the jobs widget
  shows them as the notebook's Dask workers;
- they are cancelled when the cluster closes, when the kernel exits or is killed (a small
  watcher process outlives it), and when the hub stops the notebook session;
- scaling up first compares what the jobs cost at their full walltime (GPU-hours, or the
  site's billing unit from the partition's weights) with what the project has left, and
  refuses what does not fit, unless `allow_over_budget=True`.
"""

from __future__ import annotations

import getpass
import math
import os
import shlex
import socket
import ssl
import subprocess
import sys
import uuid
from urllib.parse import urlparse

try:
    from dask_jobqueue import SLURMCluster
    from dask_jobqueue.slurm import SLURMJob
except ImportError as e:  # a kernel of the user's own environment (aifactory.kernels)
    raise ImportError(f"GPUCluster needs dask-jobqueue and distributed in this kernel's Python "
                      f"({sys.prefix}), and {e.name} is missing: install them with "
                      f"{shlex.quote(sys.executable)} -m pip install dask-jobqueue distributed"
                      ) from e

from . import dask_tls, slurm, ssl_fix
from . import site_description as site_module
from .client import AllocationsError, remaining
from .availability import only_unusable_nodes
from .report import unusable_words

INHERITED = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")
# TLS needs OpenSSL's error queue cleared before each read and write (aifactory.ssl_fix:
# without it, OpenSSL 3.5 on Debian 13 breaks the scheduler's own connections). Where that
# cannot be done, clusters use TCP and say so.
TLS_WORKS = ssl_fix.INSTALLED or ssl.OPENSSL_VERSION_INFO < (3, 5)
TLS_OFF_WORDS = ("Dask TLS is off: this Python's OpenSSL library could not be reached to clear "
                 "its error queue (aifactory.ssl_fix; OpenSSL 3.5 needs it), so this cluster speaks plain TCP, and "
                 "other users who learn its address can connect to it.")


class BudgetExceeded(ValueError):
    """A scale whose cost does not fit in what the project has left."""


class NodesUnavailable(ValueError):
    """A scale up that only nodes taking no jobs (drained, down, ...) could run."""


def clean_environment(env: dict | None = None) -> dict[str, str]:
    """The environment for worker jobs: the notebook job's own Slurm variables removed."""
    env = dict(os.environ if env is None else env)
    return {k: v for k, v in env.items() if not k.startswith(INHERITED)}


def session_tag(notebook_job: str) -> str:
    """The comment prefix of every Dask job started from one notebook session."""
    return f"{slurm.DASK_TAG}:{notebook_job or 'none'}:"


# -P: never import from the working folder (a shared one may hold a planted `distributed`
# or `aifactory`); Python 3.11 has it, and a user's older Python would refuse to start with it.
SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else []


def worker_python(site_python: str) -> str:
    """The workers' Python: the site's, or this kernel's own where it runs in another
    environment (a user's venv or conda environment, a module's Python), so that the workers
    have the same packages."""
    site_prefix = os.path.dirname(os.path.dirname(site_python))
    if os.path.realpath(sys.prefix) == os.path.realpath(site_prefix):
        return f"{site_python} -P"
    return " ".join([shlex.quote(sys.executable), *SAFE_PATH])


class GPUJob(SLURMJob):
    """One Slurm job of Dask workers, submitted and cancelled through `aifactory.slurm`."""

    async def _submit_job(self, script_filename):
        with open(script_filename) as f:
            script = f.read()
        return await slurm.submit_async(script, user=None, env=clean_environment())

    async def close(self):
        await self._close_job(self.job_id, self.cancel_command)

    @classmethod
    async def _close_job(cls, job_id, cancel_command):
        if job_id:
            try:
                await slurm.cancel_async(job_id)
            except slurm.SlurmError:
                pass  # already gone


def _address_towards(host: str) -> str | None:
    """This machine's address on the network that reaches `host` (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return s.getsockname()[0]
    except OSError:
        return None


class GPUCluster(SLURMCluster):
    job_cls = GPUJob

    def __init__(self, gpus_per_job: int | None = None, gpu_type: str | None = None,
                 walltime: str | None = None, account: str | None = None,
                 partition: str | None = None, cpus_per_gpu: int | None = None,
                 memory_gb_per_gpu: int | None = None, allow_over_budget: bool = False,
                 budget_client=None, **kwargs):
        site = site_module.load_cached()
        d = site.dask
        partition = partition or d["partition"]
        part = site.partitions.get(partition)
        if part is None or not part.gpus_per_node:
            raise ValueError(f"Partition {partition!r} has no GPUs here; GPU partitions: "
                             f"{', '.join(p for p, v in site.partitions.items() if v.gpus_per_node)}.")
        gpu_type = gpu_type or d.get("gpu_type") or part.gpu_types[0]
        if gpu_type not in part.gpu_types:
            raise ValueError(f"GPU type {gpu_type!r} is not in partition {partition} "
                             f"({', '.join(part.gpu_types)}).")
        gpus = _whole(gpus_per_job if gpus_per_job is not None else d["gpus_per_job"],
                      "gpus_per_job", 1, part.gpus_per_node)
        cpus = _whole(cpus_per_gpu or d["cpus_per_gpu"], "cpus_per_gpu", 1,
                      part.cpus_per_node // gpus)
        memory = _whole(memory_gb_per_gpu or d["memory_gb_per_gpu"], "memory_gb_per_gpu", 1,
                        part.memory_gb_per_node // gpus)
        walltime = walltime or d["walltime"]
        minutes = site_module.walltime_minutes(str(walltime))
        if not minutes or minutes > part.max_walltime_min:
            raise ValueError(f"walltime {walltime!r} must be [D-]HH:MM:SS, at most the "
                             f"partition's {site_module.format_minutes(part.max_walltime_min)}.")
        account = account or self._notebook_account()
        if not site_module.NAME_RE.match(account):
            raise ValueError(f"account {account!r} is not a Slurm account name.")

        # A course's budget pays only inside the course's reservation (and partition).
        course = site.course_of_account(account)
        course_options = []
        if course is not None:
            course_options = [f"--reservation={course.reservation}"]
            partition = site.profile(course.profile).slurm["partition"]
        self.gpus_per_job, self.gpu_type, self.account = gpus, gpu_type, account
        self.partition = partition
        self.walltime_min = minutes
        self.cpus_per_job, self.memory_gb_per_job = cpus * gpus, memory * gpus
        self.billing = site.billing
        self.allow_over_budget = allow_over_budget
        self._budget_client = budget_client
        self.notebook_job = os.environ.get("SLURM_JOB_ID", "")
        self.tag = session_tag(self.notebook_job) + uuid.uuid4().hex[:8]
        hub = urlparse(os.environ.get("JUPYTERHUB_API_URL", "")).hostname
        scheduler_options = {"dashboard_address": "127.0.0.1:0"}  # reached through the hub
        if hub and (address := _address_towards(hub)):
            scheduler_options["host"] = address
        kwargs["scheduler_options"] = {**scheduler_options, **kwargs.get("scheduler_options", {})}
        # Mutual TLS with the user's own identity: nobody else connects (security=False: TCP).
        security = kwargs.pop("security", None)
        if security is None and not TLS_WORKS:
            print(TLS_OFF_WORDS)
            security = False
        kwargs["security"] = (dask_tls.security() if security is None else security) or None
        kwargs.setdefault("interface", d["interface"])
        # Each job spills into a folder of its own that only its user can enter, made by the
        # job (mktemp -d: 0700, a name nobody can take first) and removed when it ends.
        kwargs["job_script_prologue"] = [
            *slurm.private_scratch_lines(shlex.quote(d["local_directory"]), "aifactory-dask"),
            *kwargs.pop("job_script_prologue", [])]
        kwargs.setdefault("local_directory", '"$AIFACTORY_SCRATCH"')
        kwargs.setdefault("log_directory", os.path.expanduser("~/.aifactory/dask-logs"))
        kwargs.setdefault("python", worker_python(d["python"]))
        kwargs.setdefault("death_timeout", 60)
        super().__init__(
            queue=partition, account=account, cores=cpus * gpus, processes=gpus,
            # GiB, so Slurm gets --mem=<memory x gpus>G as the form's sessions do (not 56G for 60GB)
            memory=f"{memory * gpus}GiB", walltime=site_module.format_minutes(minutes),
            job_name=f"dask-{self.notebook_job or getpass.getuser()}",
            job_extra_directives=[f"--gres=gpu:{gpu_type}:{gpus}", f"--comment={self.tag}",
                                  *course_options, *kwargs.pop("job_extra_directives", [])],
            # One worker per GPU, each keeping only its own GPU (aifactory.gpu_pin).
            # No worker dashboards: the scheduler's shows the workers, and it alone is guarded.
            worker_extra_args=["--resources", "GPU=1", "--preload", "aifactory.gpu_pin",
                               "--preload-nanny", "aifactory.ssl_fix", "--no-dashboard",
                               *kwargs.pop("worker_extra_args", [])],
            **kwargs)
        self._watcher = subprocess.Popen(
            [sys.executable, *SAFE_PATH, "-m", "aifactory.reaper", str(os.getpid()), self.tag],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)

    @staticmethod
    def _notebook_account() -> str:
        """The notebook session's own account, else the user's default one."""
        if os.environ.get("SLURM_JOB_ACCOUNT"):
            return os.environ["SLURM_JOB_ACCOUNT"]
        if os.environ.get("SLURM_JOB_ID") and (job := slurm.job(os.environ["SLURM_JOB_ID"])):
            return job.account
        return slurm.user_associations(getpass.getuser()).default_account

    # --- cost before scale --------------------------------------------------------------

    def cost_gpu_h(self, jobs: int) -> float:
        return jobs * self.gpus_per_job * self.walltime_min / 60

    def cost(self, jobs: int) -> float:
        """What `jobs` more jobs cost at their full walltime, in the site's unit."""
        if self.billing.by_gpu:
            return self.cost_gpu_h(jobs)
        part = slurm.partitions().get(self.partition)
        rate = self.billing.rate(part.billing_weights if part else "", cpus=self.cpus_per_job,
                                 memory_mb=self.memory_gb_per_job * 1024,
                                 gpus=self.gpus_per_job, gpu_type=self.gpu_type)
        return jobs * rate * self.walltime_min / 60

    def check_budget(self, target_jobs: int) -> None:
        """Say what a scale to `target_jobs` adds; refuse it if the project cannot pay."""
        new = target_jobs - len(self.worker_spec)
        if new <= 0:
            return
        amount = self.billing.amount
        try:
            cost = self.cost(new)
        except (slurm.SlurmError, ValueError) as e:  # ValueError: weights we cannot read
            print(f"Scaling up by {new} job(s); the cost could not be computed ({e}).")
            return
        what = (f"{new} job{'s' if new > 1 else ''} x {self.gpus_per_job} {self.gpu_type.upper()} "
                f"x {site_module.format_minutes(self.walltime_min)} = {amount(cost)}")
        try:
            left = self._remaining()
        except (AllocationsError, slurm.SlurmError, IndexError, KeyError) as e:
            print(f"Scaling up by {what}; the budget could not be checked ({e}).")
            return
        if left is not None and cost > left and not self.allow_over_budget:
            raise BudgetExceeded(
                f"Not scaled: {what}, but project {self.account} has {amount(left)} "
                "left. Ask for fewer jobs or less walltime, or pass allow_over_budget=True.")
        of = "no limit" if left is None else f"the {amount(left)} left"
        print(f"Scaling up by {what}, of {of} on project {self.account}.")

    def check_nodes(self, target_jobs: int) -> None:
        """Refuse a scale up that only nodes taking no jobs (drained, down, ...) could run."""
        if target_jobs <= len(self.worker_spec):
            return
        try:
            nodes = slurm.nodes()
        except slurm.SlurmError:
            return  # not known now: Slurm decides
        if stuck := only_unusable_nodes(nodes, self.partition, self.gpu_type, self.gpus_per_job):
            raise NodesUnavailable(f"Not scaled: every node that could run a job of "
                                   f"{self.gpus_per_job} {self.gpu_type.upper()} takes no jobs "
                                   f"now: {unusable_words(stuck)}.")

    def _remaining(self) -> float | None:
        """What the project has left in the site's unit: from the allocations service in a
        hub session, else from Slurm (one sshare, not the whole allocation view)."""
        return remaining(self.account, self.billing, self._budget_client)

    def scale(self, n=None, jobs=0, memory=None, cores=None, workers=None):
        """Scale to `jobs` jobs, or to `n` (= `workers`) GPU workers, after the budget check."""
        workers = workers if workers is not None else n
        if workers is not None:
            jobs = int(math.ceil(workers / self.gpus_per_job))
        if memory is None and cores is None:
            self.check_nodes(jobs)
            self.check_budget(jobs)
        return super().scale(jobs=jobs, memory=memory, cores=cores)

    def adapt(self, *args, minimum_jobs=None, maximum_jobs=None, **kwargs):
        """Adapt between limits; the largest must fit in the budget."""
        if maximum_jobs is None and kwargs.get("maximum") is not None:
            maximum_jobs = int(math.ceil(kwargs.pop("maximum") / self.gpus_per_job))
        if maximum_jobs is None:
            raise ValueError("adapt() needs maximum_jobs (or maximum workers): it is what the "
                             "budget is checked against.")
        self.check_budget(maximum_jobs)
        return super().adapt(*args, minimum_jobs=minimum_jobs, maximum_jobs=maximum_jobs,
                             **kwargs)

    # --- behind the hub -----------------------------------------------------------------

    @property
    def dashboard_link(self) -> str:
        """The dashboard through the hub (jupyter-server-proxy); it listens on the loopback."""
        port = self.scheduler_info.get("services", {}).get("dashboard")
        prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
        if prefix and port:
            return f"{prefix}proxy/{port}/status"
        return f"http://127.0.0.1:{port}/status" if port else super().dashboard_link


def _whole(value, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be a whole number from {lo} to {hi}, not {value!r}.")
    return value
