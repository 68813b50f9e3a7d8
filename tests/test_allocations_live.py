"""The allocations service, its widgets and the CLI against the live cluster and hub."""

import datetime as dt
import json
import time

import pytest
import requests
from conftest import SERVICE, add_account, cli, remove_account, submit, wait_until

from aifactory import report, slurm
from aifactory.client import ServiceClient
from aifactory.cluster import services
from aifactory.widgets import AllocationPanel, ClusterPanel, JobsPanel

AUDIT = "audit-usage"  # a project the tests make, spend from, and remove


def api(token: str | None, path: str, method: str = "GET") -> requests.Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    return requests.request(method, SERVICE + "api/" + path, headers=headers, timeout=30)


def cli_json(user: str, *args: str) -> dict:
    """`aifactory ... --json` run by `user` in a login-node terminal (asks Slurm directly)."""
    return json.loads(cli(user, *args, "--json"))


def project(answer: dict, account: str) -> dict:
    return next(p for p in answer["projects"] if p["account"] == account)


@pytest.fixture
def audit_project(live_cluster):
    """A fresh project of alice's with 10 GPU-hours and no usage yet; she coordinates it (so
    Slurm, with PrivateData=usage, shows her its totals on the login node too)."""
    add_account(AUDIT, "alice", "gres/gpu=600", coordinator=True)
    jobs = []
    yield jobs
    remove_account(AUDIT, jobs)


def test_used_equals_sacct_and_the_api_widget_and_cli_agree(hub_client, audit_project):
    token = hub_client("alice").token()
    started = int(time.time())
    # Jobs of known size and length: 2 nodes x 2 GPUs, 2 GPUs and 1 GPU, together.
    audit_project += [
        submit("alice", f"--account={AUDIT}", "--partition=gpu", "--nodes=2", "--gres=gpu:2",
               "--time=5", script="sleep 45"),
        submit("alice", f"--account={AUDIT}", "--partition=gpu", "--gres=gpu:2", "--time=5",
               script="sleep 60"),
        submit("alice", f"--account={AUDIT}", "--partition=gpu", "--gres=gpu:1", "--time=5",
               script="sleep 50"),
    ]
    # While they run, their remaining walltime x GPUs is held from the budget.
    held = wait_until(lambda: (r := api(token, f"budgets/{AUDIT}")).ok
                      and project(r.json(), AUDIT)["held_gpu_h"] > 0 and r.json(), 60,
                      what="the running jobs' hold in the service")
    p = project(held, AUDIT)
    assert p["remaining_gpu_h"] == pytest.approx(
        p["granted_gpu_h"] - p["used_gpu_h"] - p["held_gpu_h"], abs=1e-3)
    # Walltime 5 min x 7 GPUs = 0.58 GPU-h at most, less what already ran.
    assert 0 < p["held_gpu_h"] <= 7 * 5 / 60

    wait_until(lambda: all((r := sacct_job(j)) and r.state == "COMPLETED"
                           for j in audit_project), 120, what="the audit jobs to complete")
    records = [sacct_job(j) for j in audit_project]
    # The independent sum: elapsed x allocated GPUs, from slurmdbd's job records.
    expected = sum(r.elapsed_s * r.gpus for r in records if r.start_time >= started - 5) / 3600
    assert expected == pytest.approx((2 * 2 * 45 + 2 * 60 + 1 * 50) / 3600, rel=0.1)

    def settled():
        # used from sshare (every 15 s), the burn rate from the job records (every 60 s)
        p = project(api(token, f"budgets/{AUDIT}").json(), AUDIT)
        return (p["held_gpu_h"] == 0 and abs(p["used_gpu_h"] - expected) <= 0.01 * expected
                and p["burn_per_day_gpu_h"] >= round(expected / 7, 4) - 1e-4 and p)
    settled_budget = wait_until(settled, 180, interval=3,
                                what=f"used to reach {expected:.4f} GPU-h with nothing held, "
                                     "and the burn rate to count it")
    print(f"\nused {settled_budget['used_gpu_h']} GPU-h; sacct sum {expected:.4f} GPU-h")

    # The same numbers in the API, the CLI on the login node and the widget in a notebook.
    panel = AllocationPanel(ServiceClient(SERVICE, token), refresh_s=0)

    last = {}

    def agree():
        last["api"] = from_api = project(api(token, f"budgets/{AUDIT}").json(), AUDIT)
        last["cli"] = from_cli = project(cli_json("alice", "budget", AUDIT), AUDIT)
        panel.refresh()
        # The projected exhaustion moves with the moment of asking (the CLI asks a second or
        # two after the API); people see it to the minute.
        when = [dt.datetime.fromisoformat(a["exhaustion_date"]) if a["exhaustion_date"] else None
                for a in (from_api, from_cli)]
        same_when = when[0] == when[1] or None not in when and abs(when[0] - when[1]).total_seconds() < 60
        rest = [{k: v for k, v in a.items() if k != "exhaustion_date"} for a in (from_api, from_cli)]
        return (same_when and rest[0] == rest[1]
                and report.budgets_text({"projects": [from_api]}) in panel.text())
    try:
        wait_until(agree, 90, interval=5, what="the API, the CLI and the widget to agree")
    except AssertionError:
        differ = {k: (last["api"].get(k), last["cli"].get(k))
                  for k in set(last["api"]) | set(last["cli"])
                  if last["api"].get(k) != last["cli"].get(k)}
        raise AssertionError(f"API and CLI differ in {differ}; panel: {panel.text()}") from None
    assert f'data-account="{AUDIT}"' in panel.html()
    panel.close()


def sacct_job(job_id: str) -> slurm.PastJob | None:
    found = slurm.accounting_jobs(job_ids=[job_id])
    return found[0] if found else None


def test_people_see_only_their_own_jobs_and_projects(hub_client):
    alice, bob = hub_client("alice").token(), hub_client("bob").token()
    job_id = submit("bob", "--partition=cpu", "--time=5", script="sleep 300")
    try:
        # Slurm 24.11 may start it only at its next scheduling pass when the first try is busy.
        wait_until(lambda: (j := slurm.job(job_id)) and j.running, 90, what="bob's job to run")
        wait_until(lambda: any(j["job_id"] == job_id for j in api(bob, "jobs").json()["active"]),
                   30, what="bob's job in the service")
        assert not any(j["job_id"] == job_id for j in api(alice, "jobs").json()["active"])
        assert api(alice, "jobs?user=bob").status_code == 403
        assert api(alice, f"jobs/{job_id}").status_code == 404
        refused = api(alice, f"jobs/{job_id}", "DELETE")
        assert refused.status_code == 404 and "no active job" in refused.json()["error"]
        # The widget's cancel button goes the same way.
        panel = JobsPanel(ServiceClient(SERVICE, alice), refresh_s=0)
        assert "not cancelled" in panel.cancel(job_id)
        panel.close()
        assert slurm.job(job_id).running  # not cancelled
        # Bob cancels his own job through the service.
        assert api(bob, f"jobs/{job_id}", "DELETE").json() == {"job_id": job_id, "cancelled": True}
        wait_until(lambda: (j := slurm.job(job_id)) is None or j.state == "CANCELLED", 30,
                   what="the cancel")
    finally:
        slurm.cancel(job_id)


def test_students_do_not_see_each_other_but_the_instructor_does(hub_client):
    student = api(hub_client("student1").token(), "budgets").json()
    course = project(student, "course-dl101")
    assert course["role"] == "member" and "users" not in course
    assert "student2" not in json.dumps(student)
    carol = project(api(hub_client("carol").token(), "budgets").json(), "course-dl101")
    assert carol["role"] == "coordinator"
    assert {"student1", "student2"} <= {u["user"] for u in carol["users"]}


def test_bad_requests_get_a_status_and_a_message(hub_client):
    alice = hub_client("alice")
    token, narrow = alice.token(), alice.token(scopes=["read:users:name!user"])
    cases = [
        (None, "budgets", 401), ("not-a-token", "budgets", 401), (narrow, "budgets", 403),
        (token, "budgets/proj-nothing", 404), (token, "budgets/proj-tiny", 403),
        (token, "budgets?account=..%2Fetc", 400), (token, "jobs/12;rm", 400),
        (token, "jobs?user=Bob%20Smith", 400), (token, "gpus?verbose=1", 400),
    ]
    for who, path, status in cases:
        r = api(who, path)
        assert r.status_code == status, (path, r.status_code, r.text)
        assert r.json()["error"], path
    assert api(token, "budgets").status_code == 200


def test_with_slurmdbd_away_the_last_numbers_come_with_their_age(hub_client):
    token = hub_client("alice").token()
    before = project(api(token, "budgets").json(), "proj-climate")
    services.SLURMDBD.stop()
    try:
        answer = wait_until(lambda: (a := api(token, "budgets").json())["warnings"] and a, 90,
                            interval=2, what="a warning about slurmdbd")
        assert any("accounting database unreachable" in w and "s ago" in w
                   for w in answer["warnings"]), answer["warnings"]
        after = project(answer, "proj-climate")
        assert after["granted_gpu_h"] == before["granted_gpu_h"]
        assert after["burn_per_day_gpu_h"] == before["burn_per_day_gpu_h"]
    finally:
        services.start_slurmdbd()
    wait_until(lambda: not api(token, "budgets").json()["warnings"], 90, interval=2,
               what="the service to recover by itself")


def test_with_slurmctld_away_the_widgets_say_scheduler_unreachable(hub_client):
    client = ServiceClient(SERVICE, hub_client("alice").token())
    panels = [JobsPanel(client, refresh_s=0), ClusterPanel(client, refresh_s=0)]
    services.SLURMCTLD.stop()
    try:
        for panel in panels:
            wait_until(lambda: (panel.refresh(), "scheduler unreachable" in panel.text())[1], 60,
                       interval=2, what=f"{panel.title} to say so")
            assert "scheduler unreachable" in panel.html()
    finally:
        services.start_slurmctld()
    for panel in panels:
        wait_until(lambda: (panel.refresh(), "unreachable" not in panel.text())[1], 60,
                   interval=2, what=f"{panel.title} to recover")
        panel.close()


def test_a_browser_reaches_the_service_through_the_hubs_login(hub_client):
    alice = hub_client("alice")  # logged in to the hub: OAuth needs no further question
    page = alice.http.get(SERVICE, timeout=30)
    assert page.status_code == 200 and page.url.rstrip("/") == SERVICE.rstrip("/")
    assert "GPU-hours of alice" in page.text and "proj-climate" in page.text
    assert "proj-tiny" not in page.text
    anonymous = requests.get(SERVICE, allow_redirects=False, timeout=30)
    assert anonymous.status_code == 302 and "/hub/api/oauth2/authorize" in anonymous.headers["Location"]
