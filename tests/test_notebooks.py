"""The teaching notebooks (notebooks/NN-*.ipynb) run top to bottom, as a session runs them.

Each notebook is executed with nbclient by a demo user (alice, project proj-climate) inside a
real Slurm job on a GPU node, with the environment a session's kernel has there. The test
checks that no cell failed, a few things a reader would look at in the output, and that the
notebook left no Slurm job behind. The executed copies are kept in
tests/artifacts/notebooks/, with how long each took (timings.json).

05 (running a workshop) is for instructors: it runs as carol, who teaches DL101, in a CPU
job charged to the course, with a hub token of hers as a session has one, and starts and stops
a participant's session through the hub.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import nbformat
import pytest
from conftest import ARTIFACTS, DASK_SCHEME

from aifactory import slurm

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
RUNNER = Path(__file__).resolve().parent / "notebook_runner.py"
OUT = ARTIFACTS / "notebooks"
PYTHON = "/opt/aifactory/venv/bin/python"
USER, ACCOUNT = "alice", "proj-climate"
NOT_HERE = ("05-",)  # tested elsewhere (tests of the course/workshop work)
LIMIT_S = 180  # each notebook should run in well under 3 minutes
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the colours of IPython's tracebacks


def notebooks() -> list[Path]:
    return sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]-*.ipynb") if not p.name.startswith(NOT_HERE))


GPU_SESSION = ("--partition=gpu", "--gres=gpu:h100:1")
# Where notebooks/README.md says each runs: 03 and 04 are DL101's course material, so they run
# as a participant's course session does (the course's account, in its reservation, within
# its job_submit.lua limits); 01 and 02 in a project member's session.
COURSE_SESSION = {"user_name": "student1", "account": "course-dl101",
                  "where": GPU_SESSION + ("--reservation=dl101",)}
IN_COURSE = ("03", "04")


def _session_argv(job_name: str, work: Path, home: str, *command: str, user: str = USER,
                  account: str = ACCOUNT, where: tuple = GPU_SESSION, env: tuple = ()) -> list[str]:
    """`command` as `user` in a fresh job (default: 1 GPU on the gpu partition, like a
    "1x H100" session); `env`: more NAME=value for the kernel, as a hub session has them."""
    return ["runuser", "-u", user, "--", "env", "-i", f"HOME={home}",
            "PATH=/opt/aifactory/venv/bin:/usr/bin:/bin", "LANG=C.UTF-8", *env,
            "srun", f"--job-name={job_name}", f"--account={account}", *where,
            "--cpus-per-task=4", "--mem=8G", "--time=00:15:00",
            f"--chdir={work}", "--ntasks=1", *command]


def execute(notebook: Path, job_name: str, *, user_name: str = USER, **session) -> dict:
    """Run `notebook` as `user_name` in a Slurm job; returns the runner's report and the
    executed copy's path."""
    user = pwd.getpwnam(user_name)
    work = Path(tempfile.mkdtemp(prefix=f"aif-notebook-{notebook.stem[:2]}-", dir="/tmp"))
    report: dict = {}
    try:
        shutil.copy(notebook, work / notebook.name)
        shutil.copy(RUNNER, work / RUNNER.name)
        for p in (work, *work.iterdir()):
            os.chown(p, user.pw_uid, user.pw_gid)
        executed = work / f"executed-{notebook.name}"
        argv = _session_argv(job_name, work, user.pw_dir, PYTHON, str(work / RUNNER.name),
                             str(work / notebook.name), str(executed), user=user_name, **session)
        began = time.monotonic()
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, cwd=work, timeout=540)
            stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            stdout, stderr, rc = (e.stdout or b"").decode(), (e.stderr or b"").decode(), None
        stderr = ANSI.sub("", stderr)
        for line in stdout.splitlines():
            if line.startswith("{"):
                report.update(json.loads(line))
        if report.get("error"):
            report["error"] = ANSI.sub("", report["error"])
        report.update(rc=rc, stderr=stderr[-4000:], stdout=stdout[-2000:],
                      wall_s=round(time.monotonic() - began, 1))
        OUT.mkdir(parents=True, exist_ok=True)
        if executed.exists():
            report["executed"] = str(OUT / notebook.name)
            shutil.copy(executed, report["executed"])
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _record_timing(notebook: Path, report: dict) -> None:
    path = OUT / "timings.json"
    try:
        timings = json.loads(path.read_text())
    except (OSError, ValueError):
        timings = {}
    timings[notebook.name] = {"notebook_s": report.get("seconds"), "with_job_s": report.get("wall_s"),
                              "job": report.get("job_id"), "node": report.get("node")}
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n")


def _ours(job: slurm.Job, job_name: str, job_id: str | None) -> bool:
    if job.name == job_name:
        return True
    return bool(job_id) and (job.name == f"dask-{job_id}"
                             or job.comment.startswith(f"{slurm.DASK_TAG}:{job_id}:"))


def leave_no_jobs(job_name: str, job_id: str | None, wait_s: float = 60,
                  user: str = USER) -> list[str]:
    """Wait for the notebook's job and its Dask jobs to end; cancel what is still there.
    Returns the jobs that had to be cancelled (or would not go), in words."""
    deadline = time.monotonic() + wait_s
    while True:
        jobs = slurm.jobs(user=user)
        job_id = job_id or next((j.job_id for j in jobs if j.name == job_name), None)
        left = [j for j in jobs if j.alive and _ours(j, job_name, job_id)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(1)
    for job in left:
        if not job.completing:
            try:
                slurm.cancel(job.job_id)
            except slurm.SlurmError:
                pass
    return [f"{j.job_id} ({j.name}, {j.state})" for j in left]


def outputs_text(nb) -> str:
    """What a reader sees under the cells, as text."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out["output_type"] == "stream":
                parts.append(out["text"])
            elif out["output_type"] in ("execute_result", "display_data"):
                parts.append(out.get("data", {}).get("text/plain", ""))
            elif out["output_type"] == "error":
                parts.append("\n".join(out["traceback"]))
    return "\n".join(parts)


# --- what a reader would check in each notebook's output ---------------------------------

def check_getting_started(text: str, report: dict) -> None:
    job_id, node = report["job_id"], report["node"]
    assert f"Slurm job:  {job_id}\n" in text
    assert f"node:       {node}\n" in text and node.startswith("gpu")
    assert f"project:    {ACCOUNT}" in text or f"project {ACCOUNT}" in text
    assert "Slurm gave this job 1 GPU(s)" in text
    assert "all checks passed" in text
    # The Session panel (its text form) names this job and the time left.
    assert re.search(rf"^job: {job_id}$", text, re.M) and "time left: 0:1" in text
    assert f"job {job_id} on {node}: project {ACCOUNT}, 1 GPU(s)" in text
    # A first notebook job: its preview, then it runs on the CPU node with its parameters.
    assert "Slurm would start it at" in text, text
    assert re.search(r"^notebook job first-notebook-job-\S+: completed, in \S+aifactory-jobs/", text,
                     re.M), text
    assert "hi from cpu01\nhi from cpu01\n" in text


def check_allocation(text: str, report: dict) -> None:
    assert re.search(rf"^{ACCOUNT} \(you are \w+\): granted [\d,.]+, used [\d,.]+, held "
                     r"[\d,.]+, remaining [\d,.]+ GPU-hours$", text, re.M), text
    for panel in ("Allocation", "Jobs", "Cluster", "Session"):  # the dashboard's tabs
        assert re.search(rf"^{panel}$", text, re.M), panel
    assert "pending and running:" in text and re.search(r"^gpu h100: \d+ free of \d+", text, re.M)
    assert re.search(r"notebook with 4 GPUs \(a whole node\), 8 h\s+4\s+8\s+32\.00", text)
    assert re.search(rf"^job {report['job_id']} \(.*, 1 GPU\(s\), project {ACCOUNT}\): ",
                     text, re.M)
    assert re.search(rf"^{ACCOUNT}: period ends \d{{4}}-\d\d-\d\d;", text, re.M)


def check_dask(text: str, report: dict) -> None:
    assert "Scaling up by 2 jobs x 1 H100 x 00:10:00 = 0.33 GPU-hours, of the" in text
    assert "2 workers ready" in text
    workers = re.findall(rf"^worker {DASK_SCHEME}://\S+ on (gpu\d\d), GPU (\d)$", text, re.M)
    assert len(workers) == 2 and len(set(workers)) == 2, workers
    tasks = re.findall(r"^task (\d) on (gpu\d\d), CUDA_VISIBLE_DEVICES=(\d), computed on \w+: "
                       r"499500$", text, re.M)
    assert sorted(t[0] for t in tasks) == ["0", "1", "2", "3"], text
    assert {t[1:] for t in tasks} <= set(workers)  # on the workers' own GPUs
    assert "their average 1.000" in text
    assert "Dask worker jobs left: 0" in text


def check_torch(text: str, report: dict) -> None:
    assert "Scaling up by 2 jobs x 1 H100 x 00:10:00 = 0.33 GPU-hours" in text
    ranks = re.findall(r"^rank (\d) of 2 on (gpu\d\d) \(GPU (\d), (\w+)\): loss ([\d.]+) at the "
                       r"start, ([\d.]+) at the end$", text, re.M)
    assert [r[0] for r in ranks] == ["0", "1"], text
    assert len({r[1:3] for r in ranks}) == 2  # each rank its own GPU
    for r in ranks:
        assert float(r[5]) < float(r[4]) / 4, r
    assert "the loss fell on every rank: True" in text
    assert "all 2 replicas have the same weights: True" in text


CHECKS = {"01": check_getting_started, "02": check_allocation, "03": check_dask,
          "04": check_torch}


def test_the_notebooks_are_committed_clean():
    """Outputs cleared, the python3 kernel: what participants get as course material."""
    assert {p.name[:2] for p in notebooks()} >= set(CHECKS)
    for path in notebooks():
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == "python3", path.name
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, (path.name, cell.source[:60])


def session_env(token: str) -> tuple:
    """What a hub session's kernel has to reach the allocations service as its person."""
    return ("AIFACTORY_ALLOCATIONS_URL=http://10.77.0.1:8090/services/allocations/",
            "JUPYTERHUB_API_URL=https://10.77.0.1:8081/hub/api", f"JUPYTERHUB_API_TOKEN={token}")


@pytest.mark.parametrize("notebook", notebooks(), ids=lambda p: p.stem)
def test_notebook_runs_as_a_session_would(live_cluster, hub_client, notebook):
    job_name = f"notebook-test-{notebook.stem[:2]}-{uuid.uuid4().hex[:6]}"
    session = {}
    if notebook.name[:2] in IN_COURSE:
        # A participant sees the course budget's totals only through the service, as in
        # a session (Slurm's PrivateData=usage keeps them from plain members).
        student = hub_client(COURSE_SESSION["user_name"])
        session = {**COURSE_SESSION, "env": session_env(student.token())}
    report: dict = {}
    try:
        report = execute(notebook, job_name, **session)
        _record_timing(notebook, report)
        assert report.get("error") is None and report["rc"] == 0, (
            f"{notebook.name} failed (exit {report['rc']}; executed copy: "
            f"{report.get('executed')}):\n{report.get('error') or ''}\n{report['stderr']}")
        text = outputs_text(nbformat.read(report["executed"], as_version=4))
        if notebook.name[:2] in CHECKS:
            CHECKS[notebook.name[:2]](text, report)
        assert report["seconds"] < LIMIT_S, f"{notebook.name} took {report['seconds']} s"
        if session:  # its workers ran in the course's reservation, on its budget
            workers = [j for j in slurm.accounting_jobs(user=session["user_name"])
                       if j.name == f"dask-{report['job_id']}"]
            assert workers and all(j.account == "course-dl101" and j.nodes == "gpu03"
                                   for j in workers), workers
    finally:
        left = leave_no_jobs(job_name, report.get("job_id"), user=session.get("user_name", USER))
    assert not left, f"{notebook.name} left Slurm jobs behind (cancelled now): {', '.join(left)}"


def test_the_workshop_notebook_runs_as_an_instructors_session_would(hub_client):
    """05 as carol: the course view, a participant's session started and stopped by her."""
    notebook = next(NOTEBOOKS.glob("05-*.ipynb"))
    carol = hub_client("carol")
    for student in ("student1", "student2"):
        hub_client(student)  # their sessions are stopped afterwards, whatever happens
    env = session_env(carol.token())
    job_name = f"notebook-test-05-{uuid.uuid4().hex[:6]}"
    report: dict = {}
    try:
        report = execute(notebook, job_name, user_name="carol", account="course-dl101",
                         where=("--partition=cpu",), env=env)
        _record_timing(notebook, report)
        assert report.get("error") is None and report["rc"] == 0, (
            f"{notebook.name} failed (exit {report['rc']}):\n{report.get('error') or ''}\n"
            f"{report['stderr']}")
        text = outputs_text(nbformat.read(report["executed"], as_version=4))
        assert "dl101: DL101: deep learning on GPUs (instructor)" in text
        assert re.search(r"^  participants: .*\d+ ", text, re.M)
        started = re.search(r"^started (student\d): running on (gpu\d\d)$", text, re.M)
        assert started and started.group(2) == "gpu03", text[-2000:]
        assert f"stopped {started.group(1)}: stopped" in text
        assert "/hub/spawn?opt-profile=course-dl101" in text
        assert report["seconds"] < LIMIT_S
    finally:
        left = leave_no_jobs(job_name, report.get("job_id"), user="carol")
    assert not left, f"{notebook.name} left Slurm jobs behind: {', '.join(left)}"
