"""The operators' metrics (aifactory.metrics) from recorded Slurm answers, and the alert rules
(hub_config/prometheus/alerts.yml) evaluated by Prometheus's own promtool.

Recorded files: tests/data/squeue-22.05.json, sinfo-22.05.json and sshare-22.05.txt, from
the demo cluster on Debian 12's Slurm 22.05 (see tests/data/recorded/SOURCES.md).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aifactory import metrics, slurm
from aifactory.allocations import EMPTY, FETCH, SOURCES
from aifactory.billing import Billing
from aifactory.snapshot import Cached

DATA = Path(__file__).parent / "data"
ALERTS = Path(__file__).parent.parent / "hub_config" / "prometheus" / "alerts.yml"
NOW = 1795317400.0


def recorded_parts(**answers) -> dict[str, Cached]:
    """One cache per part, each holding a recorded answer (or `answers[part]`, which may be
    an exception the fetch raises)."""
    jobs = slurm.parse_jobs_json((DATA / "squeue-22.05.json").read_text())
    base = {
        "queue": {j.job_id: j for j in jobs},
        "nodes": slurm.parse_nodes_json((DATA / "sinfo-22.05.json").read_text()),
        "shares": slurm.parse_sshare((DATA / "sshare-22.05.txt").read_text()),
        "period": "QUARTERLY",
    }
    base.update(answers)
    parts = {}
    for name in FETCH:
        value = base.get(name, EMPTY[name]())

        def fetch(value=value):
            if isinstance(value, Exception):
                raise value
            return value
        parts[name] = Cached(fetch, SOURCES[name])
        try:
            parts[name].fetch_now()
            parts[name].as_of = NOW - 4
        except slurm.SlurmError:
            pass
    return parts


PROFILES = {"h100-1", "h100-4", "cpu", "course-dl101"}


def scrape(parts, commands=None) -> dict[str, list]:
    text = metrics.exposition(metrics.families(parts, Billing(), PROFILES, commands or {},
                                               now=NOW))
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            found.setdefault(s.name, []).append((s.labels, s.value))
    for name, samples in found.items():  # Prometheus refuses a scrape with a series twice
        labels = [tuple(sorted(l.items())) for l, _ in samples]
        assert len(labels) == len(set(labels)), f"{name} has a label set twice"
    return found


def value(found, name, **labels):
    matching = [v for l, v in found.get(name, []) if all(l.get(k) == w for k, w in labels.items())]
    assert len(matching) == 1, f"{name}{labels}: {found.get(name)}"
    return matching[0]


def test_sessions_are_counted_by_state_profile_and_partition_with_the_longest_wait():
    jobs = slurm.parse_jobs_json((DATA / "squeue-22.05.json").read_text())
    by_id = {j.job_id: j for j in jobs}
    tagged = {**by_id,
              "22": dataclasses.replace(by_id["22"], comment="aifactory-session:h100-1"),
              "23": dataclasses.replace(by_id["23"], comment="aifactory-session:h100-1"),
              "99": dataclasses.replace(by_id["23"], job_id="99", submit_time=int(NOW) - 1200,
                                        comment="aifactory-session:h100-1"),
              # Anyone can tag their own job: what is not a profile of the site is "other".
              "98": dataclasses.replace(by_id["23"], job_id="98",
                                        comment="aifactory-session:x" + "y" * 200),
              "97": dataclasses.replace(by_id["23"], job_id="97", comment="aifactory-session:zz")}
    found = scrape(recorded_parts(queue=tagged))
    assert value(found, "aifactory_sessions", state="running", profile="h100-1") == 1
    assert value(found, "aifactory_sessions", state="pending", profile="h100-1",
                 partition="gpu") == 2
    assert value(found, "aifactory_session_longest_pending_seconds", profile="h100-1") == 1200
    assert value(found, "aifactory_sessions", state="pending", profile="other") == 2
    assert {l["profile"] for l, _ in found["aifactory_sessions"]} == {"h100-1", "other"}
    # Every pending job, session or not, by Slurm's reason.
    assert value(found, "aifactory_jobs_pending", reason="AssocGrpGRESMinutes") == 4


def test_budgets_are_in_the_sites_unit_with_what_is_left_of_each_grant():
    found = scrape(recorded_parts())
    # proj-climate: 30000 GPU-minutes granted, 666.83 used, 120 held (sshare-22.05.txt).
    assert value(found, "aifactory_budget_granted", account="proj-climate") == 500
    assert value(found, "aifactory_budget_remaining", account="proj-climate",
                 unit="GPU-hours") == pytest.approx((30000 - 666.8333 - 120) / 60, abs=1e-3)
    assert value(found, "aifactory_budget_remaining_ratio", account="proj-tiny") == 1.0
    assert value(found, "aifactory_budget_remaining_ratio", account="proj-climate") == (
        pytest.approx(1 - (666.8333 + 120) / 30000, abs=1e-4))
    accounts = {l["account"] for l, _ in found["aifactory_budget_granted"]}
    assert accounts == {"course-dl101", "proj-climate", "proj-tiny"}  # members' rows are not


def test_free_gpus_and_a_drained_node_with_its_reason():
    nodes = slurm.parse_nodes_json((DATA / "sinfo-22.05.json").read_text())
    drained = [dataclasses.replace(n, flags=("DRAIN",), reason="fan failure")
               if n.name == "gpu02" else n for n in nodes]
    found = scrape(recorded_parts(nodes=drained))
    assert value(found, "aifactory_node_drained", node="gpu02") == 1
    assert value(found, "aifactory_node_reason_info", node="gpu02", reason="fan failure") == 1
    assert value(found, "aifactory_node_drained", node="gpu01") == 0
    assert "gpu01" not in {l["node"] for l, _ in found.get("aifactory_node_reason_info", [])}
    assert value(found, "aifactory_gpus", partition="gpu", gpu_type="h100", state="down") == 4
    assert value(found, "aifactory_gpus", partition="gpu", gpu_type="h100", state="total") == 12


def test_an_unreachable_daemon_is_down_and_its_parts_failing():
    gone = slurm.SlurmUnreachable("squeue: scheduler unreachable (Unable to contact slurm "
                                  "controller)")
    # slurmctld away: every part it serves fails, the database's parts still answer.
    found = scrape(recorded_parts(queue=gone, nodes=gone, reservations=gone, shares=gone,
                                  period=gone))
    assert value(found, "aifactory_slurm_up", daemon="slurmctld") == 0
    assert value(found, "aifactory_slurm_up", daemon="slurmdbd") == 1
    assert value(found, "aifactory_cache_failing", part="queue") == 1
    assert value(found, "aifactory_cache_age_seconds", part="queue") == float("inf")
    assert value(found, "aifactory_cache_age_seconds", part="members") == 4
    # The daemon's latest try decides: an hourly part that failed once does not keep it down.
    parts = recorded_parts(period=gone)
    for part in parts.values():
        part.tried = NOW - 30
    parts["period"].tried, parts["queue"].tried = NOW - 600, NOW - 2
    assert value(scrape(parts), "aifactory_slurm_up", daemon="slurmctld") == 1
    parts["period"].tried = NOW - 1
    assert value(scrape(parts), "aifactory_slurm_up", daemon="slurmctld") == 0
    # Slurm refusing is not Slurm being away.
    found = scrape(recorded_parts(queue=slurm.SlurmError("squeue: invalid user")))
    assert value(found, "aifactory_slurm_up", daemon="slurmctld") == 1
    assert value(found, "aifactory_cache_failing", part="queue") == 1


@pytest.fixture
def fake_slurm_bin(tmp_path, monkeypatch):
    """Slurm commands that answer as a daemon that is away, or refuse."""
    for name, line in (("squeue", "slurm_load_jobs error: Unable to contact slurm controller"),
                       ("scancel", "scancel: error: Invalid job id specified")):
        script = tmp_path / name
        script.write_text(f"#!/bin/sh\necho '{line}' >&2\nexit 1\n")
        script.chmod(0o755)
    monkeypatch.setenv("AIFACTORY_SLURM_BIN", str(tmp_path))
    monkeypatch.setattr(slurm, "COMMANDS", {})
    return tmp_path


def test_slurm_commands_are_timed_and_their_failures_told_apart(fake_slurm_bin):
    with pytest.raises(slurm.SlurmUnreachable):
        slurm.run(["squeue", "--json"])
    with pytest.raises(slurm.SlurmError):
        slurm.run(["scancel", "12345"])
    with pytest.raises(slurm.SlurmUnreachable):
        slurm.run(["squeue", "--json"])
    found = scrape(recorded_parts(), slurm.COMMANDS)
    assert value(found, "aifactory_slurm_command_seconds_count", command="squeue") == 2
    assert 0 < value(found, "aifactory_slurm_command_seconds_sum", command="squeue") < 10
    assert value(found, "aifactory_slurm_command_errors_total", command="squeue",
                 kind="unreachable") == 2
    assert value(found, "aifactory_slurm_command_errors_total", command="scancel",
                 kind="refused") == 1
    assert value(found, "aifactory_slurm_command_errors_total", command="scancel",
                 kind="unreachable") == 0


# --- the alert rules, as Prometheus evaluates them ----------------------------------------

ALERT_TESTS = """
rule_files: [{alerts}]
evaluation_interval: 10s
tests:
  - interval: 10s
    input_series:
      - series: 'aifactory_slurm_up{{daemon="slurmctld"}}'
        values: '1 1 0 0 0 0 0 0 0 1 1 1'
      - series: 'aifactory_slurm_up{{daemon="slurmdbd"}}'
        values: '1x11'
    alert_rule_test:
      - {{eval_time: 40s, alertname: SlurmUnreachable, exp_alerts: []}}
      - eval_time: 60s
        alertname: SlurmUnreachable
        exp_alerts:
          - exp_labels: {{severity: critical, daemon: slurmctld}}
            exp_annotations:
              summary: slurmctld does not answer the allocations service
              description: >-
                Sessions keep running and the widgets show older numbers, but no session
                can start and no budget is renewed until slurmctld answers again.
      - {{eval_time: 110s, alertname: SlurmUnreachable, exp_alerts: []}}
  - interval: 1m
    input_series:
      - series: 'aifactory_session_longest_pending_seconds{{profile="h100-1",partition="gpu"}}'
        values: '600 840 960'
      - series: 'aifactory_budget_remaining_ratio{{account="proj-tiny"}}'
        values: '0.5x10'
      - series: 'aifactory_budget_remaining_ratio{{account="proj-climate"}}'
        values: '0.2 0.09x10'
      - series: 'aifactory_node_drained{{node="gpu02"}}'
        values: '0 1x10'
      - series: 'aifactory_node_drained{{node="gpu01"}}'
        values: '0x10'
      - series: 'up{{job="allocations"}}'
        values: '1 0x10'
      - series: 'up{{job="jupyterhub"}}'
        values: '1x10'
    alert_rule_test:
      - {{eval_time: 1m, alertname: SessionsPendingLong, exp_alerts: []}}
      - eval_time: 2m
        alertname: SessionsPendingLong
        exp_alerts:
          - exp_labels: {{severity: warning, profile: h100-1, partition: gpu}}
            exp_annotations:
              summary: A h100-1 session on gpu has waited 16m 0s to start
      - {{eval_time: 5m, alertname: ProjectBudgetLow, exp_alerts: []}}
      - eval_time: 7m
        alertname: ProjectBudgetLow
        exp_alerts:
          - exp_labels: {{severity: warning, account: proj-climate}}
            exp_annotations:
              summary: Project proj-climate has 9% of its budget left
      - {{eval_time: 5m, alertname: NodeDrained, exp_alerts: []}}
      - eval_time: 7m
        alertname: NodeDrained
        exp_alerts:
          - exp_labels: {{severity: warning, node: gpu02}}
            exp_annotations:
              summary: "Node gpu02 is drained (why: aifactory_node_reason_info)"
      - eval_time: 3m
        alertname: AllocationsServiceDown
        exp_alerts:
          - exp_labels: {{severity: critical, job: allocations}}
            exp_annotations:
              summary: Prometheus cannot read the allocations service's metrics
      - {{eval_time: 3m, alertname: HubDown, exp_alerts: []}}
"""


def test_the_alert_rules_fire_when_and_only_when_they_say(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing (Debian's prometheus; ./aif cluster up installs it)")
        pytest.skip("promtool is missing (Debian's prometheus)")
    checked = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(textwrap.dedent(ALERT_TESTS).format(alerts=ALERTS))
    run = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
