"""A person in a real browser: log in, choose a profile, see what is free and what it costs,
wait with the reason shown, land in JupyterLab, stop.

Screenshots are kept in tests/artifacts/ for a human to look at.
"""

import pytest
from conftest import ARTIFACTS, HUB, notebook_jobs, wait_until
from playwright import sync_api as playwright

from aifactory import slurm

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def page(live_cluster):
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        yield page
        browser.close()


def test_choose_a_profile_wait_with_the_reason_and_reach_jupyterlab(page, passwords, hub_client,
                                                                     gpus_taken):
    hub_client("carol")  # stops carol's session afterwards, whatever happens here
    page.goto(f"{HUB}/hub/login")
    page.fill("#username_input", "carol")
    page.fill("#password_input", passwords["carol"])
    page.screenshot(path=ARTIFACTS / "01-login.png")
    page.click("#login_submit")

    # The form: availability now (gpu01 and gpu02 are taken; gpu03 is carol's course node).
    page.wait_for_selector("#aif-cost")
    availability = page.text_content("#aif-availability")
    assert "H100" in availability and "12" in availability
    assert "course-dl101" in page.text_content("#aif-budgets")
    page.check("#aif-profile-h100-1")
    page.select_option("select[name=option_walltime]", "1h")
    # The budget left is Slurm's own figure (earlier sessions may have spent some of it).
    left = round(slurm.budgets()["course-dl101"].remaining_min / 60, 1)
    assert page.text_content("#aif-cost").startswith(
        f"1 GPU × 1 h = 1 GPU-hours of the {left:g} left on project course-dl101")
    page.check("#aif-profile-h100-4")
    assert "4 GPUs × 8 h = 32 GPU-hours" in page.text_content("#aif-cost")
    page.check("#aif-profile-h100-1")
    page.screenshot(path=ARTIFACTS / "02-form.png", full_page=True)
    page.click("#spawn_form button[type=submit]")

    # Pending: the reason in plain words, with Slurm's code.
    page.wait_for_url("**/spawn-pending/carol**")
    page.wait_for_function(
        "document.querySelector('#progress-message').textContent.includes('waiting for free H100 GPUs')",
        timeout=60_000)
    assert "(Slurm: Resources)" in page.text_content("#progress-message")
    page.screenshot(path=ARTIFACTS / "03-pending-reason.png")
    [job] = notebook_jobs("carol")
    assert job.state == "PENDING" and job.account == "course-dl101"

    for blocker in gpus_taken:  # the GPUs come free
        slurm.cancel(blocker)
    page.wait_for_url("**/user/carol/lab**", timeout=120_000)
    page.wait_for_selector(".jp-Launcher", timeout=60_000)
    page.screenshot(path=ARTIFACTS / "04-jupyterlab.png")
    assert "JupyterLab" in page.title()

    # The home page shows where the session runs and its time left; stop from there.
    page.goto(f"{HUB}/hub/home")
    assert "left, it ends at" in page.text_content("#aif-time-left")
    page.screenshot(path=ARTIFACTS / "05-home.png")
    page.click("#stop")
    page.wait_for_selector("#start", timeout=60_000)
    wait_until(lambda: not notebook_jobs("carol"), 60, what="carol's job to be cancelled")
