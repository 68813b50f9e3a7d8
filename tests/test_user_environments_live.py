"""A user's own environments as kernels, on the live cluster (aifactory.kernels).

bob makes real venvs in his home (one with ipykernel and a Dask of the shared venv's versions
installed from the package index, one without ipykernel, one whose Python was removed, one
listed that does not exist); his session starts, the launcher shows the first with its Python
version, a notebook runs in it, the CLI lists the others with the reason and the fix, and
GPUCluster from that environment starts workers with that environment's Python.
"""

import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (ARTIFACTS, HUB, SITE, as_user, cli, log_in_browser,
                      notebook_jobs, tagged, wait_until)

from aifactory import kernels, slurm

USER = "bob"  # no other test keeps a session of bob's open; each one here stops its own
HOME = Path(f"/home/{USER}")
VENVS = HOME / ".venvs"
ML, BARE, BROKEN = VENVS / "aiftest-ml", VENVS / "aiftest-bare", VENVS / "aiftest-broken"
GONE = HOME / "aiftest-project" / ".venv"  # listed in environments.yaml, never made
LIST_FILE = HOME / ".aifactory" / "environments.yaml"
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"  # the venv's, /usr/bin/python3's
MARKER = "aiftest_marker"


def bob(*command: str) -> str:
    return as_user(USER, *command, env={"HOME": str(HOME)})


@pytest.fixture(scope="module")
def environments(live_cluster):
    """bob's environments, made as bob; the installs are done once for the module."""
    started = time.monotonic()
    for path in (ML, BARE, BROKEN, GONE.parent):
        shutil.rmtree(path, ignore_errors=True)
    list_before = LIST_FILE.read_text() if LIST_FILE.exists() else None
    bob("mkdir", "-p", str(VENVS), str(LIST_FILE.parent))
    bob("/usr/bin/python3", "-m", "venv", str(ML))
    # The same Dask as the shared venv's: the workers' scheduler speaks to them.
    same = [f"{name}=={importlib.metadata.version(name)}"
            for name in ("dask", "distributed", "dask-jobqueue")]
    bob(f"{ML}/bin/python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
        "ipykernel", "requests", *same)
    marker = ML / "lib" / f"python{PYTHON}" / "site-packages" / MARKER
    bob("mkdir", str(marker))
    bob("sh", "-c", f"echo 'WHERE = __file__' > {shlex.quote(str(marker / '__init__.py'))}")
    bob("/usr/bin/python3", "-m", "venv", str(BARE))
    bob("/usr/bin/python3", "-m", "venv", "--without-pip", str(BROKEN))
    bob("ln", "-sfn", "/opt/aiftest-removed-python/bin/python3", str(BROKEN / "bin" / "python"))
    bob("sh", "-c", f"echo '- ~/aiftest-project/.venv' > {shlex.quote(str(LIST_FILE))}")
    # bob's Dask identity, as his session's job makes it (GPUCluster below runs outside one)
    bob("/opt/aifactory/venv/bin/python", "-P", "-m", "aifactory.dask_tls")
    print(f"bob's environments made in {time.monotonic() - started:.0f} s")
    yield
    for path in (ML, BARE, BROKEN, GONE.parent):
        shutil.rmtree(path, ignore_errors=True)
    if list_before is None:
        LIST_FILE.unlink(missing_ok=True)
    else:
        LIST_FILE.write_text(list_before)




def test_the_launcher_shows_a_users_venv_and_a_notebook_runs_in_it(environments, page,
                                                                    passwords, hub_client):
    session = hub_client(USER)
    session.start(profile="cpu")  # the broken and the missing environment do not stop it
    [job] = notebook_jobs(USER)
    notebooks_before = set(HOME.glob("Untitled*.ipynb"))
    log_in_browser(page, USER, passwords[USER])
    page.goto(f"{HUB}/user/{USER}/lab?reset")
    page.wait_for_selector(".jp-Launcher", timeout=90_000)
    display = f"aiftest-ml (Python {PYTHON}, venv)"
    try:
        page.wait_for_selector(f".jp-LauncherCard >> text={display}", timeout=30_000)
        launcher = page.text_content(".jp-Launcher")
        assert "aiftest-bare" not in launcher and "aiftest-broken" not in launcher
        page.screenshot(path=ARTIFACTS / "20-launcher-user-environment.png")
        page.locator(".jp-Launcher-section", has_text="Notebook").first.locator(
            ".jp-LauncherCard", has_text=display).click()
        page.wait_for_selector(f"text={display} | Idle", timeout=90_000)
        page.click(".jp-Notebook .jp-Cell .cm-content >> visible=true")
        page.keyboard.type("import sys, aifactory, distributed\n"
                           "print('FIXES', 'aifactory.at_start' in sys.modules)\n"
                           "print('PREFIX', sys.prefix)\n"
                           "print('FROM', aifactory.__file__, distributed.__file__)")
        page.keyboard.press("Shift+Enter")
        page.wait_for_selector(f"text=PREFIX {ML}", timeout=60_000)
        output = page.text_content(".jp-OutputArea-output >> visible=true")
        page.screenshot(path=ARTIFACTS / "21-notebook-in-user-environment.png")
    finally:
        for path in set(HOME.glob("Untitled*.ipynb")) - notebooks_before:
            path.unlink()
    # aifactory from the site (only it); distributed from bob's environment, not the shared venv
    assert "FIXES True" in output  # the kernel launcher made aifactory.at_start's fixes
    aifactory_file, distributed_file = output.split("FROM", 1)[1].split()
    assert aifactory_file == f"{kernels.AIFACTORY_PATH}/aifactory/__init__.py"
    assert distributed_file.startswith(f"{ML}/lib/python{PYTHON}/site-packages/distributed/")
    # The server says what is wrong with the others in its log, once each, however often the
    # launcher asks.
    page.goto(f"{HUB}/user/{USER}/lab?reset")
    page.wait_for_selector(f".jp-LauncherCard >> text={display}", timeout=60_000)
    log = Path(f"{HOME}/.jupyterhub-slurm-{job.job_id}.log").read_text()
    assert len(re.findall(rf"environment {BROKEN} its python links to", log)) == 1, log[-3000:]
    assert len(re.findall(rf"environment {BARE} has no ipykernel", log)) == 1, log[-3000:]


def test_the_cli_lists_the_others_with_the_reason_and_the_fix_that_works(environments):
    rows = {r["name"]: r for r in json.loads(cli(USER, "environments", "--json"))}
    assert rows["aiftest-ml"]["kernel"] and rows["aiftest-ml"]["python"] == PYTHON
    assert not rows["aiftest-broken"]["kernel"]
    assert "/opt/aiftest-removed-python/bin/python3, which does not exist" in (
        rows["aiftest-broken"]["problem"])
    assert rows["aiftest-project"]["problem"] == f"does not exist (listed in {LIST_FILE}, line 1)"
    bare = rows["aiftest-bare"]
    assert not bare["kernel"] and "no ipykernel" in bare["problem"]
    assert bare["fix"] == f"{BARE}/bin/python -m pip install ipykernel"
    table = cli(USER, "environments")
    assert f"fix: {bare['fix']}" in table
    assert re.search(rf"^aiftest-ml\s+{re.escape(PYTHON)}\s+yes\s+{ML}$", table, re.M), table
    # The fix, as bob types it, makes it a kernel.
    bob(*shlex.split(bare["fix"]), "-q", "--disable-pip-version-check")
    rows = {r["name"]: r for r in json.loads(cli(USER, "environments", "--json"))}
    assert rows["aiftest-bare"]["kernel"] and not rows["aiftest-bare"]["problem"]


WORKERS = """
import json, sys
from distributed import Client
from aifactory.dask import GPUCluster

def where():
    import sys, distributed, aiftest_marker
    return {"executable": sys.executable, "marker": aiftest_marker.WHERE,
            "distributed": distributed.__file__}

cluster = GPUCluster(gpus_per_job=1, walltime="00:10:00", account="proj-climate")
print(json.dumps({"tag": cluster.tag, "script": cluster.job_script()}), flush=True)
cluster.scale(jobs=1)
client = Client(cluster)
client.wait_for_workers(1, timeout=240)
print(json.dumps({"worker": client.submit(where, pure=False).result()}), flush=True)
client.close()
cluster.close()
"""


def next_json(proc: subprocess.Popen) -> dict:
    """The next JSON line the process prints (GPUCluster's "Scaling up by ..." is skipped)."""
    while line := proc.stdout.readline():
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"ended without a result: {proc.stderr.read()[-3000:]}")


def test_gpucluster_from_a_users_environment_runs_workers_in_it(environments):
    # What the kernel of bob's environment is started with, from the session's spec manager.
    spec = kernels.kernel_specs(kernels.scan(HOME)[0])["env-aiftest-ml"]
    environment = {"HOME": str(HOME), "AIFACTORY_SITE": SITE,
                   **{k: v.replace("${PATH}", "/usr/bin:/bin") for k, v in spec["env"].items()}}
    python = spec["argv"][:spec["argv"].index("-m")]
    proc = subprocess.Popen(
        ["runuser", "-u", USER, "--", "env", "-i", *(f"{k}={v}" for k, v in environment.items()),
         *python, "-c", WORKERS], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd="/tmp")
    tag = None
    try:
        started = next_json(proc)
        tag = started["tag"]
        assert f"{ML}/bin/python -P -m distributed.cli.dask_worker" in started["script"]
        worker = next_json(proc)["worker"]
        assert proc.wait(120) == 0, proc.stderr.read()[-3000:]
    finally:
        proc.kill()
        for job in tagged(tag) if tag else []:
            slurm.cancel(job.job_id)
    assert worker["executable"] == f"{ML}/bin/python"
    assert worker["marker"] == f"{ML}/lib/python{PYTHON}/site-packages/{MARKER}/__init__.py"
    assert worker["distributed"].startswith(f"{ML}/lib/")
    wait_until(lambda: not tagged(tag), 90, what="the worker job to go")
