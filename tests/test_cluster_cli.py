"""`aifactory cluster up | status` on the live machine: idempotent, and bad input changes nothing."""

import json
from pathlib import Path

import pytest
from conftest import REPO, aifactory

from aifactory import slurm
from aifactory.cluster import ClusterError
from aifactory.cluster.system import ensure_debs



def snapshot() -> dict:
    """What a bad `up` must leave alone: daemons (by pid), configs, accounting, users."""
    status = json.loads(aifactory("cluster", "status", "--json").stdout)
    return {
        "pids": {name: s["pid"] for name, s in status["services"].items()},
        "slurm.conf": Path("/etc/slurm/slurm.conf").read_text(),
        "hosts": Path("/etc/hosts").read_text(),
        "associations": slurm.sacctmgr_list("association", fields=["Account", "User", "GrpTRESMins"]),
        "passwd": Path("/etc/passwd").read_text(),
    }


def test_status_is_all_green_as_json(live_cluster):
    result = aifactory("cluster", "status", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    status = json.loads(result.stdout)
    assert status["ok"] is True
    expected = {"munge", "mariadb", "slurmdbd", "slurmctld", "oidc-provider", "postgresql",
                "configurable-http-proxy", "jupyterhub", "allocations", "prometheus",
                "slurmd-gpu01", "slurmd-gpu02", "slurmd-gpu03", "slurmd-cpu01"}
    assert set(status["services"]) == expected
    assert all(s["running"] and s["pid"] for s in status["services"].values())
    assert set(status["nodes"]) == {"gpu01", "gpu02", "gpu03", "cpu01"}


def test_second_up_changes_nothing_that_runs(live_cluster):
    before = snapshot()
    result = aifactory("cluster", "up")
    assert result.returncode == 0, result.stderr
    assert "restarting" not in result.stdout
    assert "alice" in result.stdout and "https://hub.localhost:8443" in result.stdout
    assert snapshot() == before


@pytest.mark.parametrize("content,message", [
    ("cluster: aifactory\nnodes: [\n", "is not valid YAML"),
    ("cluster: aifactory\n", "missing 'network'"),
    (None, "users[0].name: 'alice$(reboot)' is not a valid user name"),
])
def test_up_with_a_broken_demo_file_says_why_and_changes_nothing(live_cluster, tmp_path,
                                                                  content, message):
    demo = tmp_path / "demo.yaml"
    if content is None:
        text = (REPO / "hub_config/cluster/demo.yaml").read_text()
        content = text.replace("{name: alice, default_account", "{name: 'alice$(reboot)', default_account", 1)
    demo.write_text(content)
    before = snapshot()
    result = aifactory("cluster", "up", "--demo", str(demo))
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr and str(demo) in result.stderr
    assert snapshot() == before


def test_up_with_a_missing_hub_config_says_why(live_cluster, tmp_path):
    before = snapshot()
    result = aifactory("cluster", "up", "--hub-config", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "nowhere" in result.stderr
    assert snapshot() == before


def test_a_package_apt_cannot_find_is_one_clear_sentence(live_cluster):
    with pytest.raises(ClusterError) as err:
        ensure_debs(["aifactory-no-such-package"])
    text = str(err.value)
    assert text.startswith("apt-get could not install aifactory-no-such-package:")
    assert "\n" not in text
