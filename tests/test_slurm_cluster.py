"""Jobs on the live cluster, as the demo users submit them."""

import pytest
from conftest import job_state, sacct_record, submit, wait_until

from aifactory import slurm


def test_two_gpu_job_sees_two_gpus(live_cluster):
    out = slurm.run(["srun", "--partition=gpu", "--gres=gpu:2", "--time=1",
                     "printenv", "CUDA_VISIBLE_DEVICES"], user="alice", timeout=60)
    gpus = out.strip().split(",")
    assert len(gpus) == 2 and len(set(gpus)) == 2, out


def test_two_node_job_runs_one_task_per_node_with_different_addresses(live_cluster):
    out = slurm.run(["srun", "--partition=gpu", "--nodes=2", "--ntasks-per-node=1",
                     "--nodelist=gpu01,gpu02", "--time=1", "bash", "-c",
                     'echo "$SLURMD_NODENAME $(hostname -I)"'], user="alice", timeout=60)
    lines = sorted(line.split() for line in out.strip().splitlines())
    assert [line[0] for line in lines] == ["gpu01", "gpu02"], out
    addresses = {line[1] for line in lines}
    assert addresses == {"10.77.0.11", "10.77.0.12"}, out


def test_accounting_records_the_gpus_of_a_job(live_cluster):
    job_id = submit("alice", "--partition=gpu", "--gres=gpu:2", "--time=1", script="sleep 2")
    wait_until(lambda: (r := sacct_record(job_id)) and r.state == "COMPLETED",
               90, what=f"job {job_id} to complete in sacct")
    record = sacct_record(job_id)
    assert (record.account, record.user, record.gpus) == ("proj-climate", "alice", 2)


def test_job_over_budget_does_not_start_and_says_why(live_cluster):
    # proj-tiny has 1 GPU-hour; 4 GPUs for 2 h would need 8.
    job_id = submit("bob", "--account=proj-tiny", "--partition=gpu", "--gres=gpu:4",
                    "--time=2:00:00")
    try:
        job = wait_until(lambda: (j := job_state(job_id)) and j.reason != "None" and j,
                         30, what="a pending reason")
        assert job.state == "PENDING"
        assert job.reason == "AssocGrpGRESMinutes", job
        # A job that fits the same budget does start: the reason is the budget, not the nodes.
        small = submit("bob", "--account=proj-tiny", "--partition=gpu", "--gres=gpu:1",
                       "--time=10", script="true")
        wait_until(lambda: (r := sacct_record(small)) and r.state == "COMPLETED",
                   90, what=f"job {small} within the budget to run")
        assert job_state(job_id).state == "PENDING"
    finally:
        slurm.cancel(job_id)


def test_reservation_holds_the_course_node_for_the_course(live_cluster):
    reservations = slurm.reservations()
    assert reservations["dl101"].accounts == ("course-dl101",)
    assert reservations["dl101"].nodes == "gpu03" and reservations["dl101"].active()
    out = slurm.run(["srun", "--reservation=dl101", "--account=course-dl101", "--gres=gpu:1",
                     "--time=1", "printenv", "SLURMD_NODENAME"], user="student1", timeout=60)
    assert out.strip() == "gpu03"
    # Someone outside the course cannot use the course's node.
    with pytest.raises(slurm.SlurmError, match="(?i)reservation"):
        slurm.run(["sbatch", "--reservation=dl101", "--account=proj-climate", "--wrap=true"],
                  user="alice")


def test_the_bed_runs_a_slurm_we_know_and_every_answer_has_its_shape(live_cluster):
    """22.05 on this machine, 24.11 in the Debian 13 root (`./aif --slurm 24.11`)."""
    version = slurm.version()
    assert version in ((22, 5), (24, 11)), version
    print(f"Slurm {version[0]}.{version[1]:02d}")
    nodes = {n.name: n for n in slurm.nodes()}
    assert {"gpu01", "gpu02", "gpu03", "cpu01"} <= set(nodes)
    assert nodes["gpu01"].gpus() == {"h100": 4} and nodes["gpu01"].usable
    assert "RESERVED" in nodes["gpu03"].flags or version == (22, 5)  # held by dl101
    parts = slurm.partitions()
    assert parts["gpu"].max_time_min == 2 * 1440 and parts["gpu"].default_time_min == 60
    assert slurm.reservations()["dl101"].active()
