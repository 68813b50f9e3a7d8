"""Dask GPU clusters from a notebook, and torch DDP across them, on the live cluster."""

import json
import os
import pwd
import signal
import subprocess

from conftest import (DASK_SCHEME, NOTEBOOK_ENV, VENV_PYTHON, driver, lines, notebook_jobs, tagged,
                      wait_until)

from aifactory import slurm
from aifactory.dask import TLS_OFF_WORDS

def test_eight_gpu_workers_on_two_nodes_and_ddp_across_them(live_cluster):
    proc = driver("alice", "workers", env=NOTEBOOK_ENV)
    try:
        out = lines(proc, 7, timeout=600)
        assert proc.wait(120) == 0, proc.stderr.read()[-3000:]
    finally:
        proc.kill()
    printed = [line for line in out["printed"] if line != TLS_OFF_WORDS]
    assert "Scaling up by 2 jobs x 4 H100 x 00:10:00 = 1.33 GPU-hours, of the" in printed[0]
    workers = out["workers"]
    assert len(workers) == 8
    assert {w["node"] for w in workers} == {"gpu01", "gpu02"}
    pairs = {(w["node"], w["gpu"]) for w in workers}
    assert len(pairs) == 8 and all(w["gpu"] in "0123" and len(w["gpu"]) == 1 for w in workers)
    # The notebook job's SBATCH_PARTITION=cpu did not reach sbatch: the jobs are GPU jobs.
    assert all(not w["inherited"] for w in workers)
    # Each job spills into a folder of its own, alice's alone, with a name nobody could guess.
    for w in workers:
        assert w["scratch"].startswith("/tmp/aifactory-dask-"), w
        assert (w["scratch_mode"], w["scratch_uid"]) == ("0o700", pwd.getpwnam("alice").pw_uid)
        assert w["local_directory"].startswith(w["scratch"] + "/")
    assert len({w["scratch"] for w in workers}) == 2  # one per job
    assert len(out["jobs"]) == 2
    for job in out["jobs"]:
        assert (job["name"], job["partition"], job["gpus"], job["account"]) == (
            "dask-990001", "gpu", 4, "proj-climate")
    assert out["tag"].startswith("aifactory-dask:990001:")
    task = out["gpu_task"]
    assert task["gpu"] in "0123" and len(task["gpu"]) == 1

    ranks = out["ddp"]
    assert [r["rank"] for r in ranks] == list(range(8)) and {r["world"] for r in ranks} == {8}
    assert {r["node"] for r in ranks} == {"gpu01", "gpu02"}
    assert len({r["env"]["MASTER_ADDR"] for r in ranks}) == 1
    assert sorted(int(r["env"]["LOCAL_RANK"]) for r in ranks) == [0, 0, 1, 1, 2, 2, 3, 3]
    for r in ranks:
        assert r["losses"][-1] < r["losses"][0] / 4, r["losses"]
        assert r["params"] == ranks[0]["params"]  # DDP kept every replica the same
    assert out["closed"]
    wait_until(lambda: not tagged(out["tag"]), 90, what="the worker jobs to go")
    wait_until(lambda: not any(os.path.exists(w["scratch"]) for w in workers), 30,
               what="the jobs' scratch folders to be removed")


def test_a_killed_kernel_leaves_no_jobs_pending_or_running(live_cluster):
    proc = driver("alice", "hold", "3", env=NOTEBOOK_ENV)  # 3 x 4 GPUs: one must wait
    try:
        tag = lines(proc, 1)["tag"]
        wait_until(lambda: {j.state for j in tagged(tag)} == {"RUNNING", "PENDING"}, 60,
                   what="two running worker jobs and one pending")
    finally:  # the kernel dies at once: no atexit, no close()
        kernel = subprocess.run(["pgrep", "-u", "alice", "-f", "hold 3$"], capture_output=True,
                                text=True).stdout.split()
        for pid in kernel:
            os.kill(int(pid), signal.SIGKILL)
        proc.wait(30)
    wait_until(lambda: not tagged(tag), 90, what="the killed kernel's jobs to be cancelled")


def test_a_scale_over_the_budget_is_refused_and_submits_nothing(live_cluster):
    before = {j.job_id for j in slurm.jobs(user="bob")}
    proc = driver("bob", "budget")
    out = lines(proc, 1)
    proc.wait(60)
    assert "Not scaled: 1 job x 4 H100 x 01:00:00 = 4.00 GPU-hours" in out["refused"]
    assert "project proj-tiny has" in out["refused"]
    assert {j.job_id for j in slurm.jobs(user="bob")} == before


def test_stopping_the_session_cancels_its_dask_jobs(hub_client):
    alice = hub_client("alice")
    alice.start(profile="cpu")
    [session] = notebook_jobs("alice")
    # Inside the session's job, as a kernel of that session is.
    proc = driver("alice", "hold", "1",
                  prefix=("srun", f"--jobid={session.job_id}", "--overlap", "--ntasks=1"))
    try:
        tag = lines(proc, 1)["tag"]
        assert tag.startswith(f"aifactory-dask:{session.job_id}:")
        wait_until(lambda: tagged(tag), 30, what="the worker job")
        alice.stop()
        wait_until(lambda: not tagged(tag), 90, what="the session's Dask jobs to be cancelled")
    finally:
        proc.kill()


def test_a_failing_rank_stops_every_rank_and_the_error_names_it(live_cluster):
    proc = driver("alice", "fail", env=NOTEBOOK_ENV)
    try:
        out = lines(proc, 3, timeout=400)
        proc.wait(120)
    finally:
        proc.kill()
    assert out["error"].startswith(f"DDPError: rank 1 (on {DASK_SCHEME}://")
    assert "bad batch on rank 1" in out["error"] and "all 2 ranks were stopped" in out["error"]
    assert out["seconds"] < 60  # not the collective's 10-minute timeout
    assert out["after"]["gpu"] in "0123"


def test_the_dask_sidebar_in_jupyterlab_makes_gpu_clusters():
    out = subprocess.run([VENV_PYTHON, "-c", "import dask, json; "
                          "print(json.dumps(dask.config.get('labextension.factory')))"],
                         capture_output=True, text=True, check=True)
    factory = json.loads(out.stdout)
    assert (factory["module"], factory["class"]) == ("aifactory.dask", "GPUCluster")
