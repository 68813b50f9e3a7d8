"""Nodes that take no jobs, on the live cluster: left out of the free count everywhere, shown
with Slurm's reason and since when, and a session only they could run is refused at once."""

import json
import time

import requests
from conftest import HUB, SERVICE, cli, wait_until

from aifactory import slurm

REASON = "aifactory test: fan failure"


def h100_row(answer: dict) -> dict:
    return next(p for p in answer["partitions"] if (p["partition"], p["gpu_type"]) == ("gpu", "h100"))


def submitted() -> int:
    return slurm.rpc_counts().get("REQUEST_SUBMIT_BATCH_JOB", 0)


def test_a_drained_gpu_node_leaves_the_free_count_and_shows_its_reason(hub_client):
    before = h100_row(json.loads(cli("alice", "gpus", "--json")))
    assert before["down"] == 0 and before["free"] >= 4
    slurm.update_node("gpu02", State="DRAIN", Reason=REASON)
    try:
        answer = json.loads(cli("alice", "gpus", "--json"))
        row = h100_row(answer)
        assert (row["free"], row["down"], row["total"]) == (
            before["free"] - 4, 4, before["total"])
        [down] = [n for n in answer["nodes_down"] if n["node"] == "gpu02"]
        assert (down["condition"], down["reason"]) == ("drained", REASON)
        assert down["since"] and "DRAIN" in down["state"]
        text = cli("alice", "gpus")
        assert "gpu02 drained since " in text and REASON in text, text

        # The allocations service (widgets) says the same within its refresh interval.
        token = hub_client("alice").token()

        def service_agrees():
            r = requests.get(f"{SERVICE}api/gpus",
                             headers={"Authorization": f"token {token}"}, timeout=30).json()
            return h100_row(r)["free"] == row["free"] and any(
                n["node"] == "gpu02" and n["reason"] == REASON for n in r["nodes_down"])
        wait_until(service_agrees, 30, interval=2, what="the service to leave gpu02 out")

        # With gpu01 drained too, only the course's gpu03 could run 4 GPUs: alice is told so.
        slurm.update_node("gpu01", State="DRAIN", Reason=REASON)
        alice = hub_client("alice")
        time.sleep(11)  # the hub's view of the nodes is at most 10 s old when the form opens
        form = alice.http.get(f"{HUB}/hub/spawn").text  # as a person would: open it first
        # The form's table: 0 free for alice (gpu03 is the course's), 12 in all, 8 down.
        assert "<td>gpu</td><td>H100</td><td>0</td><td>12</td><td>8</td>" in form
        before_submits = submitted()
        error = alice.form_error(profile="h100-4")
        assert f"gpu01 drained ({REASON})" in error and "gpu02 drained" in error
        assert "Nothing was submitted" in error and submitted() == before_submits
    finally:
        for name in ("gpu01", "gpu02"):
            slurm.update_node(name, State="RESUME")
    wait_until(lambda: h100_row(json.loads(cli("alice", "gpus", "--json")))["down"] == 0, 30,
               what="the nodes back")
