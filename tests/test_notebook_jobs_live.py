"""Notebook jobs, live: alice runs notebooks as Slurm batch jobs and arrays from her session's
server API (what JupyterLab calls) and from a login-node terminal; each run executes with
papermill as her, on the chosen GPUs, and its notebook comes back in her job's folder. A run
stopped by its time limit or by her comes back with the cells it reached. dave gets nothing of
hers through any path."""

from __future__ import annotations

import json
import pwd
import stat
import subprocess
from pathlib import Path

import pytest
import requests

from aifactory import slurm
from conftest import SERVICE, HubClient, SessionAPI, as_user, cli, wait_until, write_notebook

# A login node's terminal: the site description where the install put it (not the checkout's
# that the test run's own environment names).
LOGIN_ENV = {"AIFACTORY_SITE": "/etc/aifactory/hub_config/site.yaml"}
LOGIN = ["env", *(f"{k}={v}" for k, v in LOGIN_ENV.items())]
AIFACTORY = "/opt/aifactory/venv/bin/aifactory"
@pytest.fixture(scope="module")
def alice(live_cluster, passwords):
    client = HubClient("alice")
    assert client.login(passwords["alice"]).status_code == 302
    client.start(profile="cpu")
    yield client, SessionAPI("alice", client.token())
    client.stop()


@pytest.fixture(scope="module")
def slow_run(alice):
    """A run whose time limit is shorter than its notebook, submitted first (it takes its
    minute while the others run)."""
    _, api = alice
    path = write_notebook("alice", "slow.ipynb")
    r = api.call("POST", json={"notebook": path, "parameters": {"seconds": 600},
                               "settings": {"profile": "cpu", "walltime": "00:03:00"}})
    assert r.status_code == 201, r.text
    return r.json()


def outputs_of(notebook: Path) -> str:
    nb = json.loads(notebook.read_text())
    return "".join(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
                   for c in nb["cells"] for o in c.get("outputs", []))


def test_preview_shows_cost_start_and_script_and_submits_nothing(alice):
    _, api = alice
    path = write_notebook("alice", "train.ipynb")
    before = [j.job_id for j in slurm.jobs(user="alice")]
    r = api.call("POST", "preview", json={"notebook": path, "parameters": {"tag": "x$(id)"},
                                          "settings": {"profile": "h100-1",
                                                       "walltime": "01:00:00"}})
    assert r.status_code == 200, r.text
    preview = r.json()
    assert preview["cost"] == pytest.approx(1.0) and preview["cost_text"] == \
        "1 GPU × 1 h = 1 GPU-hours"
    assert preview["remaining"] > 0
    assert preview["start"]["partition"] == "gpu" and preview["start_text"].startswith(
        "Slurm would start it at ")
    assert "#SBATCH --gres=gpu:h100:1" in preview["script"]
    assert "x$(id)" not in preview["script"]  # a value never reaches the script
    assert [j.job_id for j in slurm.jobs(user="alice")] == before


def test_a_notebook_job_runs_with_its_parameter_on_its_gpu_and_comes_back(alice, slow_run):
    _, api = alice
    path = write_notebook("alice", "train.ipynb")
    body = {"notebook": path, "parameters": {"tag": "from-the-api-7", "lr": "0.5"},
            "settings": {"profile": "h100-1", "walltime": "00:10:00"}}
    preview = api.call("POST", "preview", json=body).json()
    r = api.call("POST", json=body)
    assert r.status_code == 201, r.text
    submitted = r.json()
    job = api.wait(submitted["id"])
    assert job["state"] == "COMPLETED", job
    folder = Path(job["folder"])
    assert folder.parent == Path("/home/alice/aifactory-jobs")
    out = outputs_of(folder / "output.ipynb")
    assert "tag=from-the-api-7 lr=0.5 gpus=0 user=alice" in out and "the end" in out
    # the folder and what is in it are alice's alone
    for p in [folder.parent, folder, *folder.iterdir()]:
        st = p.stat()
        assert st.st_uid == pwd.getpwnam("alice").pw_uid
        assert not st.st_mode & (stat.S_IRWXG | stat.S_IRWXO), f"{p} is {oct(st.st_mode)}"
    # Slurm's record: tagged, on a GPU node, charged to her project; the cost shown before is
    # what Slurm charges a job that runs its whole time limit (GPUs × time limit)
    # this job's record (a job id of an earlier incarnation of the cluster may be there too)
    record = wait_until(lambda: next((j for j in slurm.accounting_jobs(
        job_ids=[submitted["slurm_job_id"]]) if j.name == "nb-train" and j.end_time
        and j.end_time >= submitted["created"]), None), 60, what="sacct")
    assert record.account == "proj-climate" and record.gpus == 1 and record.user == "alice"
    assert record.nodes.startswith("gpu") and record.time_limit_min == 10, record
    charged_at_full_time = record.gpus * record.time_limit_min / 60
    assert preview["cost"] == pytest.approx(charged_at_full_time, rel=0.01)


def test_an_array_of_three_rows_gives_three_notebooks(alice, slow_run):
    _, api = alice
    path = write_notebook("alice", "grid.ipynb")
    rows = [{"tag": "row-a", "lr": 0.1}, {"tag": "row-b", "lr": 0.2}, {"tag": "row-c", "lr": 0.3}]
    r = api.call("POST", json={"notebook": path, "rows": rows, "at_once": 2,
                               "settings": {"profile": "cpu", "walltime": "00:10:00"}})
    assert r.status_code == 201, r.text
    array_id = r.json()["slurm_job_id"]
    listed = next(j for j in slurm.jobs(user="alice")
                  if j.job_id == array_id or j.array_job_id == array_id)
    assert listed.comment == f"aifactory-notebook:{r.json()['id']}"
    job = api.wait(r.json()["id"])
    assert job["state"] == "COMPLETED" and [run["state"] for run in job["runs"]] == ["COMPLETED"] * 3
    for i, row in enumerate(rows):
        out = outputs_of(Path(job["folder"]) / f"output-{i}.ipynb")
        assert f"tag={row['tag']} lr={row['lr']}" in out
    # one array in Slurm's accounting, its three tasks under the array's id
    tasks = wait_until(lambda: (t := [j for j in slurm.accounting_jobs(job_ids=[array_id])
                                      if j.array_job_id == array_id]) and len(t) == 3 and t,
                       60, what="the array's three tasks in sacct")
    assert sorted(t.array_task_id for t in tasks) == [0, 1, 2]


def test_a_run_stopped_by_its_time_limit_returns_the_cells_it_reached(alice, slow_run):
    _, api = alice
    job = api.wait(slow_run["id"], timeout=300)
    assert job["state"] == "TIMEOUT", job
    nb = json.loads((Path(job["folder"]) / "output.ipynb").read_text())
    said = "".join(nb["cells"][0]["source"])
    assert said.startswith("**This run was stopped by its time limit (00:03:00) in cell [")
    stopped = job["runs"][0]["stopped_in_cell"]
    assert f"in cell [{stopped}]" in said
    slow = next(c for c in nb["cells"] if c.get("execution_count") == stopped)
    assert "seconds" in "".join(slow["source"]) and "tick 3" in outputs_of_cell(slow)
    assert not any("the end" in outputs_of_cell(c) for c in nb["cells"])


def outputs_of_cell(cell: dict) -> str:
    return "".join(o["text"] if isinstance(o["text"], str) else "".join(o["text"])
                   for o in cell.get("outputs", []) if "text" in o)


def test_stop_works_while_running_and_while_pending(alice):
    _, api = alice
    path = write_notebook("alice", "stopme.ipynb")
    r = api.call("POST", json={"notebook": path, "rows": [{"seconds": 300}] * 3, "at_once": 1,
                               "settings": {"profile": "cpu", "walltime": "00:10:00"}})
    assert r.status_code == 201, r.text
    submitted = r.json()
    running = api.wait(submitted["id"], done=lambda j: j["runs"][0]["state"] == "RUNNING"
                       and (Path(j["folder"]) / "output-0.ipynb").exists()
                       and "tick 1" in outputs_of(Path(j["folder"]) / "output-0.ipynb"),
                       timeout=120)
    assert [run["state"] for run in running["runs"][1:]] == ["PENDING", "PENDING"]
    r = api.call("DELETE", submitted["id"])
    assert r.status_code == 200 and r.json()["stopped"], r.text
    job = api.wait(submitted["id"], done=lambda j: not j["active"] and j["runs"][0]["state"]
                   == "CANCELLED", timeout=90)
    nb = json.loads((Path(job["folder"]) / "output-0.ipynb").read_text())
    assert "".join(nb["cells"][0]["source"]).startswith("**This run was cancelled in cell [")
    array_id = submitted["slurm_job_id"]
    assert not [j for j in slurm.jobs(user="alice") if j.alive and
                (j.job_id == array_id or j.array_job_id == array_id)]
    assert not (Path(job["folder"]) / "output-1.ipynb").exists()  # the pending runs never ran
    assert [run["state"] for run in job["runs"][1:]] == ["CANCELLED", "CANCELLED"]


@pytest.mark.parametrize("body, words", [
    ({"parameters": {"learning_rate": 1}}, "declares no parameter 'learning_rate'; it declares "
                                           "tag, lr, seconds"),
    ({"parameters": {"seconds": "soon"}}, "parameter 'seconds' is a whole number"),
    ({"parameters": {"seconds": 10 ** 400}}, "parameter 'seconds' is a whole number"),
    ({"settings": {"profile": "cpu", "walltime": "00:02:00"}}, "a time limit of at least "
                                                               "00:03:00"),
    ({"rows": [{"lr": 0.1}] * 10000}, "table of 10000 rows is over this cluster's limit of "
                                      "1001 runs"),
    ({"settings": {"profile": "course-dl101"}}, "There is no profile 'course-dl101'"),
    ({"settings": {"profile": "cpu", "walltime": "99:00:00"}}, "Time 99:00:00 is longer than "
                                                               "the 08:00:00"),
    ({"settings": {"profile": "cpu", "account": "course-ml202"}}, "You cannot charge account "
                                                                  "'course-ml202'"),
    ({"settings": {"profile": "cpu", "partition": "gpu;id"}}, "use only letters, digits"),
    ({"parameters": {"lr": 1}, "rows": [{"lr": 2}]}, "parameters or a table of runs, not both"),
    ({"notebook": "../../etc/passwd"}, "is not a notebook"),
    ({"notebook": "missing.ipynb"}, "There is no notebook missing.ipynb"),
    ({"command": "id"}, "Unknown field 'command'"),
])
def test_bad_input_is_refused_with_a_sentence_and_nothing_submitted(alice, body, words):
    _, api = alice
    path = write_notebook("alice", "train.ipynb")
    before_jobs = [j.job_id for j in slurm.jobs(user="alice")]
    folder = Path("/home/alice/aifactory-jobs")
    before = sorted(folder.iterdir()) if folder.exists() else []
    full = {"notebook": path, "settings": {"profile": "cpu"}, **body}
    for endpoint in ("preview", ""):
        r = api.call("POST", endpoint, json=full)
        assert r.status_code == 400, r.text
        assert words in r.json()["error"], r.json()["error"]
    assert [j.job_id for j in slurm.jobs(user="alice")] == before_jobs
    assert (sorted(folder.iterdir()) if folder.exists() else []) == before


def test_the_cli_lists_and_runs_the_same_jobs(alice):
    _, api = alice
    listed = json.loads(cli("alice", "notebook", "list", "--json", env=LOGIN_ENV))
    by_api = api.call("GET").json()
    assert [j["id"] for j in listed["jobs"]] == [j["id"] for j in by_api["jobs"]]
    assert [j["state"] for j in listed["jobs"]] == [j["state"] for j in by_api["jobs"]]
    path = write_notebook("alice", "cli.ipynb")
    out = subprocess.run(["runuser", "-u", "alice", "--", *LOGIN, AIFACTORY,
                          "notebook", "run", path, "-p", "tag=from-the-cli", "--profile", "cpu",
                          "--time", "00:05:00", "--json"], capture_output=True, text=True,
                         cwd="/tmp", timeout=120)
    assert out.returncode == 0, out.stderr
    job = api.wait(json.loads(out.stdout)["id"])
    assert "tag=from-the-cli" in outputs_of(Path(job["folder"]) / "output.ipynb")
    bad = subprocess.run(["runuser", "-u", "alice", "--", *LOGIN, AIFACTORY,
                          "notebook", "run", path, "-p", "tag", "--profile", "cpu"],
                         capture_output=True, text=True, cwd="/tmp", timeout=60)
    assert bad.returncode == 1 and "-p tag: write NAME=VALUE." in bad.stderr


def test_dave_gets_nothing_of_alices_notebook_jobs(alice, passwords):
    client, api = alice
    path = write_notebook("alice", "secret.ipynb")
    r = api.call("POST", json={"notebook": path, "parameters": {"seconds": 120},
                               "settings": {"profile": "cpu", "walltime": "00:05:00"}})
    assert r.status_code == 201, r.text
    mine = r.json()
    folder = Path(mine["folder"])
    api.wait(mine["id"], done=lambda j: j["runs"][0]["state"] == "RUNNING", timeout=60)
    dave = HubClient("dave")
    assert dave.login(passwords["dave"]).status_code == 302
    token = dave.token()
    # her session's API, with his own token
    for method, where in (("GET", ""), ("GET", mine["id"]), ("DELETE", mine["id"]),
                          ("POST", "preview")):
        r = requests.request(method, f"{api.base}/{where}".rstrip("/"), timeout=30,
                             headers={"Authorization": f"token {token}"},
                             json={"notebook": path}, allow_redirects=False)
        assert r.status_code in (302, 403), f"{method} {where}: {r.status_code}"
    # the service lists only his own jobs, and will not cancel hers
    service = requests.Session()
    service.headers["Authorization"] = f"token {token}"
    jobs = service.get(f"{SERVICE}api/jobs", timeout=30).json()
    assert mine["slurm_job_id"] not in [j["job_id"] for j in jobs["active"] + jobs["recent"]]
    assert service.delete(f"{SERVICE}api/jobs/{mine['slurm_job_id']}",
                          timeout=30).status_code in (403, 404)
    # Slurm: not in his squeue (PrivateData), and scancel refuses
    assert mine["slurm_job_id"] not in as_user("dave", "squeue", "-h", "-o", "%i")
    cancel = subprocess.run(["runuser", "-u", "dave", "--", "scancel", mine["slurm_job_id"]],
                            capture_output=True, text=True, cwd="/tmp")
    assert cancel.returncode != 0, cancel.stdout
    # the file system: her folder, its notebooks and records
    for target in (folder, folder / "job.json", folder / "secret.ipynb", folder / "run-0.json"):
        read = subprocess.run(["runuser", "-u", "dave", "--", "cat" if target.suffix else "ls",
                               str(target)], capture_output=True, text=True, cwd="/tmp")
        assert read.returncode != 0 and "Permission denied" in read.stderr, target
    # dave's own CLI knows no such job, and his list is his own
    theirs = subprocess.run(["runuser", "-u", "dave", "--", *LOGIN, AIFACTORY,
                             "notebook", "stop", mine["id"]], capture_output=True, text=True,
                            cwd="/tmp")
    assert theirs.returncode == 1 and f"You have no notebook job {mine['id']}" in theirs.stderr
    job = api.job(mine["id"])
    assert job["runs"][0]["state"] == "RUNNING"  # untouched by all of the above
    api.call("DELETE", mine["id"])


def test_the_service_calls_them_notebook_jobs(alice):
    client, api = alice
    token = client.token()
    path = write_notebook("alice", "kind.ipynb")
    r = api.call("POST", json={"notebook": path, "parameters": {"seconds": 60},
                               "settings": {"profile": "cpu", "walltime": "00:05:00"}})
    submitted = r.json()
    found = wait_until(lambda: next((j for j in requests.get(
        f"{SERVICE}api/jobs", headers={"Authorization": f"token {token}"}, timeout=30)
        .json()["active"] if j["job_id"] == submitted["slurm_job_id"]), None), 30,
        what="the job in the service's answer")
    assert found["kind"] == "notebook job" and found["name"] == "nb-kind"
    api.call("DELETE", submitted["id"])


def test_a_member_who_cannot_see_the_projects_totals_gets_a_note_not_a_refusal(live_cluster):
    """bob on a login node: Slurm shows proj-climate's totals to its coordinator only, so
    the budget cannot be checked here; the preview says so and Slurm still enforces it."""
    path = write_notebook("bob", "member.ipynb")
    preview = json.loads(cli("bob", "notebook", "run", path, "--profile", "cpu", "--preview",
                             "--json", env=LOGIN_ENV))
    assert preview["remaining"] is None
    assert "only to its coordinators" in preview["budget_note"], preview["budget_note"]
    assert preview["start_text"].startswith("Slurm would start it at ")
