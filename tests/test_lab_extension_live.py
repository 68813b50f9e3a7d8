"""aifactory's JupyterLab extension, live in Chromium: alice's status bar shows her session's
time left, her project's budget and her jobs as the allocations service and Slurm give them;
a session started with a short walltime warns with "Save all"; the side panel shows each job's
reason in words and stops one; a notebook job made in the panel's form shows its cost and
start estimate first and brings its notebook back with the parameter's output; after
`scancel` from a terminal the tab says why the session ended. dave reaches none of it."""

from __future__ import annotations

import os
import pwd
import re
import time
from pathlib import Path

import nbformat
import requests
from conftest import (ARTIFACTS, SERVICE, SessionAPI, as_user, log_in_browser, submit,
                      user_url, wait_until, write_notebook)

from aifactory import slurm

USER = "alice"
STATUS = "#aifactory-status"


def service(token: str, path: str) -> dict:
    r = requests.get(f"{SERVICE}/api/{path}", headers={"Authorization": f"token {token}"},
                     timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def open_lab(page, passwords) -> None:
    log_in_browser(page, USER, passwords[USER])
    page.goto(f"{user_url(USER)}lab?reset")
    page.wait_for_selector(".jp-Launcher", timeout=90_000)
    page.wait_for_function(
        f"document.querySelector('{STATUS}') && "
        f"document.querySelector('{STATUS}').textContent.includes('jobs:')", timeout=60_000)


def test_status_bar_warnings_panel_and_the_end_of_the_session(page, passwords, hub_client):
    alice = hub_client(USER)
    alice.start(profile="cpu", walltime="00:12:00")
    [session] = [j for j in slurm.jobs(user=USER) if j.name == f"jupyterhub-{USER}" and j.alive]
    token = alice.token()
    waiting = submit(USER, "--partition=cpu", "--begin=now+2hours", "--time=10",
                     script="sleep 60")
    running = submit(USER, "--partition=cpu", "--time=10", script="sleep 600")
    try:
        wait_until(lambda: slurm.job(running).state == "RUNNING", 30, what="the running job")
        open_lab(page, passwords)

        # The status bar: what the service says, and the session's own clock from Slurm.
        def shows_the_services_numbers():
            budgets = service(token, "budgets?account=proj-climate")["projects"][0]
            jobs = service(token, "jobs")["active"]
            others = [j for j in jobs if j["job_id"] != session.job_id]
            run = sum(j["state"] != "PENDING" for j in others)
            text = page.text_content(STATUS)
            expected = (f"proj-climate: {budgets['remaining']:,.1f} {budgets['unit']} left · "
                        f"jobs: {run} running, {len(others) - run} waiting")
            return text if expected in text and run >= 1 and len(others) - run >= 1 else None
        text = wait_until(shows_the_services_numbers, 60, interval=2,
                          what="the status bar to show the service's numbers")
        left = slurm.job(session.job_id).end_time - time.time()
        minutes = int(re.match(r"(\d+) min left", text).group(1))
        assert abs(minutes * 60 - left) <= 90, (text, left)
        page.screenshot(path=ARTIFACTS / "lab-status-bar.png")

        # Started with 12 minutes: the 15-minute warning is there at once, with "Save all".
        toast = page.wait_for_selector(".Toastify__toast:has-text('This session ends in')",
                                       timeout=30_000)
        assert "save your work" in toast.text_content()
        assert toast.query_selector("button:has-text('Save all')")

        # The side panel: the waiting job's reason in words; stop it from there.
        page.click(STATUS)
        row = page.wait_for_selector(f".aif-job[data-job-id='{waiting}']", timeout=30_000)
        assert f"pending — {slurm.explain_reason('BeginTime')}" in row.text_content()
        assert page.query_selector(".aif-project:has-text('proj-climate')")
        assert page.query_selector(".aif-gpus:has-text('H100')")
        page.screenshot(path=ARTIFACTS / "lab-panel.png")
        page.click(f".aif-job[data-job-id='{waiting}'] button.aif-stop")
        page.click(".jp-Dialog button:has-text('Stop')")
        wait_until(lambda: not ((j := slurm.job(waiting)) and j.alive), 30,
                   what="the stopped job to leave the queue")

        # dave, with his own token: nothing of alice's session answers him.
        dave = hub_client("dave")
        dave_token = dave.token()
        for method, path in (("GET", "session"), ("GET", "session/ending"),
                             ("DELETE", f"jobs/{running}")):
            r = requests.request(method, f"{user_url(USER)}aifactory/api/{path}",
                                 headers={"Authorization": f"token {dave_token}"},
                                 allow_redirects=False, timeout=30)
            assert r.status_code in (302, 403), (path, r.status_code, r.text[:200])
        assert slurm.job(running).state == "RUNNING"

        # scancel from a terminal: the tab says why, before its server stops.
        as_user(USER, "scancel", session.job_id)
        banner = page.wait_for_selector("#aifactory-ended", timeout=60_000)
        assert f"This session (Slurm job {session.job_id}) was cancelled" in banner.text_content()
        page.screenshot(path=ARTIFACTS / "lab-ended.png")
        assert page.text_content(STATUS) == "session ended"
    finally:
        for job_id in (waiting, running):
            slurm.cancel(job_id)


def test_a_notebook_job_from_the_panels_form_shows_its_cost_and_brings_its_notebook_back(
        page, passwords, hub_client):
    alice = hub_client(USER)
    alice.start(profile="cpu")
    token = alice.token()
    path = write_notebook(USER, "lab-form.ipynb")
    jobs_folder = Path(pwd.getpwnam(USER).pw_dir) / "aifactory-jobs"
    before = set(os.listdir(jobs_folder)) if jobs_folder.exists() else set()
    open_lab(page, passwords)
    # The notebook's own toolbar button opens the panel's form with it and its parameters.
    page.goto(f"{user_url(USER)}lab/tree/{path}")
    page.click(".aif-run-as-job", timeout=60_000)
    page.wait_for_selector(".aif-nb-param[data-name=tag]", timeout=30_000)
    assert page.input_value(".aif-nb-path") == path
    page.wait_for_selector(".aif-nb-profile option[value='h100-1']", state="attached",
                           timeout=30_000)

    # A value that is not the declared type: the form says so; nothing is made or queued.
    page.fill(".aif-nb-param[data-name=lr]", "fast")
    page.click(".aif-nb-preview")
    error = page.wait_for_selector(".aif-nb-result .aif-error").text_content()
    assert "lr" in error and "number" in error, error
    page.click(".aif-nb-submit")
    page.wait_for_selector(".aif-nb-result .aif-error")
    assert (set(os.listdir(jobs_folder)) if jobs_folder.exists() else set()) == before
    assert not [j for j in slurm.jobs(user=USER)
                if j.alive and j.comment.startswith(slurm.NOTEBOOK_TAG)]

    # The spawn form's choices: one H100 for an hour; the cost and Slurm's estimate first.
    page.fill(".aif-nb-param[data-name=lr]", "0.01")
    page.fill(".aif-nb-param[data-name=tag]", "from-the-form")
    page.select_option(".aif-nb-profile", "h100-1")
    page.select_option(".aif-nb-option[data-name=walltime]", "1h")
    with page.expect_response(lambda r: "/notebook-jobs/preview?" in r.url,  # lab adds ?<time>
                              timeout=90_000) as answered:
        page.click(".aif-nb-preview")
    preview = answered.value.json()
    assert page.wait_for_selector(".aif-nb-cost").text_content() == preview["cost_text"]
    assert preview["cost_text"].startswith("1 GPU × 1 h = 1 GPU-hours"), preview["cost_text"]
    assert page.text_content(".aif-nb-start") == preview["start_text"]
    assert preview["start_text"].startswith("Slurm would start it at"), preview["start_text"]
    assert "--time=01:00:00" in page.text_content(".aif-nb-script")
    page.screenshot(path=ARTIFACTS / "lab-notebook-job-form.png")

    page.click(".aif-nb-submit")
    job_id = page.wait_for_selector(".aif-nb-submitted").get_attribute("data-id")
    api = SessionAPI(USER, token)
    done = api.wait(job_id)
    assert [r["state"] for r in done["runs"]] == ["COMPLETED"], done
    out = nbformat.read(done["runs"][0]["output"], as_version=4)
    printed = "".join(o.get("text", "") for c in out.cells for o in c.get("outputs", []))
    assert "tag=from-the-form lr=0.01" in printed, printed
    # JupyterLab tells her (its watch of her notebook jobs runs every 30 s while visible).
    page.wait_for_selector(f".Toastify__toast:has-text('Notebook job {job_id} has completed')",
                           timeout=60_000)
