"""A person in a real browser: log in, choose a profile, see what is free and what it costs,
wait with the reason shown, land in JupyterLab, stop.

Screenshots are kept in tests/artifacts/ for a human to look at.
"""

import json
import shutil
import subprocess
from pathlib import Path

import requests
from conftest import (ARTIFACTS, HUB, SERVICE, log_in_browser, notebook_jobs,
                      submit, user_origin, user_url, wait_until)

from aifactory import slurm
from aifactory.report import gpu_h





def test_choose_a_profile_wait_with_the_reason_and_reach_jupyterlab(page, passwords, hub_client,
                                                                     gpus_taken):
    hub_client("bob")  # stops bob's session afterwards, whatever happens here
    log_in_browser(page, "bob", passwords["bob"], screenshot="01-login.png")

    # The form: availability now (gpu01 and gpu02 are taken; gpu03 is the DL101 course's).
    page.wait_for_selector("#aif-cost")
    availability = page.text_content("#aif-availability")
    assert "H100" in availability and "12" in availability
    assert "proj-climate" in page.text_content("#aif-budgets")
    # The budget left is Slurm's own figure (earlier sessions may have spent some of it). The
    # form's is up to 30 s old and Slurm counts the blocking jobs' hold within a minute: the
    # two agree once both have it.
    def cost_shows_slurms_figure():
        page.reload()
        page.check("#aif-profile-h100-1")
        page.select_option("select[name=option_walltime]", "1h")
        left = round(slurm.budgets()["proj-climate"].remaining_min / 60, 1)
        return page.text_content("#aif-cost").startswith(
            f"1 GPU × 1 h = 1 GPU-hours of the {left:g} left on project proj-climate")
    wait_until(cost_shows_slurms_figure, 120, interval=5,
               what="the form's cost to show what Slurm has left")
    page.check("#aif-profile-h100-4")
    assert "4 GPUs × 8 h = 32 GPU-hours" in page.text_content("#aif-cost")
    page.check("#aif-profile-h100-1")
    page.screenshot(path=ARTIFACTS / "02-form.png", full_page=True)
    page.click("#spawn_form button[type=submit]")

    # Pending: the reason in plain words, with Slurm's code.
    page.wait_for_url("**/spawn-pending/bob**")
    page.wait_for_function(
        "document.querySelector('#progress-message').textContent.includes('waiting for free H100 GPUs')",
        timeout=60_000)
    assert "(Slurm: Resources)" in page.text_content("#progress-message")
    page.screenshot(path=ARTIFACTS / "03-pending-reason.png")
    [job] = notebook_jobs("bob")
    assert job.state == "PENDING" and job.account == "proj-climate"

    for blocker in gpus_taken:  # the GPUs come free
        slurm.cancel(blocker)
    page.wait_for_url("**/user/bob/lab**", timeout=120_000)
    page.wait_for_selector(".jp-Launcher", timeout=60_000)
    page.screenshot(path=ARTIFACTS / "04-jupyterlab.png")
    assert "JupyterLab" in page.title()

    # The home page shows where the session runs and its time left; stop from there.
    page.goto(f"{HUB}/hub/home")
    assert "left, it ends at" in page.text_content("#aif-time-left")
    page.screenshot(path=ARTIFACTS / "05-home.png")
    page.click("#stop")
    page.wait_for_selector("#start", timeout=60_000)
    wait_until(lambda: not notebook_jobs("bob"), 60, what="bob's job to be cancelled")


def notebook(*cells: str) -> dict:
    return {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {},
                   "outputs": [], "source": source} for i, source in enumerate(cells)],
        "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)",
                                    "language": "python", "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


def run_notebook(page, passwords, user: str, name: str, *cells: str) -> None:
    """Log in, open a notebook of these cells in JupyterLab and run it all."""
    path = Path(f"/home/{user}/{name}")
    path.write_text(json.dumps(notebook(*cells)))
    shutil.chown(path, user, user)
    log_in_browser(page, user, passwords[user])
    # ?reset: a fresh workspace, not the tabs an earlier test left open.
    page.goto(f"{HUB}/user/{user}/lab/tree/{name}?reset")
    page.wait_for_selector(".jp-Notebook .jp-Cell >> visible=true", timeout=60_000)
    page.wait_for_selector("text=Python 3 (ipykernel) | Idle", timeout=60_000)
    page.click(".jp-Notebook .jp-Cell .cm-content >> visible=true")
    for _ in cells:
        page.keyboard.press("Shift+Enter")


def test_the_dashboard_in_jupyterlab_shows_the_clis_numbers(page, passwords, hub_client):
    alice = hub_client("alice")
    alice.start(profile="cpu")  # costs no GPU-hours, so the project's numbers stay put
    [job] = notebook_jobs("alice")
    # The numbers a terminal on the login node gives, once the service has caught up with them.
    token = alice.token()
    expected = wait_until(
        lambda: (c := cli_budget("alice")) == service_budget(token) and c, 120, interval=5,
        what="the service and the CLI to agree")

    run_notebook(page, passwords, "alice", "aif-dashboard.ipynb",
                 "from aifactory.widgets import Dashboard\nDashboard()")
    try:
        page.wait_for_selector(".aif-allocation .aif-project", timeout=90_000)
    finally:
        page.screenshot(path=ARTIFACTS / "06-dashboard-allocation.png", full_page=True)

    climate = ".aif-allocation [data-account='proj-climate']"
    for key in ("granted", "used", "held", "remaining"):
        shown = page.text_content(f"{climate} .aif-{key}")
        assert shown == gpu_h(expected[f"{key}_gpu_h"]), (key, shown, expected)
    assert "(coordinator)" in page.text_content(f"{climate} h4")  # alice leads proj-climate
    page.get_by_role("tab", name="Session", exact=True).click()
    assert page.text_content(".aif-session .aif-job") == job.job_id
    assert page.text_content(".aif-session .aif-project") == job.account
    page.screenshot(path=ARTIFACTS / "07-dashboard-session.png", full_page=True)
    page.get_by_role("tab", name="Cluster", exact=True).click()
    assert page.text_content(".aif-cluster .aif-gpus[data-partition='gpu'] .aif-free").isdigit()


def test_the_dask_dashboard_opens_through_the_hub(page, passwords, hub_client):
    hub_client("alice").start(profile="cpu")
    run_notebook(page, passwords, "alice", "aif-dask.ipynb",
                 "from aifactory.dask import GPUCluster\ncluster = GPUCluster()\n"
                 "print('LINK', cluster.dashboard_link)")
    page.wait_for_selector("text=LINK /user/alice/proxy/", timeout=90_000)
    link = page.text_content(".jp-OutputArea-output pre >> visible=true").split("LINK ", 1)[1]
    link = link.strip()
    assert link.endswith("/status")
    page.goto(HUB + link)
    try:
        page.wait_for_function("document.title.includes('Dask')", timeout=60_000)
        # The plots are drawn over bokeh's websocket, through the hub's proxy too.
        page.wait_for_selector("canvas", state="attached", timeout=60_000)
    finally:
        page.screenshot(path=ARTIFACTS / "08-dask-dashboard.png", full_page=True)


def test_the_instructors_course_view_with_participants_in_different_states(page, passwords,
                                                                          hub_client):
    carol, student1, student2 = hub_client("carol"), hub_client("student1"), hub_client("student2")
    student1.start(profile="course-dl101")  # running, on one of gpu03's 4 GPUs
    # Three course-sized jobs (Slurm holds the course account to 1 GPU per job).
    blockers = [submit("carol", "--account=course-dl101", "--reservation=dl101",
                       "--gres=gpu:h100:1", "--time=10", script="sleep 600") for _ in range(3)]
    try:
        wait_until(lambda: all((j := slurm.job(b)) and j.state == "RUNNING" for b in blockers),
                   30, what="the other 3 GPUs of the reservation to be taken")
        assert student2.submit_form(profile="course-dl101").status_code == 302  # pending
        wait_until(lambda: [j.state for j in notebook_jobs("student2")] == ["PENDING"], 30,
                   what="student2's session to wait")
        carol.start(profile="cpu")
        run_notebook(page, passwords, "carol", "aif-course.ipynb",
                     "from aifactory.widgets import CoursePanel\npanel = CoursePanel('dl101')\npanel")
        rows = ".aif-course .aif-participant"
        try:
            page.wait_for_selector(f"{rows}[data-state='pending']", timeout=90_000)
        finally:
            page.screenshot(path=ARTIFACTS / "09-course-view.png", full_page=True)
        running = page.text_content(f"{rows}[data-user='student1']")
        assert "running on gpu03" in running
        pending = page.text_content(f"{rows}[data-user='student2']")
        assert "pending: " in pending and "(Slurm: " in pending, pending
        summary = page.text_content(".aif-course-panel, .aif-panel.aif-course")
        assert "reservation time left" in summary and "course budget" in summary

        # The instructor stops student2's waiting session from the panel (as herself).
        page.locator(".aif-course-actions", has_text="student2").get_by_role(
            "button", name="Stop").click()
        page.wait_for_selector(f"{rows}[data-user='student2'][data-state='stopped']",
                               timeout=90_000)
        wait_until(lambda: not notebook_jobs("student2"), 60, what="student2's job to end")
        assert [j.state for j in notebook_jobs("student1")] == ["RUNNING"]  # untouched
        page.screenshot(path=ARTIFACTS / "10-course-view-after-stop.png", full_page=True)
    finally:
        for blocker in blockers:
            slurm.cancel(blocker)


def cli_budget(user: str) -> dict:
    out = subprocess.run(["runuser", "-u", user, "--", "/opt/aifactory/venv/bin/aifactory",
                          "budget", "proj-climate", "--json"], capture_output=True, text=True,
                         cwd="/tmp", check=True)
    return json.loads(out.stdout)["projects"][0]


def service_budget(token: str) -> dict:
    r = requests.get(f"{SERVICE}api/budgets/proj-climate",
                     headers={"Authorization": f"token {token}"}, timeout=30)
    return r.json()["projects"][0]


# A page dave's own server serves (his Jupyter config adds a static folder, which Jupyter
# serves without a login), run in alice's browser while she is logged in to the hub: it tries
# to read alice's hub pages and to mint a token for her, as the page could if it shared the
# hub's origin.
EVIL_PAGE = """<!doctype html><title>working</title><script>
(async () => {
  const hub = "%(hub)s", out = {};
  // Cookie tossing: dave's own hub login, set for the hub's whole domain from his origin, so
  // that alice's browser would talk to the hub as dave (and her notebooks would land in his).
  for (const name of ["jupyterhub-hub-login", "__Host-jupyterhub-hub-login",
                      "__Secure-jupyterhub-hub-login"])
    document.cookie = `${name}=%(cookie)s; Domain=hub.localhost; Path=/hub/; Secure`;
  document.cookie = "jupyterhub-session-id=tossed; Domain=hub.localhost; Path=/; Secure";
  async function read(name, url, options) {
    try {
      const r = await fetch(url, {credentials: "include", ...options});
      out[name] = {status: r.status, text: (await r.text()).slice(0, 50000)};
    } catch (e) { out[name] = {error: String(e)}; }
    return (out[name].text || "").match(/xsrf_token: "([^"]+)"/);
  }
  const here = await read("home_on_this_origin", "/hub/home");
  const found = (await read("home_on_the_hubs_origin", hub + "/hub/home")) || here;
  await read("user_on_the_hubs_origin", hub + "/hub/api/user");
  const headers = {"Content-Type": "application/json", "X-XSRFToken": found ? found[1] : ""};
  const body = JSON.stringify({note: "dave was here"});
  for (const [name, base] of [["token_on_this_origin", ""], ["token_on_the_hubs_origin", hub]])
    await read(name, base + "/hub/api/users/alice/tokens", {method: "POST", headers, body});
  window.attack = out;
  document.title = "done";
})();
</script>"""


def test_a_page_of_another_users_server_cannot_act_as_the_hub_in_alices_browser(
        page, passwords, hub_client):
    dave = hub_client("dave")
    home = Path("/home/dave")
    subprocess.run(["runuser", "-u", "dave", "--", "mkdir", "-p", home / ".jupyter",
                    home / "evil"], check=True)
    config = json.dumps({"ServerApp": {"extra_static_paths": [str(home / "evil")]}})
    daves_login = next(c.value for c in dave.http.cookies if c.name.endswith("hub-login"))
    for path, text in ((home / ".jupyter/jupyter_server_config.json", config),
                       (home / "evil/page.html",
                        EVIL_PAGE % {"hub": HUB, "cookie": daves_login})):
        subprocess.run(["runuser", "-u", "dave", "--", "tee", path], input=text, text=True,
                       capture_output=True, check=True)
    try:
        dave.start(profile="cpu")
        alice = hub_client("alice")
        log_in_browser(page, "alice", passwords["alice"])
        page.wait_for_url("**/hub/spawn**")

        page.goto(f"{user_url('dave')}static/page.html")
        page.wait_for_function("document.title === 'done'", timeout=30_000)
        attack = page.evaluate("window.attack")
        (ARTIFACTS / "attack-from-daves-page.json").write_text(json.dumps(attack, indent=1))
        # The page ran in alice's browser, on dave's origin: nothing of alice's came back ...
        for name, answer in attack.items():
            assert "alice" not in answer.get("text", ""), f"{name} read alice's: {answer}"
            assert answer.get("status") != 201, f"{name} minted a token for alice"
        # ... the hub's own origin refused the page outright (no CORS) ...
        assert "error" in attack["home_on_the_hubs_origin"]
        assert "error" in attack["token_on_the_hubs_origin"]
        # ... and alice has no token she did not make, while her login still works.
        tokens = alice.api("GET", "/users/alice/tokens").json()["api_tokens"]
        assert not [t for t in tokens if t["note"] == "dave was here"]
        page.goto(f"{HUB}/hub/home")
        assert "alice" in page.content()
        # The tossed cookies changed nothing: the hub reads only its __Host- cookie, which
        # no other origin can set, and alice is still alice there.
        page.goto(f"{HUB}/hub/api/user")
        assert json.loads(page.text_content("body"))["name"] == "alice"
        assert [c["value"] for c in page.context.cookies(f"{HUB}/hub/")
                if c["name"] == "__Host-jupyterhub-hub-login"] != [daves_login]
        # Nor can alice be led to log in on dave's origin, where his page would then read hers.
        def login_cookies():  # what a login would set on dave's origin (not the tossed ones)
            return [(c["name"], c["value"]) for c in page.context.cookies(
                f"{user_origin('dave')}/hub/") if "hub-login" in c["name"]]
        before = login_cookies()
        log_in_browser(page, "alice", passwords["alice"], hub=user_origin("dave"))
        page.wait_for_selector(f"text=Log in at {HUB}/hub/login")
        assert login_cookies() == before
    finally:
        subprocess.run(["rm", "-rf", home / ".jupyter/jupyter_server_config.json",
                        home / "evil"], check=True)
