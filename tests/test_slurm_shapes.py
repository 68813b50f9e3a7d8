"""One model from every Slurm shape, 22.05 to 25.11: recorded answers (see data/recorded/SOURCES.md).

squeue/sinfo/sacct/scontrol `--json` and slurmrestd share one data_parser per release, so both
kinds of recording run through the same parser here."""

import json
from pathlib import Path

import pytest

from aifactory import slurm

DATA = Path(__file__).parent / "data"
REC = DATA / "recorded"
VERSIONS = ["23.02", "23.11", "24.05", "24.11", "25.05", "25.11"]


def recorded(version: str, name: str) -> str:
    return (REC / version / name).read_text()


def by_id(items):
    return {i.job_id: i for i in items}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_release_gives_jobs_with_a_known_state_and_set_limits(version):
    jobs = slurm.parse_jobs_json(recorded(version, "jobs-slurmrestd.json"))
    assert jobs
    for j in jobs:
        assert j.state in slurm.JOB_BASE_STATES, (version, j.job_id, j.state)
        assert j.time_limit_min and j.time_limit_min > 0  # never 0 for "an object we misread"
        assert j.submit_time and j.submit_time > 1.6e9
        assert j.alive == (j.state in ("PENDING", "RUNNING"))
    assert any(j.running for j in jobs) and any(j.pending for j in jobs)
    assert all(j.reason for j in jobs)


@pytest.mark.parametrize("version", ["23.11", "24.05", "24.11", "25.05", "25.11"])
def test_gpus_of_running_and_pending_jobs_by_type(version):
    [running] = slurm.parse_jobs_json(recorded(version, "jobs-slurmrestd-gpus-running.json"))
    [per_node] = slurm.parse_jobs_json(recorded(version, "jobs-slurmrestd-gpus-per-node.json"))
    [pending] = slurm.parse_jobs_json(recorded(version, "jobs-slurmrestd-gpus-pending.json"))
    assert running.running and running.gpus in (4, 6) and running.gpu_type == "h100"
    assert per_node.gpus == 2 and per_node.gpu_types == (("h100", 2),)  # 1 per node, 2 nodes
    assert pending.pending and pending.gpus in (4, 6) and pending.reason == "BeginTime"


def test_24_11_test_bed_queue_as_our_cluster_sees_it():
    """Our own 24.11.5 recording: 1 job on 2 H100, one waiting for GPUs, one over budget."""
    jobs = by_id(slurm.parse_jobs_json(recorded("24.11-testbed", "jobs-cli-squeue.json")))
    waiting, running, broke = jobs["1"], jobs["2"], jobs["3"]
    assert (running.state, running.nodes, running.gpus, running.gpu_type) == (
        "RUNNING", "prb01", 2, "h100")
    assert running.time_limit_min == 30 and running.end_time - running.start_time == 1800
    assert (waiting.reason, waiting.gpus, waiting.comment) == (
        "Resources", 4, "aifactory-session:h100-4")
    assert waiting.start_time and waiting.start_time > waiting.submit_time  # Slurm's estimate
    assert broke.reason == "AssocGrpGRESMinutes" and broke.reason in slurm.HOPELESS_REASONS
    # The billing TRES: allocated for the running job, requested for the waiting ones.
    assert (running.billing, waiting.billing) == (4, 8)


@pytest.mark.parametrize("version, billing", [("23.02", [128, 32, 64, 32]),
                                              ("24.11", [768, 64])])
def test_jobs_carry_their_billing(version, billing):
    name = "jobs-slurmrestd.json" if version == "23.02" else "jobs-cli.json"
    assert [j.billing for j in slurm.parse_jobs_json(recorded(version, name))][:4] == billing


def test_22_05_job_states_and_numbers():
    jobs = by_id(slurm.parse_jobs_json((DATA / "squeue-22.05.json").read_text()))
    assert jobs["22"].state == "RUNNING" and jobs["22"].time_limit_min > 0
    assert jobs["22"].gpus == 2 and jobs["22"].gpu_type == "h100"  # from gres/gpu:h100 in TRES


@pytest.mark.parametrize("words, state, flags, alive, running", [
    ("RUNNING", "RUNNING", (), True, True),                                 # 22.05
    (["RUNNING"], "RUNNING", (), True, True),                               # 23.11+
    ("COMPLETING", "COMPLETING", ("COMPLETING",), True, True),              # 22.05 prints the flag
    (["COMPLETED", "COMPLETING"], "COMPLETED", ("COMPLETING",), True, False),
    (["FAILED", "COMPLETING"], "FAILED", ("COMPLETING",), True, False),  # ended at once
    (["RUNNING", "CONFIGURING"], "RUNNING", ("CONFIGURING",), True, False),
    (["PENDING", "REQUEUED"], "PENDING", ("REQUEUED",), True, False),
    (["CANCELLED"], "CANCELLED", (), False, False),
    (["NODE_FAIL"], "NODE_FAIL", (), False, False),
])
def test_job_state_and_flags(words, state, flags, alive, running):
    job = slurm.parse_jobs_json(json.dumps({"jobs": [
        {"job_id": 7, "job_state": words, "nodes": "gpu01"}]}))[0]
    assert (job.state, job.flags, job.alive, job.running) == (state, flags, alive, running)


@pytest.mark.parametrize("value, expected", [
    (60, 60), ({"set": True, "infinite": False, "number": 60}, 60),
    ({"set": False, "infinite": True, "number": 0}, slurm.UNLIMITED),
    ({"set": False, "infinite": False, "number": 0}, None),
    (4294967295, slurm.UNLIMITED), (4294967294, None), (None, None),
    (65535, 65535), ({"set": True, "infinite": False, "number": 4294967295}, 4294967295),
])
def test_numbers_keep_unlimited_and_not_set_apart_from_zero(value, expected):
    assert slurm.number(value) == expected


def test_a_priority_or_an_elapsed_time_is_a_number_whatever_its_value():
    [job] = slurm.parse_jobs_json(json.dumps({"jobs": [
        {"job_id": 7, "job_state": "RUNNING", "priority": 65535, "node_count": 4294967294}]}))
    assert job.priority == 65535
    [record] = slurm.parse_sacct_json(json.dumps({"jobs": [
        {"job_id": 7, "state": {"current": ["COMPLETED"]},
         "time": {"elapsed": 65535, "total": {"seconds": 4294967295, "microseconds": 65535}}}]}))
    assert record.elapsed_s == 65535 and record.cpu_time_s == 65535 / 1e6


def test_no_time_is_none_not_1970():
    assert slurm.timestamp({"set": True, "infinite": False, "number": 0}) is None
    assert slurm.timestamp(0) is None and slurm.timestamp(1795521342) == 1795521342


@pytest.mark.parametrize("version, drained, down", [
    ("23.02", "cn051", "cn084"), ("23.11", "cn1", "cn4"), ("24.11", "cn4", "cn3"),
    ("25.05", "cn3", "cn4"), ("25.11", "cn1", "cn2"),
])
def test_drained_and_down_nodes_are_unusable_with_their_reason(version, drained, down):
    nodes = {n.name: n for n in slurm.parse_nodes_json(recorded(version, "nodes-slurmrestd.json"))}
    assert (nodes[drained].condition, nodes[drained].reason) == ("drained", "ECC memory error")
    assert (nodes[down].condition, nodes[down].reason) == ("down", "CPU dead")
    assert nodes[drained].reason_time > 1.7e9
    usable = [n for n in nodes.values() if n.usable]
    assert usable and all(not n.problems and n.condition == "" for n in usable)


def test_24_05_single_node_answers():
    [drain] = slurm.parse_nodes_json(recorded("24.05", "nodes-slurmrestd-drain.json"))
    [gpu] = slurm.parse_nodes_json(recorded("24.05", "nodes-slurmrestd-gpus.json"))
    assert not drain.usable and drain.problems == ("DRAIN",)
    assert gpu.usable and gpu.gpus() == {"h100": 4} and gpu.gpus(used=True) == {"h100": 4}


def test_real_cluster_nodes_not_responding_and_socket_suffixes():
    nodes = {n.name: n for n in slurm.parse_nodes_json(
        recorded("23.11", "nodes-slurmrestd-talapas.json"))}
    assert nodes["dtn1"].condition == "down, not responding"
    assert nodes["n0160"].gpus() == {"nvidia_a100_80gb_pcie": 1}  # "(S:1)" suffix dropped
    [mig] = [n for n in nodes.values() if "(IDX:0-3,5-9)" in n.gres_used]
    assert mig.gpus(used=True) == {"1g.10gb": 9}  # the comma inside "(IDX:0-3,5-9)" splits nothing


def test_24_11_test_bed_drained_node_in_a_reservation():
    nodes = {n.name: n for n in slurm.parse_nodes_json(
        recorded("24.11-testbed", "nodes-cli-scontrol.json"))}
    prb01, prb02 = nodes["prb01"], nodes["prb02"]
    assert prb01.usable and prb01.flags == ("PLANNED",) and prb01.gpus(used=True) == {"h100": 2}
    assert (prb02.state, prb02.flags, prb02.usable) == ("IDLE", ("RESERVED", "DRAIN"), False)
    assert (prb02.reason, prb02.reason_user) == ("disk failure test", "root")


def test_22_05_drain_is_a_flag_beside_the_state():
    text = (DATA / "sinfo-22.05.json").read_text()
    data = json.loads(text)
    for i in (1, 2):  # gpu01 runs a job, gpu02 is idle
        data["nodes"][i]["state_flags"] = ["DRAIN"]
        data["nodes"][i]["reason"] = "disk failure"
    nodes = slurm.parse_nodes_json(json.dumps(data))
    assert [n.usable for n in nodes] == [True, False, False, True]
    assert (nodes[1].state, nodes[1].condition) == ("MIXED", "draining")  # its job may finish
    assert (nodes[2].state, nodes[2].condition) == ("IDLE", "drained")


@pytest.mark.parametrize("version", ["23.02", "24.11"])
def test_sinfo_lists_no_nodes_from_23_02_so_scontrol_is_asked(version):
    assert slurm.parse_nodes_json(recorded(version, "nodes-cli-sinfo.json")) == []


@pytest.mark.parametrize("version, name", [
    ("22.05", "sacct-cli.json"), ("23.02", "sacct-cli.json"), ("23.11", "sacct-cli.json"),
])
def test_sacct_records_from_real_clusters_carry_gpus_and_limits(version, name):
    [job] = slurm.parse_sacct_json(recorded(version, name))
    assert job.gpus in (2, 16) and job.cpus > 0 and job.time_limit_min in (2880, 7200)
    assert job.state in ("FAILED", "RUNNING") and job.start_time > 1.6e9


@pytest.mark.parametrize("version", VERSIONS)
def test_sacct_running_completed_and_pending_in_every_release(version):
    [running] = slurm.parse_sacct_json(recorded(version, "sacct-slurmrestd.json"))
    [done] = slurm.parse_sacct_json(recorded(version, "sacct-slurmrestd-completed.json"))
    [waiting] = slurm.parse_sacct_json(recorded(version, "sacct-slurmrestd-pending.json"))
    assert (running.state, running.alive, running.end_time) == ("RUNNING", True, None)
    assert (done.state, done.alive) == ("COMPLETED", False) and done.end_time >= done.start_time
    assert (waiting.state, waiting.start_time, waiting.cpus) == ("PENDING", None, 0)
    assert done.time_limit_min and done.cpus > 0 and done.billing > 0


def test_24_11_test_bed_sacct_has_gpus_and_billing():
    jobs = by_id(slurm.parse_sacct_json(recorded("24.11-testbed", "sacct-cli.json")))
    assert (jobs["2"].state, jobs["2"].gpus, jobs["2"].billing) == ("RUNNING", 2, 4)
    assert jobs["4"].state == "NODE_FAIL" and slurm.END_STATES["NODE_FAIL"]


def test_reservations_from_json_and_from_scontrol_text_agree():
    from_json = slurm.parse_reservations_json(recorded("24.11-testbed",
                                                       "reservations-cli-scontrol.json"))
    from_text = slurm.parse_reservations_text(recorded("24.11-testbed",
                                                       "reservations-cli-oneliner.txt"))
    assert from_json == [r for r in from_text]
    course, later = from_json
    now = course.start + 60
    assert course.active(now) and not later.active(now)
    assert course.admits("alice", ["proj-a"]) and not course.admits("bob", ["proj-b"])
    assert later.admits("bob", []) and later.users == ("bob",) and later.accounts == ()


@pytest.mark.parametrize("version", ["23.02", "23.11", "24.05"])
def test_reservations_of_other_releases(version):
    [r] = slurm.parse_reservations_json(recorded(version, "reservations-slurmrestd.json"))
    assert r.start < r.end and r.nodes.startswith("cn[") and r.accounts and r.users


def test_partitions_with_billing_weights_from_json_and_text():
    [from_json] = slurm.parse_partitions_json(recorded("24.11-testbed",
                                                       "partitions-cli-scontrol.json"))
    [from_text] = slurm.parse_partitions_text(recorded("24.11-testbed",
                                                       "partitions-cli-oneliner.txt"))
    assert from_json == from_text
    assert (from_json.max_time_min, from_json.default_time_min) == (2880, 60)
    assert from_json.billing_weights == "CPU=0.1,Mem=0.01G,GRES/gpu=2.0"


@pytest.mark.parametrize("version", VERSIONS)
def test_partitions_of_every_release(version):
    parts = slurm.parse_partitions_json(recorded(version, "partitions-slurmrestd.json"))
    assert parts and all(p.nodes for p in parts)
    assert all(p.max_time_min is None or p.max_time_min > 0 for p in parts)


def test_24_11_sshare_indents_account_names():
    budgets = {(b.account, b.user): b for b in slurm.parse_sshare(
        recorded("24.11-testbed", "sshare-cli.txt"))}
    assert budgets[("proj-b", "")].granted_min == 60
    assert budgets[("proj-a", "alice")].used_min == 231 / 60


def test_versions_and_where_the_commands_are(monkeypatch):
    assert slurm.parse_version("slurm-wlm 22.05.8") == (22, 5)
    assert slurm.parse_version("slurm 24.11.5\n") == (24, 11)
    monkeypatch.setenv("AIFACTORY_SLURM_BIN", "/sw/slurm/25.11/bin")
    assert slurm.command_path("squeue") == "/sw/slurm/25.11/bin/squeue"
    monkeypatch.setenv("AIFACTORY_SLURM_BIN", "/nonexistent")
    with pytest.raises(slurm.SlurmError, match="not installed here"):
        slurm.run(["squeue", "--json"])


def test_a_recorded_24_11_sdiag_counts_rpcs():
    counts = slurm.parse_sdiag_rpcs(recorded("24.11-testbed", "sdiag.txt"))
    assert counts["REQUEST_JOB_INFO"] >= 1 and counts["REQUEST_NODE_INFO"] >= 1
