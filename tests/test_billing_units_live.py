"""The demo in billing-unit mode, live: site.yaml bills in "AIU" on Slurm's `billing` TRES.

The module brings the demo up again from a copy of hub_config/ whose site.yaml says
`billing: {tres: billing, unit: AIU, units_per_gpu_hour: 48}` (so slurm.conf gets the demo
file's TRESBillingWeights and budgets become GrpTRESMins=billing), checks what a person sees
against what Slurm charges, and brings the demo back to GPU-hours. It restarts slurmctld and
the hub, so it is `slow`: slow tests run after all others (conftest), whatever their names."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import (ARTIFACTS, CHROMIUM_ARGS, add_account, aifactory, as_user, browser_env,
                      cli, log_in_browser, notebook_jobs, remove_account, submit, wait_until)
from playwright import sync_api as playwright

from aifactory import billing, slurm
from aifactory.dask import TLS_OFF_WORDS
from aifactory.cluster.demo import load as load_demo

REPO = Path(__file__).resolve().parents[1]
UNIT, PRICE = "AIU", 48
AUDIT = "audit-billing"
# What a login-node terminal reads: the site the hub was brought up with.
SITE_ENV = {"AIFACTORY_SITE": "/etc/aifactory/hub_config/site.yaml"}

pytestmark = pytest.mark.slow  # restarts slurmctld and the hub


@pytest.fixture(scope="module")
def units_mode(live_cluster, tmp_path_factory):
    config = tmp_path_factory.mktemp("billing") / "hub_config"
    shutil.copytree(REPO / "hub_config", config)
    site = yaml.safe_load((config / "site.yaml").read_text())
    site["billing"] = {"tres": "billing", "unit": UNIT, "units_per_gpu_hour": PRICE}
    (config / "site.yaml").write_text(yaml.safe_dump(site, sort_keys=False))
    try:
        up = aifactory("cluster", "up", "--hub-config", str(config))
        assert up.returncode == 0, up.stderr
        yield load_demo(REPO / "hub_config/cluster/demo.yaml")
    finally:
        back = aifactory("cluster", "up")
        assert back.returncode == 0, back.stderr
        # GPU-hours again: GPU-only weights and budgets on gres/gpu.
        assert slurm.partitions()["gpu"].billing_weights == "GRES/gpu=1.0"
        assert slurm.budgets()["proj-climate"].granted_min == 500 * 60


@pytest.fixture
def audit_project(units_mode):
    """A fresh project of alice's with 10 000 AIU and no usage yet."""
    add_account(AUDIT, "alice", f"billing={10_000 * 60}", coordinator=True)
    jobs = []
    yield jobs
    remove_account(AUDIT, jobs)


def test_the_demo_bills_cpus_memory_and_gpus_in_the_site_unit(units_mode):
    for p in units_mode.partitions:
        assert slurm.partitions()[p.name].billing_weights == p.billing_weights
    budgets = slurm.budgets("billing")
    assert budgets["proj-climate"].granted_min == 500 * PRICE * 60  # 500 GPU-hours in AIU
    answer = json.loads(cli("alice", "budget", "proj-climate", "--json", env=SITE_ENV))
    [p] = answer["projects"]
    assert (p["unit"], p["granted"], p["granted_gpu_h"]) == (UNIT, 500 * PRICE, 500)
    text = cli("alice", "budget", "proj-climate", env=SITE_ENV)
    assert f"granted ({UNIT}): 24,000.00 (500.00 GPU-h)" in text


def test_used_equals_what_slurm_charged(audit_project):
    # Jobs of known size; the first's weighted sum is not whole (3 + 1.75 + 24 = 28.75).
    shapes = [("gpu", ["--gres=gpu:h100:1", "--cpus-per-task=3", "--mem=7G"]),
              ("gpu", ["--gres=gpu:h100:2", "--cpus-per-task=16", "--mem=100G"]),
              ("cpu", ["--cpus-per-task=4", "--mem=8G"])]
    audit_project += [submit("alice", f"--account={AUDIT}", f"--partition={part}", "--time=10",
                             *args, script="sleep 120") for part, args in shapes]
    wait_until(lambda: all((r := slurm.accounting_jobs(job_ids=[j])) and r[0].state == "COMPLETED"
                           for j in audit_project), 240, interval=3, what="the audit jobs to end")
    records = [slurm.accounting_jobs(job_ids=[j])[0] for j in audit_project]
    weights = {name: p.billing_weights for name, p in slurm.partitions().items()}
    # What Slurm gave each job is what our rule computes from the partition's weights.
    site_billing = billing.Billing("billing", UNIT, PRICE)
    for (part, args), r in zip(shapes, records):
        gpus = 2 if "gpu:h100:2" in args[0] else (1 if part == "gpu" else 0)
        cpus = int(next(a for a in args if a.startswith("--cpus")).split("=")[1])
        memory_gb = int(next(a for a in args if a.startswith("--mem")).split("=")[1][:-1])
        assert r.billing == site_billing.rate(weights[part], cpus=cpus, memory_mb=memory_gb * 1024,
                                              gpus=gpus, gpu_type="h100"), (part, args, r)
    assert [r.billing for r in records] == [28, 89, 6]
    charged = sum(r.billing * r.elapsed_s for r in records) / 3600  # unit-hours, from slurmdbd

    def settled():
        [p] = json.loads(cli("alice", "budget", AUDIT, "--json", env=SITE_ENV))["projects"]
        return p["held"] == 0 and abs(p["used"] - charged) <= 0.01 * charged and p
    p = wait_until(settled, 180, interval=5, what=f"used to reach {charged:.3f} {UNIT}")
    print(f"\nused {p['used']} {UNIT}; Slurm charged {charged:.3f} {UNIT} "
          f"(sacct billing x elapsed); {p['used_gpu_h']} GPU-h beside")
    assert p["unit"] == UNIT and p["used_gpu_h"] == pytest.approx(p["used"] / PRICE, abs=1e-3)


def test_the_form_shows_the_cost_slurm_then_charges(units_mode, passwords, hub_client, tmp_path):
    hub_client("alice")  # stops alice's session afterwards
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                     args=CHROMIUM_ARGS, env=browser_env(tmp_path))
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        log_in_browser(page, "alice", passwords["alice"])
        page.wait_for_selector("#aif-cost")
        page.check("#aif-profile-h100-1")
        page.select_option("select[name=option_walltime]", "1h")
        page.click("#aif-advanced summary")
        page.fill("#aif-memory_gb", "61")  # 8 + 15.25 + 24 = 47.25: Slurm bills 47
        cost = page.text_content("#aif-cost")
        assert cost.startswith(f"47 {UNIT}/h × 1 h = 47 {UNIT} (0.98 GPU-h) of the "), cost
        assert UNIT in page.text_content("#aif-budget-unit")
        page.screenshot(path=ARTIFACTS / "billing-form.png", full_page=True)
        page.click("#spawn_form button[type=submit]")
        page.wait_for_url("**/user/alice/lab**", timeout=120_000)
        browser.close()
    [job] = notebook_jobs("alice")
    # Run to its full time, the session is charged billing x time limit: what the form said.
    full_time = job.billing * job.time_limit_min / 60
    assert full_time == pytest.approx(47, rel=0.01), job
    # Held from the budget while it runs: the same rate for the time it has left.
    held = slurm.budgets("billing")["proj-climate"].held_min / 60
    assert 0 < held <= full_time


def test_dask_cost_before_scale_is_in_the_unit(units_mode):
    out = as_user("alice", "/opt/aifactory/venv/bin/python", "-c", (
        "import json\n"
        "from aifactory.dask import GPUCluster\n"
        "c = GPUCluster(account='proj-climate', walltime='00:30:00', gpus_per_job=1)\n"
        "print(json.dumps([c.cost(2), c.job_script()])); c.check_budget(2); c.close()"),
        env=SITE_ENV)
    out = "".join(line for line in out.splitlines(keepends=True)
                  if line.rstrip("\n") != TLS_OFF_WORDS)  # Python 3.13
    first, printed = out.split("\n", 1)
    cost, script = json.loads(first)
    # The worker job as GPUCluster writes it (site.yaml dask: 8 CPUs and 60 GB per H100),
    # submitted held: Slurm's billing for it is what each worker job costs per hour.
    directives = [word for line in script.splitlines() if line.startswith("#SBATCH ")
                  and line.split()[1] in ("-p", "-A", "-t", "-n") or line.startswith((
                      "#SBATCH --cpus", "#SBATCH --mem", "#SBATCH --gres"))
                  for word in line.split()[1:]]
    assert "--mem=60G" in directives and "--cpus-per-task=8" in directives, script
    held = submit("alice", *directives, "--hold")
    try:
        rate = slurm.job(held).billing
    finally:
        slurm.cancel(held)
    assert rate == 47  # 8 + 15 + 24
    assert cost == 2 * rate * 0.5
    assert (f"Scaling up by 2 jobs x 1 H100 x 00:30:00 = 47.00 {UNIT} (0.98 GPU-h), of the "
            in printed), out
