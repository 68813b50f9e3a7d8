"""A person logs in to the hub through the proxy and gets a notebook session as a Slurm job."""

import os
import pwd
from pathlib import Path

import requests
from conftest import (HUB, notebook_jobs, notebook_process, process_env,
                      sacct_record, wait_until)



def test_session_is_a_slurm_job_on_a_compute_node_as_the_user(hub_client):
    alice = hub_client("alice")
    server = alice.start()
    assert server["ready"]

    [job] = notebook_jobs("alice")
    assert job.state == "RUNNING" and job.user == "alice"
    assert job.partition == "gpu" and job.account == "proj-climate"
    assert job.nodes in ("gpu01", "gpu02"), job

    # The server process runs as alice, inside the compute node's network namespace.
    pid = notebook_process("alice")
    assert pid, "no jupyterhub-singleuser process of alice"
    assert os.stat(f"/proc/{pid}").st_uid == pwd.getpwnam("alice").pw_uid
    node_netns = os.stat(f"/var/run/netns/{job.nodes}").st_ino
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == node_netns
    assert process_env(pid).get("SLURM_JOB_ID") == job.job_id
    assert process_env(pid).get("CUDA_VISIBLE_DEVICES"), "the session got no GPU"

    # Reachable through the proxy: JupyterLab, then the server's own API as alice.
    lab = alice.http.get(f"{HUB}/user/alice/lab")
    assert lab.status_code == 200 and "JupyterLab" in lab.text
    status = alice.http.get(f"{HUB}/user/alice/api/status")
    assert status.status_code == 200 and "started" in status.json()

    alice.stop()
    wait_until(lambda: not notebook_jobs("alice"), 60, what="the notebook job to end")
    wait_until(lambda: (r := sacct_record(job.job_id)) and
               r.state in ("CANCELLED", "COMPLETED"), 60,
               what="sacct to record the end of the job")


def test_port_callback_takes_only_a_port(hub_client, tmp_path):
    """batchspawner's callback sets any spawner attribute; ours must refuse all but a port."""
    bob = hub_client("bob")
    bob.start()
    pid = notebook_process("bob")
    token = process_env(pid)["JUPYTERHUB_API_TOKEN"]
    marker = Path("/tmp/aifactory-callback-attack")
    marker.unlink(missing_ok=True)
    url = f"{HUB}/hub/api/batchspawner"
    auth = {"Authorization": f"token {token}"}
    attacks = [
        {"port": 12345, "exec_prefix": f"touch {marker};",
         "batch_query_cmd": f"touch {marker}", "batch_cancel_cmd": f"touch {marker}"},
        {"exec_prefix": f"touch {marker};"},
        {"port": "8888; touch /tmp/x"},
        {"port": 0},
        {"port": 70000},
        {"port": True},
        [12345],
    ]
    for body in attacks:
        r = requests.post(url, json=body, headers=auth)
        assert r.status_code == 400, (body, r.status_code, r.text)
    # A well-formed port from a server that is already running changes nothing either.
    assert requests.post(url, json={"port": 12345}, headers=auth).status_code == 409
    # Without a server's token, or with another user's, there is nothing to set.
    assert requests.post(url, json={"port": 12345}).status_code in (401, 403)

    # The hub still polls and reaches bob's server where it was; stopping still cancels it.
    assert bob.http.get(f"{HUB}/user/bob/lab").status_code == 200
    [job] = notebook_jobs("bob")
    bob.stop()
    wait_until(lambda: not notebook_jobs("bob"), 60, what="bob's job to end")
    assert not marker.exists(), "a command from the callback body was executed"
    assert sacct_record(job.job_id).state in ("CANCELLED", "COMPLETED")
