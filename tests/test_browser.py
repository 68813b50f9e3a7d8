"""A person in a real browser: log in, wait for the session, land in JupyterLab, stop it.

Screenshots are kept in tests/artifacts/ for a human to look at.
"""

import pytest
from conftest import ARTIFACTS, HUB, notebook_jobs, wait_until

from playwright import sync_api as playwright

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def page(live_cluster):
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        yield page
        browser.close()


def test_log_in_start_a_session_and_reach_jupyterlab(page, passwords, hub_client):
    page.goto(f"{HUB}/hub/login")
    page.fill("#username_input", "carol")
    page.fill("#password_input", passwords["carol"])
    page.screenshot(path=ARTIFACTS / "01-login.png")
    page.click("#login_submit")

    # The spawn form: pick a GPU profile, see the cost, start.
    page.wait_for_selector("#aif-cost")
    page.check("#aif-profile-h100-1")
    page.select_option("select[name=option_walltime]", "1h")
    assert "1 GPU × 1 h = 1 GPU-hours" in page.text_content("#aif-cost")
    page.screenshot(path=ARTIFACTS / "02-form.png", full_page=True)
    page.click("#spawn_form input[type=submit], #spawn_form button[type=submit]")
    page.wait_for_url("**/user/carol/lab**", timeout=120_000)
    page.wait_for_selector(".jp-Launcher", timeout=60_000)
    page.screenshot(path=ARTIFACTS / "03-jupyterlab.png")
    assert "JupyterLab" in page.title()
    [job] = notebook_jobs("carol")
    assert job.state == "RUNNING" and job.account == "course-dl101"

    # Stop from the hub's home page, as a person would.
    page.goto(f"{HUB}/hub/home")
    page.click("#stop")
    page.wait_for_selector("#start", timeout=60_000)
    page.screenshot(path=ARTIFACTS / "04-stopped.png")
    wait_until(lambda: not notebook_jobs("carol"), 60, what="carol's job to be cancelled")
