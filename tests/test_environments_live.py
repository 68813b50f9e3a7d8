"""Site environments (Lmod modules) chosen on the spawn form, live: the session's job loads the
chosen modules, its kernel imports that environment's packages, and the home page and the
session panel say which environment runs. The demo's tree: hub_config/cluster/modules and
cluster/environments (built by `up` under /opt/aifactory)."""

import os
import re
from importlib.metadata import version
from pathlib import Path

from conftest import (ARTIFACTS, HUB, log_in_browser, notebook_jobs,
                      notebook_process, process_env, user_url, wait_until)
from playwright import sync_api as playwright

from aifactory import slurm

USER = "student2"
CLASSIC_ML = Path("/opt/aifactory/envs/classic-ml")
# What each environment must show in its kernel: its Python's prefix and packages, and that
# aifactory's fixes were made at its start.
PINNED = dict(line.split("==") for line in
              (Path(__file__).resolve().parents[1] / "hub_config/cluster/environments/"
               "classic-ml.txt").read_text().splitlines() if "==" in line)
CHECK = ("import sys, importlib.util as u\n"
         "from importlib.metadata import version\n"
         "print('ENV', sys.prefix, *(version(m) if u.find_spec(i) else 'none' for m, i in "
         "[('torch', 'torch'), ('scikit-learn', 'sklearn'), ('numpy', 'numpy')]), "
         "'FIXES', 'aifactory.at_start' in sys.modules)")




def start_in_browser(page, environment: str) -> None:
    """On the form: the CPU profile and this environment, then Start; wait for JupyterLab."""
    page.goto(f"{HUB}/hub/spawn")
    try:
        page.check("#aif-profile-cpu")
    except playwright.Error:
        page.screenshot(path=ARTIFACTS / f"environment-no-form-{environment}.png")
        raise
    select = "select[name=option_environment][data-profile=cpu]"
    offered = page.eval_on_selector_all(f"{select} option", "os => os.map(o => o.value)")
    assert offered == ["aifactory", "classic-ml"], offered
    page.select_option(select, environment)
    page.screenshot(path=ARTIFACTS / f"environment-form-{environment}.png", full_page=True)
    page.click("#spawn_form button[type=submit]")
    page.wait_for_url(f"**/user/{USER}/lab**", timeout=180_000)
    # ?reset: a fresh workspace with the launcher, not the tabs an earlier session left open.
    page.goto(f"{user_url(USER)}lab?reset")
    page.wait_for_selector(".jp-Launcher", timeout=60_000)


def run_in_new_notebook(page, card: str, code: str) -> str:
    """Open a notebook from the launcher card whose label holds `card`, run `code`, return
    what the cell printed."""
    page.click(f".jp-LauncherCard[data-category=Notebook]:has-text('{card}')")
    page.wait_for_selector(".jp-Notebook .jp-Cell .cm-content >> visible=true", timeout=60_000)
    page.wait_for_selector("text=| Idle", timeout=90_000)
    page.click(".jp-Notebook .jp-Cell .cm-content >> visible=true")
    # The cell's last line marks its end: what it printed before may come in several parts.
    page.keyboard.insert_text(code + "\nprint('END-OF-CELL')")
    page.keyboard.press("Shift+Enter")
    page.wait_for_selector(".jp-OutputArea-output:has-text('END-OF-CELL') >> visible=true",
                           timeout=90_000)
    printed = "".join(o.text_content() for o in page.query_selector_all(
        ".jp-OutputArea [data-mime-type='application/vnd.jupyter.stdout'] >> visible=true"))
    return printed.replace("END-OF-CELL", "").strip() + "\n"


def test_each_site_environment_runs_its_own_packages(page, passwords, hub_client):
    client = hub_client(USER)  # stops the session afterwards
    log_in_browser(page, USER, passwords[USER])

    # classic-ml: its module's Python is the session's default kernel, with its pinned packages.
    start_in_browser(page, "classic-ml")
    [job] = notebook_jobs(USER)
    env = process_env(notebook_process(USER))
    assert env["LOADEDMODULES"] == "classic-ml/2025.1" and env["AIFACTORY_ENVIRONMENT"] == "classic-ml"
    printed = run_in_new_notebook(page, "modules: classic-ml/2025.1", CHECK)
    page.screenshot(path=ARTIFACTS / "environment-classic-ml-kernel.png")
    assert printed.split() == ["ENV", str(CLASSIC_ML), "none", PINNED["scikit-learn"],
                               PINNED["numpy"], "FIXES", "True"], printed
    page.goto(f"{HUB}/hub/home")
    assert ("Software: scikit-learn and pandas (classic-ml 2025.1)"
            in page.text_content("#aif-environment"))
    page.click("#stop")
    page.wait_for_selector("#start", timeout=60_000)
    wait_until(lambda: not notebook_jobs(USER) and not client.server(), 60,
               what="the classic-ml session to end")

    # The default environment: the shared venv, with PyTorch and the session panel.
    start_in_browser(page, "aifactory")
    printed = run_in_new_notebook(
        page, "Python 3 (ipykernel)",
        CHECK + "\nfrom aifactory.widgets import SessionPanel\nprint(SessionPanel().text())")
    page.screenshot(path=ARTIFACTS / "environment-aifactory-kernel.png")
    assert printed.split()[:7] == ["ENV", "/opt/aifactory/venv", version("torch"), "none",
                                   version("numpy"), "FIXES", "True"], printed
    assert ("software: PyTorch and Dask (aifactory 0.1) (modules: aifactory/0.1)" in printed
            and re.search(r"kernel: Python 3\.\d+ in /opt/aifactory/venv", printed)), printed
    assert client.server().get("ready")
    assert job.job_id not in {j.job_id for j in notebook_jobs(USER)}

    # The sidebar's module tree (jupyterlmod): loading classic-ml there gives its kernel.
    page.click(".jp-SideBar.jp-mod-left li[data-id='module-jupyterlab']")
    page.hover("#module_avail_list li:has-text('classic-ml/2025.1')")  # shows its button
    page.click("#module_avail_list li:has-text('classic-ml/2025.1') button:has-text('Load')")
    page.wait_for_selector("#module_loaded_list li:has-text('classic-ml/2025.1')")
    # Lmod's family: the shared environment's module made way for it, and Lmod says so.
    page.screenshot(path=ARTIFACTS / "environment-sidebar-loaded.png")
    assert ('Lmod is automatically replacing "aifactory/0.1" with "classic-ml/2025.1"'
            in page.text_content(".jp-Dialog"))
    page.click(".jp-Dialog button:has-text('Ok')")
    assert "aifactory/0.1" not in page.text_content("#module_loaded_list")
    page.click(".lm-TabBar-addButton >> visible=true")  # a new launcher
    printed = run_in_new_notebook(page, "modules: classic-ml/2025.1", CHECK)
    assert printed.split() == ["ENV", str(CLASSIC_ML), "none", PINNED["scikit-learn"],
                               PINNED["numpy"], "FIXES", "True"], printed

    # A link that smuggles a command in a module's name (the sidebar's API puts names in a
    # shell line), opened in the user's own browser: it shows nothing, and runs nothing.
    marker = Path(f"/tmp/aif-lmod-link-{os.getpid()}")
    page.goto(f"{user_url(USER)}module/modules/x%3Btouch%20{marker}%3Becho")
    assert not marker.exists(), "a module name from a link ran as a shell command"


def submitted_jobs() -> int:
    return slurm.rpc_counts().get("REQUEST_SUBMIT_BATCH_JOB", 0)


def test_an_environment_not_offered_or_not_installed_is_refused_and_nothing_is_submitted(
        hub_client):
    client = hub_client(USER)
    before = submitted_jobs()
    assert ("The DL101 course session profile does not offer the software environment "
            "'classic-ml'; it offers aifactory." in
            client.form_error(profile="course-dl101", option_environment="classic-ml"))
    assert ("scikit-learn and pandas (classic-ml 2025.1) is not offered on the gpu partition"
            in client.form_error(profile="cpu", option_environment="classic-ml", partition="gpu"))
    assert "use only letters" in client.form_error(profile="cpu",
                                                   option_environment="classic-ml;id")
    # The site names a module its tree does not have (here: taken away for a moment).
    modulefile = Path("/opt/aifactory/modules/classic-ml/2025.1.lua")
    hidden = modulefile.with_name("hidden-for-test")
    os.rename(modulefile, hidden)
    try:
        error = client.form_error(profile="cpu", option_environment="classic-ml")
    finally:
        os.rename(hidden, modulefile)
    assert ("needs the module classic-ml/2025.1, which is not in the site's module tree "
            "(/opt/aifactory/modules). Nothing was submitted" in error), error
    assert submitted_jobs() == before, "a refused request reached sbatch"
    assert notebook_jobs(USER) == []


SPAWNER_FOR = """
import json, sys
from aifactory.spawner import SlurmSpawner
from aifactory.spawner.request import SessionRequest

class User:
    name = sys.argv[1]
    url = "/user/" + sys.argv[1] + "/"
    def __getattr__(self, name):
        return None

spawner = SlurmSpawner(user=User(), site_path=sys.argv[2])
request = SessionRequest("cpu", "cpu", "", 0, 1, 1, "00:10:00", "x", "", 10, "", sys.argv[3])
print(json.dumps(spawner.environment_lines(request)))
"""


def environment_lines(environment: str, site: Path) -> list[str]:
    import json
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", SPAWNER_FOR, USER, str(site), environment],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def test_the_job_scripts_lines_load_the_environment_as_the_user(live_cluster, tmp_path):
    import subprocess
    site = Path("/etc/aifactory/hub_config/site.yaml")
    lines = environment_lines("classic-ml", site)
    assert lines[-1] == ("module load classic-ml/2025.1 || { echo 'aifactory: the modules of "
                         "environment classic-ml did not load'; exit 1; }")
    script = "\n".join(lines + ['echo "$LOADEDMODULES"',
                                "python -c 'import sklearn, sys; print(sklearn.__version__, sys.prefix)'"])
    out = subprocess.run(["runuser", "-u", USER, "--", "bash", "-c", script], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["classic-ml/2025.1", PINNED["scikit-learn"], str(CLASSIC_ML)]
    # A module that does not load ends the job's script with a sentence, JupyterLab never starts.
    broken = tmp_path / "site.yaml"
    broken.write_text(site.read_text().replace("modules: [classic-ml/2025.1]",
                                               "modules: [classic-ml/1999.9]"))
    script = "\n".join(environment_lines("classic-ml", broken) + ["echo server-started"])
    out = subprocess.run(["runuser", "-u", USER, "--", "bash", "-c", script], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and "server-started" not in out.stdout
    assert "aifactory: the modules of environment classic-ml did not load" in out.stdout
    assert '"classic-ml/1999.9"' in out.stderr  # Lmod's own words name the module
