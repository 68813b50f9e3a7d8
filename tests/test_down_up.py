"""`down` then `up`: only our daemons stop, and nothing is lost. Runs last (it restarts all)."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import HubClient, aifactory, sacct_record, submit, wait_until

from aifactory import slurm


def accounting_view() -> dict:
    return {
        "associations": slurm.sacctmgr_list("association",
                                            fields=["Account", "User", "GrpTRESMins"]),
        "users": slurm.sacctmgr_list("user", "withcoord",
                                     fields=["User", "DefaultAccount", "Coordinators"]),
        "budgets": slurm.budgets(),
        "reservations": slurm.reservations(),
    }


@pytest.mark.slow
def test_down_stops_only_what_up_started_and_up_loses_nothing(live_cluster, passwords, tmp_path):
    job_id = submit("alice", "--partition=gpu", "--gres=gpu:1", "--time=1", script="sleep 1")
    wait_until(lambda: (r := sacct_record(job_id)) and r.state == "COMPLETED",
               90, what="a finished job in accounting")
    before = accounting_view()
    password_file = Path("/var/lib/aifactory/demo-passwords.json").read_text()

    # A process that merely has a daemon's name: `down` must not touch it.
    decoy_bin = tmp_path / "slurmd"
    shutil.copy("/bin/sleep", decoy_bin)
    decoy = subprocess.Popen([str(decoy_bin), "300"])
    # ... nor one with the allocations service's command line (down once stopped it by name).
    package = tmp_path / "elsewhere" / "aifactory"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "service.py").write_text("import time\ntime.sleep(300)\n")
    service_decoy = subprocess.Popen(["/usr/bin/python3", "-m", "aifactory.service"],
                                     cwd=package.parent)
    try:
        result = aifactory("cluster", "down")
        assert result.returncode == 0, result.stderr
        status = json.loads(aifactory("cluster", "status", "--json").stdout)
        assert {"configurable-http-proxy", "jupyterhub", "allocations"} <= set(status["services"])
        assert not any(s["running"] for s in status["services"].values()), status
        assert status["ok"] is False
        assert decoy.poll() is None, "down killed a process it did not start"
        assert service_decoy.poll() is None, "down killed a process it did not start"
        with pytest.raises(slurm.SlurmUnreachable, match="scheduler unreachable"):
            slurm.jobs()
    finally:
        decoy.kill()
        service_decoy.kill()
        up = aifactory("cluster", "up")
    assert up.returncode == 0, up.stderr

    assert json.loads(aifactory("cluster", "status", "--json").stdout)["ok"] is True
    assert accounting_view() == before
    assert sacct_record(job_id).state == "COMPLETED"
    assert Path("/var/lib/aifactory/demo-passwords.json").read_text() == password_file
    assert HubClient("alice").login(passwords["alice"]).status_code == 302
    # The budget is still enforced after the restart.
    over = submit("bob", "--account=proj-tiny", "--gres=gpu:4", "--time=2:00:00")
    try:
        job = wait_until(lambda: (j := slurm.job(over)) and j.reason != "None" and j, 30,
                         what="a pending reason")
        assert job.reason == "AssocGrpGRESMinutes"
    finally:
        slurm.cancel(over)
