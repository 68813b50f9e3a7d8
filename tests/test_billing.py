"""Site billing units, pure: Slurm's billing rule, the site's `billing`, budgets on `billing`."""

import json
import re
from pathlib import Path

import pytest
import yaml

from aifactory import report, slurm
from aifactory import site_description as site_module
from aifactory.billing import Billing, WeightsError, job_billing, parse_weights, tres_order
from aifactory.budget import project_budget
from aifactory.spawner.form import render
from aifactory.spawner.request import RequestError, check_budget, resolve

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
AIU = Billing("billing", "AIU", 48)
DEMO_GPU = "CPU=1.0,Mem=0.25G,GRES/gpu=24.0"  # hub_config/cluster/demo.yaml


def test_weights_are_read_as_slurm_writes_them():
    assert parse_weights("CPU=1.0,Mem=0.25G,GRES/gpu=24.0") == {
        "cpu": 1.0, "mem": 0.25 / 1024, "gres/gpu": 24.0}
    assert parse_weights("GRES/gpu:h100=2,Node=5,Mem=2") == {
        "gres/gpu:h100": 2.0, "node": 5.0, "mem": 2.0}  # memory without a suffix: per MB
    assert parse_weights("") == {}
    for bad in ("CPU", "CPU=x", "CPU=1;reboot", "CPU=1 Mem=2", "CPU=1, Mem=2", "CPU=1,\nMaxTime=1",
                "PriorityTier=9", "CPU=1,"):
        with pytest.raises(WeightsError):
            parse_weights(bad)
    assert [n for n, _ in tres_order(parse_weights("GRES/gpu=1,Mem=1G,CPU=1"))] == [
        "cpu", "mem", "gres/gpu"]


def test_a_jobs_billing_is_slurms_weighted_sum_cut_to_a_whole_number():
    # Measured on the 22.05 bed: CPU=0.3,Mem=0.25G,GRES/gpu=32 with 3 CPUs, 7G, 1 GPU gave
    # billing=34 in scontrol and sacct (0.9 + 1.75 + 32 = 34.65).
    assert job_billing(parse_weights("CPU=0.3,Mem=0.25G,GRES/gpu=32"), cpus=3,
                       memory_mb=7 * 1024, gpus=1) == 34
    # The demo's weights: what test_billing_units_live sees Slurm charge (28, 89, 6 and 47).
    gpu = parse_weights(DEMO_GPU)
    assert job_billing(gpu, cpus=3, memory_mb=7 * 1024, gpus=1) == 28
    assert job_billing(gpu, cpus=16, memory_mb=100 * 1024, gpus=2) == 89
    assert job_billing(parse_weights("CPU=1.0,Mem=0.25G"), cpus=4, memory_mb=8 * 1024, gpus=0) == 6
    assert job_billing(gpu, cpus=8, memory_mb=61 * 1024, gpus=1) == 47
    # A typed GPU weight counts only GPUs of that type; no weights at all bill the CPUs.
    typed = parse_weights("GRES/gpu:h100=10")
    assert job_billing(typed, cpus=1, memory_mb=1, gpus=2, gpu_type="h100") == 20
    assert job_billing(typed, cpus=1, memory_mb=1, gpus=2, gpu_type="a100") == 0
    assert job_billing({}, cpus=12, memory_mb=1, gpus=4) == 12


def test_amounts_show_the_unit_with_gpu_hours_beside():
    assert Billing().amount(12.5) == "12.50 GPU-hours"
    assert AIU.amount(120) == "120.00 AIU (2.50 GPU-h)"
    assert AIU.amount(None) == "unlimited"
    assert AIU.rate(DEMO_GPU, cpus=8, memory_mb=60 * 1024, gpus=1, gpu_type="h100") == 47
    assert Billing().rate(DEMO_GPU, cpus=8, memory_mb=60 * 1024, gpus=1) == 1


def site_with(tmp_path, billing) -> Path:
    data = yaml.safe_load((REPO / "hub_config/site.yaml").read_text())
    data["billing"] = billing
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_site_says_how_it_accounts(tmp_path):
    assert site_module.load(REPO / "hub_config/site.yaml").billing == Billing()
    site = site_module.load(site_with(tmp_path, {"tres": "billing", "unit": "SBU",
                                                 "units_per_gpu_hour": 128}))
    assert site.billing == Billing("billing", "SBU", 128.0)
    unit_words = "billing: unit must be a short name such as SBU"
    price_words = "billing: units_per_gpu_hour must be a positive number"
    for bad, words in [({"tres": "cpu"}, "billing: tres 'cpu' must be gres/gpu or billing"),
                       ({"tres": "billing", "unit": "S B U", "units_per_gpu_hour": 1}, unit_words),
                       ({"tres": "billing", "unit": "GPU-hours", "units_per_gpu_hour": 1},
                        unit_words),
                       ({"tres": "billing", "unit": "SBU"}, price_words),
                       ({"tres": "billing", "unit": "SBU", "units_per_gpu_hour": -1}, price_words),
                       ({"tres": "billing", "unit": "SBU", "units_per_gpu_hour": True},
                        price_words),
                       ({"tres": "gres/gpu", "unit": "SBU"}, "are for tres billing"),
                       ({"tres": "billing", "currency": "EUR"}, "billing may set only")]:
        with pytest.raises(site_module.SiteError, match=re.escape(words)):
            site_module.load(site_with(tmp_path, bad))


def test_budgets_on_billing_count_what_the_limit_counts():
    # Recorded on the 22.05 bed (2026-11-24), `sshare -aP --noheader --format=Account,User,
    # RawUsage,GrpTRESMins,TRESRunMins,GrpTRESRaw`, after test_billing_units_live.
    text = (DATA / "sshare-22.05-grptresraw.txt").read_text()
    on_gpu = {(b.account, b.user): b for b in slurm.parse_sshare(text)}
    on_billing = {(b.account, b.user): b for b in slurm.parse_sshare(text, "billing")}
    # RawUsage (81.5 min) still counts what the partitions billed while in AIU; the limit
    # counts 76 GPU-minutes, and that is what is used. Where the two agree, RawUsage's seconds.
    climate = on_gpu[("proj-climate", "")]
    assert (climate.granted_min, climate.used_min, climate.held_min) == (30000, 76, 0)
    assert on_gpu[("course-dl101", "")].used_min == 587 / 60  # GrpTRESRaw gres/gpu=9
    climate = on_billing[("proj-climate", "")]
    assert (climate.granted_min, climate.used_min, climate.held_min) == (None, 81, 0)
    assert on_billing[("proj-climate", "alice")].used_min == 77


def test_budgets_on_billing_while_a_job_runs():
    # Recorded as above with the demo in AIU mode and one job running for alice (billing=28,
    # 30 min walltime, a minute in): the limit, the use and the hold are all on billing.
    text = (DATA / "sshare-22.05-billing-running.txt").read_text()
    rows = {(b.account, b.user): b for b in slurm.parse_sshare(text, "billing")}
    climate = rows[("proj-climate", "")]
    assert (climate.granted_min, climate.used_min, climate.held_min) == (1440000, 129, 815)
    assert climate.remaining_min == 1440000 - 129 - 815
    assert (rows[("proj-climate", "alice")].held_min, rows[("proj-climate", "bob")].held_min) == (
        815, 0)
    on_gpu = {(b.account, b.user): b for b in slurm.parse_sshare(text)}
    assert (on_gpu[("proj-climate", "")].granted_min, on_gpu[("proj-climate", "")].held_min) == (
        None, 29)  # no limit on gres/gpu in this mode; the GPU's own hold


def test_views_give_the_site_unit_and_gpu_hours():
    budget = slurm.Budget("proj-x", granted_min=4800 * 60, used_min=480 * 60, held_min=96 * 60)
    p = project_budget(budget, [], "NONE", 1_700_000_000, AIU)
    assert (p["unit"], p["granted"], p["used"], p["held"], p["remaining"]) == (
        "AIU", 4800, 480, 96, 4224)
    assert (p["granted_gpu_h"], p["remaining_gpu_h"]) == (100, 88)
    p["role"] = "member"
    text = report.budgets_text({"projects": [p]})
    assert "granted (AIU): 4,800.00 (100.00 GPU-h)" in text
    assert "remaining: 4,224.00 (88.00 GPU-h)" in text


def test_past_jobs_burn_billing_units():
    job = slurm.PastJob(job_id="1", name="x", user="alice", account="proj-x", partition="gpu",
                        state="COMPLETED", gpus=1, cpus=8, billing=47,
                        start_time=1_700_000_000 - 3600, end_time=1_700_000_000,
                        elapsed_s=3600, time_limit_min=60, cpu_time_s=0)
    budget = slurm.Budget("proj-x", granted_min=None, used_min=0, held_min=0)
    p = project_budget(budget, [job], "NONE", 1_700_000_000, AIU)
    assert p["burn_per_day"] == round(47 / 7, 4)
    assert project_budget(budget, [job], "NONE", 1_700_000_000)[
        "burn_per_day_gpu_h"] == round(1 / 7, 4)


def test_the_hub_refuses_what_the_budget_cannot_pay_in_units():
    site = site_module.load(REPO / "hub_config/site.yaml")
    request = resolve(site, {"profile": "h100-1", "option_walltime": "1h"}, user="bob",
                      accounts=["proj-climate"], default_account="proj-climate",
                      reservations={}, qos={}, groups=set())
    assert request.cost(AIU, DEMO_GPU) == 47
    assert request.describe_cost(AIU, DEMO_GPU) == "47 AIU/h × 1 h = 47.00 AIU (0.98 GPU-h)"
    check_budget(request, {"proj-climate": slurm.Budget("proj-climate", 47 * 60, 0, 0)},
                 AIU, DEMO_GPU)  # exactly enough
    with pytest.raises(RequestError, match=re.escape(
            "47 AIU/h × 1 h = 47.00 AIU (0.98 GPU-h), but project proj-climate has "
            "46.00 AIU (0.96 GPU-h) left.")):
        check_budget(request, {"proj-climate": slurm.Budget("proj-climate", 46 * 60, 0, 0)},
                     AIU, DEMO_GPU)
    cpu = resolve(site, {"profile": "cpu"}, user="bob", accounts=["proj-climate"],
                  default_account="proj-climate", reservations={}, qos={}, groups=set())
    with pytest.raises(RequestError, match="budget is used up"):  # CPUs cost units too
        check_budget(cpu, {"proj-climate": slurm.Budget("proj-climate", 60, 60, 0)}, AIU,
                     "CPU=1.0,Mem=0.25G")


def test_the_form_gives_its_script_the_weights_and_the_unit(tmp_path):
    site = site_module.load(site_with(tmp_path, {"tres": "billing", "unit": "AIU",
                                                 "units_per_gpu_hour": 48}))
    page = render(site, selected="h100-1", accounts=["proj-climate"],
                  default_account="proj-climate", qos=[], reservations=[], availability=[],
                  budgets={"proj-climate": slurm.Budget("proj-climate", 4800 * 60, 60, 0)},
                  budgets_age=3, weights={"gpu": DEMO_GPU, "cpu": "CPU=1.0,Mem=0.25G"})
    data = json.loads(re.search(r'id="aif-data">(.*?)</script>', page, re.S).group(1))
    assert data["billing"] == {"by_gpu": False, "unit": "AIU", "units_per_gpu_hour": 48.0}
    assert data["weights"]["gpu"] == [["cpu", 1.0], ["mem", 0.25 / 1024], ["gres/gpu", 24.0]]
    assert data["profiles"]["h100-1"]["memory_gb"] == 60
    assert "4800.0 (100.0 GPU-h)" in page
    assert "one GPU-hour with its share of a node is 48.00 AIU" in page


@pytest.mark.parametrize("slug, fields", [
    ("h100-1", {}),
    ("h100-1", {"memory_gb": "61"}),  # 47.25: cut to 47
    ("h100-1", {"cpus": "3", "memory_gb": "7", "option_walltime": "8h"}),
    ("h100-1", {"gpus": "2", "walltime": "02:30:00"}),
    ("h100-4", {}),
    ("cpu", {"cpus": "5", "memory_gb": "9"}),
])
def test_the_forms_script_prices_a_session_as_the_hub_does(tmp_path, slug, fields):
    """The page's own script in Debian's chromium (no cluster needed) against `resolve`."""
    from playwright import sync_api as playwright
    from conftest import CHROMIUM_ARGS

    site = site_module.load(site_with(tmp_path, {"tres": "billing", "unit": "AIU",
                                                 "units_per_gpu_hour": 48}))
    weights = {"gpu": DEMO_GPU, "cpu": "CPU=1.0,Mem=0.25G"}
    html = render(site, selected=slug, accounts=["proj-climate"], default_account="proj-climate",
                  qos=[], reservations=[], availability=[], budgets={}, budgets_age=None,
                  weights=weights)
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                     args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_content(f"<form>{html}</form>")
        page.check(f"#aif-profile-{slug}")
        page.click("#aif-advanced summary")
        for name, value in fields.items():
            if name.startswith("option_"):
                page.select_option(f"select[name={name}][data-profile={slug}]", value)
            else:
                page.fill(f"#aif-{name}", value)
        shown = page.text_content("#aif-cost")
        browser.close()
    request = resolve(site, {"profile": slug, **fields}, user="bob", accounts=["proj-climate"],
                      default_account="proj-climate", reservations={}, qos={}, groups=set())
    rate = request.rate(AIU, weights[request.partition])
    hours = request.walltime_min / 60
    assert shown.startswith(f"{rate} AIU/h × {hours:g} h = {rate * hours:g} AIU "), shown


def test_the_demo_writes_the_weights_and_budgets_of_its_mode():
    from aifactory.cluster import render_slurm_conf
    from aifactory.cluster.accounting import budget_limit
    from aifactory.cluster.demo import load as load_demo

    demo = load_demo(REPO / "hub_config/cluster/demo.yaml")
    template = (REPO / "hub_config/cluster/slurm.conf.in").read_text()
    lines = {mode: [line for line in render_slurm_conf(demo, template, billing).splitlines()
                    if line.startswith("PartitionName=")]
             for mode, billing in (("gpu", Billing()), ("units", AIU))}
    assert all("TRESBillingWeights=GRES/gpu=1.0 " in line + " " for line in lines["gpu"])
    assert "TRESBillingWeights=CPU=1.0,Mem=0.25G,GRES/gpu=24.0" in lines["units"][0]
    assert "TRESBillingWeights=CPU=1.0,Mem=0.25G" in lines["units"][1]
    assert budget_limit(500, Billing()) == ("gres/gpu=30000", "gres/gpu=30000,billing=-1")
    assert budget_limit(500, AIU) == ("billing=1440000", "gres/gpu=-1,billing=1440000")


def test_demo_weights_that_are_not_slurms_are_refused(tmp_path):
    from aifactory.cluster.demo import DemoFileError
    from aifactory.cluster.demo import load as load_demo

    data = yaml.safe_load((REPO / "hub_config/cluster/demo.yaml").read_text())
    data["partitions"][0]["billing_weights"] = "CPU=1.0,\nMaxJobCount=1"
    bad = tmp_path / "demo.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(DemoFileError, match="partition gpu: billing_weights: TRESBillingWeights "
                                            "entry"):
        load_demo(bad)
