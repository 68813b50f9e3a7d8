"""The spawner on the live hub and cluster: profiles, refusals, waiting, and faults."""

import json
import re
import subprocess
import time
import uuid
from pathlib import Path

import requests
import websocket
import yaml
from conftest import (DEMO_CA, HUB, HubClient, aifactory, hub_db, notebook_jobs,
                      progress_messages, sacct_record, user_url, wait_until)

from aifactory import slurm
from aifactory.cluster import services


def submitted_jobs() -> int:
    return slurm.rpc_counts().get("REQUEST_SUBMIT_BATCH_JOB", 0)


def test_every_profile_lands_where_it_says(hub_client):
    expected = {  # user: (profile, partition, gpus, account, reservation, nodes)
        "alice": ("h100-1", "gpu", 1, "proj-climate", "", {"gpu01", "gpu02"}),
        "bob": ("h100-4", "gpu", 4, "proj-climate", "", {"gpu01", "gpu02"}),
        # A course account pays no GPUs outside its course profile, but a CPU session is free.
        "carol": ("cpu", "cpu", 0, "course-dl101", "", {"cpu01"}),
        "student1": ("course-dl101", "gpu", 1, "course-dl101", "dl101", {"gpu03"}),
    }
    clients = {user: hub_client(user) for user in expected}
    for user, (profile, *_rest) in expected.items():
        assert clients[user].submit_form(profile=profile).status_code == 302
    for user, (profile, partition, gpus, account, reservation, nodes) in expected.items():
        wait_until(lambda: clients[user].server().get("ready"), 120, what=f"{user}'s session")
        [job] = notebook_jobs(user)
        assert (job.partition, job.gpus, job.account, job.reservation) == (
            partition, gpus, account, reservation), job
        assert job.nodes in nodes, job
        home = clients[user].http.get(f"{HUB}/hub/home").content.decode()
        assert f"Slurm job {job.job_id} on <strong>{job.nodes}</strong>" in home
        assert re.search(r"<strong>\d+ (h \d+ )?min</strong> left", home), "no time left shown"


def test_the_form_refuses_bad_fields_and_submits_nothing(hub_client):
    bob = hub_client("bob")
    before = submitted_jobs()
    refusals = {
        "use only letters": dict(profile="h100-1", walltime="01:00:00\n#SBATCH --uid=0"),
        "You cannot charge account 'course-dl101'": dict(profile="h100-1", account="course-dl101"),
        "Reservation 'dl101' is not one you may use": dict(profile="h100-1", reservation="dl101"),
        "has 4 GPUs; you asked for 8": dict(profile="h100-4", gpus="8"),
        "Unknown field 'exec_prefix'": dict(profile="h100-1", exec_prefix="touch /tmp/x;"),
        "longer than the 08:00:00": dict(profile="h100-1", walltime="12:00:00"),
        "4 GPUs × 8 h = 32 GPU-hours, but project proj-tiny has": dict(profile="h100-4",
                                                                       account="proj-tiny"),
    }
    for message, fields in refusals.items():
        assert message in bob.form_error(**fields), fields
    # The REST API is checked the same way (user_options do not skip the checks).
    r = bob.api("POST", "/users/bob/server", json={"profile": "h100-1", "account": "root"})
    # JupyterHub may answer before the start runs; the start then fails in our checks.
    assert r.status_code in (201, 202, 400, 500), r.text
    wait_until(lambda: not bob.server(), 30, what="the refused API start to be gone")
    assert submitted_jobs() == before, "a refused request reached sbatch"
    assert notebook_jobs("bob") == []


def test_pending_reason_in_plain_words_and_cancel_from_the_pending_page(hub_client, gpus_taken):
    bob = hub_client("bob")
    assert bob.submit_form(profile="h100-1", option_walltime="1h").status_code == 302
    messages = progress_messages(bob, until="waiting for free H100 GPUs")
    assert any("waiting for free H100 GPUs (Slurm: Resources); position 1 in gpu" in m
               for m in messages), messages
    [job] = notebook_jobs("bob")
    assert job.state == "PENDING"
    bob.stop()  # the pending page's "Stop Server" button does this
    wait_until(lambda: not notebook_jobs("bob"), 30, what="the pending job to be cancelled")
    assert sacct_record(job.job_id).state == "CANCELLED"


def test_budget_used_up_while_waiting_fails_fast_with_the_reason(hub_client, gpus_taken):
    bob = hub_client("bob")
    # proj-tiny's 1 GPU-hour, unspent (earlier tests may have run a second on it).
    slurm.sacctmgr("modify", "account", "where", "name=proj-tiny", "set", "RawUsage=0")
    assert bob.submit_form(profile="h100-1", option_walltime="1h",
                           account="proj-tiny").status_code == 302
    progress_messages(bob, until="Slurm: Resources")
    [job] = notebook_jobs("bob")
    try:
        # The project's coordinator (or an admin) lowers the budget under the waiting job.
        slurm.sacctmgr("modify", "account", "where", "name=proj-tiny", "set",
                       "GrpTRESMins=gres/gpu=30")
        messages = progress_messages(bob, until="cannot start", timeout=120)
    finally:
        slurm.sacctmgr("modify", "account", "where", "name=proj-tiny", "set",
                       "GrpTRESMins=gres/gpu=60")
    assert ("Your session cannot start: your project's GPU budget is used up "
            "(Slurm: AssocGrpGRESMinutes).") in messages[-1], messages
    wait_until(lambda: not notebook_jobs("bob"), 30, what="the hopeless job to be cancelled")
    assert sacct_record(job.job_id).state == "CANCELLED"


def execute_request(code: str) -> str:
    """A Jupyter kernel message (protocol 5.3) asking to run `code`."""
    return json.dumps({"header": {"msg_id": uuid.uuid4().hex, "msg_type": "execute_request",
                                  "username": "", "session": uuid.uuid4().hex, "version": "5.3"},
                       "parent_header": {}, "metadata": {}, "channel": "shell",
                       "content": {"code": code, "silent": False, "store_history": False,
                                   "user_expressions": {}, "allow_stdin": False}})


def kernel_output(ws, timeout: float) -> tuple[str, str]:
    """What the cell printed, and its reply's status, read from the kernel's websocket."""
    printed, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = json.loads(ws.recv())
        if msg["msg_type"] == "stream":
            printed += msg["content"]["text"]
        if msg["msg_type"] == "execute_reply":
            return printed, msg["content"]["status"]
    raise AssertionError(f"no reply from the kernel; it printed {printed!r}")


def test_session_survives_a_hub_restart(hub_client, passwords):
    alice = hub_client("alice")
    alice.start(profile="h100-1")
    [job] = notebook_jobs("alice")
    # A cell runs in her notebook across the restart: it waits for a file made after it.
    token = alice.token()
    kernels = f"{user_url('alice')}api/kernels"
    kernel = requests.post(kernels, headers={"Authorization": f"token {token}"}, json={})
    assert kernel.status_code == 201, kernel.text
    ws = websocket.create_connection(
        f"{kernels}/{kernel.json()['id']}/channels".replace("https://", "wss://"),
        header=[f"Authorization: token {token}"], timeout=120, sslopt={"ca_certs": str(DEMO_CA)})
    go = Path("/tmp") / f"aif-hub-restarted-{uuid.uuid4().hex}"
    ws.send(execute_request(f"import os, time\nprint('before', flush=True)\n"
                            f"while not os.path.exists({str(go)!r}): time.sleep(0.2)\n"
                            "print('after the restart')"))
    proxy = services.PROXY.pid()
    assert services.stop_hub()
    assert not services.HUB.running()
    assert aifactory("cluster", "up").returncode == 0
    go.touch()
    try:
        printed, status = kernel_output(ws, timeout=60)
    finally:
        go.unlink()
        ws.close()
    # The browser's connection went through the proxy, which the restart left alone.
    assert (printed, status) == ("before\nafter the restart\n", "ok")
    assert services.PROXY.pid() == proxy
    # Her login outlives the restart (the same browser needs no new login) ...
    assert alice.api("GET", "/user").status_code == 200
    # ... and a new one works too.
    again = HubClient("alice")
    assert again.login(passwords["alice"]).status_code == 302
    assert again.server().get("ready")
    assert notebook_jobs("alice") == [job]
    assert again.http.get(f"{HUB}/user/alice/lab").status_code == 200


def as_postgres(*argv: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(["runuser", "-u", "postgres", "--", *argv], input=stdin,
                          capture_output=True, check=True, cwd="/tmp").stdout


def test_the_hubs_database_restored_from_a_backup_into_a_fresh_one_keeps_the_sessions(
        hub_client, passwords):
    """The README's backup and restore, with a session running across them."""
    alice = hub_client("alice")
    alice.start(profile="cpu")
    [job] = notebook_jobs("alice")
    backup = as_postgres("pg_dump", "--format=custom", "jupyterhub")
    assert services.stop_hub()
    as_postgres("dropdb", "jupyterhub")
    as_postgres("createdb", "--owner=jupyterhub", "jupyterhub")
    assert not hub_db("SELECT 1 FROM pg_tables WHERE tablename = 'users'")  # a fresh one
    as_postgres("pg_restore", "--dbname=jupyterhub", "--no-owner", "--role=jupyterhub",
                stdin=backup)
    assert aifactory("cluster", "up").returncode == 0
    again = HubClient("alice")
    assert again.login(passwords["alice"]).status_code == 302
    assert again.server().get("ready")
    assert notebook_jobs("alice") == [job]
    assert again.http.get(f"{HUB}/user/alice/lab").status_code == 200


def test_a_job_killed_from_outside_shows_as_stopped_with_the_reason(hub_client):
    bob = hub_client("bob")
    bob.start(profile="cpu")
    [job] = notebook_jobs("bob")
    slurm.run(["scancel", job.job_id], user="bob")  # from a terminal on the login node
    wait_until(lambda: not notebook_jobs("bob"), 30, what="the job to end")
    # The user's next page (the hub's shared view of Slurm may be up to 5 s old).
    home = wait_until(lambda: (page := bob.http.get(f"{HUB}/hub/home").content.decode())
                      and "Your last session" in page and page, 15, interval=1,
                      what="the home page to show the end")
    assert f"Your last session (job {job.job_id}) was cancelled" in home
    assert "(Slurm: CANCELLED" in home
    assert not bob.server()
    # ...and the user can start again at once.
    bob.start(profile="cpu")


def test_an_idle_session_is_stopped_and_its_job_cancelled(hub_client):
    """Idle limits come from the profile; the installed site description is read live."""
    site_file = Path("/etc/aifactory/hub_config/site.yaml")
    original = site_file.read_text()
    site = yaml.safe_load(original)
    next(p for p in site["profiles"] if p["slug"] == "cpu")["idle_minutes"] = 1
    site_file.write_text(yaml.safe_dump(site, sort_keys=False))
    try:
        student = hub_client("student2")
        # Started through the REST API with the profile as a list with a space, as a script
        # may send it: the session is what the form would give, and it is culled all the same.
        r = student.api("POST", "/users/student2/server", json={"profile": [" cpu"]})
        assert r.status_code in (201, 202), r.text
        wait_until(lambda: student.server().get("ready"), 120, what="student2's session")
        [job] = notebook_jobs("student2")
        assert student.server()["user_options"]["profile"] == "cpu"
        wait_until(lambda: not student.server(), 180, interval=5, what="the idle session to stop")
    finally:
        site_file.write_text(original)
    wait_until(lambda: not notebook_jobs("student2"), 30, what="its job to be cancelled")
    assert sacct_record(job.job_id).state == "CANCELLED"
    home = student.http.get(f"{HUB}/hub/home").content.decode()
    assert "was stopped after 1 minutes without activity, to free its GPUs" in home
