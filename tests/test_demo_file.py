"""The demo description is checked before anything is built from it (no cluster needed)."""

import os
import stat
from pathlib import Path

import pytest
import yaml

from aifactory.cluster import render_gres_conf, render_slurm_conf
from aifactory.cluster.demo import DemoFileError, load
from aifactory.cluster.system import write_if_changed

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "hub_config" / "cluster" / "demo.yaml"


def edited(tmp_path, change) -> Path:
    data = yaml.safe_load(DEMO.read_text())
    change(data)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_shipped_demo_file_is_valid():
    demo = load(DEMO)
    assert [n.name for n in demo.gpu_nodes] == ["gpu01", "gpu02", "gpu03"]
    assert all(n.gpus == 4 and n.gpu_type == "h100" for n in demo.gpu_nodes)
    kinds = {a.name: a.kind for a in demo.accounts}
    assert "research" in kinds.values() and "course" in kinds.values()
    assert demo.reservations and demo.controller_address == "10.77.0.1"


def _set(path, value):
    def change(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


BROKEN = [
    (_set(["users", 0, "name"], "alice; rm -rf /"),
     "users[0].name: 'alice; rm -rf /' is not a valid user name"),
    (_set(["users", 0, "name"], "root"), "belongs to the system"),
    (_set(["accounts", 0, "gpu_hours"], -5), "between 0 and"),
    (_set(["accounts", 0, "gpu_hours"], "lots"), "whole number"),
    (_set(["accounts", 0, "coordinators"], ["carol"]), "coordinator carol is not one of its users"),
    (_set(["accounts", 0, "users"], ["alice", "mallory"]), "user mallory is not in 'users'"),
    (_set(["accounts", 0, "description"], "x\n#SBATCH --uid=0"),
     "accounts[0].description: 'x\\n#SBATCH --uid=0' is not a description"),
    (_set(["accounts", 0, "kind"], "secret"),
     "accounts[0].kind: 'secret' is not one of course, research"),
    (_set(["nodes", 0, "address"], "192.168.1.5"), "not a host address in 10.77.0.0/24"),
    (_set(["nodes", 1, "address"], "10.77.0.11"), "already taken"),
    (_set(["nodes", 0, "address"], "10.77.0.1"), "already taken"),
    (_set(["nodes", 0, "gpus"], 99), "between 0 and 16"),
    (_set(["nodes", 0, "gpu_type"], "H100 Gres=x"),
     "nodes[0].gpu_type: 'H100 Gres=x' is not a GPU type"),
    (lambda d: d["nodes"][0].pop("gpu_type"), "needs a gpu_type"),
    (_set(["partitions", 0, "nodes"], ["gpu01", "gpu09"]), "node gpu09 is not in 'nodes'"),
    (_set(["partitions", 1, "default"], True), "exactly one partition"),
    (_set(["partitions", 0, "max_time"], "forever"), "not a Slurm time"),
    (_set(["budget_period"], "weekly"),
     "budget_period: 'weekly' is not one of monthly, quarterly"),
    (_set(["users", 2, "default_account"], "proj-climate"), "is not a user of their default_account"),
    (_set(["reservations", 0, "account"], "nope"), "account nope is not in 'accounts'"),
    (_set(["reservations", 1, "starts_in_days"], -1), "between 0 and 3650"),
    (_set(["groups", "dl101-participants"], ["student1", "mallory"]), "members must be listed"),
    (_set(["groups", "dl101-participants"], "student1,root"),
     "groups.dl101-participants: 'student1,root' is not a list"),
    (_set(["material", "dl101"], "../../etc"), "material.dl101: '../../etc' is not a folder of the"),
    (_set(["network", "subnet"], "8.8.8.0/24"), "must be a private network"),
    (_set(["network", "subnet"], "banana"), "is not an IPv4 network"),
    (_set(["colour"], "blue"), "colour: unknown key; the file may set only cluster"),
    (lambda d: d.pop("accounts"), "missing 'accounts'"),
]


@pytest.mark.parametrize("change,message", BROKEN, ids=[m for _, m in BROKEN])
def test_broken_demo_file_gives_one_clear_sentence(tmp_path, change, message):
    path = edited(tmp_path, change)
    with pytest.raises(DemoFileError) as err:
        load(path)
    text = str(err.value)
    assert message in text
    assert text.startswith(f"{path}, line ") and "\n" not in text and text.endswith(".")


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text("cluster: aifactory\nnodes: [\n  {name: gpu01\n")
    with pytest.raises(DemoFileError, match=r"is not valid YAML at line \d+ \(expected .*\)\.$"):
        load(path)


def test_missing_file(tmp_path):
    with pytest.raises(DemoFileError, match="cannot be read"):
        load(tmp_path / "nope.yaml")


def test_generated_slurm_config_describes_the_nodes():
    demo = load(DEMO)
    conf = render_slurm_conf(demo, (REPO / "hub_config/cluster/slurm.conf.in").read_text())
    assert "NodeName=gpu01 NodeAddr=10.77.0.11 NodeHostname=gpu01 CPUs=32" in conf
    assert "Gres=gpu:h100:4" in conf and "PriorityDecayHalfLife=0" in conf
    assert "PriorityUsageResetPeriod=QUARTERLY" in conf
    assert "PartitionName=gpu Nodes=gpu01,gpu02,gpu03" in conf and "Default=YES" in conf
    gres = render_gres_conf(demo)
    assert "NodeName=gpu02 Name=gpu Type=h100 File=/dev/fakegpu[0-3]" in gres
    assert "NodeName=cpu01" not in gres


def test_job_submit_lua_holds_each_course_to_its_profile():
    from aifactory import site_description as site_module
    from aifactory.cluster import render_job_submit_lua

    site = site_module.load(REPO / "hub_config" / "site.yaml")
    lua = render_job_submit_lua(site, (REPO / "hub_config/cluster/job_submit.lua.in").read_text())
    # DL101's profile: 1 H100 by default, limits of 1 GPU, 8 CPUs, 60 GB and 3 hours.
    assert ('["course-dl101"] = {reservation = "dl101", partition = "gpu", gpus = 1, cpus = 8, '
            'memory_mb = 61440, minutes = 180},') in lua
    assert '["course-ml202"] = {reservation = "ml202"' in lua
    assert "proj-climate" not in lua  # research projects are not held
    assert "JobSubmitPlugins=lua" in (REPO / "hub_config/cluster/slurm.conf.in").read_text()


def test_a_secret_is_never_readable_by_others_not_even_while_it_is_written(tmp_path, monkeypatch):
    """`up` writes passwords with write_if_changed: every file it creates on the way has the
    final rights from its first moment, whatever the umask (0 here), also when it replaces
    a file that was readable."""
    created = []
    real_open = os.open

    def watching_open(path, flags, mode=0o777, *args, **kwargs):
        fd = real_open(path, flags, mode, *args, **kwargs)
        if flags & os.O_CREAT:
            created.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return fd

    secret = tmp_path / "secret"
    secret.write_text("old")
    secret.chmod(0o644)
    monkeypatch.setattr(os, "open", watching_open)
    umask = os.umask(0)
    try:
        assert write_if_changed(secret, "s3cret", 0o600)
    finally:
        os.umask(umask)
    assert created == [0o600]
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and secret.read_text() == "s3cret"
