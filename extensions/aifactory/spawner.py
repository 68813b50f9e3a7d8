"""The hub's spawner: each notebook session is a Slurm job on a compute node.

Built on batchspawner's SlurmSpawner for its start/poll/stop life cycle, with three changes:

- Slurm is called through `aifactory.slurm` (argv lists as the user, no shell, no sudo), so
  no configurable command string is ever run by the root hub.
- The job script is our own, built from checked values (batchspawner's default drops the
  account and uses `--get-user-env=L`, which newer Slurm rejects).
- batchspawner's port callback (`POST /hub/api/batchspawner`) sets *any* spawner attribute the
  JSON body names; ours accepts only `{"port": <1..65535>}` from the starting server's own token.
"""

from __future__ import annotations

import json
import pwd
import re
import shlex

import batchspawner  # noqa: F401  (registers its handler, which we replace below)
from batchspawner.batchspawner import JobStatus
from jupyterhub import apihandlers
from jupyterhub.apihandlers import APIHandler
from tornado import web
from traitlets import Integer, Unicode, validate

from . import slurm

SLURM_TIME_RE = re.compile(r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MEMORY_RE = re.compile(r"^[1-9][0-9]{0,6}[KMGT]?$")


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


class SlurmSpawner(batchspawner.SlurmSpawner):
    """A notebook session as a Slurm job (minimal: one site-wide request)."""

    req_partition = Unicode("gpu", help="Slurm partition for notebook sessions.").tag(config=True)
    req_account = Unicode(
        "", help="Slurm account to charge; empty means the user's default account.").tag(config=True)
    req_runtime = Unicode("02:00:00", help="Walltime as [D-]HH:MM:SS.").tag(config=True)
    req_memory = Unicode("16G", help="Memory per session, e.g. 16G.").tag(config=True)
    req_nprocs = Unicode("4", help="CPUs per session.").tag(config=True)
    gpus = Integer(1, min=0, max=16, help="GPUs per session (gres gpu count).").tag(config=True)
    venv = Unicode("/opt/aifactory/venv",
                   help="The environment (readable by every user) the job runs from.").tag(config=True)

    @validate("req_partition", "req_account")
    def _check_name(self, proposal):
        value = proposal["value"]
        if value and not NAME_RE.match(value):
            raise ValueError(f"{proposal['trait'].name}: {value!r} is not a valid Slurm name")
        return value

    @validate("req_runtime")
    def _check_runtime(self, proposal):
        if not SLURM_TIME_RE.match(proposal["value"]):
            raise ValueError(f"req_runtime {proposal['value']!r} is not [D-]HH:MM:SS")
        return proposal["value"]

    @validate("req_memory")
    def _check_memory(self, proposal):
        if not MEMORY_RE.match(proposal["value"]):
            raise ValueError(f"req_memory {proposal['value']!r} is not like 16G")
        return proposal["value"]

    @validate("req_nprocs")
    def _check_nprocs(self, proposal):
        if not proposal["value"].isdigit() or not 1 <= int(proposal["value"]) <= 1024:
            raise ValueError(f"req_nprocs {proposal['value']!r} is not a CPU count")
        return proposal["value"]

    def job_script(self) -> str:
        """The batch script; every value in it was checked by a validator above."""
        home = pwd.getpwnam(self.user.name).pw_dir
        lines = [
            "#!/bin/bash",
            f"#SBATCH --job-name=jupyterhub-{self.user.name}",
            f"#SBATCH --partition={self.req_partition}",
            f"#SBATCH --time={self.req_runtime}",
            f"#SBATCH --cpus-per-task={self.req_nprocs}",
            f"#SBATCH --mem={self.req_memory}",
            f"#SBATCH --chdir={home}",
            f"#SBATCH --output={home}/.jupyterhub-slurm-%j.log",
            "#SBATCH --export=ALL",
        ]
        if self.gpus:
            lines.append(f"#SBATCH --gres=gpu:{self.gpus}")
        if self.req_account:
            lines.append(f"#SBATCH --account={self.req_account}")
        command = [self.batchspawner_singleuser_cmd, *self.cmd, *self.get_args()]
        lines += [
            "set -euo pipefail",
            f"export PATH={shlex.quote(self.venv)}/bin:$PATH",
            'echo "notebook session on $(hostname -s) / $SLURMD_NODENAME, GPUs: ${CUDA_VISIBLE_DEVICES:-none}"',
            "exec " + " ".join(shlex.quote(part) for part in command),
        ]
        return "\n".join(lines) + "\n"

    async def submit_batch_script(self):
        env = self.get_env()
        env["PATH"] = f"{self.venv}/bin:/usr/local/bin:/usr/bin:/bin"
        self.job_id = await slurm.submit_async(self.job_script(), user=self.user.name, env=env)
        self.log.info("Submitted notebook job %s for %s", self.job_id, self.user.name)
        return self.job_id

    async def query_job_status(self):
        """Map Slurm's view to batchspawner's. Unreachable Slurm is UNKNOWN, not gone."""
        if not self.job_id:
            self.job_status = ""
            return JobStatus.NOTFOUND
        try:
            job = await slurm.job_async(self.job_id)
        except slurm.SlurmUnreachable as e:
            self.log.warning("Slurm did not answer about job %s: %s", self.job_id, e)
            return JobStatus.UNKNOWN
        except slurm.SlurmError as e:
            self.log.warning("squeue failed for job %s: %s", self.job_id, e)
            return JobStatus.UNKNOWN
        if job is None:
            self.job_status = ""
            return JobStatus.NOTFOUND
        self.job_status = f"{job.state} {job.nodes}".strip()
        if job.state in ("RUNNING", "COMPLETING") and job.nodes:
            return JobStatus.RUNNING
        if job.state in ("PENDING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED"):
            return JobStatus.PENDING
        return JobStatus.NOTFOUND

    async def cancel_batch_job(self):
        if self.job_id:
            self.log.info("Cancelling notebook job %s", self.job_id)
            await slurm.cancel_async(self.job_id)
