"""`aifactory site init`: a first site.yaml from what Slurm says, which the hub's loader takes
as it is and `site check` passes.

Recorded: tests/data/sinfo-22.05.json (the demo's nodes on Slurm 22.05) and
tests/data/recorded/24.11-testbed/ (our 24.11 test bed, whose partition bills CPUs, memory and
GPUs; see tests/data/recorded/SOURCES.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import aifactory

from aifactory import site_init, slurm
from aifactory import site_description as site_module

DATA = Path(__file__).parent / "data"
TESTBED = DATA / "recorded" / "24.11-testbed"
PYTHON = "/opt/aifactory/venv/bin/python"


def demo_slurm():
    nodes = slurm.parse_nodes_json((DATA / "sinfo-22.05.json").read_text())
    partitions = {"gpu": slurm.Partition("gpu", "gpu[01-03]", 2880, 60, "GRES/gpu=1.0"),
                  "cpu": slurm.Partition("cpu", "cpu01", None, 60, "GRES/gpu=1.0")}
    return partitions, nodes


def written(tmp_path, text: str) -> site_module.Site:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return site_module.load(path)


def test_the_demos_slurm_gives_its_partitions_a_profile_each_in_gpu_hours(tmp_path):
    site = written(tmp_path, site_init.describe(*demo_slurm(), python=PYTHON))
    assert site.billing.by_gpu
    gpu, cpu = site.partitions["gpu"], site.partitions["cpu"]
    assert (gpu.gpu_types, gpu.gpus_per_node, gpu.cpus_per_node, gpu.memory_gb_per_node,
            gpu.max_walltime_min) == (("h100",), 4, 32, 250, 2880)
    assert cpu.gpu_types == () and cpu.max_walltime_min == 7 * 24 * 60  # no MaxTime: a week
    h100 = site.profile("h100-1")
    assert h100.slurm == {"partition": "gpu", "gpu_type": "h100", "gpus": 1, "cpus": 8,
                          "memory_gb": 62, "walltime": "04:00:00"}
    assert site.default_profile.slug == "cpu" and site.default_profile.slurm["gpus"] == 0
    assert site.dask["python"] == PYTHON and site.dask["gpu_type"] == "h100"


def test_a_partition_that_bills_cpus_and_memory_gives_a_unit_priced_per_gpu_hour(tmp_path):
    partitions = {p.name: p for p in slurm.parse_partitions_json(
        (TESTBED / "partitions-cli-scontrol.json").read_text())}
    nodes = slurm.parse_nodes_json((TESTBED / "nodes-cli-scontrol.json").read_text())
    site = written(tmp_path, site_init.describe(partitions, nodes, python=PYTHON))
    # CPU=0.1, Mem=0.01G, GRES/gpu=2.0: one GPU with 8 CPUs and 62.5 GB is 3.425, cut to 3.
    assert (site.billing.tres, site.billing.units_per_gpu_hour) == ("billing", 3.0)
    assert [p.slug for p in site.profiles] == ["h100-1"]


def test_what_site_yaml_cannot_name_is_left_out_and_said(tmp_path):
    partitions, nodes = demo_slurm()
    partitions["Big_Mem"] = slurm.Partition("Big_Mem", "cpu01", 60, 60)
    partitions["empty"] = slurm.Partition("empty", "", 60, 60)
    text = site_init.describe(partitions, nodes, python=PYTHON)
    assert "# Left out: partition Big_Mem: not a name site.yaml takes" in text
    assert "# Left out: partition empty: no nodes" in text
    assert set(written(tmp_path, text).partitions) == {"gpu", "cpu"}
    with pytest.raises(ValueError, match="no partition with nodes"):
        site_init.describe({"empty": partitions["empty"]}, nodes, python=PYTHON)


def test_site_init_on_the_running_slurm_writes_what_the_hub_takes_and_check_passes(
        live_cluster, tmp_path):
    out = tmp_path / "site.yaml"
    made = aifactory("site", "init", "--out", str(out), "--python", PYTHON)
    assert made.returncode == 0, made.stdout + made.stderr
    assert f"Next: aifactory site check --site {out}" in made.stdout
    site = site_module.load(out)  # what the hub does with its site.yaml at its start
    assert {"gpu", "cpu"} <= set(site.partitions) and site.profile("h100-1")
    checked = aifactory("site", "check", "--site", str(out))
    assert checked.returncode == 0, checked.stdout
    # It never writes over a site's file.
    before = out.read_text()
    again = aifactory("site", "init", "--out", str(out))
    assert again.returncode == 2 and "exists" in again.stderr and out.read_text() == before
