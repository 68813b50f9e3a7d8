"""Parsing of recorded Slurm 22.05 output (captured on the local cluster), beside the live tests.

Other releases: test_slurm_shapes.py."""

from pathlib import Path

import pytest

from aifactory import slurm

DATA = Path(__file__).parent / "data"


def test_squeue_json_gives_jobs_with_state_reason_and_gpus():
    jobs = {j.job_id: j for j in slurm.parse_jobs_json((DATA / "squeue-22.05.json").read_text())}
    running, pending = jobs["22"], jobs["23"]
    assert (running.state, running.user, running.account, running.nodes) == (
        "RUNNING", "alice", "proj-climate", "gpu01")
    assert running.gres == "gres:gpu:2"
    assert (pending.state, pending.reason, pending.account, pending.nodes) == (
        "PENDING", "AssocGrpGRESMinutes", "proj-tiny", "")


def test_squeue_with_the_controller_down_is_unreachable_not_empty():
    # squeue exits 0 here; reading it as "no jobs" would drop every running session.
    with pytest.raises(slurm.SlurmUnreachable, match="scheduler unreachable"):
        slurm.parse_jobs_json((DATA / "squeue-22.05-controller-down.json").read_text())


def test_squeue_filter_is_applied_on_our_side():
    jobs = slurm.parse_jobs_json((DATA / "squeue-22.05.json").read_text())
    assert [j.job_id for j in slurm._select(jobs, None, ["23"])] == ["23"]
    assert {j.user for j in slurm._select(jobs, "bob", None)} == {"bob"}
    with pytest.raises(ValueError):
        slurm._select(jobs, None, ["23; scancel 22"])


def test_sinfo_json_gives_nodes_and_their_gres():
    nodes = {n.name: n for n in slurm.parse_nodes_json((DATA / "sinfo-22.05.json").read_text())}
    assert set(nodes) == {"gpu01", "gpu02", "gpu03", "cpu01"}
    assert nodes["gpu01"].gres == "gpu:h100:4" and nodes["gpu01"].address == "10.77.0.11"
    assert nodes["cpu01"].gres == ""


def test_sacct_json_and_its_empty_answer():
    [record] = [r for r in slurm.parse_sacct_json((DATA / "sacct-22.05.json").read_text())
                if r.job_id == "22"]
    assert record.state == "CANCELLED"
    assert slurm.parse_sacct_json((DATA / "sacct-22.05-nothing-found.json").read_text()) == []


def test_tres_strings():
    assert slurm.tres_value("cpu=4,gres/gpu=120,mem=1G", "gres/gpu") == 120
    assert slurm.tres_value("cpu=4", "gres/gpu") is None


def test_errors_name_the_command_and_spot_an_absent_daemon():
    with pytest.raises(slurm.SlurmUnreachable, match="scontrol: scheduler unreachable"):
        slurm._check(["scontrol"], 1, "", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)")
    with pytest.raises(slurm.SlurmError, match="^sbatch: sbatch: error: Invalid account") as err:
        slurm._check(["sbatch"], 1, "", "sbatch: error: Invalid account\nsomething generic")
    assert not isinstance(err.value, slurm.SlurmUnreachable)


def test_job_ids_are_checked_before_any_command():
    with pytest.raises(ValueError):
        slurm.cancel("1 2")
    with pytest.raises(ValueError):
        slurm.cancel("--user=alice")


def test_sdiag_rpc_counts():
    counts = slurm.parse_sdiag_rpcs((DATA / "sdiag-22.05.txt").read_text())
    assert counts["REQUEST_JOB_INFO"] > 0 and counts["REQUEST_SUBMIT_BATCH_JOB"] >= 1
    assert "REQUEST_PING" in counts and all(isinstance(v, int) for v in counts.values())


def test_user_associations_with_qos():
    text = "bob|proj-climate|proj-tiny|normal\nbob|proj-climate|proj-climate|long,normal\n"
    access = slurm.parse_user_associations("bob", text)
    assert access.accounts == ["proj-tiny", "proj-climate"]
    assert access.default_account == "proj-climate"
    assert access.qos == {"proj-tiny": ["normal"], "proj-climate": ["long", "normal"]}


def test_queue_position_counts_only_jobs_that_compete_for_the_same_nodes():
    from aifactory.availability import queue_position

    def pending(job_id, priority, reason="Priority", partition="gpu", reservation=""):
        return slurm.Job(job_id, "x", "u", "a", partition, "PENDING", reason, "",
                         reservation=reservation, priority=priority)
    mine = pending("50", 100, "Resources")
    jobs = {j.job_id: j for j in [
        mine,
        pending("40", 200),                          # ahead
        pending("41", 100),                          # same priority, submitted first: ahead
        pending("60", 100),                          # same priority, submitted later
        pending("42", 300, "AssocGrpGRESMinutes"),   # held by its own budget
        pending("43", 300, "Dependency"),
        pending("44", 300, partition="cpu"),
        pending("45", 300, reservation="dl101"),
        pending("46", 50),                           # behind
    ]}
    assert queue_position(mine, jobs) == 3


def test_sshare_gives_budgets_and_members_shares_in_gpu_minutes():
    rows = slurm.parse_sshare((DATA / "sshare-22.05.txt").read_text())
    by_key = {(b.account, b.user): b for b in rows}
    climate, alice = by_key[("proj-climate", "")], by_key[("proj-climate", "alice")]
    assert climate.granted_min == 500 * 60
    assert climate.used_min == 40010 / 60  # RawUsage: GPU-seconds, partitions bill GPUs only
    assert alice.held_min == 120  # a running 2-GPU job with 60 minutes left
    assert alice.granted_min is None
    assert by_key[("proj-tiny", "")].remaining_min == 60
    assert not any(b.account == "root" for b in rows)


def test_each_worker_of_a_job_keeps_its_own_gpu():
    from aifactory.gpu_pin import pin
    assert [pin(f"GPUCluster-3-{i}", "0,1,2,3") for i in range(4)] == ["0", "1", "2", "3"]
    assert pin("GPUCluster-3-1", "2,3") == "3"
    assert pin("GPUCluster-7", "2") == "2"  # one GPU per job: nothing to split
    assert pin("GPUCluster-7", "") == ""
