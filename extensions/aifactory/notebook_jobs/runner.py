"""Runs in a notebook job, as its person: one run (one array task) of the job's notebook with
papermill, its row's parameters injected, the output saved after every cell.

`python -P -m aifactory.notebook_jobs.runner FOLDER` is the batch shell itself (the script
execs it), so Slurm's USR1 a minute before the time limit and scancel's TERM reach it: the
run stops, and its notebook gets a first cell saying how and in which cell it ended. Each
run leaves `run-N.json` in the folder (state, times, the cell it stopped in), which the
job's list reads beside Slurm's answer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from . import rules
from .files import write_json



GRACE_S = 20  # from the first interrupt to killing the kernel


class Stop:
    """Slurm's USR1 (the time limit is near) or TERM (scancel): interrupt the kernel's cell
    (SIGINT to this process's children: the kernel) every second, so that papermill records
    the cell, saves and shuts the kernel down; a kernel still there after GRACE_S is killed,
    and papermill saves what it has. Nothing is raised into the code that runs meanwhile
    (a save being written stays whole)."""

    def __init__(self):
        self.how = ""
        self.ticks = 0

    def __call__(self, signum, frame):
        if signum != signal.SIGALRM and not self.how:
            self.how = "timeout" if signum == signal.SIGUSR1 else "cancelled"
        if not self.how:
            return
        self.ticks += 1
        kill = signal.SIGKILL if self.ticks > GRACE_S else signal.SIGINT
        # jupyter_client starts each kernel as a session leader: its whole process group
        # (a wrapper's kernel, what the cell started) gets the signal.
        for pid in _children(os.getpid()):
            try:
                os.killpg(pid, kill)
            except OSError:
                try:
                    os.kill(pid, kill)
                except OSError:
                    pass
        signal.alarm(1)


def _ignore_stops() -> None:
    for signum in (signal.SIGUSR1, signal.SIGTERM, signal.SIGALRM):
        signal.signal(signum, signal.SIG_IGN)
    signal.alarm(0)


def _children(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry))
    return found


def run(folder: Path, task: int, stop: "Stop") -> int:
    spec = json.loads((folder / "job.json").read_text())
    rows = spec["rows"]
    output = folder / rules.output_name(task, len(rows))
    record = folder / f"run-{task}.json"
    state = {"task": task, "state": "running", "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
             "node": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
             "started": time.time(), "parameters": rows[task]}
    write_json(record, state)
    failed = False
    km = None
    sockets = tempfile.mkdtemp(prefix="aifactory-kernel-")  # 0700: the kernel's sockets
    try:
        import papermill
        from jupyter_client.manager import AsyncKernelManager
        from ..kernels import EnvironmentKernelSpecManager
        kernel = (spec.get("kernel") or "python3")
        # The session's kernels (the user's environments, the modules' Python), with the
        # kernel's sockets as files of the person's own, not ports on the node.
        km = AsyncKernelManager(kernel_name=kernel, transport="ipc",
                                ip=os.path.join(sockets, "kernel"),
                                kernel_spec_manager=EnvironmentKernelSpecManager())
        # Given a kernel manager, nbclient leaves the kernel to its owner: this finally.
        papermill.execute_notebook(
            str(folder / spec["notebook"]), str(output), parameters=rows[task],
            kernel_name=kernel, cwd=str(folder), progress_bar=False, log_output=True,
            request_save_on_cell_execute=True, autosave_cell_every=10, km=km)
        _ignore_stops()
        stop.how = ""  # it ended by itself (a cell that caught the interrupt went on)
    except Exception as e:  # papermill's error for a failing cell, or a kernel that died
        failed = True
        text = str(e).strip()
        state["error"] = f"{type(e).__name__}: {text.splitlines()[-1] if text else ''}"
    finally:
        _ignore_stops()
        if km is not None and km.has_kernel:
            try:
                from jupyter_core.utils import run_sync
                run_sync(km.shutdown_kernel)(now=bool(stop.how))
            except Exception:
                pass  # it is gone already; the job's end takes what is left
        shutil.rmtree(sockets, ignore_errors=True)
    how = stop.how or ("failed" if failed else "")
    if stop.how:
        state.pop("error", None)  # the interrupt's, not the notebook's
    if how:
        try:
            _mark(output, folder / spec["notebook"], how, spec.get("walltime", ""), state)
        except Exception as e:  # the run's record below must still say how it ended
            print(f"aifactory: the stopped run's notebook could not be marked: {e}", flush=True)
    state.update(state=how or "completed", ended=time.time())
    write_json(record, state)
    print(f"aifactory: run {task} {state['state']}", flush=True)
    return 0 if not how else 1


def _mark(output: Path, notebook: Path, how: str, limit: str, state: dict) -> None:
    """The notebook as saved when the run stopped, with the sentence of how it ended."""
    import nbformat
    try:
        nb = json.loads(output.read_text())
    except (OSError, ValueError):  # stopped before papermill first saved
        nb = json.loads(notebook.read_text())
    if how == "failed" and rules.papermill_marked(nb):
        pass  # papermill says which cell failed
    else:
        rules.mark_stopped(rules.without_papermill_marks(nb), how, limit)
    where = rules.stopped_cell(nb)
    if where is not None:
        state["stopped_in_cell"] = where[1].get("execution_count") or where[0] + 1
    nbformat.write(nbformat.from_dict(nb), str(output))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m aifactory.notebook_jobs.runner FOLDER", file=sys.stderr)
        return 2
    task = int(os.environ.get("SLURM_ARRAY_TASK_ID") or 0)
    # From here a USR1 or TERM stops the run in order (the script ignores USR1 until now:
    # Slurm may send it early, and its default would end the job with no record).
    stop = Stop()
    for signum in (signal.SIGUSR1, signal.SIGTERM, signal.SIGALRM):
        signal.signal(signum, stop)
    return run(Path(argv[0]), task, stop)


if __name__ == "__main__":
    sys.exit(main())
