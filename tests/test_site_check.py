"""`aifactory site check`: what a site's Slurm lacks, each named with the line to write.

Recorded: tests/data/scontrol-show-config-22.05.txt is `scontrol show config` of the demo
cluster on Debian 12's Slurm 22.05 (`./aif cluster up`, 2026-12-04); sinfo-22.05.json its
nodes (see tests/data/recorded/SOURCES.md). The live tests run the command on each bed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import REPO, aifactory, wait_until

from aifactory import site_check, slurm
from aifactory import site_description as site_module

DATA = Path(__file__).parent / "data"
SITE = REPO / "hub_config" / "site.yaml"


def demo_facts(**changes) -> site_check.SlurmFacts:
    config = slurm.parse_config((DATA / "scontrol-show-config-22.05.txt").read_text())
    nodes = slurm.parse_nodes_json((DATA / "sinfo-22.05.json").read_text())
    facts = site_check.SlurmFacts(
        config=config,
        partitions={"gpu": slurm.Partition("gpu", "gpu[01-03]", 2880, 60),
                    "cpu": slurm.Partition("cpu", "cpu01", 10080, 60)},
        nodes=nodes,
        reservations={r: slurm.Reservation(r, 0, None, "gpu03") for r in ("dl101", "ml202")},
        hub_user="aifactory-hub", hub_admin_level="Operator", hub_sudo=DEMO_HUB_SUDO,
        environment="/opt/aifactory/venv/bin/python", environment_readable=True)
    return dataclasses.replace(facts, **changes)


# `sudo -l -U aifactory-hub` on the demo (Debian 12's sudo 1.9.13).
DEMO_HUB_SUDO = ("User aifactory-hub may run the following commands on vm:\n"
                 "    (%aifactory-users, !root) NOPASSWD: /usr/bin/sbatch --parsable, "
                 "/usr/bin/scancel ^[0-9]{1,12}(_[0-9]{1,12})?$")


def missing(facts, site=None) -> list[site_check.Finding]:
    return [f for f in site_check.check(site or site_module.load(SITE), facts) if not f.ok]


def with_config(**settings) -> site_check.SlurmFacts:
    facts = demo_facts()
    return dataclasses.replace(facts, config={**facts.config, **settings})


def test_the_demo_slurm_has_all_the_demo_site_needs():
    findings = site_check.check(site_module.load(SITE), demo_facts())
    assert len(findings) >= 15 and all(f.ok for f in findings), [f for f in findings if not f.ok]
    assert site_check.report(findings).endswith(f"{len(findings)} of {len(findings)} hold.")


@pytest.mark.parametrize("setting,value,fix", [
    ("AccountingStorageType", "accounting_storage/none",
     "slurm.conf: AccountingStorageType=accounting_storage/slurmdbd"),
    ("AccountingStorageEnforce", "associations", "AccountingStorageEnforce=associations,limits"),
    ("AccountingStorageTRES", "cpu,mem,energy,node,billing",
     "AccountingStorageTRES=cpu,mem,energy,node,billing,gres/gpu,gres/gpu:h100"),
    ("AccountingStorageTRES", "cpu,gres/gpu", "AccountingStorageTRES=cpu,gres/gpu,gres/gpu:h100"),
    ("GresTypes", "", "slurm.conf: GresTypes=gpu"),
    ("PrivateData", "", "PrivateData=accounts,jobs,reservations,usage,users"),
    ("PrivateData", "jobs", "PrivateData=accounts,jobs,reservations,usage,users"),
    ("PriorityType", "priority/basic", "PriorityType=priority/multifactor"),
    ("PriorityUsageResetPeriod", "NONE", "PriorityUsageResetPeriod=QUARTERLY"),
    ("PriorityDecayHalfLife", "7-00:00:00", "PriorityDecayHalfLife=0"),
    ("JobSubmitPlugins", "", "JobSubmitPlugins=lua"),
    ("AccountingStoreFlags", "job_comment,job_env", "AccountingStoreFlags without job_env"),
])
def test_each_setting_taken_away_is_named_with_its_line(setting, value, fix):
    [found] = missing(with_config(**{setting: value}))
    assert fix in found.fix, found
    assert found.what.endswith((".", ")")) and "\n" not in found.what


def test_what_slurm_prints_differently_is_read_as_it_means():
    # priority/basic: Slurm prints no decay and no reset period; one cause, one finding.
    facts = with_config(PriorityType="priority/basic")
    config = {k: v for k, v in facts.config.items()
              if k not in ("PriorityDecayHalfLife", "PriorityUsageResetPeriod")}
    [found] = missing(dataclasses.replace(facts, config=config))
    assert "PriorityType=priority/multifactor" in found.fix
    # The plugin's full name, and GPU types in capitals (gres.conf's Type=A100).
    assert not missing(with_config(JobSubmitPlugins="job_submit/lua"))
    nodes = [dataclasses.replace(n, gres=n.gres.replace("h100", "H100")) for n in demo_facts().nodes]
    upper = dataclasses.replace(with_config(AccountingStorageTRES="gres/gpu,gres/gpu:h100"),
                                nodes=nodes)
    assert [f.what for f in missing(upper)] == [
        "Partition gpu has no node with 4 h100 GPUs (site.yaml partitions.gpu); Slurm says: "
        "H100 x4."]
    # NOW resets once, at slurmctld's start.
    [found] = missing(with_config(PriorityUsageResetPeriod="NOW"))
    assert "PriorityUsageResetPeriod=NOW" in found.what


def test_billing_units_need_no_gpu_tres_line_but_the_demo_says_it_is_accounted():
    site = site_module.load(SITE)
    units = dataclasses.replace(site, billing=dataclasses.replace(site.billing, tres="billing"))
    assert not missing(with_config(), units)  # billing is always accounted by Slurm


def test_partitions_gpus_reservations_and_the_hub_account_that_the_site_names():
    facts = demo_facts()
    no_gpu_partition = dataclasses.replace(facts, partitions={"cpu": facts.partitions["cpu"]})
    [found] = missing(no_gpu_partition)
    assert found.what.startswith("Partition gpu ") and "PartitionName=gpu" in found.fix
    two_gpus = [dataclasses.replace(n, gres="gpu:h100:2") if n.gres else n for n in facts.nodes]
    [found] = missing(dataclasses.replace(facts, nodes=two_gpus))
    assert "no node with 4 h100 GPUs" in found.what and "h100 x2" in found.what
    short = dict(facts.partitions, gpu=dataclasses.replace(facts.partitions["gpu"],
                                                           max_time_min=600))
    [found] = missing(dataclasses.replace(facts, partitions=short))
    assert "2880 minutes on gpu" in found.what and "MaxTime is 600" in found.what
    [found] = missing(dataclasses.replace(facts, reservations={"ml202": facts.reservations["ml202"]}))
    assert "reservation dl101" in found.what and "ReservationName=dl101" in found.fix
    found = missing(dataclasses.replace(facts, hub_user="jupyterhub", hub_admin_level="None",
                                        hub_sudo=""))
    assert [f.fix for f in found][0] == "sacctmgr modify user jupyterhub set AdminLevel=Operator"
    # A hub that is not root submits through sudo: sbatch --parsable and scancel, as a person.
    assert "submit a person's session as them" in found[1].what
    assert found[1].fix.startswith("/etc/sudoers.d/aifactory: jupyterhub ALL = (%<users group>")
    hub_sudo = ("User jupyterhub may run the following commands on vm:\n"
                "    (%aifactory-users, !root) NOPASSWD: /usr/bin/sbatch --parsable, "
                "/usr/bin/scancel ^[0-9]{1,12}$")
    assert not missing(dataclasses.replace(facts, hub_user="jupyterhub",
                                           hub_admin_level="Operator", hub_sudo=hub_sudo))
    only_cancel = hub_sudo.replace("/usr/bin/sbatch --parsable, ", "")
    [found] = missing(dataclasses.replace(facts, hub_user="jupyterhub",
                                          hub_admin_level="Operator", hub_sudo=only_cancel))
    assert "sbatch --parsable" in found.what
    everything = hub_sudo + "\n    (ALL) NOPASSWD: ALL"
    [found] = missing(dataclasses.replace(facts, hub_user="jupyterhub",
                                          hub_admin_level="Operator", hub_sudo=everything))
    assert "could run anything as anyone" in found.what
    [found] = missing(dataclasses.replace(facts, environment_readable=False))
    assert "/opt/aifactory/venv/bin/python" in found.what
    # The allocations service's own account: its admin level and its one sudo rule.
    sudo = ("User aifactory-allocations may run the following commands on vm:\n"
            "    (%aifactory-users, !root) NOPASSWD: /usr/bin/scancel ^[0-9]{1,12}$")
    service = dataclasses.replace(facts, service_user="aifactory-allocations",
                                  service_admin_level="Operator", service_sudo=sudo)
    assert not missing(service)
    found = missing(dataclasses.replace(service, service_admin_level="None", service_sudo=""))
    assert [f.fix.split(";")[0] for f in found][0] == (
        "sacctmgr add user aifactory-allocations account=root MaxSubmitJobs=0")
    assert found[1].fix.startswith("/etc/sudoers.d/aifactory: aifactory-allocations ALL")


# --- live, on each bed ----------------------------------------------------------------------

def test_site_check_passes_on_the_running_slurm_and_names_what_a_change_takes_away(
        live_cluster):
    ok = aifactory("site", "check", "--site", str(SITE), "--hub-user", "aifactory-hub",
                   "--service-user", "aifactory-allocations")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "aifactory-allocations may cancel a person's job as them" in ok.stdout
    assert "aifactory-hub may submit and cancel a person's session as them" in ok.stdout
    assert ok.stdout.strip().endswith("hold.") and "MISSING" not in ok.stdout
    assert f"against Slurm {slurm.version()[0]}." in ok.stdout
    # An account without an admin level cannot be the hub's (PrivateData hides the rest).
    dave = aifactory("site", "check", "--site", str(SITE), "--hub-user", "dave")
    assert dave.returncode == 1
    assert "write: sacctmgr modify user dave set AdminLevel=Operator" in dave.stdout
    # The running Slurm without PrivateData (slurm.conf, read again by slurmctld).
    conf = Path("/etc/slurm/slurm.conf")
    kept = conf.read_text()
    assert "PrivateData=" in kept
    try:
        conf.write_text("\n".join(l for l in kept.splitlines()
                                  if not l.startswith("PrivateData=")) + "\n")
        slurm.scontrol("reconfigure")
        wait_until(lambda: private_data() not in ("", None) and "jobs" not in private_data(), 60,
                   what="slurmctld to read slurm.conf again")
        open_data = aifactory("site", "check", "--site", str(SITE))
        assert open_data.returncode == 1
        [line] = [l for l in open_data.stdout.splitlines() if l.startswith("MISSING")]
        assert "PrivateData" in line
        assert "write: slurm.conf and slurmdbd.conf: PrivateData=accounts,jobs" in open_data.stdout
    finally:
        conf.write_text(kept)
        slurm.scontrol("reconfigure")
    wait_until(lambda: "jobs" in (private_data() or ""), 60, what="PrivateData back")
    # From 23.11 a reconfigure restarts slurmctld: the nodes register with it again.
    wait_until(nodes_usable, 180, interval=2, what="the nodes to register again")


def private_data() -> str | None:
    """slurmctld's PrivateData now, lower-case; None while it restarts."""
    try:
        return slurm.config().get("PrivateData", "").lower()
    except slurm.SlurmError:
        return None


def nodes_usable() -> bool:
    try:
        return all(n.usable for n in slurm.nodes())
    except slurm.SlurmError:
        return False


def test_the_24_11_testbeds_recorded_config_is_read_and_its_gaps_named():
    """Our 24.11 test bed (tests/data/recorded/24.11-testbed/config-cli.txt) ran without
    PrivateData and without job_submit.lua."""
    config = slurm.parse_config((DATA / "recorded/24.11-testbed/config-cli.txt").read_text())
    assert config["PrivateData"] == "none" and config["JobSubmitPlugins"] == ""
    found = missing(dataclasses.replace(demo_facts(), config=config))
    assert [f.fix.split(":")[0] for f in found] == ["slurm.conf and slurmdbd.conf", "slurm.conf"]
    assert "PrivateData=accounts" in found[0].fix and "JobSubmitPlugins=lua" in found[1].fix
